/**
 * matchall, the second filter kind added by the recipe (one file + one registry line): options and its
 * plain-number handles without a kernel; against a kernel that has it (the stock-kernel lane; not this
 * host) a filter is created, read back, classifies real packets into its class, and is deleted.
 */
import t from 'tap';
import { TrafficControl } from '../lib/index.js';
import { matchallFilter } from '../lib/tc/kinds/matchall.js';
import { parsePsched } from '../lib/tc/units.js';
import { MessageWriter, parseAttributes } from '../lib/wire/attributes.js';
import { until } from './helpers/daemon.js';
import { createNetns, deleteNetns, inNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';

const context = { clock: parsePsched('000003e8 00000040 000f4240 3b9aca00') };

/** A netns whose d0 (10.9.0.1, with a fixed neighbour 10.9.0.2 on its peer's side) has an HTB root 1: with class 1:10. */
async function withHtbDevice<T>(fn: (tc: TrafficControl, netns: string) => Promise<T> | T): Promise<T> {
  const netns = await createNetns('mall');
  const tc = TrafficControl.open({ netns });
  try {
    await ip('-n', netns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
    await ip('-n', netns, 'address', 'add', '10.9.0.1/24', 'dev', 'd0');
    await ip('-n', netns, 'link', 'set', 'd0', 'up');
    await ip('-n', netns, 'link', 'set', 'd1', 'up');
    // Not an address of this netns (that would go over lo), and no ARP to wait for: a packet to it leaves by d0 at once.
    await ip('-n', netns, 'neigh', 'replace', '10.9.0.2', 'lladdr', '02:00:00:00:00:02', 'dev', 'd0', 'nud', 'permanent');
    tc.addQdisc('d0', { kind: 'htb', handle: '1:' });
    tc.addClass('d0', { kind: 'htb', parent: '1:', classid: '1:10', options: { rate: '10mbit' } });
    return await fn(tc, netns);
  } finally {
    tc.close();
    await deleteNetns(netns);
  }
}

const skip =
  netnsUnavailable() ||
  (await withHtbDevice((tc) =>
    tc.hasFilterKind('matchall', 'd0', '1:')
      ? false
      : 'this kernel has no matchall filter (module cls_matchall); the stock-kernel lane (test/kernel-lane) runs this test',
  ));

t.test('options round trip; no options, no TCA_OPTIONS; handles are plain numbers', async (t) => {
  const written = matchallFilter.resolve({ classid: '1:10', skipHw: true }, context);
  t.same(written, { classid: 0x10010, skipHw: true });
  const writer = new MessageWriter();
  matchallFilter.write(writer, written, context);
  t.same(matchallFilter.read(parseAttributes(writer.toBytes()).get(2), context), written);
  const bare = new MessageWriter();
  matchallFilter.write(bare, matchallFilter.resolve({}, context), context);
  t.equal(bare.length, 0);
  t.same(matchallFilter.tcArguments({ classid: 0x10010, skipSw: true }), ['skip_sw', 'classid', '1:10']);
  t.equal(matchallFilter.parseHandle('0x1f'), 31);
  t.equal(matchallFilter.formatHandle(31), '0x1f');
  t.throws(() => matchallFilter.resolve({ skipHw: true, skipSw: true }, context), { name: 'ShaperrInputError', message: /skipHw and skipSw together/ });
  t.throws(() => matchallFilter.resolve({ classid: 'ten' }, context), { name: 'ShaperrInputError', message: /invalid handle "ten"/ });
});

t.test('a matchall filter: create, read back, classify real packets, delete', { skip }, async (t) => {
  await withHtbDevice(async (tc, netns) => {
    tc.addFilter('d0', { kind: 'matchall', parent: '1:', priority: 3, protocol: 'all', handle: 5, options: { classid: '1:10', skipHw: true } });
    // A dump lists the classifier itself (handle 0, no options) before its filters, as `tc filter show` does.
    const listed = tc.filters('d0', '1:', 'matchall');
    t.same(
      listed.map((entry) => entry.handle),
      [0, 5],
      'the classifier and its one filter',
    );
    const filter = listed.find((entry) => entry.handle === 5);
    t.match(filter, { kind: 'matchall', priority: 3, protocol: 0x0003, handle: 5, parameters: { classid: 0x10010, skipHw: true } }, 'read back as given');
    t.same(tc.filters('d0', '1:'), [], 'not listed among u32 filters');

    const classBytes = () => tc.classBytes('d0').get(0x10010) ?? 0;
    const before = classBytes();
    await inNetns(
      netns,
      process.execPath,
      '-e',
      "const s = require('node:dgram').createSocket('udp4'); s.send('x'.repeat(500), 9, '10.9.0.2', () => s.close())",
    );
    // Under emulation the transmit softirq can run after the sender has exited: wait up to 5 s for the count.
    await until(() => classBytes() >= before + 500, 5_000).catch(() => {});
    t.ok(classBytes() >= before + 500, `packets went through class 1:10 (${classBytes() - before} bytes)`);
    t.ok((tc.filters('d0', '1:', 'matchall').find((entry) => entry.handle === 5)?.parameters.hits ?? 0) >= 1, 'the filter counted its hits');

    tc.deleteFilter('d0', { kind: 'matchall', parent: '1:', priority: 3, protocol: 'all', handle: '0x5' });
    t.notOk(
      tc.filters('d0', '1:', 'matchall').some((entry) => entry.handle === 5),
      'deleted by its handle',
    );
  });
});
