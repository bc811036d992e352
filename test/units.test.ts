import t from 'tap';
import { formatHandle, parseHandle, TC_H_ROOT } from '../lib/tc/handle.js';
import { describeRate, formatRate, parsePsched, parseRate, parseSize, parseTime, transmitSize, transmitTicks } from '../lib/tc/units.js';
import { ShaperrInputError } from '../lib/wire/errors.js';

t.test('rates parse like tc: bits per second out (whole bytes), bits or bytes in', async (t) => {
  const cases: Array<[string | number, number]> = [
    ['2000kbit', 2000000],
    ['2.5mbit', 2500000],
    ['1gbit', 1000000000],
    ['500kbps', 4000000], // "bps" is bytes, as in tc
    ['1Mibit', 1048576],
    ['8', 8], // bare number: bit/s
    ['100mbit', 100000000],
    ['40gbit', 40000000000], // above 2^32 bytes/s
    [2_000_000, 2000000], // numbers are bit/s
    ['1e6bit', 1000000],
    ['  3000KBIT ', 3000000],
    [1001, 1000], // the kernel holds whole bytes per second
    ['15bit', 8],
  ];
  for (const [input, expected] of cases) t.equal(parseRate(input), expected, `${input}`);
});

t.test('bad rates get one clear error naming the value', async (t) => {
  for (const bad of ['', 'fast', '2 mbit', '0x10', 'inf', 'NaN', '-5mbit', '2mbits', '1bit', -1, Number.NaN]) {
    t.throws(() => parseRate(bad as string), ShaperrInputError, `${String(bad)} is refused`);
  }
  t.throws(() => parseRate('12furlongs'), { message: /"12furlongs".*unknown unit 'furlongs'/ });
});

t.test('sizes and times', async (t) => {
  t.equal(parseSize('1500'), 1500);
  t.equal(parseSize('10kb'), 10240);
  t.equal(parseSize('1mb'), 1048576);
  t.equal(parseSize('64k'), 65536);
  t.equal(parseSize('1kbit'), 128);
  t.throws(() => parseSize('5gb'), /between 0 and/);
  t.throws(() => parseSize('ten'), ShaperrInputError);
  t.equal(parseTime('50ms'), 50000);
  t.equal(parseTime('1s'), 1e6);
  t.equal(parseTime('200us'), 200);
  t.equal(parseTime(7), 7);
  t.throws(() => parseTime('5min'), /unknown unit 'min'/);
});

t.test('formatRate writes what parses back to the same value', async (t) => {
  for (const bits of [8, 1000, 2000000, 2500000, 100000000, 40000000000, 987656]) {
    t.equal(parseRate(formatRate(bits)), bits, formatRate(bits));
  }
  t.equal(formatRate(2000000), '2mbit');
  t.equal(formatRate(2500000), '2500kbit');
  t.equal(describeRate(2500000), '2.5 Mbit/s');
});

t.test('handles', async (t) => {
  t.equal(parseHandle('1:10'), 0x0001000a + 6);
  t.equal(parseHandle('1:a'), 0x0001000a);
  t.equal(parseHandle('1:'), 0x00010000);
  t.equal(parseHandle(':1'), 1);
  t.equal(parseHandle('ffff:fff1'), 0xfffffff1);
  t.equal(parseHandle('root'), TC_H_ROOT);
  t.equal(parseHandle(0x5a0010), 0x5a0010);
  t.equal(formatHandle(0x0001000a), '1:a');
  t.equal(formatHandle(0x00010000), '1:');
  t.equal(formatHandle(TC_H_ROOT), 'root');
  for (const bad of ['1', '1:2:3', '10000:', 'g:1', ':', '', 'x', -1, 2 ** 32, 1.5]) {
    t.throws(() => parseHandle(bad as string), ShaperrInputError, `${String(bad)} is refused`);
  }
});

t.test('scheduler clock and tc 6.1 transmit-time rounding', async (t) => {
  // This machine's /proc/net/psched: 64 ns ticks, high-resolution timers.
  const clock = parsePsched('000003e8 00000040 000f4240 3b9aca00');
  t.equal(clock.ticksPerMicrosecond, 15.625);
  t.equal(clock.hz, 1e9);
  // 1600 bytes at 3000kbit: 4266 µs (truncated first, as iproute2 6.1 does) → 66656 ticks (6.15 gives 66667).
  t.equal(transmitTicks(375000, 1600, clock), 66656);
  t.equal(transmitSize(250000, transmitTicks(250000, 1600, clock), clock), 1600);
  t.throws(() => parsePsched('garbage'), /psched/);
});
