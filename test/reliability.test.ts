/**
 * Nothing lost across crashes and restarts, and nothing trampled: the real shaperrd process, kill -9,
 * a cold start on a log with playing clients, a second shaperrd on the same device, `shaperr clear`
 * against a running daemon, and the files shaperrd reads and writes.
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { type DaemonConfigKeys, type Daemon, kernelState, logDir, play, plexLine, plexLineAt, startDaemon, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';

const skip = netnsUnavailable();
const SHAPERR = fileURLToPath(new URL('../dist/daemon/operator/shaperr-cli.js', import.meta.url));

/** The config file `name`.yaml for the topology's srv0 (0600), with its own state file; `keys` over these. */
const writeConfig = (dir: string, topology: Topology, log: string, name: string, keys: DaemonConfigKeys = {}): string =>
  writeDaemonConfig(
    dir,
    { netns: topology.serverNs, log, stateFile: join(dir, `${name}-state.json`), graceSeconds: 1, idleSeconds: 120, ...keys },
    { name, mode: 0o600 },
  );

/** The exit code, or 'running' when it has not exited within the deadline. */
const exited = (daemon: Daemon, deadlineMs = 20_000) =>
  new Promise<number | null | 'running'>((resolve) => {
    if (daemon.child.exitCode !== null) return resolve(daemon.child.exitCode);
    const timer = setTimeout(() => resolve('running'), deadlineMs);
    daemon.child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
async function kill9(daemon: Daemon): Promise<void> {
  daemon.child.kill('SIGKILL');
  await exited(daemon);
}

t.test('the starting log position is saved at once: a start written while shaperrd was down after kill -9 is caught', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-position');
  writeFileSync(log, plexLine('198.51.100.9', '/library/sections/1/all')); // a quiet log: nothing to read after the start
  const config = writeConfig(dir, topology, log, 'a');

  let daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  const saved = JSON.parse(readFileSync(join(dir, 'a-state.json'), 'utf8')) as { log?: { offset: number } };
  t.equal(
    saved.log?.offset,
    statSync(log).size,
    `state file holds the starting position (offset ${saved.log?.offset} of ${statSync(log).size}) before any line was read`,
  );
  await kill9(daemon);

  appendFileSync(log, play('198.51.100.5', 'down-1'));
  daemon = startDaemon(config);
  await daemon.waitFor(/shaperrd started/);
  await daemon.waitFor(/decision throttle 198\.51\.100\.5/);
  t.same(kernelState(topology), { classes: 1, destinations: ['198.51.100.5/32'] }, 'the client that started while shaperrd was down is throttled');
  t.notOk(
    daemon.output.some((line) => /warm start/.test(line)),
    'resumed from the saved position (no read-back needed)',
  );
});

t.test('warm start: clients playing in the recent log are throttled before the log is followed', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-warm-e2e');
  const end = new Date();
  const before = (seconds: number) => new Date(end.getTime() - seconds * 1000);
  writeFileSync(
    log.replace(/\.log$/, '.1.log'),
    plexLineAt(before(400), '198.51.100.30', '/video/:/transcode/universal/start.m3u8?session=c') +
      plexLineAt(before(30), '198.51.100.20', '/video/:/transcode/universal/start.m3u8?session=d'),
  );
  writeFileSync(
    log,
    [
      plexLineAt(before(20), '198.51.100.50', '/video/:/transcode/universal/start.m3u8?session=b'),
      plexLineAt(before(10), '198.51.100.50', '/:/timeline?state=stopped&X-Plex-Session-Identifier=b'),
      plexLineAt(before(5), '198.51.100.10', '/video/:/transcode/universal/start.m3u8?session=a'),
    ].join(''),
  );
  const daemon = startDaemon(writeConfig(dir, topology, log, 'warm'));
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  // Read at once: the pipes must be there before the daemon follows the log.
  t.same(
    kernelState(topology),
    { classes: 2, destinations: ['198.51.100.10/32', '198.51.100.20/32'] },
    'a (current log) and d (rotated .1 log) throttled at start; b stopped, c silent for 400 s',
  );
  const warm = JSON.parse(daemon.output.find((line) => /warm start/.test(line))!) as { lines: number; bytes: number; ms: number; rotatedFileRead: boolean };
  t.ok(warm.rotatedFileRead, `read back ${warm.lines} lines (${warm.bytes} bytes) in ${warm.ms} ms, into the rotated file`);

  appendFileSync(log, plexLine('198.51.100.10', '/:/timeline?state=stopped&X-Plex-Session-Identifier=a'));
  await daemon.waitFor(/decision release 198\.51\.100\.10/);
  t.pass('the log is followed from where the read-back ended: a stop for a restored session releases it');
});

