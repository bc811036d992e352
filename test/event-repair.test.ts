/**
 * Event-driven repair: TcMonitor decodes the kernel's tc and link notifications, and ShaperWatch puts
 * shaperr's objects back when they are removed — the root (`tc qdisc del root`), the whole device (link
 * deleted and added again), one client's filter — and still does after the kernel dropped notifications
 * (a tiny receive buffer and a burst of changes). shaperrd leaves another tool's root alone and stops
 * cleanly while listening. Kernel state is read back over netlink in a throwaway namespace.
 */
import { writeFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { type RepairReport, ShaperWatch } from '../lib/shaper/watch.js';
import { clientFilterRef } from '../lib/shaper/layout.js';
import { parseClientAddress } from '../lib/address.js';
import { TcMonitor, type TcNotification } from '../lib/tc/monitor.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { addServerLink, deleteServerLink, kernelHasPipesFor, kernelState, logDir, play, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, ip, netnsUnavailable, type Topology } from '../daemon/support/netns.js';

const skip = netnsUnavailable();
const CLIENTS = ['10.200.1.1', '10.200.1.2', '10.200.1.3'];

async function shaperWithPipes(t: Test, topology: Topology) {
  const shaper = await Shaper.open({ device: 'srv0', netns: topology.serverNs, server: { rate: '100mbit' }, client: { rate: '2mbit' }, leaf: 'bfifo' });
  t.teardown(() => shaper.close());
  for (const address of CLIENTS) await shaper.throttle(address);
  const reports: RepairReport[] = [];
  let overflows = 0;
  const errors: Error[] = [];
  const watch = (receiveBufferBytes?: number) => {
    const opened = ShaperWatch.open(shaper, {
      device: 'srv0',
      netns: topology.serverNs,
      onRepaired: (report) => reports.push(report),
      onOverflow: () => overflows++,
      onError: (error) => errors.push(error),
      ...(receiveBufferBytes ? { receiveBufferBytes } : {}),
    });
    t.teardown(() => opened.close());
    return opened;
  };
  return { shaper, reports, errors, watch, overflows: () => overflows };
}

const allPipesBack = (topology: Topology) => kernelHasPipesFor(topology, CLIENTS);

async function recreateLink(topology: Topology): Promise<void> {
  await deleteServerLink(topology);
  await addServerLink(topology);
}

t.test('TcMonitor decodes qdisc, class, filter and link notifications and leaves out the ports it is told to', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  const seen: TcNotification[] = [];
  const monitor = TcMonitor.open({ netns: topology.serverNs, onNotifications: (batch) => seen.push(...batch) });
  t.teardown(() => monitor.close());
  const ignoring: TcNotification[] = [];
  const quiet = TcMonitor.open({ netns: topology.serverNs, ignorePortIds: [tc.portId], onNotifications: (batch) => ignoring.push(...batch) });
  t.teardown(() => quiet.close());

  tc.addQdisc('srv0', { kind: 'htb', handle: '7:', options: { defaultClass: 0 } });
  tc.addClass('srv0', { kind: 'htb', parent: '7:', classid: '7:5', options: { rate: 1_000_000 } });
  tc.addFilter('srv0', { kind: 'u32', parent: '7:', priority: 3, protocol: 'ip', options: { match: { family: 4, dst: '10.200.1.9/32' }, classid: '7:5' } });
  const [filter] = tc.filters('srv0', '7:').filter((each) => each.parameters.classid !== undefined);
  tc.deleteFilter('srv0', { kind: 'u32', parent: '7:', priority: 3, protocol: 'ip', handle: filter!.handle });
  tc.deleteClass('srv0', { classid: '7:5' });
  tc.deleteQdisc('srv0', { handle: '7:' });
  const ifindex = tc.link('srv0').ifindex;
  await recreateLink(topology);
  await until(() => seen.some((each) => each.object === 'link' && each.action === 'new' && each.name === 'srv0' && each.ifindex !== ifindex));

  const ours = seen.filter((each) => each.portId === tc.portId);
  const summary = ours.map((each) => `${each.action} ${each.object}`);
  // Adding a root first reports the kernel's default root (noqueue on a veth) as deleted.
  t.same(
    summary,
    ['del qdisc', 'new qdisc', 'new class', 'new filter', 'del filter', 'del class', 'del qdisc'],
    'each change of ours, in order, tagged with our port id',
  );
  const deletedFilter = ours.find((each) => each.object === 'filter' && each.action === 'del');
  t.equal(
    deletedFilter?.object === 'filter' && deletedFilter.filter?.parameters.match?.dst,
    '10.200.1.9/32',
    'a deleted u32 filter comes decoded (its match and class)',
  );
  t.equal(deletedFilter?.object === 'filter' && deletedFilter.filter?.parameters.classid, 0x00070005);
  const deletedRoot = ours.at(-1);
  t.match(
    deletedRoot?.object === 'qdisc' && deletedRoot.qdisc,
    { kind: 'htb', handle: 0x00070000, parameters: { defaultClass: 0 } },
    'a deleted qdisc comes decoded',
  );
  t.ok(
    seen.some((each) => each.object === 'link' && each.action === 'del' && each.ifindex === ifindex),
    'the deleted link, with its old ifindex',
  );
  t.equal(ignoring.filter((each) => each.portId === tc.portId).length, 0, 'a monitor told to ignore the port sees none of its changes');
  t.ok(
    ignoring.some((each) => each.object === 'link'),
    'but still sees the others',
  );
  t.equal(monitor.stats.overflows, 0);
});

