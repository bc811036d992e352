/**
 * The Shaper's kernel port: a dry run goes through the recording adapter (no kernel touched), an
 * inspected device through the read-only one; inspectShaper, clearShaper and checkDevice (the `shaperr`
 * CLI's status/tc, clear and check) read back from a real kernel in a throwaway namespace.
 */
import t from 'tap';
import { checkDevice, clearShaper, inspectShaper } from '../lib/shaper/inspect.js';
import { Shaper } from '../lib/shaper/shaper.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { ShaperrInputError } from '../lib/wire/errors.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';

const skip = netnsUnavailable();

function withTc<T>(topology: Topology, read: (tc: TrafficControl) => T): T {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    return read(tc);
  } finally {
    tc.close();
  }
}

t.test('a dry run reports every change as a tc command and touches no kernel', async (t) => {
  const commands: string[] = [];
  const shaper = await Shaper.open({
    device: 'nonexistent9',
    server: { rate: '10mbit' },
    client: { rate: '2mbit', ceil: '4mbit' },
    dryRun: true,
    onChange: ({ command }) => commands.push(command),
  });
  t.equal(shaper.trafficControl, undefined, 'no kernel connection');
  t.equal(shaper.leafKind, 'sfq', 'the wished leaf, not probed');
  t.match(commands[0], /^tc qdisc replace dev nonexistent9 root handle 5a: htb/);
  t.match(commands[1], /^tc class add dev nonexistent9 parent 5a: classid 5a:1 htb .*rate 10mbit/);
  t.equal(commands.filter((command) => command.includes(' u32 ')).length, 4, 'two hash tables and two link filters');
  const made = commands.length;

  const outcome = await shaper.throttle('203.0.113.7');
  t.equal(outcome.result, 'applied');
  t.match(outcome.client, { rate: 2_000_000, ceil: 4_000_000, classid: '5a:10' });
  const pipe = commands.slice(made);
  t.equal(pipe.length, 3, 'class, leaf and filter');
  t.match(pipe[0], /class add .* classid 5a:10 htb .*rate 2mbit ceil 4mbit/);
  t.match(pipe[1], /qdisc add .* parent 5a:10 handle 10: sfq/);
  t.match(pipe[2], /filter add .* handle 2:7:1 u32 ht 2:7: match ip dst 203\.0\.113\.7 classid 5a:10/, 'in bucket 7 of table 2');
  t.equal(shaper.bytesSent('203.0.113.7'), undefined, 'no counters without a kernel');
  t.same(
    shaper.state().clients.map((client) => client.address),
    ['203.0.113.7'],
  );
  t.ok(shaper.isIntact(), 'the root it made counts as there');
  t.same(shaper.tcCommands().slice(-3), pipe, 'the rebuild commands end with the same pipe');

  const before = commands.length;
  await shaper.close({ teardown: true });
  t.same(commands.slice(before), ['tc qdisc del dev nonexistent9 root handle 5a:'], 'teardown deletes the root, once');
});

t.test('inspectShaper reads a running shaper without changing anything', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2, ipv6: false });
  t.teardown(() => topology.destroy());
  t.equal(inspectShaper({ device: topology.serverDevice, netns: topology.serverNs }), undefined, 'nothing of shaperr on a fresh device');
  const shaper = await Shaper.open({ device: topology.serverDevice, netns: topology.serverNs, server: { rate: '20mbit' }, client: { rate: '3mbit' } });
  t.teardown(() => shaper.close({ teardown: true }));
  await shaper.throttle(topology.clientAddresses[0]!);
  await shaper.throttle(topology.clientAddresses[1]!, { rate: '5mbit', ceil: '6mbit' });

  const view = inspectShaper({ device: topology.serverDevice, netns: topology.serverNs })!;
  t.teardown(() => view.close());
  t.same(
    view.state().clients.map(({ address, rate, ceil }) => ({ address, rate, ceil })),
    shaper.state().clients.map(({ address, rate, ceil }) => ({ address, rate, ceil })),
    'the same pipes, read back from the kernel',
  );
  t.equal(view.state().server?.parameters.rate, 20_000_000, 'the server class, in bits/s');
  t.same(view.tcCommands(), shaper.tcCommands(), 'the same rebuild commands');
  const classes = withTc(topology, (tc) => tc.classes(topology.serverDevice).length);
  await t.rejects((view as unknown as Shaper).throttle('10.200.1.9'), /read-only view/, 'a change through the view is refused');
  t.equal(
    withTc(topology, (tc) => tc.classes(topology.serverDevice).length),
    classes,
    'and the kernel is as it was',
  );
});

t.test('checkDevice and clearShaper: none, foreign and shaperr roots; a missing device', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const where = { device: topology.serverDevice, netns: topology.serverNs };

  const fresh = checkDevice({ ...where, probeKinds: true });
  const hasSfq = withTc(topology, (tc) => tc.hasQdiscKind('sfq'));
  t.same(fresh, { mtu: 1500, root: { state: 'none' }, qdiscKinds: { htb: true, sfq: hasSfq } }, 'no root: u32 not probed');
  t.same(checkDevice({ ...where, probeKinds: false }), { mtu: 1500, root: { state: 'none' } }, 'without probing, no kind answers');
  t.equal(await clearShaper(where), undefined, 'nothing to clear');

  withTc(topology, (tc) => tc.addQdisc(topology.serverDevice, { kind: 'tbf', handle: '1:', options: { rate: '10mbit', burst: 10000, limit: 20000 } }));
  t.same(checkDevice({ ...where, probeKinds: false }).root, { state: 'foreign', description: 'tbf 1:' });
  await t.rejects(clearShaper(where), ShaperrInputError, 'a foreign root is not cleared');
  await t.rejects(clearShaper(where), /root qdisc on srv0 is tbf 1:, not shaperr's/);
  t.equal(
    withTc(topology, (tc) => tc.rootQdisc(topology.serverDevice)?.kind),
    'tbf',
    'and is left in place',
  );
  withTc(topology, (tc) => tc.deleteQdisc(topology.serverDevice));

  const shaper = await Shaper.open({ ...where, server: { rate: '20mbit' }, client: { rate: '3mbit' } });
  await shaper.throttle(topology.clientAddresses[0]!);
  await shaper.close();
  t.match(checkDevice({ ...where, probeKinds: true }), { root: { state: 'shaperr' }, u32: true });
  const progress: string[] = [];
  t.equal(await clearShaper({ ...where, onProgress: ({ done, total }) => progress.push(`${done}/${total}`) }), 1, 'one client pipe removed');
  t.same(progress, ['0/1', '1/1']);
  t.equal(
    withTc(topology, (tc) => tc.rootQdisc(topology.serverDevice)),
    undefined,
    'no root left',
  );

  const missing = { device: 'nosuchdev0', netns: topology.serverNs, probeKinds: false };
  t.throws(() => checkDevice(missing), { code: 'ENODEV' }, "a missing device is the kernel's ENODEV");
});
