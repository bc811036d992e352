/**
 * End to end with Jellyfin (and Emby) as the source: shaperrd in process hears the Jellyfin test server
 * on loopback and shapes srv0 in a throwaway netns, with real TCP to the clients. Play → filter and class
 * read back from the kernel within 1 s of the pushed message; a transcode quality change → one class
 * change; pause keeps the pipe; stop → released after grace. Plex API, Jellyfin and Emby at once: three
 * players piped under one server ceiling, every source listed in /api/status. A push-less server: polled,
 * the pipe within 3 s. The API keys appear in no log line, status, metric or state file.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { validateConfig } from '../daemon/config.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import type { StatusReport } from '../daemon/operator/status.js';
import type { Decision } from '../daemon/sessions/sessions.js';
import { Shaperrd } from '../daemon/shaperrd.js';
import type { MediaServerTimings } from '../daemon/sources/jellyfin.js';
import type { ServerTimings } from '../daemon/sources/source.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { type DaemonConfigKeys, daemonConfig, kernelClientClasses, kernelState, logDir, until } from './helpers/daemon.js';
import { SECRET_KEY, startJellyfinServer } from './helpers/jellyfin.js';
import { SECRET_TOKEN, sleep, startPlexServer } from './helpers/plex.js';
import { measureGoodput, measureGoodputConcurrently, shapedTo } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;
const TIMINGS: Partial<ServerTimings> = {
  retryMinMs: 100,
  retryMaxMs: 1000,
  unauthorizedRetryMs: 1000,
  requestTimeoutMs: 2000,
  pingMs: 500,
  pongTimeoutMs: 3000,
};

async function startShaperrd(t: Test, topology: Topology, keys: DaemonConfigKeys, sourceTimings: Partial<MediaServerTimings> = TIMINGS) {
  const { dir, log } = logDir(t, 'shaperr-jellyfind');
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  const config = validateConfig(daemonConfig(dir, { netns: topology.serverNs, graceSeconds: 1, idleSeconds: 600, status: { listen: '127.0.0.1:0' }, ...keys }));
  const decisions: Decision[] = [];
  const daemon = new Shaperrd({
    config,
    logger: pino({ level: 'debug' }, sink),
    sourceTimings,
    onDecision: (decision) => decisions.push(decision),
    logPath: log,
  });
  await daemon.start();
  t.teardown(() => daemon.stop());
  const get = async (path: string) => (await fetch(`${daemon.statusUrl}${path}`)).text();
  const apiStatus = async () => JSON.parse(await get('api/status')) as StatusReport;
  const kernelChanges = (address: string) => decisions.filter((d) => d.address === address && ['throttle', 'release', 'change'].includes(d.action)).length;
  return { daemon, logs, decisions, dir, get, apiStatus, kernelChanges };
}

t.test('Jellyfin drives the pipes: filter within 1 s of the push, one class change for a new quality, pause keeps, stop releases', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startJellyfinServer(t);
  const { daemon, logs, decisions, dir, get, apiStatus, kernelChanges } = await startShaperrd(t, topology, {
    source: 'jellyfin',
    jellyfin: { url: server.url, apiKey: SECRET_KEY },
    client: { rate: 'auto', ceil: 'auto', headroom: 1.25 },
  });
  await until(() => daemon.status().sources?.[0]?.state === 'connected' && server.openSockets > 0);
  const classRate = () => kernelClientClasses(topology).map((pipe) => pipe.rate);

  const pushed = performance.now();
  const movie = server.play({
    userName: 'alice',
    client: 'Jellyfin Web',
    remoteEndPoint: remote,
    nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 1_600_000 },
  });
  await until(() => kernelState(topology).destinations.includes(`${remote}/32`) && classRate().length === 1, 5000);
  const liveMs = performance.now() - pushed;
  t.ok(liveMs <= 1000, `filter and class in the kernel ${liveMs.toFixed(0)} ms after the push (within 1 s)`);
  t.same(classRate(), [2 * MBIT], '1.6 Mbit/s transcode × 1.25 = a 2 Mbit/s class');
  t.match((await apiStatus()).clients, [{ address: remote, user: 'alice', player: 'Jellyfin Web', source: 'jellyfin' }]);
  const before = shapedTo((await measureGoodput(topology, { to: remote })).bitsPerSecond, 2 * MBIT);
  t.ok(before.within, `at 1.6 Mbit/s: ${before.reading}`);

  const switched = performance.now();
  server.setTranscodeBitrate(movie.id, 3_200_000);
  await until(() => classRate()[0] === 4 * MBIT, 5000);
  t.ok(performance.now() - switched <= 1000, `the class follows the new quality in ${(performance.now() - switched).toFixed(0)} ms`);
  server.pause(movie.id);
  await sleep(2000); // longer than the grace period
  t.same(kernelState(topology), { classes: 1, destinations: [`${remote}/32`] }, 'paused keeps the pipe');
  t.equal(kernelChanges(remote), 2, 'one throttle, then exactly one class change');
  t.match(
    decisions.filter((d) => d.action === 'change'),
    [{ reason: /^auto: 3\.20 Mbit\/s .*× 1\.25 = 4\.00 Mbit\/s$/ }],
    'the decision says which rate and why',
  );
  const after = shapedTo((await measureGoodput(topology, { to: remote })).bitsPerSecond, 4 * MBIT);
  t.ok(after.within, `at 3.2 Mbit/s: ${after.reading}`);

  server.stop(movie.id);
  await until(() => kernelState(topology).classes === 0, 5000);
  t.pass('stop → released after the grace period');
  const status = await apiStatus();
  t.match(status.sources, [{ source: 'jellyfin', target: server.url, state: 'connected', server: { id: server.serverId } }]);
  const everything = [logs.join('\n'), await get('api/status'), await get('metrics'), readFileSync(join(dir, 'state.json'), 'utf8')].join('\n');
  t.notOk(everything.includes(SECRET_KEY), 'the API key is in no log line, /api/status, /metrics or the state file');
  t.match(await get('metrics'), /shaperr_source_requests_total\{[^}]*source="jellyfin"/, 'requests counted under the jellyfin label');
});

t.test('Plex API, Jellyfin and Emby at once: three players piped under one server ceiling, every source in /api/status', { skip }, async (t) => {
  const topology = await createTopology({ clients: 3, ipv6: false });
  t.teardown(() => topology.destroy());
  const [viaPlex, viaJellyfin, viaEmby] = topology.clientAddresses as [string, string, string];
  const plex = await startPlexServer(t);
  const jellyfin = await startJellyfinServer(t);
  const emby = await startJellyfinServer(t, { kind: 'emby' });
  const { daemon, apiStatus } = await startShaperrd(t, topology, {
    source: ['plex', 'jellyfin', 'emby'],
    plex: { url: plex.url, token: SECRET_TOKEN },
    jellyfin: { url: jellyfin.url, apiKey: SECRET_KEY },
    emby: [{ url: emby.url, apiKey: SECRET_KEY }],
    server: { rate: '9mbit' },
    client: { rate: '4mbit' },
  });
  await until(() => daemon.status().sources?.length === 3 && daemon.status().sources!.every((source) => source.state === 'connected'), 10_000);
  plex.play({ player: { address: viaPlex }, session: { location: 'wan' } });
  jellyfin.play({ remoteEndPoint: viaJellyfin });
  emby.play({ remoteEndPoint: viaEmby });
  await until(() => kernelState(topology).classes === 3, 5000);
  t.same(kernelState(topology).destinations, [viaPlex, viaJellyfin, viaEmby].map((address) => `${address}/32`).sort(), 'one pipe per player');
  const guarantees = kernelClientClasses(topology).map((pipe) => pipe.rate);
  t.ok(
    guarantees.reduce((sum, rate) => sum + rate, 0) <= 9 * MBIT,
    `their guarantees (${guarantees.map((rate) => rate / MBIT).join(', ')} Mbit/s) share the 9 Mbit/s ceiling`,
  );
  const goodputs = await measureGoodputConcurrently(topology, [{ to: viaPlex }, { to: viaJellyfin }, { to: viaEmby }]);
  const total = goodputs.reduce((sum, goodput) => sum + goodput.bitsPerSecond, 0);
  const shared = shapedTo(total, 9 * MBIT);
  t.ok(shared.within, `all three together: ${shared.reading}`);
  const status = await apiStatus();
  t.same(
    status.sources?.map((source) => source.source),
    ['plex', 'jellyfin', 'emby'],
    'one status lists the three sources',
  );
  t.same(status.clients?.map((client) => client.source).sort(), ['emby', 'jellyfin', 'plex']);
});

/** Each filtered client's class rate (bits/s), read back from the kernel: which pipe a player got. */
function kernelRateByClient(topology: Topology): Record<string, number> {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    const rates = new Map(tc.classes('srv0').map((tcClass) => [tcClass.handle, tcClass.parameters.rate]));
    const byClient: Record<string, number> = {};
    for (const filter of tc.filters('srv0', '5a:')) {
      const { classid, match } = filter.parameters;
      if (classid !== undefined && match?.dst) byClient[match.dst] = rates.get(classid)!;
    }
    return byClient;
  } finally {
    tc.close();
  }
}

