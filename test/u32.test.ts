/** u32 without a kernel: handles, selector packing as tc does it, round trips, bad input. */
import t from 'tap';
import { hashBucketForAddress } from '../lib/shaper/layout.js';
import { formatU32Handle, makeU32Handle, parseU32Handle, u32Filter as u32 } from '../lib/tc/kinds/u32.js';
import { MessageWriter } from '../lib/wire/attributes.js';
import { ShaperrInputError } from '../lib/wire/errors.js';
import { parsePsched } from '../lib/tc/units.js';

const context = { clock: parsePsched('000003e8 00000040 000f4240 3b9aca00') };

function roundTrip(options: Parameters<typeof u32.resolve>[0], protocol = 0x0800) {
  const parameters = u32.resolve(options, context);
  const writer = new MessageWriter();
  u32.write(writer, parameters, context);
  const nested = writer.toBytes().subarray(4); // past the TCA_OPTIONS header
  return { parameters, read: u32.read(nested, { ...context, protocol }) };
}

t.test('handles: table:bucket:node', async (t) => {
  t.equal(parseU32Handle('800::800'), 0x80000800);
  t.equal(parseU32Handle('2:7b:1'), 0x0027b001);
  t.equal(parseU32Handle('2:'), 0x00200000);
  t.equal(parseU32Handle('0x80000800'), 0x80000800);
  t.equal(formatU32Handle(0x80000800), '800::800');
  t.equal(formatU32Handle(0x0027b001), '2:7b:1');
  t.equal(formatU32Handle(0x0027b000), '2:7b:');
  t.equal(formatU32Handle(0x00200000), '2:');
  t.equal(makeU32Handle(3, 0xff, 0xfff), 0x003fffff);
  for (const bad of ['1000::', '2:100:', '2:7b:1000', 'x:1', '2', '1:2:3:4']) t.throws(() => parseU32Handle(bad), ShaperrInputError, bad);
});

t.test('what is written reads back equal', async (t) => {
  const cases: Array<[Parameters<typeof u32.resolve>[0], number?]> = [
    [{ match: { dst: '203.0.113.7' }, classid: '1:10' }],
    [{ match: { src: '198.51.100.0/24', protocol: 17, sport: 53, dport: 5353 }, classid: 0x10011 }],
    [{ match: { dst: '2001:db8::7/128' }, classid: '1:12' }, 0x86dd],
    [{ match: { src: '2001:db8:1:20::/60', dport: 32400 }, classid: '1:12' }, 0x86dd],
    [{ divisor: 256 }],
    [{ match: { dst: '0.0.0.0/0' }, hashKey: { mask: 0xff, at: 16 }, link: '2:' }],
    [{ hashTable: '2:7b:', match: { dst: '203.0.113.123' }, classid: '1:20' }],
  ];
  for (const [options, protocol] of cases) {
    const { parameters, read } = roundTrip(options, protocol);
    t.same(read, parameters, JSON.stringify(options));
  }
});

t.test('addresses are normalised; IPv6 /0 writes no key (as tc)', async (t) => {
  t.same(u32.resolve({ match: { dst: '2001:DB8:0:0::7' } }, context).match, { family: 6, dst: '2001:db8::7/128' });
  t.same(roundTrip({ match: { dst: '::/0' }, link: '3:', hashKey: { mask: 0xff, at: 36 } }, 0x86dd).read.match, undefined);
  t.equal(hashBucketForAddress('203.0.113.123'), 123);
  t.equal(hashBucketForAddress('2001:db8::1:ff'), 255);
});

t.test('tc arguments', async (t) => {
  t.same(u32.tcArguments({ match: { dst: '203.0.113.7/32' }, classid: '1:10' }), ['match', 'ip', 'dst', '203.0.113.7/32', 'classid', '1:10']);
  t.same(u32.tcArguments({ match: { src: '2001:db8::1', dport: 443 } }), ['match', 'ip6', 'src', '2001:db8::1', 'match', 'ip6', 'dport', '443', '0xffff']);
  t.same(u32.tcArguments({ hashTable: 0x0027b000, link: '3:', hashKey: { mask: 0xff, at: 36 } }), [
    'ht',
    '2:7b:',
    'hashkey',
    'mask',
    '0x000000ff',
    'at',
    '36',
    'link',
    '3:',
  ]);
});

t.test('bad input: one clear error naming the value', async (t) => {
  const bad: Array<[Parameters<typeof u32.resolve>[0], RegExp]> = [
    [{ match: { dst: '203.0.113.300' } }, /invalid client address "203.0.113.300"/],
    [{ match: { dst: '203.0.113.0/33' } }, /invalid u32 dst "203.0.113.0\/33"/],
    [{ match: { dst: '203.0.113.1', src: '2001:db8::1' } }, /mixes IPv4 and IPv6/],
    [{ match: { dport: 70000 } }, /invalid u32 dport 70000/],
    [{ match: { protocol: -1 } }, /invalid u32 protocol -1/],
    [{ divisor: 300 }, /invalid u32 divisor 300/],
    [{ divisor: 3 }, /power of two/],
    [{ link: '2:1:1' }, /a link names a table/],
    [{ hashKey: { mask: 0xff, at: 17 } }, /multiple of 4/],
    [{ classid: 'one' }, /invalid handle "one"/],
  ];
  for (const [options, message] of bad) t.throws(() => u32.resolve(options, context), { name: 'ShaperrInputError', message }, JSON.stringify(options));
});
