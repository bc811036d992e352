/**
 * Batches of several datagrams send from a second thread (native-bindings/background-sender.ts) while
 * this one writes the next datagram and reads ACKs. Real kernel, throwaway netns: the same batch gives
 * the same outcome per request in the foreground and through the thread, and a batch that throws
 * halfway leaves the connection answering the right requests.
 */
import { constants } from 'node:os';
import t from 'tap';
import { type Operation, operationRequest } from '../lib/tc/objects.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { NetlinkConnection, type NetlinkRequest } from '../lib/wire/connection.js';
import { startBackgroundSender } from '../native-bindings/background-sender.js';
import { createNetns, deleteNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';
import { until } from './helpers/daemon.js';

const skip = netnsUnavailable();

async function withDevice(fn: (netns: string) => Promise<void>) {
  const netns = await createNetns('bgsend');
  try {
    await ip('-n', netns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
    await ip('-n', netns, 'link', 'set', 'd0', 'up');
    await fn(netns);
  } finally {
    await deleteNetns(netns);
  }
}

const addClass = (minor: number): Operation => ({ op: 'add', class: { kind: 'htb', parent: '1:', classid: (1 << 16) | minor, options: { rate: '1mbit' } } });
const deleteClass = (minor: number, ifPresent = false): Operation => ({ op: 'delete', class: { classid: (1 << 16) | minor }, ifPresent });

/** 600 classes (about 40 datagrams) with refusals among them: a duplicate, a missing class, a missing one allowed. */
function mixedBatch(): Operation[] {
  const operations = Array.from({ length: 600 }, (_, i) => addClass(0x10 + i));
  operations.splice(300, 0, addClass(0x10));
  operations.splice(450, 0, deleteClass(0x900));
  operations.splice(500, 0, deleteClass(0x901, true));
  return operations;
}

t.test('the same batch in the foreground and through the thread: the same outcome for every request, in order', { skip }, async (t) => {
  await withDevice(async (netns) => {
    const tc = TrafficControl.open({ netns });
    t.teardown(() => tc.close());
    tc.addQdisc('d0', { kind: 'htb', handle: '1:' });
    const summary = (results: ReturnType<TrafficControl['batch']>) => results.map((result) => (result.ok ? 'ok' : result.error?.code));

    const foreground = summary(tc.batch('d0', mixedBatch()));
    t.same(tc.background.batches, 0, 'the first batch of several datagrams runs in the foreground while the thread starts');
    t.equal(tc.classes('d0').length, 600);
    t.same(
      foreground.flatMap((outcome, index) => (outcome === 'ok' ? [] : [[index, outcome]])),
      [
        [300, 'EEXIST'],
        [450, 'ENOENT'],
      ],
    );

    tc.batch(
      'd0',
      Array.from({ length: 600 }, (_, i) => deleteClass(0x10 + i)),
    );
    await until(() => tc.background.ready, 10_000);
    const before = tc.background.batches;
    const background = summary(tc.batch('d0', mixedBatch()));
    t.equal(tc.background.batches, before + 1, 'this batch went through the thread');
    t.same(background, foreground, 'every request has the outcome it had in the foreground');
    t.same(
      tc
        .classes('d0')
        .map((c) => c.handle)
        .sort((a, b) => a - b),
      Array.from({ length: 600 }, (_, i) => (1 << 16) | (0x10 + i)),
      'the kernel holds exactly the 600 classes',
    );
    t.same(
      tc.batch('d0', [addClass(0x10)]).map((r) => r.error?.code),
      ['EEXIST'],
      'a single request afterwards gets its own answer',
    );
  });
});

t.test(
  'a request that cannot be written halfway through a threaded batch: it throws, what was sent is applied, the connection goes on',
  { skip },
  async (t) => {
    await withDevice(async (netns) => {
      const tc = TrafficControl.open({ netns });
      t.teardown(() => tc.close());
      tc.addQdisc('d0', { kind: 'htb', handle: '1:' });
      const connection = NetlinkConnection.open({ netns });
      t.teardown(() => connection.close());
      const device = { ifindex: tc.link('d0').ifindex, name: 'dev d0' };
      const requests = (from: number, count: number): NetlinkRequest[] =>
        Array.from({ length: count }, (_, i) => operationRequest(device, addClass(from + i), tc.kindContext));

      connection.batch(requests(0x1000, 100)); // starts the thread
      await until(() => connection.background.ready, 10_000);
      const broken: NetlinkRequest = {
        ...requests(0x2000, 1)[0]!,
        flags: 0,
        writeBody() {
          throw new RangeError('cannot be written');
        },
      };
      const batch = [...requests(0x10, 500), broken, ...requests(0x10 + 500, 100)];
      t.throws(() => connection.batch(batch), /cannot be written/);
      t.equal(connection.background.batches, 1);
      const applied = tc.classes('d0').filter((c) => c.handle >>> 0 < ((1 << 16) | 0x1000)).length;
      t.ok(applied > 0 && applied <= 500, `the datagrams sent before it were applied, nothing after it (${applied})`);
      // The ACKs of the datagram in flight when it threw are still on the socket: they must not answer these.
      const [duplicate, fresh] = connection.batch([requests(0x10, 1)[0]!, requests(0x3000, 1)[0]!]);
      t.equal(duplicate?.error?.code, 'EEXIST');
      t.same(fresh, {});
    });
  },
);

t.test(
  'the sender on its own: a send the kernel refuses reports its errno; a stopped thread reports ETIMEDOUT; an oversized datagram is refused',
  async (t) => {
    const sender = startBackgroundSender(-1, 64, 2000); // fd -1: every send fails with EBADF
    t.teardown(() => sender.close());
    await until(() => sender.ready, 10_000);
    sender.queue(new Uint8Array(16));
    sender.queue(new Uint8Array(32));
    t.equal(sender.waitSent(2), 2);
    t.same([sender.errno(0), sender.errno(1)], [constants.errno.EBADF, constants.errno.EBADF]);
    t.throws(() => sender.queue(new Uint8Array(65)), /65 bytes does not fit a 64-byte slot/);
    sender.endRound();

    sender.close();
    t.notOk(sender.ready, 'a stopped sender is not used');
    sender.queue(new Uint8Array(16));
    t.equal(sender.waitSent(1), 0, 'nothing more is sent');
    t.equal(sender.errno(0), constants.errno.ETIMEDOUT);
  },
);
