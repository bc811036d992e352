/**
 * End to end with the Plex API as the source: shaperrd (in process, or the real CLI for --dry-run) hears
 * the Plex test server on loopback and shapes srv0 in a throwaway netns, with real TCP to the clients.
 * Plex down at start → "waiting for Plex"; play → a live filter at the client's rate; paused keeps the
 * pipe; a new ratingKey changes nothing in the kernel; stop → released after grace; a session that
 * stopped while the websocket was down is released on reconnect; a relayed stream gets no pipe and a
 * warning. A distinctive token is then searched for in the logs, /api/status, /metrics, the state file,
 * `shaperr tc` and `--dry-run` output: zero hits. With `source: both` and a rejected token, the log keeps
 * shaping.
 */
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { CHROMIUM, launchChromium } from './helpers/browser.js';
import t, { type Test } from 'tap';
import { validateConfig } from '../daemon/config.js';
import type { Decision } from '../daemon/sessions/sessions.js';
import { Shaperrd } from '../daemon/shaperrd.js';
import type { PlexTimings } from '../daemon/sources/plex.js';
import type { StatusReport } from '../daemon/operator/status.js';
import {
  type DaemonConfigKeys,
  daemonConfig,
  kernelClientClasses,
  kernelState,
  logDir,
  play,
  startDaemon,
  until,
  writeDaemonConfig,
} from './helpers/daemon.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { type PlexTestServer, SECRET_TOKEN, sleep, startPlexServer } from './helpers/plex.js';
import { measureGoodput, shapedTo } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;
const SHAPERR_CLI = fileURLToPath(new URL('../dist/daemon/operator/shaperr-cli.js', import.meta.url));
const TIMINGS: Partial<PlexTimings> = {
  retryMinMs: 100,
  retryMaxMs: 1000,
  unauthorizedRetryMs: 1000,
  requestTimeoutMs: 2000,
  pingMs: 500,
  pongTimeoutMs: 3000,
};

async function plexDaemon(t: Test, topology: Topology, server: PlexTestServer, extra: DaemonConfigKeys = {}) {
  const { dir, log } = logDir(t, 'shaperr-plexd');
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  const config = validateConfig(
    daemonConfig(dir, {
      netns: topology.serverNs,
      source: 'plex',
      plex: { url: server.url, token: SECRET_TOKEN, pollSeconds: 1 },
      graceSeconds: 1,
      idleSeconds: 600,
      status: { listen: '127.0.0.1:0' },
      ...extra,
    }),
  );
  const decisions: Decision[] = [];
  const daemon = new Shaperrd({
    config,
    logger: pino({ level: 'debug' }, sink),
    sourceTimings: TIMINGS,
    onDecision: (decision) => decisions.push(decision),
    logPath: log,
  });
  await daemon.start();
  t.teardown(() => daemon.stop());
  const apiStatus = async () => (await (await fetch(`${daemon.statusUrl}api/status`)).json()) as StatusReport;
  const kernelChanges = (address: string) => decisions.filter((d) => d.address === address && ['throttle', 'release', 'change'].includes(d.action)).length;
  return { daemon, logs, decisions, dir, log, config, apiStatus, kernelChanges };
}

