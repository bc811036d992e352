/**
 * Long operations (thousands of pipes) run in chunks with progress: restoring saved clients after a
 * reboot emptied the kernel, and repairing after someone deleted the root qdisc. The daemon stays up when
 * one saved client cannot be restored.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { inChunks, type Progress } from '../lib/progress.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { kernelState, logDir, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

t.test('inChunks reports progress after every chunk and lets other work run in between', async (t) => {
  const seen: Progress[] = [];
  const order: string[] = [];
  setImmediate(() => order.push('other work'));
  await inChunks(
    [1, 2, 3, 4, 5],
    (chunk) => void order.push(`chunk ${chunk.join(',')}`),
    (progress) => seen.push(progress),
    2,
  );
  t.same(seen, [
    { done: 0, total: 5 },
    { done: 2, total: 5 },
    { done: 4, total: 5 },
    { done: 5, total: 5 },
  ]);
  t.same(order, ['chunk 1,2', 'other work', 'chunk 3,4', 'chunk 5']);
  const empty: Progress[] = [];
  await inChunks(
    [],
    () => t.fail('no work for no items'),
    (progress) => empty.push(progress),
  );
  t.same(empty, [{ done: 0, total: 0 }], 'an empty job is done at once');
});

t.test('shaperrd restores 1,000 saved pipes with progress, survives a bad saved entry, and repairs them all', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-long');
  const clients = Array.from({ length: 1000 }, (_, i) => ({
    address: `10.201.${i >> 8}.${i & 255}`,
    sessions: [`s${i}`],
    limits: { rate: 2e6, ceil: 2e6 },
  }));
  // A hand-edited state file: ceil below rate cannot be applied.
  const broken = { address: '10.202.0.1', sessions: ['bad'], limits: { rate: 4e6, ceil: 1e6 } };
  const stateFile = join(dir, 'state.json');
  writeFileSync(stateFile, JSON.stringify({ version: 1, device: 'srv0', savedAt: new Date().toISOString(), clients: [...clients, broken] }));
  const config = writeDaemonConfig(dir, {
    netns: topology.serverNs,
    server: { rate: '1gbit' },
    leaf: undefined,
    log,
    stateFile,
    graceSeconds: 600,
    idleSeconds: 3600,
  });

  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  const startedAt = Date.now();
  await daemon.waitFor(/shaperrd started/, 240_000);
  t.comment(`started in ${Date.now() - startedAt} ms`);
  t.ok(
    daemon.output.some((line) => /"msg":"restoring pipes: 0\/1000"/.test(line)),
    'progress starts with the total',
  );
  t.match(
    await daemon.waitFor(/"msg":"restoring pipes: done"/),
    /"pipes":1000/,
    'and ends with a summary (the 1,000 good pipes; the bad entry is refused first)',
  );
  t.match(await daemon.waitFor(/kernel change for 10\.202\.0\.1 failed/), /ceil is below rate/, 'the bad entry gets one clear error naming it');
  t.equal(kernelState(topology).classes, 1000, 'every good saved client has its pipe back');

  // Someone runs `tc qdisc del dev srv0 root`: the health check puts all 1,000 back.
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  tc.deleteQdisc('srv0', { handle: '5a:' });
  t.match(await daemon.waitFor(/"msg":"repairing pipes: done"/), /"pipes":1000/);
  await until(() => kernelState(topology).classes === 1000);
  t.same(kernelState(topology).destinations, clients.map((client) => `${client.address}/32`).sort(), 'every pipe is back, each once');
  t.ok(daemon.child.exitCode === null, 'the daemon is still running');
});
