/**
 * SFQ against a kernel that has it (users' stock kernels; here, the stock-kernel lane in
 * test/kernel-lane/): create, read back with statistics, change, delete; the Shaper's probe picks sfq
 * without a warning; a client's pipe with an SFQ leaf is shaped to its rate and shares it fairly
 * between the client's flows. Skipped (counted as such) on a kernel without sch_sfq.
 */
import t from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { createNetns, createTopology, deleteNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';
import { measureGoodput, shapedTo } from './helpers/traffic.js';

const MBIT = 1e6;

function sfqUnavailable(): string | false {
  const unavailable = netnsUnavailable();
  if (unavailable) return unavailable;
  const tc = TrafficControl.open();
  try {
    return tc.hasQdiscKind('sfq') ? false : 'this kernel has no sfq (module sch_sfq); the stock-kernel lane (test/kernel-lane) runs these tests';
  } finally {
    tc.close();
  }
}
const skip = sfqUnavailable();

t.test('an sfq leaf: create, read back with statistics, change, delete', { skip }, async (t) => {
  const netns = await createNetns('sfq');
  t.teardown(() => deleteNetns(netns));
  await ip('-n', netns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
  await ip('-n', netns, 'link', 'set', 'd0', 'up');
  await ip('-n', netns, 'link', 'set', 'd1', 'up');
  const tc = TrafficControl.open({ netns });
  t.teardown(() => tc.close());
  tc.addQdisc('d0', { kind: 'htb', handle: '1:' });
  tc.addClass('d0', { kind: 'htb', parent: '1:', classid: '1:10', options: { rate: '2mbit' } });
  tc.addQdisc('d0', { kind: 'sfq', parent: '1:10', handle: '10:', options: { perturb: 10, quantum: 1514, limit: 100, depth: 50, divisor: 1024 } });

  const sfq = tc.qdiscs('d0').find((q) => q.handle === 0x00100000);
  t.equal(sfq?.kind, 'sfq');
  t.equal(sfq?.parent, 0x00010010, 'under its class');
  t.match(sfq?.parameters, { perturb: 10, quantum: 1514, limit: 100, depth: 50, divisor: 1024 }, 'every option reads back as given');
  t.match(sfq?.statistics, { bytes: 0, packets: 0, drops: 0, backlog: 0, qlen: 0 }, 'statistics present (idle)');

  // Older kernels (6.1 among them) have no in-place change for sfq: one clear error, then delete + add.
  const changed = { kind: 'sfq' as const, parent: '1:10', handle: '10:', options: { perturb: 5, limit: 60 } };
  try {
    tc.changeQdisc('d0', changed);
    t.pass('changed in place');
  } catch (error) {
    t.match(
      error,
      { code: 'EINVAL', message: /this kernel cannot change a 'sfq' qdisc in place: delete it and add it again/ },
      'no in-place change here, and the error says what to do',
    );
    tc.deleteQdisc('d0', { parent: '1:10', handle: '10:' });
    tc.addQdisc('d0', changed);
  }
  t.match(tc.qdiscs('d0').find((q) => q.handle === 0x00100000)?.parameters, { perturb: 5, limit: 60 }, 'the new options read back');

  tc.deleteQdisc('d0', { parent: '1:10', handle: '10:' });
  t.notOk(
    tc.qdiscs('d0').some((q) => q.kind === 'sfq'),
    'deleted',
  );
});

t.test('the Shaper picks sfq leaves without a warning; one client is shaped to its rate and its two flows share it fairly', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const warnings: string[] = [];
  const shaper = await Shaper.open({
    device: 'srv0',
    netns: topology.serverNs,
    server: { rate: '100mbit' },
    client: { rate: '4mbit' },
    onWarning: (message) => warnings.push(message),
  });
  t.teardown(() => shaper.close({ teardown: true }));
  t.equal(shaper.leafKind, 'sfq', 'the probe found sfq');
  t.same(warnings, [], 'no fallback warning');
  const [client] = topology.clientAddresses as [string];
  await shaper.throttle(client);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  t.match(
    tc
      .qdiscs('srv0')
      .filter((q) => q.kind === 'sfq')
      .map((q) => q.parameters),
    [{ perturb: 10 }],
    "the client's pipe has an sfq leaf",
  );

  // One receiver counts both connections over one window: two receivers' windows start apart under emulation,
  // and the sum of their averages then overstates the class's rate.
  const flows = await measureGoodput(topology, { to: client, seconds: 6, warmupSeconds: 2, streams: 2 });
  const [one = 0, two = 0] = flows.connectionBitsPerSecond;
  const total = flows.bitsPerSecond;
  const together = shapedTo(total, 4 * MBIT);
  t.ok(together.within, `the client's two flows together: ${together.reading}`);
  t.ok(Math.min(one, two) >= 0.35 * total, `neither flow starves: ${(one / MBIT).toFixed(2)} and ${(two / MBIT).toFixed(2)} Mbit/s`);
  const leaf = tc.qdiscs('srv0').find((q) => q.kind === 'sfq');
  t.ok((leaf?.statistics?.packets ?? 0) > 100, `sfq counted ${leaf?.statistics?.packets} packets`);
});
