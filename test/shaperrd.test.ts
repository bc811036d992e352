/**
 * End to end: the real shaperrd process follows a log file the test appends to, in a throwaway netns,
 * with real traffic. Playing → throttled to its rate; stopped → full speed; exempt → never throttled;
 * kill -9 in the middle of a seek storm, restart → the kernel holds exactly what live sessions need.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { createTopology, netnsUnavailable, type Topology } from './helpers/netns.js';
import { measureGoodput, measureGoodputConcurrently } from './helpers/traffic.js';

const skip = netnsUnavailable();
const CLI = fileURLToPath(new URL('../dist/daemon/cli.js', import.meta.url));
const MBIT = 1e6;

let stamp = Date.UTC(2026, 8, 26, 20, 0, 0);
function plexLine(address: string, path: string): string {
  const at = new Date((stamp += 7));
  const month = at.toLocaleString('en-US', { month: 'short' });
  const time = at.toTimeString().slice(0, 8);
  const day = String(at.getDate()).padStart(2, '0');
  return `${month} ${day}, ${at.getFullYear()} ${time}.${String(at.getMilliseconds()).padStart(3, '0')} [140562] DEBUG - Request: [${address}:51000 (WAN)] GET ${path} (3 live) #1 TLS GZIP Signed-in Token (remi)\n`;
}
const play = (address: string, session: string) => plexLine(address, `/video/:/transcode/universal/start.m3u8?session=${session}&X-Plex-Token=tok`);
const stop = (address: string, session: string) => plexLine(address, `/:/timeline?state=stopped&X-Plex-Session-Identifier=${session}`);

interface Daemon {
  child: ChildProcess;
  output: string[];
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
}

function startDaemon(config: string): Daemon {
  const child = spawn(process.execPath, [CLI, '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  const onData = (data: Buffer) => {
    for (const line of data.toString().split('\n').filter(Boolean)) {
      output.push(line);
      for (const waiter of waiters.filter((w) => w.pattern.test(line))) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  return {
    child,
    output,
    waitFor: (pattern, timeoutMs = 10_000) =>
      new Promise((resolve, reject) => {
        const seen = output.find((line) => pattern.test(line));
        if (seen) return resolve(seen);
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; output:\n${output.slice(-10).join('\n')}`)), timeoutMs);
        waiters.push({ pattern, resolve: (line) => (clearTimeout(timer), resolve(line)) });
      }),
  };
}

function kernelState(topology: Topology) {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    const classes = tc.classes('srv0').filter((c) => c.parent === 0x005a0001);
    const filters = tc.filters('srv0', '5a:').filter((f) => f.parameters.classid !== undefined);
    return { classes: classes.length, destinations: filters.map((f) => f.parameters.match?.dst).sort() };
  } finally {
    tc.close();
  }
}

const until = async (check: () => boolean, timeoutMs = 5000) => {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

t.test('shaperrd end to end with real traffic, kill -9 and restart', { skip }, async (t) => {
  const topology = await createTopology({ clients: 3 });
  t.teardown(() => topology.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'shaperrd-e2e-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, plexLine('10.200.1.1', '/library/sections/1/all'));
  const config = join(dir, 'shaperr.yaml');
  writeFileSync(
    config,
    [
      'device: srv0',
      `netns: ${topology.serverNs}`,
      'server: { rate: 100mbit }',
      'client: { rate: 2mbit }',
      'exempt: [10.200.1.3/32]',
      `log: ${JSON.stringify(log)}`,
      `stateFile: ${JSON.stringify(join(dir, 'state.json'))}`,
      'graceSeconds: 1',
      'idleSeconds: 600',
    ].join('\n'),
  );
  const [remote, other, exempt] = topology.clientAddresses as [string, string, string];

  let daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);

  appendFileSync(log, play(remote, 's1') + play(exempt, 'lan1'));
  await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  const [playing, exemptRate] = await measureGoodputConcurrently(topology, [{ to: remote }, { to: exempt }]);
  t.ok(Math.abs(playing!.bitsPerSecond - 2 * MBIT) <= 0.2 * MBIT, `playing client: ${(playing!.bitsPerSecond / MBIT).toFixed(3)} Mbit/s (2 ±10 %)`);
  t.ok(exemptRate!.bitsPerSecond > 20 * MBIT, `exempt client never throttled: ${(exemptRate!.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);
  t.ok(daemon.output.some((line) => /decision exempt 10\.200\.1\.3/.test(line)));
  t.notOk(daemon.output.some((line) => /tok\b|X-Plex-Token/.test(line)), 'no token in our logs');

  appendFileSync(log, stop(remote, 's1'));
  await daemon.waitFor(/decision release 10\.200\.1\.1/);
  const stopped = await measureGoodput(topology, { to: remote, seconds: 2 });
  t.ok(stopped.bitsPerSecond >= 10 * MBIT, `after stop: ${(stopped.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);

  // A seek storm on two clients; kill -9 in the middle of it.
  appendFileSync(log, play(remote, 'seek-0') + play(other, 'o-0'));
  let storm = '';
  for (let i = 0; i < 300; i++) storm += stop(remote, `seek-${i}`) + play(remote, `seek-${i + 1}`);
  appendFileSync(log, storm);
  await daemon.waitFor(/decision throttle 10\.200\.1\.2/);
  daemon.child.kill('SIGKILL');
  await new Promise((resolve) => daemon.child.once('exit', resolve));
  // Written while the daemon is down: the second client stops; the first keeps playing.
  appendFileSync(log, stop(other, 'o-0'));

  daemon = startDaemon(config);
  await daemon.waitFor(/shaperrd started/);
  await until(() => {
    const state = kernelState(topology);
    return state.classes === 1 && state.destinations.length === 1;
  }, 8000);
  t.same(kernelState(topology), { classes: 1, destinations: ['10.200.1.1/32'] }, 'exactly the playing client remains, nothing duplicated');

  daemon.child.kill('SIGTERM');
  const code = await new Promise((resolve) => daemon.child.once('exit', resolve));
  t.equal(code, 0, 'SIGTERM exits 0');
  t.same(kernelState(topology), { classes: 0, destinations: [] }, 'rules removed on exit');
});