t.test('the Plex API drives the pipes end to end, and the token appears nowhere', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote, other] = topology.clientAddresses as [string, string];
  const server = await startPlexServer(t);
  await server.down();
  const { daemon, logs, decisions, dir, apiStatus, kernelChanges } = await plexDaemon(t, topology, server);

  await until(() => logs.some((line) => line.includes('waiting for Plex')));
  t.match((await apiStatus()).sources, [{ source: 'plex', state: 'waiting for Plex', target: server.url }], 'Plex down at start: the status says so');
  await server.listen();
  await until(() => daemon.status().sources?.[0]?.state === 'connected');

  const movie = server.play({
    player: { address: remote, product: 'Plex for Android (TV)' },
    user: { title: 'alice' },
    session: { location: 'wan', bandwidth: 6000 },
  });
  await until(() => kernelState(topology).destinations.includes(`${remote}/32`));
  t.pass('play → the client has a filter and a class');
  t.match(
    (await apiStatus()).clients,
    [{ address: remote, user: 'alice', player: 'Plex for Android (TV)', source: 'plex', streamBandwidth: 6_000_000, rate: 2 * MBIT }],
    'the status shows source, user, player and the stream bandwidth beside the rate',
  );
  if (existsSync(CHROMIUM)) {
    // The status page in headless Chromium: the Plex section with the stream's bandwidth beside its pipe.
    const browser = await launchChromium();
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(daemon.statusUrl!);
    await page.waitForFunction(
      () => /stream 6\.00 Mbit\/s · pipe 2\.00 Mbit\/s \(plex\)/.test(document.getElementById('streams')?.textContent ?? ''),
      undefined,
      { timeout: 10_000 },
    );
    t.match(
      await page.textContent('#source-list'),
      /shaperr test server: connected · 1 sessions/,
      'the page shows the Plex server and the stream beside its pipe',
    );
    t.same(errors, [], 'no script errors on the page');
    await browser.close();
  }
  const playing = shapedTo((await measureGoodput(topology, { to: remote })).bitsPerSecond, 2 * MBIT);
  t.ok(playing.within, `playing: ${playing.reading}`);

  server.setState(movie.sessionKey, 'paused');
  await sleep(2500); // longer than the grace period and two polls
  t.same(kernelState(topology), { classes: 1, destinations: [`${remote}/32`] }, 'paused keeps the pipe');
  t.equal(kernelChanges(remote), 1);

  server.updateSession(movie.sessionKey, (s) => {
    s.ratingKey = '9001';
    s.state = 'playing';
  });
  server.notify(movie.sessionKey);
  await until(() => decisions.some((d) => d.address === remote && d.action === 'resume'));
  await sleep(1500);
  t.equal(kernelChanges(remote), 1, 'the next episode under the same key (stop + start) changes nothing in the kernel');

  server.setState(movie.sessionKey, 'stopped');
  await until(() => decisions.some((d) => d.address === remote && d.action === 'release'));
  const grace = decisions.find((d) => d.address === remote && d.action === 'grace' && d.reason === 'stop');
  t.ok(grace, 'stop starts the grace period, then the release');
  await until(() => kernelState(topology).classes === 0);
  const released = await measureGoodput(topology, { to: remote, seconds: 2 });
  t.ok(released.bitsPerSecond > 10 * MBIT, `after stop: ${(released.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);

  const show = server.play({ player: { address: other } });
  await until(() => kernelState(topology).destinations.includes(`${other}/32`));
  server.dropSockets();
  server.removeSession(show.sessionKey); // stopped while shaperrd was not listening
  await until(() => decisions.some((d) => d.address === other && d.action === 'release'));
  await until(() => kernelState(topology).classes === 0);
  t.pass('reconnect reconcile released the session that stopped meanwhile');

  server.play({ player: { address: remote, relayed: true, product: 'Plex for Roku' }, user: { title: 'bob' }, session: { location: 'wan' } });
  await until(() => logs.some((line) => line.includes('not shaping bob on Plex for Roku: Plex Relay')));
  await sleep(1500);
  t.equal(kernelChanges(remote), 2, 'the relayed stream got no pipe');
  t.match((await apiStatus()).sources?.[0]?.skipped, [{ user: 'bob', player: 'Plex for Roku', reason: /Plex Relay/ }], 'its warning is in the status');

  const cli = spawnSync(process.execPath, [SHAPERR_CLI, 'tc', '--device', 'srv0', '--netns', topology.serverNs], { encoding: 'utf8' });
  const metrics = await (await fetch(`${daemon.statusUrl}metrics`)).text();
  t.match(metrics, /shaperr_source_requests_total\{source="plex",endpoint="\/status\/sessions",result="ok"\} [1-9]/);
  const status = JSON.stringify(await apiStatus());
  await daemon.stop();
  const places = { logs: logs.join('\n'), status, metrics, stateFile: readFileSync(join(dir, 'state.json'), 'utf8'), 'shaperr tc': cli.stdout + cli.stderr };
  for (const [where, text] of Object.entries(places)) t.notOk(text.includes(SECRET_TOKEN), `no token in ${where} (${text.length} characters searched)`);
  t.ok(places.logs.length > 1000 && places.stateFile.includes('"version"'), 'the searched texts are real');
});

t.test('source: both with a rejected token: one clear error line, and the log source keeps shaping', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startPlexServer(t);
  server.token = 'a-different-token';
  const { logs, log, decisions, apiStatus } = await plexDaemon(t, topology, server, { source: 'both' });
  await until(() => server.requests.filter((r) => r.status === 401).length >= 3);
  t.equal(logs.filter((line) => line.includes('Plex rejected the token')).length, 1, 'one error line for repeated 401s');
  t.match(
    (await apiStatus()).sources,
    [
      { source: 'log', state: 'following' },
      { source: 'plex', state: 'token rejected', lastError: 'Plex rejected the token' },
    ],
    'the status lists both sources',
  );
  appendFileSync(log, play(remote, 'log-1'));
  await until(() => decisions.some((d) => d.address === remote && d.action === 'throttle'));
  t.same(kernelState(topology), { classes: 1, destinations: [`${remote}/32`] }, 'the log source shaped the client');
  t.notOk(logs.join('\n').includes(SECRET_TOKEN));
});

t.test('shaperrd --dry-run with the Plex API prints the tc commands and never the token', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startPlexServer(t);
  const { dir } = logDir(t, 'shaperr-plex-dry');
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, leaf: undefined, source: 'plex', plex: { url: server.url, token: SECRET_TOKEN } });
  const daemon = startDaemon(config, [], ['--dry-run', '--log-level', 'debug']);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/listening to Plex notifications/);
  server.play({ player: { address: remote } });
  await daemon.waitFor(/"command":"tc class add dev srv0 .*"msg":"dry run: would apply"/);
  await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  t.same(kernelState(topology), { classes: 0, destinations: [] }, 'nothing applied');
  daemon.child.kill('SIGTERM');
  await new Promise((resolve) => daemon.child.once('exit', resolve));
  t.ok(
    daemon.output.some((line) => line.includes('source: plex → Plex API at') && line.includes('token from plex.token')),
    'says where the token came from',
  );
  t.notOk(daemon.output.join('\n').includes(SECRET_TOKEN), `no token in ${daemon.output.length} lines of --dry-run output`);
});

t.test('shaperr check: the source and where its token comes from, the server, the token accepted, sessions visible', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const server = await startPlexServer(t, { friendlyName: 'Basement' });
  server.addSession({ user: { title: 'alice' } });
  server.addSession({ user: { title: 'bob' } });
  const { dir } = logDir(t, 'shaperr-plex-check');
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, source: 'plex', plex: { url: server.url, token: SECRET_TOKEN } });
  // Asynchronous: the test server answers from this very process.
  const check = () =>
    new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = spawn(process.execPath, [SHAPERR_CLI, '--config', config, 'check'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let stdout = '';
      child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
      child.once('close', (code) => resolve({ code, stdout }));
    });
  const good = await check();
  t.equal(good.code, 0, good.stdout);
  t.match(good.stdout, new RegExp(`^ok {4}event source: plex → Plex API at ${server.url.replace(/[.]/g, '\\.')} \\(token from plex\\.token\\)$`, 'm'));
  t.match(good.stdout, /^ok {4}Plex server "Basement" 1\.41\.\S+ at .* accepts the token \(from plex\.token\)$/m);
  t.match(good.stdout, /^ok {4}the token may list the server's sessions: 2 now \(users: alice, bob\)$/m);
  t.match(good.stdout, /^ok {4}the Plex log and its debug logging are not needed/m);
  server.token = 'the-owner-token';
  const rejected = await check();
  t.equal(rejected.code, 1);
  t.match(rejected.stdout, /^fail {2}Plex rejected the token \(from plex\.token\) at .*\n {6}→ use the server owner's token/m);
  await server.down();
  const down = await check();
  t.match(down.stdout, /^fail {2}Plex at .* is not reachable: GET \/: connect ECONNREFUSED/m);
  for (const output of [good, rejected, down]) t.notOk(output.stdout.includes(SECRET_TOKEN), 'no token in the check output');
});

/** One client playing a transcode of `bandwidth` kbit/s under `rate: auto` (headroom 1.25), once its class is in the kernel. */
async function playingUnderAutoRate(t: Test, bandwidth: number, pollSeconds = 1) {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startPlexServer(t);
  const daemon = await plexDaemon(t, topology, server, {
    client: { rate: 'auto', ceil: 'auto', headroom: 1.25 },
    plex: { url: server.url, token: SECRET_TOKEN, pollSeconds },
  });
  const classRate = () => kernelClientClasses(topology).map((pipe) => pipe.rate);
  await until(() => server.openSockets > 0);
  const movie = server.play({
    player: { address: remote },
    session: { bandwidth, location: 'wan' },
    transcode: { key: '/transcode/sessions/first', videoDecision: 'transcode' },
  });
  await until(() => classRate().length === 1);
  return { ...daemon, topology, remote, server, movie, classRate };
}

t.test('rate: auto follows the stream’s bandwidth with one change to its class, and the goodput follows', { skip }, async (t) => {
  const { topology, remote, server, movie, classRate, decisions, kernelChanges } = await playingUnderAutoRate(t, 1600);
  t.same(classRate(), [2 * MBIT], '1.6 Mbit/s reserved × 1.25 = a 2 Mbit/s class');
  const before = shapedTo((await measureGoodput(topology, { to: remote })).bitsPerSecond, 2 * MBIT);
  t.ok(before.within, `at 1.6 Mbit/s reserved: ${before.reading}`);

  server.updateSession(movie.sessionKey, (s) => (s.session.bandwidth = 3200)); // Plex switched quality
  await until(() => decisions.some((d) => d.address === remote && d.action === 'change'));
  t.same(classRate(), [4 * MBIT], 'the class changed in place to 3.2 × 1.25 = 4 Mbit/s');
  const after = shapedTo((await measureGoodput(topology, { to: remote })).bitsPerSecond, 4 * MBIT);
  t.ok(after.within, `at 3.2 Mbit/s reserved: ${after.reading}`);
  t.equal(kernelChanges(remote), 2, 'one throttle, then exactly one change (polls that repeat the same bandwidth change nothing)');
  t.match(
    decisions.find((d) => d.action === 'change'),
    { reason: 'auto: 3.20 Mbit/s Plex bandwidth × 1.25 = 4.00 Mbit/s', limits: { rate: 4 * MBIT } },
    'the decision says which rate and why',
  );
});

t.test('a quality change (a playing notification naming a new transcodeSession): the class follows within 1 s, one class change', { skip }, async (t) => {
  // Polls 30 s apart (the default): only the notification can make the class follow within the second.
  const { server, remote, movie, classRate, decisions, kernelChanges } = await playingUnderAutoRate(t, 3200, 30);
  t.same(classRate(), [4 * MBIT], '3.2 Mbit/s reserved × 1.25 = a 4 Mbit/s class');

  const switched = performance.now();
  server.changeQuality(movie.sessionKey, 6400);
  await until(() => classRate()[0] === 8 * MBIT, 5000);
  const followedMs = performance.now() - switched;
  t.ok(followedMs <= 1000, `the kernel's class is 8 Mbit/s ${followedMs.toFixed(0)} ms after the notification (within 1 s)`);
  await sleep(500);
  t.equal(kernelChanges(remote), 2, 'one throttle, then exactly one class change');
  t.match(
    decisions.filter((d) => d.action === 'change'),
    [{ reason: 'auto: 6.40 Mbit/s Plex bandwidth × 1.25 = 8.00 Mbit/s' }],
  );
});

t.test('SIGHUP-style reload with a corrected token: the Plex source starts over and shapes; a reload without a token is refused whole', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startPlexServer(t);
  server.token = 'the-right-token';
  const { daemon, config, logs } = await plexDaemon(t, topology, server);
  await until(() => daemon.status().sources?.[0]?.state === 'token rejected');
  await t.rejects(daemon.reload(validateConfig({ ...config, plex: { url: server.url } })), /no Plex token for/);
  t.equal(daemon.status().sources?.[0]?.state, 'token rejected', 'the refused reload changed nothing');
  await daemon.reload(validateConfig({ ...config, plex: { url: server.url, token: 'the-right-token' } }));
  server.play({ player: { address: remote } });
  await until(() => kernelState(topology).destinations.includes(`${remote}/32`));
  t.equal(daemon.status().sources?.[0]?.state, 'connected');
  t.notOk(logs.join('\n').includes('the-right-token'), 'the new token is not logged either');
});
