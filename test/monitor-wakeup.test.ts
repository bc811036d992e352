/**
 * TcMonitor waits for the kernel instead of polling: an idle monitor never reads its socket (the daemon's
 * idle cost), a notification wakes it at once, it keeps listening after the kernel reported an overflow
 * (the socket error stops libuv's watch, which must be started again), and an open monitor never keeps
 * a process alive. Kernel state changes happen in a throwaway namespace.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { TcMonitor, type TcNotification } from '../lib/tc/monitor.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { until } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const skip = netnsUnavailable();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

t.test('an idle monitor never reads; a change wakes it', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const seen: TcNotification[] = [];
  const monitor = TcMonitor.open({ netns: topology.serverNs, onNotifications: (batch) => seen.push(...batch) });
  t.teardown(() => monitor.close());

  await sleep(1000);
  t.equal(monitor.stats.reads, 0, 'one second with nothing happening: the socket was never read (a 5 ms poll read it ~200 times)');

  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  tc.addQdisc('srv0', { kind: 'htb', handle: '7:', options: { defaultClass: 0 } });
  await until(() => seen.some((each) => each.object === 'qdisc' && each.action === 'new' && each.qdisc.handle === 0x00070000));
  t.ok(monitor.stats.reads >= 1, `woken by the kernel: ${monitor.stats.reads} read(s)`);
});

t.test('after an overflow the monitor goes on listening', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const seen: TcNotification[] = [];
  let overflows = 0;
  const monitor = TcMonitor.open({
    netns: topology.serverNs,
    receiveBufferBytes: 1,
    onNotifications: (batch) => seen.push(...batch),
    onOverflow: () => overflows++,
  });
  t.teardown(() => monitor.close());
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  tc.addQdisc('srv0', { kind: 'htb', handle: '1:', options: { defaultClass: 0 } });
  // Synchronous: the monitor cannot read in between, and its few KiB of buffer overflow.
  tc.batch(
    'srv0',
    Array.from({ length: 300 }, (_, i) => ({
      op: 'add' as const,
      class: { kind: 'htb' as const, parent: '1:', classid: `1:${(0x10 + i).toString(16)}`, options: { rate: 1_000_000 } },
    })),
  );
  await until(() => overflows >= 1);
  t.equal(monitor.stats.overflows, overflows, 'the overflow was reported');

  tc.addClass('srv0', { kind: 'htb', parent: '1:', classid: '1:ffff', options: { rate: 1_000_000 } });
  await until(() => seen.some((each) => each.object === 'class' && each.action === 'new' && each.handle === 0x0001ffff));
  t.pass('a notification after the overflow still arrives');
});

t.test('an open monitor does not keep the process alive', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const monitor = fileURLToPath(new URL('../dist/lib/tc/monitor.js', import.meta.url));
  const script = `const { TcMonitor } = await import(${JSON.stringify(monitor)}); TcMonitor.open({ netns: ${JSON.stringify(topology.serverNs)}, onNotifications() {} }); console.log('open');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (data: Buffer) => (output += data.toString()));
  child.stderr.on('data', (data: Buffer) => (output += data.toString()));
  // A deadline, not a timing: a held event loop never ends on its own.
  let deadline: NodeJS.Timeout | undefined;
  const ended = await Promise.race([
    new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))),
    new Promise<'still running'>((resolve) => (deadline = setTimeout(() => resolve('still running'), 30_000))),
  ]);
  clearTimeout(deadline);
  if (ended === 'still running') child.kill('SIGKILL');
  t.equal(ended, 0, `the process ended by itself once its work was done: ${output.trim()}`);
  t.match(output, /open/);
});
