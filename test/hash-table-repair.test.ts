/**
 * The u32 layout deleted by hand (`tc filter del`): the link filter that hashes into a client table, the
 * table itself (its client filters go with it), a whole priority, or every filter. The full check — on the kernel's
 * notification, and the safety check on its own — finds what is missing, adds the table and link filter
 * back, then the client filters; real TCP through the veth is shaped again. Throwaway namespace.
 */
import t, { type Test } from 'tap';
import { missingHashTableSpecs } from '../lib/shaper/layout.js';
import { Shaper } from '../lib/shaper/shaper.js';
import { type RepairReport, ShaperWatch } from '../lib/shaper/watch.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { until } from './helpers/daemon.js';
import { createTopology, inNetns, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { measureGoodput, shapedTo } from './helpers/traffic.js';

const skip = netnsUnavailable();
const ROOT = 0x005a0000;
const RATE = 2e6;

async function shapedPair(t: Test) {
  const topology = await createTopology({ clients: 2, ipv6: true });
  t.teardown(() => topology.destroy());
  const shaper = await Shaper.open({ device: 'srv0', netns: topology.serverNs, server: { rate: '100mbit' }, client: { rate: '2mbit' }, leaf: 'bfifo' });
  t.teardown(() => shaper.close());
  for (const address of [...topology.clientAddresses, ...topology.clientAddresses6]) await shaper.throttle(address);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  return { topology, shaper, tc };
}

/** Layout complete and every client filter in it. */
function steeredAgain(tc: TrafficControl, topology: Topology): boolean {
  const filters = tc.filters('srv0', '5a:');
  const destinations = filters.flatMap((filter) => (filter.parameters.classid !== undefined && filter.parameters.match?.dst) || []).sort();
  const wanted = [...topology.clientAddresses.map((a) => `${a}/32`), ...topology.clientAddresses6.map((a) => `${a}/128`)].sort();
  return missingHashTableSpecs(ROOT, filters).length === 0 && destinations.join() === wanted.join();
}

/** A watch on the shaper's device, collecting its repair reports and errors. */
function watchShaper(t: Test, shaper: Shaper, topology: Topology) {
  const reports: RepairReport[] = [];
  const errors: Error[] = [];
  const watch = ShaperWatch.open(shaper, {
    device: 'srv0',
    netns: topology.serverNs,
    onRepaired: (report) => reports.push(report),
    onError: (error) => errors.push(error),
  });
  t.teardown(() => watch.close());
  return { watch, reports, errors };
}

const tcFilterDel = (topology: Topology, ...args: string[]) => inNetns(topology.serverNs, 'tc', 'filter', 'del', 'dev', 'srv0', 'parent', '5a:', ...args);

const linkFilterHandle = (tc: TrafficControl, priority: number): string => {
  const link = tc.filters('srv0', '5a:').find((filter) => filter.priority === priority && filter.parameters.link !== undefined)!;
  return `${(link.handle >>> 20).toString(16)}::${(link.handle & 0xfff).toString(16)}`;
};

t.test('deleted link filter, priority or all filters: put back on the notification, traffic shaped again', { skip }, async (t) => {
  const { topology, shaper, tc } = await shapedPair(t);
  const { reports, errors } = watchShaper(t, shaper, topology);
  const repaired = async (remove: () => Promise<unknown>) => {
    const before = reports.length;
    await remove();
    await until(() => reports.length > before && steeredAgain(tc, topology));
    return reports.at(-1);
  };

  t.match(
    await repaired(() => tcFilterDel(topology, 'prio', '1', 'handle', linkFilterHandle(tc, 1), 'u32')),
    { reason: 'filters deleted', hashTables: 1, pipes: 0 },
    'the IPv4 link filter alone is added back (its table and client filters were still there)',
  );
  // The kernel keeps a u32 table while another priority is left on the qdisc, unseen until its priority is back.
  t.match(
    await repaired(() => tcFilterDel(topology, 'prio', '1')),
    { hashTables: 2, pipes: 2 },
    'the IPv4 priority deleted whole: table, link filter and client filters back',
  );
  t.match(
    await repaired(() => tcFilterDel(topology)),
    { hashTables: 4, pipes: 4 },
    'every filter deleted: both tables, both link filters and all four client filters back',
  );
  t.same(errors, []);

  const goodput = await measureGoodput(topology, { to: topology.clientAddresses[0]! });
  const { within, reading } = shapedTo(goodput.bitsPerSecond, RATE);
  t.ok(within, `traffic to a repaired client is shaped again: ${reading}`);
});

t.test('the safety check alone (no notification heard) rebuilds a deleted hash table', { skip }, async (t) => {
  const { topology, shaper, tc } = await shapedPair(t);
  await tcFilterDel(topology, 'prio', '1', 'handle', linkFilterHandle(tc, 1), 'u32');
  // The table can go once the kernel has let go of the link filter's reference (a moment later).
  await until(() => tc.batch('srv0', [{ op: 'delete', filter: { kind: 'u32', parent: '5a:', priority: 1, protocol: 'ip', handle: 0x00200000 } }])[0]!.ok);
  t.notOk(
    tc.filters('srv0', '5a:').some((filter) => filter.priority === 1 && filter.handle >>> 20 === 2),
    'hash table 2: and the IPv4 client filters in it are gone',
  );
  // Opened after the deletion: the watch never hears of it; only its check can find it.
  const { watch, reports, errors } = watchShaper(t, shaper, topology);
  await watch.check('safety check');
  t.same(errors, []);
  t.ok(steeredAgain(tc, topology), 'table, link filter and client filters are back');
  t.match(reports, [{ reason: 'safety check', scope: 'pipes', hashTables: 2, pipes: 2 }]);

  const goodput = await measureGoodput(topology, { to: topology.clientAddresses[1]! });
  const { within, reading } = shapedTo(goodput.bitsPerSecond, RATE);
  t.ok(within, `shaped again: ${reading}`);
});