t.test(
  'one shaperrd per device: a second one refuses (exit 2) and leaves the first one alone; shaperr clear refuses; --dry-run takes no lock',
  { skip },
  async (t) => {
    const topology = await createTopology({ clients: 1, ipv6: false });
    t.teardown(() => topology.destroy());
    const { dir, log } = logDir(t, 'shaperr-lock');
    let first = startDaemon(writeConfig(dir, topology, log, 'first'));
    t.teardown(() => first.child.kill('SIGKILL'));
    await first.waitFor(/shaperrd started/);
    appendFileSync(log, play('198.51.100.5', 'one'));
    await first.waitFor(/decision throttle 198\.51\.100\.5/);

    const second = startDaemon(writeConfig(dir, topology, log, 'second', { takeover: true }));
    t.teardown(() => second.child.kill('SIGKILL'));
    t.equal(await exited(second), 2, 'the second shaperrd exits 2');
    t.match(second.output.join('\n'), /another shaperrd is shaping srv0 \(netns [^)]+\).*not starting a second one/, `it says why: ${second.output.at(-1)}`);
    t.same(kernelState(topology), { classes: 1, destinations: ['198.51.100.5/32'] }, "the first one's client keeps its pipe after the second one exited");

    const clear = spawnSync(process.execPath, [SHAPERR, '--device', 'srv0', '--netns', topology.serverNs, 'clear'], { encoding: 'utf8' });
    t.equal(clear.status, 1, 'shaperr clear refuses while shaperrd runs');
    t.match(clear.stderr, /another shaperrd is shaping srv0.*stop it first/, clear.stderr.trim());
    t.same(kernelState(topology), { classes: 1, destinations: ['198.51.100.5/32'] }, 'and removed nothing');

    const dry = startDaemon(writeConfig(dir, topology, log, 'dry'), [], ['--dry-run']);
    t.teardown(() => dry.child.kill('SIGKILL'));
    await dry.waitFor(/shaperrd started/);
    t.pass('--dry-run starts while the lock is held');

    await kill9(first);
    first = startDaemon(writeConfig(dir, topology, log, 'first'));
    await first.waitFor(/shaperrd started/);
    t.pass('after kill -9 the lock is gone with its holder (and the running dry run holds none): a new shaperrd starts');
    await kill9(first);
    const cleared = spawnSync(process.execPath, [SHAPERR, '--device', 'srv0', '--netns', topology.serverNs, 'clear'], { encoding: 'utf8' });
    t.equal(cleared.status, 0, `shaperr clear works once no shaperrd runs: ${cleared.stdout.trim()}`);
  },
);

t.test('files: the state file is 0600 and written by rename; a world-readable config holding a token gets one warning', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-files');

  // A readable config holding the status token; the state file is fine.
  const open = writeConfig(dir, topology, log, 'open', { status: { listen: '127.0.0.1:0', token: 'a-long-enough-token' } });
  chmodSync(open, 0o644);
  let daemon = startDaemon(open);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  t.equal(
    daemon.output.filter((line) => /readable by every user and holds status\.token/.test(line)).length,
    1,
    'one warning for a 0644 config holding status.token',
  );
  const state = join(dir, 'open-state.json');
  t.equal(statSync(state).mode & 0o777, 0o600, 'state file is 0600');
  t.same(
    readdirSync(dir).filter((name) => name.endsWith('.tmp')),
    [],
    'no temporary file left beside it (written by rename)',
  );
  daemon.child.kill('SIGTERM');
  t.equal(await exited(daemon), 0, 'SIGTERM exits 0');
  chmodSync(open, 0o600);
  daemon = startDaemon(open);
  await daemon.waitFor(/shaperrd started/);
  t.notOk(
    daemon.output.some((line) => /readable by every user/.test(line)),
    'no warning once it is 0600',
  );
  await kill9(daemon);
});

t.test('files: a state file that cannot be written is one error line a minute, shaping goes on, and SIGTERM still exits 0', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-unwritable');
  // The state file's directory is a regular file: no save can ever work.
  writeFileSync(join(dir, 'blocker'), '');
  const config = writeConfig(dir, topology, log, 'blocked', { stateFile: join(dir, 'blocker', 'state.json') });
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  const failingSince = Date.now();
  appendFileSync(log, play('198.51.100.5', 'busy'));
  await daemon.waitFor(/decision throttle 198\.51\.100\.5/);
  for (let i = 0; i < 8; i++) {
    appendFileSync(log, plexLine('198.51.100.5', '/:/timeline?state=playing&X-Plex-Session-Identifier=busy'));
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const saveErrors = daemon.output.filter((line) => /cannot save state/.test(line));
  t.equal(
    saveErrors.length,
    1,
    `one error line in ${((Date.now() - failingSince) / 1000).toFixed(1)} s of failed saves (every second with a changed state): ${saveErrors[0]?.slice(0, 160)}`,
  );
  t.same(kernelState(topology), { classes: 1, destinations: ['198.51.100.5/32'] }, 'and the client stays throttled');

  daemon.child.kill('SIGTERM');
  t.equal(await exited(daemon), 0, 'SIGTERM exits 0 although the final save fails too');
  t.same(kernelState(topology), { classes: 0, destinations: [] }, 'and the rules are removed');
});

t.test('SIGHUP with a broken config keeps the old one, with one error naming the key', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-reload');
  const config = writeConfig(dir, topology, log, 'reload');
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  writeConfig(dir, topology, log, 'reload', { client: { rate: 'fast' } });
  daemon.child.kill('SIGHUP');
  await daemon.waitFor(/reload failed/);
  const reloadErrors = daemon.output.filter((line) => /reload failed/.test(line));
  t.equal(reloadErrors.length, 1, 'SIGHUP with a broken config: one error');
  t.match(reloadErrors[0], /client\.rate/, `naming the key: ${reloadErrors[0]?.slice(0, 200)}`);
  appendFileSync(log, play('198.51.100.6', 'after-reload'));
  const decision = JSON.parse(await daemon.waitFor(/decision throttle 198\.51\.100\.6/)) as { limits: { rate: number } };
  t.equal(decision.limits.rate, 2e6, 'the old configuration still decides (2 Mbit/s)');
});