t.test('an override naming a source: alice on Jellyfin gets its rate, alice on Plex the general one', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2, ipv6: false });
  t.teardown(() => topology.destroy());
  const [viaPlex, viaJellyfin] = topology.clientAddresses as [string, string];
  const plex = await startPlexServer(t);
  const jellyfin = await startJellyfinServer(t);
  const { daemon, decisions } = await startShaperrd(t, topology, {
    source: ['plex', 'jellyfin'],
    plex: { url: plex.url, token: SECRET_TOKEN },
    jellyfin: { url: jellyfin.url, apiKey: SECRET_KEY },
    server: { rate: '20mbit' },
    client: { rate: '2mbit' },
    overrides: [
      { user: 'alice', rate: '3mbit' },
      { user: 'alice', source: 'jellyfin', rate: '6mbit' },
    ],
  });
  await until(() => daemon.status().sources?.length === 2 && daemon.status().sources!.every((source) => source.state === 'connected'), 10_000);
  plex.play({ user: { title: 'alice' }, player: { address: viaPlex }, session: { location: 'wan' } });
  jellyfin.play({ userName: 'alice', remoteEndPoint: viaJellyfin });
  await until(() => Object.keys(kernelRateByClient(topology)).length === 2, 5000);
  t.same(
    kernelRateByClient(topology),
    { [`${viaPlex}/32`]: 3 * MBIT, [`${viaJellyfin}/32`]: 6 * MBIT },
    'the kernel has alice on Plex at 3 Mbit/s and alice on Jellyfin at 6 Mbit/s',
  );
  t.match(
    decisions
      .filter((decision) => decision.action === 'throttle')
      .map((decision) => decision.reason)
      .sort(),
    ['override (user alice on jellyfin)', 'override (user alice)'],
  );
});

