/**
 * fq_codel, the first kind added by the recipe (one file + one registry line): options round trip
 * without a kernel; against a kernel that has it (the stock-kernel lane; not this host) a leaf is
 * created, read back with its statistics and extended statistics, changed and deleted.
 */
import t from 'tap';
import { ShaperrInputError, TrafficControl } from '../lib/index.js';
import { fqCodelQdisc } from '../lib/tc/kinds/fq_codel.js';
import { parsePsched } from '../lib/tc/units.js';
import { MessageWriter, parseAttributes } from '../lib/wire/attributes.js';
import { createNetns, deleteNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';

const context = { clock: parsePsched('000003e8 00000040 000f4240 3b9aca00') };

function kernelLacksFqCodel(): string | false {
  const unavailable = netnsUnavailable();
  if (unavailable) return unavailable;
  const tc = TrafficControl.open();
  try {
    return tc.hasQdiscKind('fq_codel') ? false : 'this kernel has no fq_codel (module sch_fq_codel); the stock-kernel lane (test/kernel-lane) runs this test';
  } finally {
    tc.close();
  }
}

/** The kernel keeps CoDel times in 1024 ns units (us_to_codel_time) and reports them back in whole µs. */
const asKernelHolds = (micros: number): number => Math.trunc((Math.trunc((micros * 1000) / 1024) * 1024) / 1000);

t.test('options: resolve → write → read gives them back; times in µs; bad values named', async (t) => {
  const input = { limit: 1000, flows: 512, quantum: 1514, target: '5ms', interval: '100ms', ecn: false, ceThreshold: '2ms', memoryLimit: '4mb', dropBatch: 32 };
  const written = fqCodelQdisc.resolve(input, context);
  t.same(written, {
    limit: 1000,
    flows: 512,
    quantum: 1514,
    target: 5000,
    interval: 100000,
    ecn: false,
    ceThreshold: 2000,
    memoryLimit: 4194304,
    dropBatch: 32,
  });
  const writer = new MessageWriter();
  fqCodelQdisc.write(writer, written, context);
  t.same(fqCodelQdisc.read(parseAttributes(writer.toBytes()).get(2), context), written);
  t.same(fqCodelQdisc.tcArguments({ target: 2500, ecn: true }), ['target', '2500us', 'ecn']);
  for (const [options, message] of [
    [{ limit: 0 }, /invalid FQ_CODEL limit 0/],
    [{ flows: 2 ** 32 }, /invalid FQ_CODEL flows 4294967296/],
    [{ target: '2h' }, /invalid FQ_CODEL target: invalid time "2h"/],
    [{ ceThreshold: 2 ** 32 - 1 }, /invalid FQ_CODEL ce_threshold 4294967295/],
    [{ memoryLimit: '4gb' }, /invalid FQ_CODEL memory_limit: invalid size "4gb"/],
  ] as const) {
    t.throws(() => fqCodelQdisc.resolve(options, context), { name: 'ShaperrInputError', message }, JSON.stringify(options));
  }
  t.type(new ShaperrInputError('x'), Error);
});

t.test('extended statistics: the qdisc counters, nothing for the class variant', async (t) => {
  const qdisc = new Uint8Array(40);
  new DataView(qdisc.buffer).setUint32(4, 1514, true); // maxpacket
  new DataView(qdisc.buffer).setUint32(32, 4096, true); // memory_usage
  t.match(fqCodelQdisc.readExtendedStats!(qdisc), { maxPacket: 1514, memoryUsage: 4096, dropOverlimit: 0 });
  const classStats = new Uint8Array(40);
  classStats[0] = 1;
  t.equal(fqCodelQdisc.readExtendedStats!(classStats), undefined);
});

t.test('an fq_codel leaf: create, read back with statistics, change, delete', { skip: kernelLacksFqCodel() }, async (t) => {
  const netns = await createNetns('fqc');
  t.teardown(() => deleteNetns(netns));
  await ip('-n', netns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
  await ip('-n', netns, 'link', 'set', 'd0', 'up');
  const tc = TrafficControl.open({ netns });
  t.teardown(() => tc.close());
  tc.addQdisc('d0', { kind: 'htb', handle: '1:' });
  tc.addClass('d0', { kind: 'htb', parent: '1:', classid: '1:10', options: { rate: '2mbit' } });
  const options = {
    limit: 1000,
    flows: 512,
    quantum: 1514,
    target: '4ms',
    interval: '80ms',
    ecn: false,
    ceThreshold: '2ms',
    memoryLimit: '4mb',
    dropBatch: 32,
  };
  tc.addQdisc('d0', { kind: 'fq_codel', parent: '1:10', handle: '10:', options });

  const leaf = tc.qdiscs('d0').find((q) => q.handle === 0x00100000);
  t.equal(leaf?.kind, 'fq_codel');
  t.equal(leaf?.parent, 0x00010010, 'under its class');
  const read = leaf?.kind === 'fq_codel' ? leaf.parameters : undefined;
  const { target, interval, ceThreshold, ...rest } = read ?? {};
  t.same(rest, { limit: 1000, flows: 512, quantum: 1514, ecn: false, memoryLimit: 4194304, dropBatch: 32 }, 'every option reads back as given');
  t.same([target, interval, ceThreshold], [4000, 80000, 2000].map(asKernelHolds), 'times as the kernel holds them: 4 ms reads back as 3999 µs');
  t.match(leaf?.statistics, { bytes: 0, packets: 0, drops: 0, backlog: 0, qlen: 0 }, 'statistics present (idle)');
  t.match(leaf?.extendedStatistics, { maxPacket: Number, dropOverlimit: 0, newFlowCount: 0, memoryUsage: 0 }, 'extended statistics decoded');

  tc.changeQdisc('d0', { kind: 'fq_codel', parent: '1:10', handle: '10:', options: { limit: 500, target: '5ms', ecn: true } });
  const changed = tc.qdiscs('d0').find((q) => q.handle === 0x00100000)?.parameters;
  t.match(changed, { limit: 500, ecn: true, flows: 512 }, 'changed in place');
  t.equal(changed && 'target' in changed ? changed.target : undefined, asKernelHolds(5000), 'the new target');

  tc.deleteQdisc('d0', { parent: '1:10', handle: '10:' });
  t.notOk(
    tc.qdiscs('d0').some((q) => q.kind === 'fq_codel'),
    'deleted',
  );
});
