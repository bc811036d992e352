/**
 * Removing everything (shaperrd stopping without keepRulesOnExit, `shaperr clear`) with streams in flight:
 * the streams go on at full speed without a retransmission timeout (counted at the sender with nstat:
 * the qdisc's own counters vanish with it). On a veth, deleting the root at once showed no timeout either
 * (TCP resends within microsecond round trips), so this guards the drain against stalls, not against
 * the old way.
 */
import t, { type Test } from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { clearShaper } from '../lib/shaper/inspect.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { createTopology, inNetns, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { startStream, type Stream } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

/** The sender's count of TCP retransmission timeouts (the stall a dropped queue causes). */
async function retransmissionTimeouts(topology: Topology): Promise<number> {
  const output = await inNetns(topology.serverNs, 'nstat', '-a', '-z', 'TcpExtTCPTimeouts');
  const count = /TcpExtTCPTimeouts\s+(\d+)/.exec(output);
  if (!count) throw new Error(`nstat did not report TcpExtTCPTimeouts: ${JSON.stringify(output)}`);
  return Number(count[1]);
}

/** Two throttled streams with full queues (offloads on: 64 KB super-packets), then `remove`: timeouts over the next 2 s. */
async function across(t: Test, remove: (shaper: Shaper, topology: Topology) => Promise<unknown>): Promise<{ timeouts: number; queued: number; after: number }> {
  const topology = await createTopology({ clients: 2, ipv6: false, disableOffloads: false });
  t.teardown(() => topology.destroy());
  const shaper = await Shaper.open({ device: topology.serverDevice, netns: topology.serverNs, server: { rate: '100mbit' }, client: { rate: '2mbit' }, onWarning: () => {} });
  t.teardown(() => shaper.close());
  const streams: Stream[] = [];
  t.teardown(() => streams.forEach((stream) => stream.stop()));
  for (const address of topology.clientAddresses) {
    await shaper.throttle(address);
    streams.push(await startStream(topology, address, 30));
  }
  await streams[0]!.bitsPerSecondOver(2);
  const queued = shaper.trafficControl!.rootQdisc(topology.serverDevice)?.statistics?.backlog ?? 0;
  const before = await retransmissionTimeouts(topology);
  await remove(shaper, topology);
  const after = await streams[0]!.bitsPerSecondOver(2);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.notOk(tc.rootQdisc(topology.serverDevice), 'the root is gone');
  tc.close();
  return { timeouts: (await retransmissionTimeouts(topology)) - before, queued, after };
}

t.test('teardown with streams in flight: they go on without a timeout', { skip }, async (t) => {
  const drained = await across(t, (shaper) => shaper.close({ teardown: true }));
  t.ok(drained.queued > 0, `${drained.queued} bytes were queued when the teardown began`);
  t.equal(drained.timeouts, 0, 'no retransmission timeout at the sender');
  t.ok(drained.after > 10 * MBIT, `the stream goes on at full speed: ${(drained.after / MBIT).toFixed(0)} Mbit/s`);
});

t.test('shaperr clear drains too', { skip }, async (t) => {
  const cleared = await across(t, (_shaper, topology) => clearShaper({ device: topology.serverDevice, netns: topology.serverNs }));
  t.ok(cleared.queued > 0, `${cleared.queued} bytes were queued`);
  t.equal(cleared.timeouts, 0, 'no retransmission timeout at the sender');
});
