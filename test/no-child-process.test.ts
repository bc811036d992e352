/**
 * The library never runs a process: with no `tc` on PATH, a full open → throttle → read → release →
 * teardown cycle works, and strace sees exactly one execve (node itself) and no fork/clone of a process.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

/** Absolute, because the traced process runs with an empty PATH. */
const STRACE = ['/usr/bin/strace', '/bin/strace'].find((path) => !spawnSync(path, ['-V'], { stdio: 'ignore' }).error);
const straceMissing = STRACE ? false : 'strace is not installed';
const skip = netnsUnavailable() || straceMissing;

t.test('a full shaping cycle spawns nothing and needs no tc on PATH', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1 });
  t.teardown(() => topology.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-nochild-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const script = join(dir, 'cycle.mjs');
  const library = new URL('../dist/lib/index.js', import.meta.url).href;
  writeFileSync(
    script,
    `import { Shaper } from ${JSON.stringify(library)};
const shaper = await Shaper.open({ device: 'srv0', netns: ${JSON.stringify(topology.serverNs)}, server: { rate: '10mbit' }, client: { rate: '2mbit' }, onWarning() {} });
await shaper.throttle('10.200.1.1');
await shaper.throttle('fd00:5a::1:1');
const clients = shaper.clients();
await shaper.release('10.200.1.1');
await shaper.close({ teardown: true });
console.log(JSON.stringify({ clients: clients.length }));
`,
  );
  const trace = join(dir, 'trace');
  const result = spawnSync(STRACE!, ['-f', '-qq', '-e', 'trace=execve,fork,vfork', '-o', trace, process.execPath, script], {
    encoding: 'utf8',
    env: { PATH: '/nonexistent' },
  });
  t.equal(result.status, 0, `cycle ran: ${result.stderr}`);
  t.same(JSON.parse(result.stdout.trim()), { clients: 2 });
  const calls = readFileSync(trace, 'utf8')
    .split('\n')
    .filter((line) => /execve\(|fork\(/.test(line));
  t.equal(calls.length, 1, `only node's own execve: ${calls.join(' | ')}`);
  t.match(calls[0], /execve\(".*node"/);
  // Threads are clone() without a new process: check none of the clones created a process (SIGCHLD).
  const clones = spawnSync(STRACE!, ['-f', '-qq', '-e', 'trace=clone,clone3', '-o', `${trace}.clone`, process.execPath, script], {
    env: { PATH: '/nonexistent' },
  });
  t.equal(clones.status, 0);
  const processClones = readFileSync(`${trace}.clone`, 'utf8')
    .split('\n')
    .filter((line) => /clone3?\(/.test(line) && !/CLONE_THREAD/.test(line));
  t.same(processClones, [], 'every clone is a thread, never a process');
});
