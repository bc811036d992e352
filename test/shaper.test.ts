/** The Shaper facade against the real kernel, with real TCP traffic through a shaped veth. */
import t from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { createTopology, inNetns, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { measureGoodput, measureGoodputConcurrently, shapedTo, startStream } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

async function openShaper(topology: Topology, warnings: string[] = [], extra = {}) {
  return Shaper.open({
    device: topology.serverDevice,
    netns: topology.serverNs,
    server: { rate: '100mbit' },
    client: { rate: '2mbit' },
    exempt: ['10.200.1.3/32'],
    onWarning: (message) => warnings.push(message),
    ...extra,
  });
}

function kernelCounts(topology: Topology) {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    const classes = tc.classes(topology.serverDevice);
    const filters = tc.filters(topology.serverDevice, '5a:').filter((f) => f.parameters.classid !== undefined);
    const leaves = tc.qdiscs(topology.serverDevice).filter((q) => q.parent !== 0xffffffff);
    return {
      classes: classes.length,
      clientFilters: filters.length,
      leaves: leaves.length,
      leafQueues: leaves.map((q) => `${q.kind} ${q.parameters && 'limit' in q.parameters ? q.parameters.limit : 'default'}`),
    };
  } finally {
    tc.close();
  }
}

t.test('a throttled client gets its rate; release restores full speed; others are never capped', { skip }, async (t) => {
  const topology = await createTopology({ clients: 3 });
  t.teardown(() => topology.destroy());
  const warnings: string[] = [];
  const shaper = await openShaper(topology, warnings);
  t.teardown(() => shaper.close({ teardown: true }));
  const [first, second, exempt] = topology.clientAddresses as [string, string, string];

  const hasSfq = shaper.trafficControl!.hasQdiscKind('sfq');
  t.equal(shaper.leafKind, hasSfq ? 'sfq' : 'bfifo', 'sfq, or bfifo where the kernel has none');
  t.equal(warnings.filter((w) => /no 'sfq' qdisc/.test(w)).length, hasSfq ? 0 : 1, 'the fallback is announced exactly once');

  const applied = await shaper.throttle(first);
  t.equal(applied.result, 'applied');
  t.match(kernelCounts(topology), { classes: 2, clientFilters: 1, leaves: 1 });
  t.same(
    kernelCounts(topology).leafQueues,
    [hasSfq ? 'sfq 127' : `bfifo ${127 * 1600}`],
    "the leaf holds sfq's 127 packets, or as many full-size packets' worth of bytes",
  );
  t.equal((await shaper.throttle(first)).result, 'unchanged', 'a second throttle changes nothing');
  t.match(kernelCounts(topology), { classes: 2, clientFilters: 1, leaves: 1 }, 'still exactly one class, filter and leaf');

  const [throttled, other] = await measureGoodputConcurrently(topology, [{ to: first }, { to: second }]);
  const throttledRate = shapedTo(throttled!.bitsPerSecond, 2 * MBIT);
  t.ok(throttledRate.within, `throttled client: ${throttledRate.reading}`);
  t.ok(other!.bitsPerSecond > 10 * 2 * MBIT, `unthrottled neighbour: ${(other!.bitsPerSecond / MBIT).toFixed(0)} Mbit/s (not capped)`);

  t.same(await shaper.throttle(exempt), { result: 'exempt' }, 'exempt address is never throttled');
  const exemptRate = await measureGoodput(topology, { to: exempt, seconds: 2 });
  t.ok(exemptRate.bitsPerSecond > 10 * 2 * MBIT, `exempt client: ${(exemptRate.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);

  t.equal(await shaper.release(first), true);
  t.equal(await shaper.release(first), false, 'release is idempotent');
  t.match(kernelCounts(topology), { classes: 1, clientFilters: 0, leaves: 0 }, 'class, filter and leaf are gone');
  const released = await measureGoodput(topology, { to: first, seconds: 2 });
  t.ok(released.bitsPerSecond >= 5 * 2 * MBIT, `after release: ${(released.bitsPerSecond / MBIT).toFixed(0)} Mbit/s (≥ 5× the throttle)`);
});

t.test(
  'a stream throttled in flight keeps a bounded queue despite GSO super-packets; release drops none of it, and the stream flows on at full speed',
  { skip },
  async (t) => {
    // Offloads on, as on a real server: the qdiscs see super-packets of up to 64 KB, which made a 127-packet
    // pfifo leaf queue seconds of data, so TCP stalled for seconds on RTO when release dropped that queue.
    const topology = await createTopology({ clients: 1, disableOffloads: false });
    t.teardown(() => topology.destroy());
    const shaper = await openShaper(topology);
    t.teardown(() => shaper.close({ teardown: true }));
    const [client] = topology.clientAddresses as [string];
    const stream = await startStream(topology, client, 30);
    t.teardown(() => stream.stop());
    t.ok((await stream.bitsPerSecondOver(1)) > 10 * 2 * MBIT, 'full speed before the throttle');

    await shaper.throttle(client);
    await stream.bitsPerSecondOver(1);
    const tc = TrafficControl.open({ netns: topology.serverNs });
    t.teardown(() => tc.close());
    const deepest = { bytes: 0, packets: 0 };
    const sampling = setInterval(() => {
      const queue = tc.classes(topology.serverDevice).find((c) => c.handle === 0x5a0010)?.statistics;
      deepest.bytes = Math.max(deepest.bytes, queue?.backlog ?? 0);
      deepest.packets = Math.max(deepest.packets, queue?.qlen ?? 0);
    }, 50);
    // Super-packets arrive as 64 KB lumps, 262 ms apart at 2 Mbit/s: a window counts ±1 of them, which is
    // ±9 % over 3 s (seen: 1.90 to 2.08), ±4 % over 6.
    const throttled = await stream.bitsPerSecondOver(6);
    clearInterval(sampling);
    const inFlight = shapedTo(throttled, 2 * MBIT);
    t.ok(inFlight.within, `throttled in flight: ${inFlight.reading}`);
    if (shaper.leafKind === 'sfq') {
      // sfq bounds packets, not bytes: with 64 KB super-packets its 127 can be megabytes (seen: 4 packets
      // holding 272 KB, and 817 KB). Plex sends from the same host, so TCP small queues keep it to a few.
      t.ok(deepest.packets > 0 && deepest.packets <= 127, `deepest queue ${deepest.packets} packets, ${deepest.bytes} bytes (sfq: at most 127 packets)`);
    } else {
      t.ok(deepest.bytes > 0 && deepest.bytes <= 127 * 1600, `deepest queue ${deepest.bytes} bytes (at most 127 full-size packets' worth)`);
    }

    // Deleting a class purges its queue and counts the purged packets as the root's drops; release must
    // let the queue drain first.
    const queuedAtRelease = tc.getClass(topology.serverDevice, '5a:10')?.statistics?.backlog ?? 0;
    const rootDrops = () => tc.rootQdisc(topology.serverDevice)?.statistics?.drops ?? Number.NaN;
    const dropsBefore = rootDrops();
    await shaper.release(client);
    t.ok(queuedAtRelease > 0, `the pipe held ${queuedAtRelease} bytes when released`);
    t.equal(rootDrops() - dropsBefore, 0, 'release dropped none of them');
    t.match(kernelCounts(topology), { classes: 1, clientFilters: 0, leaves: 0 }, 'and the pipe is gone once release resolves');
    const released = await stream.bitsPerSecondOver(1);
    t.ok(released > 10 * 2 * MBIT, `first second after release: ${(released / MBIT).toFixed(0)} Mbit/s (the flow did not stall)`);

    // While a release drains, the client counts as released: a second release finds nothing, a throttle
    // makes a new pipe, and once the drain is over exactly one pipe is left.
    await shaper.throttle(client);
    await stream.bitsPerSecondOver(1);
    const queued = tc.getClass(topology.serverDevice, '5a:10')?.statistics?.backlog ?? 0;
    const outcomes = await Promise.all([shaper.release(client), shaper.release(client), shaper.throttle(client)]);
    t.same([outcomes[0], outcomes[1], outcomes[2].result], [true, false, 'applied'], `release, release, throttle at once (${queued} bytes queued)`);
    t.match(kernelCounts(topology), { classes: 2, clientFilters: 1, leaves: 1 }, 'exactly one class, filter and leaf for the client');
    t.ok(shaper.isThrottled(client));
  },
);

t.test('two throttled clients are isolated from each other; IPv6 clients are shaped too', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2 });
  t.teardown(() => topology.destroy());
  const shaper = await openShaper(topology);
  t.teardown(() => shaper.close({ teardown: true }));
  await shaper.throttle(topology.clientAddresses[0]!);
  await shaper.throttle(topology.clientAddresses6[1]!, { rate: '1mbit' });
  // Over the default 6 s: at 1 Mbit/s, 4 s windows read 0.87 to 1.06 Mbit/s, 6 s windows 0.91 to 1.02.
  const [v4, v6] = await measureGoodputConcurrently(topology, [{ to: topology.clientAddresses[0]! }, { to: topology.clientAddresses6[1]! }]);
  const [v4Rate, v6Rate] = [shapedTo(v4!.bitsPerSecond, 2 * MBIT), shapedTo(v6!.bitsPerSecond, 1 * MBIT, 6)];
  t.ok(v4Rate.within, `IPv4 client: ${v4Rate.reading}`);
  t.ok(v6Rate.within, `IPv6 client: ${v6Rate.reading}`);
  const states = shaper.clients();
  t.same(states.map((c) => [c.address, c.rate, c.family]).sort(), [
    ['10.200.1.1', 2e6, 4],
    ['fd00:5a::1:2', 1e6, 6],
  ]);
  t.ok(
    states.every((c) => (c.statistics?.bytes ?? 0) > 0),
    'live counters come from the kernel',
  );
  // bytesSent reads the counters alone (what shaperrd polls to notice a vanished client). A last FIN or
  // retransmission may still pass, so it lies between a full read before and one after.
  const counted = states.map((c) => shaper.bytesSent(c.address) ?? 0);
  const after = shaper.clients();
  t.ok(
    states.every((c, i) => c.statistics!.bytes <= counted[i]! && counted[i]! <= after.find((a) => a.address === c.address)!.statistics!.bytes),
    `bytesSent agrees with full reads: ${states.map((c, i) => `${c.statistics?.bytes} ≤ ${counted[i]}`).join(', ')}`,
  );
  t.equal((await shaper.throttle(topology.clientAddresses6[1]!, { rate: '3mbit' })).result, 'changed', 'new limits change the class in place');
});