t.test(
  'ShaperWatch puts the pipes back after `tc qdisc del root`, a link re-creation, one deleted client filter, leaf, and the server class',
  { skip },
  async (t) => {
    const topology = await createTopology({ clients: 1, ipv6: false });
    t.teardown(() => topology.destroy());
    const { shaper, reports, errors, watch } = await shaperWithPipes(t, topology);
    watch();
    const outsider = TrafficControl.open({ netns: topology.serverNs });
    t.teardown(() => outsider.close());

    outsider.deleteQdisc('srv0', { handle: '5a:' });
    await until(() => reports.length === 1 && allPipesBack(topology));
    t.match(reports[0], { reason: 'root deleted', scope: 'tree', pipes: 3 }, 'the root deletion is noticed and the tree put back');

    await recreateLink(topology);
    await until(() => reports.length === 2 && allPipesBack(topology));
    t.match(reports[1], { reason: 'device re-created', scope: 'tree', pipes: 3 }, 'the new device gets everything back');
    outsider.link('srv0', { refresh: true });

    const victim = parseClientAddress(CLIENTS[1]!);
    const ref = outsider.filters('srv0', '5a:').find((filter) => filter.parameters.match?.dst === `${victim.text}/32`)!;
    outsider.deleteFilter('srv0', { ...clientFilterRef(0x005a0000, victim, ref.handle & 0xfff) });
    t.notOk(kernelState(topology).destinations.includes(`${victim.text}/32`), 'the filter is gone');
    await until(() => reports.length === 3 && allPipesBack(topology));
    t.match(reports[2], { reason: 'pipe damaged', scope: 'pipes', pipes: 1 }, 'only that pipe is re-applied');

    // A deleted leaf: the kernel puts its default qdisc there; the pipe gets its bfifo back.
    outsider.deleteQdisc('srv0', { parent: '5a:10', handle: '10:' });
    await until(() => reports.length === 4);
    t.match(reports[3], { scope: 'pipes', pipes: 1 });
    t.ok(
      outsider.qdiscs('srv0').some((qdisc) => qdisc.parent === 0x005a0010 && qdisc.kind === 'bfifo'),
      'the leaf is bfifo again',
    );

    // With no pipe below it the server class itself can be deleted, and every throttle would then fail.
    for (const address of CLIENTS) await shaper.release(address);
    outsider.deleteClass('srv0', { classid: '5a:1' });
    await until(() => reports.length === 5);
    t.match(reports[4], { reason: 'server class deleted', scope: 'pipes', pipes: 0, serverClass: true }, 'the deleted server class is noticed and put back');
    t.match(outsider.getClass('srv0', '5a:1')?.parameters, { rate: 100e6 }, 'with its rate');
    t.match(await shaper.throttle(CLIENTS[0]!), { result: 'applied' }, 'and a throttle works again');
    t.same(errors, []);
  },
);

t.test('after an overflow (tiny receive buffer, burst of changes) the full check still catches a root deleted during it', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { reports, errors, watch, overflows } = await shaperWithPipes(t, topology);
  const watching = watch(1); // the kernel rounds it up to its minimum, a few KiB
  await ip('-n', topology.serverNs, 'link', 'add', 'burst0', 'type', 'veth', 'peer', 'name', 'burst1');
  const outsider = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => outsider.close());
  outsider.addQdisc('burst0', { kind: 'htb', handle: '1:', options: { defaultClass: 0 } });
  const burst = (from: number) =>
    outsider.batch(
      'burst0',
      Array.from({ length: 200 }, (_, i) => ({
        op: 'add' as const,
        class: { kind: 'htb' as const, parent: '1:', classid: `1:${(from + i).toString(16)}`, options: { rate: 1_000_000 } },
      })),
    );
  // All synchronous: the watch cannot read in between, so the root's notification is among those dropped.
  burst(0x10);
  outsider.deleteQdisc('srv0', { handle: '5a:' });
  burst(0x1000);
  await until(() => reports.length >= 1 && allPipesBack(topology));
  t.ok(overflows() >= 1 && watching.stats.overflows >= 1, 'the overflow was reported');
  t.match(reports[0], { reason: /notifications lost/, scope: 'tree', pipes: 3 }, 'the full check that follows finds the root gone and puts it back');
  t.same(errors, []);
});

t.test("shaperrd: repairs on notification, leaves another tool's root alone with one error, stops cleanly while listening", { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-events');
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, log });
  writeFileSync(log, play('10.200.1.1', 'one'));
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/, 120_000); // a node start under the lane's emulation takes long
  await until(() => kernelState(topology).classes === 1);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());

  tc.deleteQdisc('srv0', { handle: '5a:' });
  t.match(await daemon.waitFor(/"msg":"repaired"/, 10_000), /"reason":"root deleted"/, 'repaired on the notification (the safety check is 30 s away)');
  await until(() => kernelState(topology).classes === 1);

  tc.replaceQdisc('srv0', { kind: 'tbf', handle: '9:', options: { rate: '10mbit', burst: 20_000, latency: '50ms' } });
  await daemon.waitFor(/another root qdisc \(tbf 9:\)/, 10_000);
  tc.changeQdisc('srv0', { kind: 'tbf', handle: '9:', options: { rate: '20mbit', burst: 20_000, latency: '50ms' } });
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.equal(tc.rootQdisc('srv0')?.kind, 'tbf', 'the other tool keeps its root');
  t.equal(daemon.output.filter((line) => /another root qdisc/.test(line)).length, 1, 'one error, however often it changes');

  const exited = new Promise<number | null>((resolve) => daemon.child.once('exit', (code) => resolve(code)));
  daemon.child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM ends it with exit 0 while the listener is open');
  t.ok(daemon.output.some((line) => /shaperrd stopped/.test(line)));
});