t.test('the DeviceId is kept in the state file: a restart presents the same one, a fresh state a new one', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const server = await startJellyfinServer(t);
  const { dir } = logDir(t, 'shaperr-jellyfin-device');
  const keys = (stateFile: string): DaemonConfigKeys => ({ source: 'jellyfin', jellyfin: { url: server.url, apiKey: SECRET_KEY }, stateFile });
  /** A daemon's run until it listens to the server's sessions: the DeviceIds the server saw from it. */
  const run = async (stateFile: string) => {
    const seen = server.requests.length;
    const { daemon } = await startShaperrd(t, topology, keys(stateFile));
    await until(() => server.openSockets > 0 && daemon.status().sources?.[0]?.state === 'connected');
    await daemon.stop();
    await until(() => server.openSockets === 0);
    return new Set(server.requests.slice(seen).flatMap((request) => (request.deviceId ? [request.deviceId] : [])));
  };
  const stateFile = join(dir, 'kept-state.json');
  const first = await run(stateFile);
  t.equal(first.size, 1, 'one DeviceId for every request and the websocket');
  const [id] = first;
  t.match(JSON.parse(readFileSync(stateFile, 'utf8')).devices, { [`jellyfin ${server.url}`]: id }, 'kept in the state file under the server');
  t.same(await run(stateFile), first, 'the restart presents the same DeviceId');
  const fresh = await run(join(dir, 'fresh-state.json'));
  t.equal(fresh.size, 1);
  t.notSame(fresh, first, 'a fresh state file: a new DeviceId');
});

t.test('an Emby server that pushes nothing: the daemon polls, the pipe is in the kernel within 3 s of the play, /api/status says why', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const emby = await startJellyfinServer(t, { kind: 'emby' });
  emby.behaviour.push = false;
  const timings: Partial<MediaServerTimings> = { ...TIMINGS, pushWaitMs: 500 };
  const { daemon, apiStatus } = await startShaperrd(t, topology, { source: 'emby', emby: { url: emby.url, apiKey: SECRET_KEY } }, timings);
  await until(() => daemon.status().sources?.[0]?.note !== undefined, 5000);
  t.match((await apiStatus()).sources, [{ source: 'emby', state: 'connected', note: /^polling GET \/Sessions every 2 s: no Sessions message/ }]);
  const played = performance.now();
  emby.play({ remoteEndPoint: remote });
  await until(() => kernelState(topology).destinations.includes(`${remote}/32`), 5000);
  const liveMs = performance.now() - played;
  t.ok(liveMs <= 3000, `filter in the kernel ${liveMs.toFixed(0)} ms after the play (within 3 s)`);
});
