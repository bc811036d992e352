import t from 'tap';
import { attr, attrString, attributeSet, attrU32, attrU64, MessageWriter, parseAttributes } from '../lib/wire/attributes.js';
import { explainTcRefusal } from '../lib/tc/errors.js';
import { NetlinkError } from '../lib/wire/errors.js';
import { beginMessage, decodeAck, Flags, MessageType, splitMessages } from '../lib/wire/message.js';
import { be32, bytes, nested, s16, struct, u16, u32, u64, u8 } from '../lib/wire/struct.js';

t.test('structs encode and decode from one table', async (t) => {
  const inner = struct({ a: u8, b: u8, c: s16 });
  const outer = struct({ head: nested(inner), n: u32, big: u64, net: be32, raw: bytes(3), tail: u16 });
  t.equal(outer.size, 4 + 4 + 8 + 4 + 3 + 2);
  const value = { head: { a: 1, b: 255, c: -2 }, n: 0xdeadbeef, big: 2n ** 40n + 5n, net: 0x0a000001, raw: new Uint8Array([7, 8, 9]), tail: 513 };
  const encoded = outer.encode(value);
  t.equal(Buffer.from(encoded).toString('hex'), '01fffeff' + 'efbeadde' + '0500000000010000' + '0a000001' + '070809' + '0102');
  t.same(outer.decode(encoded), value);
  t.same(outer.decode(encoded.subarray(0, 4)).n, 0, 'a short payload (older kernel) reads missing fields as zero');
  t.same(outer.encode({ n: 1 }).subarray(0, 8), new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0]), 'omitted fields are zero');
});

t.test('attribute sets write in table order, pad to 4 bytes, nest, and read back', async (t) => {
  const child = attributeSet({ x: attr(1, attrU32) });
  const set = attributeSet({ name: attr(3, attrString), count: attr(1, attrU32), big: attr(2, attrU64), child: attr(9, child) });
  const writer = new MessageWriter(8);
  set.write(writer, { big: 7n, name: 'htb', child: { x: 5 } });
  const out = writer.toBytes();
  t.equal(Buffer.from(out).toString('hex'), '0800030068746200' + '0c0002000700000000000000' + '0c000900' + '0800010005000000');
  t.same(set.read(out), { name: 'htb', big: 7n, child: { x: 5 } });
  const truncated = parseAttributes(out.subarray(0, 10));
  t.equal(truncated.size, 1, 'a malformed tail is ignored, not thrown on');
});

function errorMessage(errno: number, flags: number, tlvs: Uint8Array): Uint8Array {
  const writer = new MessageWriter();
  const end = beginMessage(writer, MessageType.ERROR, flags, 42);
  const at = writer.reserve(4 + 16);
  writer.dataView.setInt32(at, -errno, true);
  writer.dataView.setUint32(at + 4, 36, true); // echoed header: its length
  writer.bytesAt(writer.reserve(tlvs.length), tlvs.length).set(tlvs);
  end();
  return writer.toBytes();
}

t.test('extended ACKs: kernel text on errors and warnings on success', async (t) => {
  const text = new MessageWriter();
  text.attribute(1, attrString.encode('Specified qdisc kind is unknown'));
  const [message] = splitMessages(errorMessage(2, Flags.CAPPED | Flags.ACK_TLVS, text.toBytes()));
  t.equal(message!.seq, 42);
  const ack = decodeAck(message!);
  t.equal(ack.errno, 2);
  t.equal(ack.kernelMessage, 'Specified qdisc kind is unknown');
  const error = new NetlinkError(
    ack.errno,
    { operation: 'add qdisc', object: 'qdisc 10: (sfq) on dev eth0', explain: explainTcRefusal('qdisc', 'sfq') },
    ack.kernelMessage,
  );
  t.equal(error.code, 'ENOENT');
  t.ok(error.unknownKind);
  t.match(
    error.message,
    /add qdisc qdisc 10: \(sfq\) on dev eth0 failed with ENOENT: kernel says "Specified qdisc kind is unknown" — the kernel has no 'sfq' qdisc \(module sch_sfq not available\)/,
  );
  const warning = new MessageWriter();
  warning.attribute(1, attrString.encode('quantum of class 10010 is big. Consider r2q change.'));
  const [ok] = splitMessages(errorMessage(0, Flags.CAPPED | Flags.ACK_TLVS, warning.toBytes()));
  t.same(decodeAck(ok!), { errno: 0, kernelMessage: 'quantum of class 10010 is big. Consider r2q change.' });
});

t.test('errno names and hints', async (t) => {
  const context = { operation: 'add class', object: 'class 1:10 (htb) on dev eth0' };
  t.match(new NetlinkError(1, context).message, /EPERM — needs root or CAP_NET_ADMIN/);
  t.match(new NetlinkError(17, context).message, /EEXIST — it already exists/);
  t.equal(new NetlinkError(22, context).code, 'EINVAL');
  t.notOk(new NetlinkError(2, context, 'Qdisc not found').unknownKind, 'plain ENOENT is not a missing kind');
});

t.test('splitMessages stops at a malformed length instead of reading past the datagram', async (t) => {
  const good = errorMessage(0, 0, new Uint8Array());
  const datagram = new Uint8Array(good.length + 20);
  datagram.set(good);
  new DataView(datagram.buffer).setUint32(good.length, 9999, true);
  t.equal(splitMessages(datagram).length, 1);
});