t.test('re-opening after a crash adopts what is there; foreign root qdiscs are refused without takeover', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2 });
  t.teardown(() => topology.destroy());
  const first = await openShaper(topology);
  await first.throttle('203.0.113.7');
  await first.throttle('2001:db8::7');
  await first.throttle('203.0.113.8');
  await first.close(); // no teardown: as if the process died
  const second = await openShaper(topology);
  t.same(
    second
      .clients()
      .map((c) => c.address)
      .sort(),
    ['2001:db8::7', '203.0.113.7', '203.0.113.8'],
    'clients adopted',
  );
  t.equal((await second.throttle('203.0.113.7')).result, 'unchanged', 'adopted client is recognised');
  await second.throttle('203.0.113.9');
  t.equal(new Set(second.clients().map((c) => c.classid)).size, 4, 'no class handle handed out twice after adoption');
  t.equal(await second.release('2001:db8::7'), true);
  await second.close({ teardown: true });
  t.match(kernelCounts(topology), { classes: 0, clientFilters: 0, leaves: 0 }, 'teardown removes everything');

  await inNetns(topology.serverNs, 'tc', 'qdisc', 'add', 'dev', 'srv0', 'root', 'handle', '1:', 'htb');
  await t.rejects(openShaper(topology), /already has a root qdisc htb 1: that shaperr did not create; pass takeover: true/);
  const taken = await openShaper(topology, [], { takeover: true });
  t.equal(taken.trafficControl!.rootQdisc('srv0')?.handle, 0x005a0000);
  await taken.close({ teardown: true });
});

t.test('bad input gets one clear error and changes nothing', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1 });
  t.teardown(() => topology.destroy());
  const shaper = await openShaper(topology);
  t.teardown(() => shaper.close({ teardown: true }));
  await t.rejects(shaper.throttle('not-an-ip'), /invalid client address "not-an-ip"/);
  await t.rejects(shaper.throttle('10.200.1.1', { rate: '2mbit', ceil: '1mbit' }), /ceil is below rate/);
  await t.rejects(shaper.throttle('10.200.1.1', { rate: 'fast' }), /invalid rate "fast"/);
  await t.rejects(Shaper.open({ device: 'nosuchdev', netns: topology.serverNs, server: { rate: '1mbit' }, client: { rate: '1mbit' } }), { code: 'ENODEV' });
  t.match(kernelCounts(topology), { classes: 1, clientFilters: 0, leaves: 0 });
  t.equal((await shaper.throttle('::ffff:10.200.1.1')).client?.address, '10.200.1.1', 'IPv4-mapped IPv6 is the IPv4 client');
});
