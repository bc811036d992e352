/** Every kind's options: resolve → write → read gives the same parameters, without a kernel (sfq has none here). */
import t from 'tap';
import { HandlePool } from '../lib/shaper/handle-pool.js';
import type { TcKind } from '../lib/tc/kind.js';
import { bfifoQdisc as bfifo, pfifoQdisc as pfifo } from '../lib/tc/kinds/fifo.js';
import { htbClass, htbQdisc } from '../lib/tc/kinds/htb.js';
import { sfqQdisc as sfq } from '../lib/tc/kinds/sfq.js';
import { tbfQdisc as tbf } from '../lib/tc/kinds/tbf.js';
import { parsePsched } from '../lib/tc/units.js';
import { MessageWriter, parseAttributes } from '../lib/wire/attributes.js';
import { ShaperrInputError } from '../lib/wire/errors.js';

const context = { clock: parsePsched('000003e8 00000040 000f4240 3b9aca00') };

function roundTrip<I, P extends I>(kind: TcKind<I, P, unknown>, input: I): { written: P; read: P; bytes: number } {
  const written = kind.resolve(input, context);
  const writer = new MessageWriter();
  kind.write(writer, written, context);
  const bytes = writer.toBytes();
  const options = parseAttributes(bytes).get(2); // TCA_OPTIONS, nested or raw
  return { written, read: kind.read(options, context), bytes: bytes.length };
}

t.test('sfq: the v1 struct round trips; no options means no TCA_OPTIONS (kernel defaults)', async (t) => {
  const { written, read, bytes } = roundTrip(sfq, { perturb: 10, quantum: '1514', limit: 127, divisor: 1024, flows: 128, depth: 64, headdrop: true });
  t.equal(bytes, 4 + 72, 'raw struct tc_sfq_qopt_v1');
  t.same(read, written);
  t.equal(roundTrip(sfq, {}).bytes, 0);
  t.same(sfq.tcArguments({ perturb: 10, headdrop: true }), ['perturb', '10', 'headdrop']);
  t.throws(() => sfq.resolve({ limit: 1 }, context), /invalid SFQ limit 1/);
  t.same(sfq.readExtendedStats!(new Uint8Array([0xfe, 0xff, 0xff, 0xff])), { allot: -2 });
});

t.test('pfifo/bfifo, tbf and htb round trip', async (t) => {
  t.same(roundTrip(pfifo, { limit: 100 }).read, { limit: 100 });
  t.same(roundTrip(bfifo, { limit: '64kb' }).read, { limit: 65536 });
  t.equal(roundTrip(pfifo, {}).bytes, 0);
  for (const input of [
    { rate: '1mbit', burst: '10kb', limit: 30000 },
    { rate: '1mbit', burst: '10kb', limit: 30000, peakrate: '2mbit', mtu: 1600 },
  ]) {
    const { written, read } = roundTrip(tbf, input);
    t.same(read, written, JSON.stringify(input));
  }
  t.same(roundTrip(htbQdisc, { defaultClass: 0x20, r2q: 5, directQlen: 10 }).read, { defaultClass: 0x20, r2q: 5, directQlen: 10, directPackets: 0 });
  for (const input of [
    { rate: '2mbit', ceil: '2500kbit' },
    { rate: '5gbit', ceil: '40gbit', burst: '1mb', cburst: '4mb' },
    { rate: '1mbit', prio: 3, mpu: 64, overhead: 24, linklayer: 'atm' as const, quantum: 1514 },
  ]) {
    const { written, read } = roundTrip(htbClass, input);
    // Bursts travel as scheduler ticks computed from whole microseconds, and come back truncated to whole
    // microseconds again (tc's units): they read back within two microseconds' worth of bytes.
    t.ok(Math.abs(read.burst - written.burst) <= (2 * written.rate) / 8 / 1e6 + 1, `burst ${read.burst} ≈ ${written.burst}`);
    t.ok(Math.abs(read.cburst - written.cburst) <= (2 * written.ceil) / 8 / 1e6 + 1, `cburst ${read.cburst} ≈ ${written.cburst}`);
    const exact = (p: typeof read) => ({ ...p, level: undefined, burst: undefined, cburst: undefined });
    t.same(exact(read), exact(written), JSON.stringify(input));
  }
});

t.test('kind options refuse bad input with one clear error', async (t) => {
  const cases: Array<[() => unknown, RegExp]> = [
    [() => htbClass.resolve({ rate: '2mbit', ceil: '1mbit' }, context), /ceil 1mbit is below rate 2mbit/],
    [() => htbClass.resolve({ rate: '2mbit', prio: 9 }, context), /invalid HTB prio 9/],
    [() => htbClass.resolve({ rate: '2mbit', burstCell: 3 }, context), /invalid cell size 3/],
    [() => htbClass.resolve({ rate: '2mbit', linklayer: 'token-ring' as 'atm' }, context), /invalid linklayer "token-ring"/],
    [() => htbQdisc.resolve({ defaultClass: 0x10000 }, context), /invalid HTB default class/],
    [() => tbf.resolve({ rate: '1mbit', burst: '10kb' }, context), /exactly one of limit or latency/],
    [() => tbf.resolve({ rate: '1mbit', burst: '10kb', limit: 1, peakrate: '2mbit' }, context), /peakrate needs mtu/],
    [() => pfifo.resolve({ limit: 'lots' }, context), /invalid size "lots"/],
  ];
  for (const [attempt, message] of cases) t.throws(attempt, { name: 'ShaperrInputError', message });
  t.type(new ShaperrInputError('x'), Error);
});

t.test('handle pool: lowest free first, freed handles reused, reserved skipped, exhaustion reported', async (t) => {
  const pool = new HandlePool(0x10, 0x14, new Set([0x12]));
  t.same([pool.allocate(), pool.allocate(), pool.allocate()], [0x10, 0x11, 0x13]);
  pool.release(0x11);
  pool.release(0x10);
  t.equal(pool.allocate(), 0x10, 'lowest freed first');
  pool.claim(0x14);
  t.equal(pool.allocate(), 0x11);
  t.throws(() => pool.allocate(), /no free handle left/);
  t.throws(() => pool.claim(0x14), /cannot be claimed/);
  t.equal(pool.size, 4);
});
