/**
 * The Plex API source against the Plex test server: a real HTTP server and a real websocket on loopback.
 * Events as the SessionTracker gets them; reconnects and reconciles; streams that get no pipe; every fault
 * (Plex down, 401, slow/500/malformed listings, a dead TCP path, a restart); 1,000 sessions; https. Every
 * test also checks that the token appears in no log line and no status.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import type { PlaybackEvent } from '../daemon/sources/source.js';
import { parseSessionListing, type PlexRequestResult, PlexSource, type PlexSourceOptions, type PlexTimings } from '../daemon/sources/plex.js';
import { until } from './helpers/daemon.js';
import { type PlexTestServer, SECRET_TOKEN, selfSignedCertificate, sleep, startPlexServer } from './helpers/plex.js';

const FAST: PlexTimings = {
  retryMinMs: 50,
  retryMaxMs: 400,
  unauthorizedRetryMs: 600,
  requestTimeoutMs: 300,
  pingMs: 100,
  pongTimeoutMs: 400,
  pollMs: 0,
  idleMs: 60_000,
};

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

function listen(t: Test, server: PlexTestServer, options: Partial<PlexSourceOptions> & { timings?: Partial<PlexTimings> } = {}) {
  const events: PlaybackEvent[] = [];
  const logs: LogLine[] = [];
  const requests: Array<{ endpoint: string; result: PlexRequestResult }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  const source = new PlexSource({
    url: server.url,
    token: SECRET_TOKEN,
    verifyTls: true,
    onEvent: (event) => events.push(event),
    logger: pino({ level: 'debug' }, sink),
    onRequest: (endpoint, result) => requests.push({ endpoint, result }),
    ...options,
    timings: { ...FAST, ...options.timings },
  });
  source.start();
  t.teardown(async () => {
    await source.stop();
    const everything = JSON.stringify({ logs, status: source.status(), events });
    // Teardown cannot assert; a leak fails the test by throwing.
    if (everything.includes(SECRET_TOKEN)) throw new Error('the token leaked into a log line, the status or an event');
  });
  const kinds = (address?: string) => events.filter((event) => address === undefined || event.address === address).map((event) => event.kind);
  // Connected, and the first full listing done: later events then come from what the test does.
  const connected = () => until(() => source.status().state === 'connected' && source.status().counters.listings >= 1, 10_000);
  return { source, events, logs, requests, kinds, connected };
}

t.test('the test server speaks Plex: token in header or query, 401 otherwise, /identity without one, JSON types and XML flags', async (t) => {
  const server = await startPlexServer(t);
  server.addSession({ player: { address: '10.200.1.5', local: true }, session: { bandwidth: 7000, location: 'lan' } });
  const header = await fetch(`${server.url}/status/sessions`, { headers: { 'X-Plex-Token': SECRET_TOKEN, Accept: 'application/json' } });
  t.equal(header.status, 200);
  // biome-ignore lint/suspicious/noExplicitAny: the test reads Plex's JSON field by field, as a client would
  const json = (await header.json()) as { MediaContainer: { size: number; Metadata: Array<Record<string, any>> } };
  const [item] = json.MediaContainer.Metadata;
  t.equal(json.MediaContainer.size, 1);
  t.equal(typeof item!.sessionKey, 'string', 'sessionKey is a string of digits');
  t.equal(typeof item!.Session.bandwidth, 'number', 'Session.bandwidth is a number');
  t.equal(item!.Player.local, true, 'Player.local is a boolean');
  t.equal(typeof item!.Media[0].bitrate, 'number');
  const query = await fetch(`${server.url}/status/sessions?X-Plex-Token=${SECRET_TOKEN}`);
  t.equal(query.status, 200, 'token in the query string');
  const xml = await query.text();
  t.match(xml, /<Player [^>]*local="1"[^>]*relayed="0"/, 'XML flags are "1"/"0"');
  t.match(xml, /<Session [^>]*bandwidth="7000"/);
  t.equal((await fetch(`${server.url}/status/sessions`, { headers: { 'X-Plex-Token': 'wrong' } })).status, 401);
  t.equal((await fetch(`${server.url}/status/sessions`)).status, 401);
  const identity = await fetch(`${server.url}/identity`, { headers: { Accept: 'application/json' } });
  t.equal(((await identity.json()) as { MediaContainer: { machineIdentifier: string } }).MediaContainer.machineIdentifier, server.machineIdentifier);
  t.same(parseSessionListing(xml), parseSessionListing(JSON.stringify(json)), 'the client reads the XML and the JSON alike');
});

t.test('play, pause, resume, stop: events keyed by machineIdentifier + sessionKey, with what only the API knows', async (t) => {
  const server = await startPlexServer(t);
  const { events, kinds, connected, requests } = listen(t, server);
  await connected();
  const session = server.play({
    player: { address: '::ffff:203.0.113.7', product: 'Plex for iOS' },
    user: { title: 'alice' },
    session: { bandwidth: 8000, location: 'wan' },
    media: [{ bitrate: 6500 }],
  });
  await until(() => events.length === 1);
  t.match(events[0], {
    kind: 'start',
    address: '203.0.113.7',
    sessionKey: `${server.machineIdentifier}:${session.sessionKey}`,
    user: 'alice',
    player: 'Plex for iOS',
    location: 'wan',
    network: 'WAN (wan)',
    local: false,
    bandwidth: 8_000_000,
    mediaBitrate: 6_500_000,
    source: 'plex',
  });
  t.ok(
    requests.some((r) => r.endpoint === '/status/sessions' && r.result === 'ok'),
    'the new key was looked up',
  );
  t.ok(
    server.requests.filter((r) => r.path === '/status/sessions').every((r) => r.accept?.includes('application/json')),
    'asked for JSON',
  );
  server.setState(session.sessionKey, 'paused');
  server.noise();
  server.sendRaw('this is not json');
  server.setState(session.sessionKey, 'playing');
  server.setState(session.sessionKey, 'buffering');
  server.setState(session.sessionKey, 'stopped');
  await until(() => events.length === 5);
  t.same(kinds(), ['start', 'pause', 'progress', 'progress', 'stop'], 'other notification types and garbage are ignored');
  t.ok(events.every((event) => event.sessionKey === events[0]!.sessionKey));
  server.notify(server.addSession({ sessionKey: session.sessionKey, player: { address: '203.0.113.7' } }).sessionKey);
  await until(() => events.length === 6);
  t.equal(events[5]!.kind, 'start', 'a key that comes back after stop is a new session');
});

t.test('a stopped session Plex still lists for a moment is not started again', async (t) => {
  const server = await startPlexServer(t);
  const { kinds, connected, source } = listen(t, server, { timings: { pollMs: 100 } });
  await connected();
  const session = server.play({ player: { address: '10.200.1.3' } });
  await until(() => kinds().includes('start'));
  server.updateSession(session.sessionKey, (s) => (s.state = 'stopped'));
  server.notify(session.sessionKey); // announced stopped, still listed
  const listings = source.status().counters.listings;
  await until(() => source.status().counters.listings >= listings + 3);
  t.same(
    kinds().filter((kind) => kind !== 'progress'),
    ['start', 'stop'],
    'listings while it lingers do not bring it back',
  );
  server.removeSession(session.sessionKey);
  await until(() => source.status().counters.listings >= listings + 5);
  server.addSession({ sessionKey: session.sessionKey, ratingKey: session.ratingKey, player: { address: '10.200.1.3' } });
  server.notify(session.sessionKey);
  await until(() => kinds().filter((kind) => kind === 'start').length === 2);
  t.pass('once it has left the listing, the key is free for a new playback');
});

t.test('the old `_children` notification form and a server that only answers XML', async (t) => {
  const server = await startPlexServer(t);
  server.behaviour.legacyNotifications = true;
  server.behaviour.sessions = 'xml-only';
  const { events, kinds, connected } = listen(t, server);
  await connected();
  const session = server.play({ player: { address: '10.200.1.9' }, session: { bandwidth: 3000 } });
  await until(() => events.length === 1);
  t.match(events[0], { kind: 'start', address: '10.200.1.9', bandwidth: 3_000_000, user: 'remi' });
  server.setState(session.sessionKey, 'paused');
  server.setState(session.sessionKey, 'stopped');
  await until(() => events.length === 3);
  t.same(kinds(), ['start', 'pause', 'stop']);
});

t.test('a new ratingKey under the same sessionKey is a stop and a start (clients that never send stop)', async (t) => {
  const server = await startPlexServer(t);
  const { events, kinds, connected } = listen(t, server);
  await connected();
  const session = server.play({ player: { address: '10.200.1.2' }, ratingKey: '501' });
  await until(() => events.length === 1);
  server.updateSession(session.sessionKey, (s) => (s.ratingKey = '502'));
  server.notify(session.sessionKey);
  await until(() => events.length >= 3);
  t.same(kinds().slice(0, 3), ['start', 'stop', 'start']);
  t.equal(events[2]!.address, '10.200.1.2', 'the cached address');
  const notified = events.length;
  server.notify(session.sessionKey);
  await until(() => events.length > notified);
  t.same(
    kinds().slice(3),
    kinds()
      .slice(3)
      .map(() => 'progress'),
    'the new item then just plays on (confirmed by its listing and notification)',
  );
});

t.test('a dropped websocket: reconnect and reconcile — a session that stopped meanwhile is released, one that started is picked up', async (t) => {
  const server = await startPlexServer(t);
  const { events, kinds, connected, source } = listen(t, server);
  await connected();
  server.play({ player: { address: '10.200.1.1' } });
  const leaving = server.play({ player: { address: '10.200.1.2' } });
  await until(() => events.filter((e) => e.kind === 'start').length === 2);
  server.dropSockets();
  server.removeSession(leaving.sessionKey); // stopped while nobody listened
  server.addSession({ player: { address: '10.200.1.3' } }); // started while nobody listened
  await until(() => kinds('10.200.1.2').includes('stop') && kinds('10.200.1.3').includes('start'));
  // How many attempts it takes is the machine's business (a handshake slower than its timeout is tried
  // again); the promise is that it reconnects and reconciles what changed once.
  t.ok(server.connections >= 2, `reconnected (${server.connections - 1} websocket attempt(s) after the drop)`);
  t.equal(source.status().state, 'connected');
  t.equal(
    kinds('10.200.1.1')
      .filter((kind) => kind !== 'progress')
      .join(),
    'start',
    'the session that played on is confirmed, not restarted',
  );
  const changes = (address: string) => kinds(address).filter((kind) => kind !== 'progress');
  t.same(changes('10.200.1.2'), ['start', 'stop']);
  t.same(changes('10.200.1.3'), ['start']);
  t.equal(source.status().sessions, 2);
});

t.test('Plex restarted: clean close, keys start over; an old key is never taken for the new session that reuses it', async (t) => {
  const server = await startPlexServer(t);
  const { events, kinds, connected, logs } = listen(t, server);
  await connected();
  const before = server.play({ player: { address: '10.200.1.1' }, ratingKey: '700' });
  t.equal(before.sessionKey, '1');
  await until(() => events.length === 1);
  server.restart();
  const after = server.addSession({ player: { address: '10.200.1.4' }, ratingKey: '700' });
  t.equal(after.sessionKey, '1', 'the new session reuses key 1 (and even the same item)');
  await until(() => kinds('10.200.1.1').includes('stop') && kinds('10.200.1.4').includes('start'));
  t.same(kinds('10.200.1.1'), ['start', 'stop'], 'the old session ends at its own address');
  t.same(kinds('10.200.1.4'), ['start']);
  t.ok(logs.some((line) => line.msg === 'Plex notifications reconnected'));
});

t.test('streams whose address is not where the bytes go get no events and one warning each, naming user, player and why', async (t) => {
  const server = await startPlexServer(t);
  const { events, logs, connected, source } = listen(t, server, { bridgeAddresses: new Set(['172.17.0.1']) });
  await connected();
  const relayed = server.play({
    user: { title: 'bob' },
    player: { address: '127.0.0.1', relayed: true, product: 'Plex for Roku' },
    session: { location: 'wan' },
  });
  const oldServerRelay = server.play({
    user: { title: 'carol' },
    player: { address: '198.51.100.4', remotePublicAddress: '127.0.0.1', relayed: undefined, product: 'Plex Web' },
    session: { location: 'wan' },
  });
  const docker = server.play({ user: { title: 'dave' }, player: { address: '::ffff:172.17.0.1', product: 'Plex for LG' }, session: { location: 'lan' } });
  const direct = server.play({ player: { address: '10.200.1.1' } });
  await until(() => events.length >= 1 && source.status().skipped.length === 3);
  for (let i = 0; i < 3; i++) server.notify(relayed.sessionKey, oldServerRelay.sessionKey, docker.sessionKey, direct.sessionKey);
  await until(() => source.status().counters.notifications >= 16);
  t.ok(
    events.every((event) => event.address === '10.200.1.1'),
    'only the direct stream has events',
  );
  const warnings = logs.filter((line) => line.level === 40 && /^not shaping/.test(line.msg));
  t.equal(warnings.length, 3, 'one warning per session, however many notifications');
  t.match(warnings.map((line) => line.msg).sort(), [
    /^not shaping bob on Plex for Roku: Plex Relay/,
    /^not shaping carol on Plex Web: Plex Relay/,
    /^not shaping dave on Plex for LG: the address 172\.17\.0\.1 is this host's container bridge/,
  ]);
  t.match(
    source
      .status()
      .skipped.map((s) => s.user)
      .sort(),
    ['bob', 'carol', 'dave'],
    'and in the status',
  );
  t.equal(source.status().skipped.find((s) => s.user === 'bob')?.bandwidth, 6_000_000, 'with the bandwidth it still takes from the uplink');
  const before = events.length;
  server.setState(relayed.sessionKey, 'stopped');
  await until(() => source.status().skipped.length === 2);
  t.equal(events.length, before, 'its stop gives no event either');
});

t.test('Plex down at start: "waiting for Plex", retries 1 s doubling to 30 s (here 50 ms to 400 ms), then plays', async (t) => {
  const server = await startPlexServer(t);
  await server.down();
  const { source, logs, events, connected } = listen(t, server);
  await until(() => logs.filter((line) => line.retryMs !== undefined).length >= 5, 10_000);
  t.equal(source.status().state, 'waiting for Plex');
  t.match(source.status().lastError, /ECONNREFUSED/);
  t.equal(logs.filter((line) => line.level === 40 && /^waiting for Plex/.test(line.msg)).length, 1, 'one warning, not one per retry');
  const delays = logs.filter((line) => line.retryMs !== undefined).map((line) => line.retryMs as number);
  t.same(delays.slice(0, 5), [50, 100, 200, 400, 400], 'doubling, capped');
  server.addSession({ player: { address: '10.200.1.1' } });
  await server.listen();
  await connected();
  await until(() => events.length === 1);
  t.equal(events[0]!.kind, 'start', 'the full reconcile on connect finds the session that was already playing');
});

t.test('401: one clear error line, a retry every unauthorizedRetryMs, and it recovers once the token is right', async (t) => {
  const server = await startPlexServer(t);
  server.token = 'the-real-token-is-different';
  const { source, logs, events, connected } = listen(t, server);
  await until(() => server.requests.filter((r) => r.status === 401).length >= 3, 10_000);
  t.equal(source.status().state, 'token rejected');
  t.equal(source.status().lastError, 'Plex rejected the token');
  const errors = logs.filter((line) => line.level >= 50);
  t.equal(errors.length, 1, 'one error line');
  t.match(errors[0]!.msg, /^Plex rejected the token \(401\)/);
  server.token = SECRET_TOKEN;
  server.addSession({ player: { address: '10.200.1.1' } });
  await connected();
  await until(() => events.length === 1);
});

t.test('a slow, failing or malformed listing is counted and changes nothing; the next poll retries', async (t) => {
  const server = await startPlexServer(t);
  server.behaviour.slowMs = 2000;
  const { source, events, requests, connected, logs } = listen(t, server, { timings: { pollMs: 150 } });
  await connected();
  server.play({ player: { address: '10.200.1.1' } });
  await until(() => events.length >= 1);
  for (const [behaviour, result] of [
    ['slow', 'timeout'],
    ['error', 'http-error'],
    ['malformed', 'malformed'],
  ] as const) {
    server.behaviour.sessions = behaviour;
    const seen = requests.length;
    await until(() => requests.slice(seen).some((r) => r.result === result), 10_000);
    t.pass(`${behaviour} → ${result}`);
  }
  t.notOk(
    events.some((event) => event.kind === 'stop'),
    'no session was dropped for a failed listing',
  );
  t.ok(source.status().counters.listingFailures >= 3);
  t.ok(
    logs.some((line) => /no answer within 0.3 s/.test(line.msg)),
    'the timeout is named',
  );
  server.behaviour.sessions = 'ok';
  const listings = source.status().counters.listings;
  await until(() => source.status().counters.listings > listings);
  t.equal(source.status().state, 'connected', 'the websocket stayed up throughout');
});

t.test('polls and lookups reuse one kept-alive TCP connection (http and https)', async (t) => {
  for (const tls of [undefined, selfSignedCertificate()]) {
    const server = await startPlexServer(t, tls ? { tls } : {});
    const { source, connected, events } = listen(t, server, { verifyTls: false, timings: { pollMs: 100 } });
    await connected();
    server.play({ player: { address: '10.200.1.1' } }); // a new key: a lookup between the polls
    await until(() => events.length >= 1 && source.status().counters.listings >= 8);
    const http = server.requests.filter((r) => r.status === 200);
    const ports = new Set(http.map((r) => r.clientPort));
    t.ok(http.length >= 9, `${tls ? 'https' : 'http'}: ${http.length} requests (identity, listings, the lookup)`);
    t.same([...ports].length, 1, `${tls ? 'https' : 'http'}: all over one TCP connection (client ports seen: ${[...ports].join(', ')})`);
    await source.stop();
    await until(() => server.openConnections === 0, 3000).catch(() => undefined);
    t.equal(server.openConnections, 0, `${tls ? 'https' : 'http'}: stop() closes the kept-alive connection (and the websocket)`);
  }
});

t.test('1,000 sessions in one response: 1,000 starts, and 1,000 stops when they leave', async (t) => {
  const server = await startPlexServer(t);
  const { events, connected, source } = listen(t, server, { timings: { pollMs: 500, requestTimeoutMs: 5000 } });
  await connected();
  const keys: string[] = [];
  for (let i = 0; i < 1000; i++)
    keys.push(server.addSession({ player: { address: `10.201.${i >> 8}.${i & 255}` }, session: { bandwidth: 2000 + i } }).sessionKey);
  server.notify(...keys);
  await until(() => events.filter((e) => e.kind === 'start').length === 1000, 20_000);
  t.equal(new Set(events.map((e) => e.sessionKey)).size, 1000, '1,000 distinct sessions');
  t.equal(new Set(events.map((e) => e.address)).size, 1000);
  t.equal(events.find((e) => e.address === '10.201.3.231')?.bandwidth, (2000 + 999) * 1000);
  for (const key of keys) server.removeSession(key);
  await until(() => events.filter((e) => e.kind === 'stop').length === 1000, 20_000);
  t.equal(source.status().sessions, 0);
});

t.test('a dead TCP path (no close, no pong): reconnect after the pong timeout, then reconcile', async (t) => {
  const server = await startPlexServer(t);
  const { events, logs, connected, kinds } = listen(t, server);
  await connected();
  const session = server.play({ player: { address: '10.200.1.1' } });
  await until(() => events.length === 1);
  server.behaviour.deadSockets = true;
  await until(() => logs.some((line) => /^no answer from Plex for \d+ s: reconnecting/.test(line.msg)), 10_000);
  server.behaviour.deadSockets = false;
  server.removeSession(session.sessionKey);
  await until(() => server.connections >= 2 && kinds().includes('stop'), 10_000);
  t.same(
    kinds().filter((kind) => kind !== 'progress'),
    ['start', 'stop'],
    'what changed while the path was dead is reconciled',
  );
});

t.test('a new transcodeSession (another quality) has the session read again at once, at most once a second per session', async (t) => {
  const server = await startPlexServer(t);
  const { events, connected, source } = listen(t, server);
  await connected();
  const movie = server.play({
    player: { address: '10.200.1.1' },
    session: { bandwidth: 4000, location: 'wan' },
    transcode: { key: '/transcode/sessions/q4', videoDecision: 'transcode' },
  });
  await until(() => events.some((event) => event.bandwidth === 4_000_000));
  const listings = () => source.status().counters.listings;
  const bandwidths = () => events.map((event) => event.bandwidth);
  const afterStart = listings();

  const switched = performance.now();
  server.changeQuality(movie.sessionKey, 8000);
  await until(() => bandwidths().includes(8_000_000));
  const followedMs = performance.now() - switched;
  t.ok(followedMs < 1000, `the new bandwidth is an event within 1 s of the notification (${followedMs.toFixed(0)} ms; the poll is off)`);
  t.equal(listings(), afterStart + 1, 'one listing read it');

  server.notify(movie.sessionKey); // the periodic notification: the same transcodeSession
  await sleep(300);
  t.equal(listings(), afterStart + 1, 'the same transcodeSession again reads nothing');

  // Three quality changes in a burst, right after the last re-read: one listing now would be a second
  // within the second, so one waits for the second to end and reads the last of them.
  const burst = performance.now();
  server.changeQuality(movie.sessionKey, 9000);
  server.changeQuality(movie.sessionKey, 10_000);
  server.changeQuality(movie.sessionKey, 11_000);
  await sleep(300);
  t.equal(listings(), afterStart + 1, 'no listing within the second of the last one');
  await until(() => bandwidths().includes(11_000_000), 3000);
  t.ok(performance.now() - burst < 2000, 'the last quality is followed once the second is over');
  t.equal(listings(), afterStart + 2, 'one listing for the burst');
  t.notOk(bandwidths().includes(9_000_000), 'the qualities in between were never read');
  t.equal(source.status().counters.transcodeChanges, 2, 'two changes acted on (the burst counts once)');
});

t.test('a stall of this process longer than the pong timeout is not taken for a dead connection', async (t) => {
  const server = await startPlexServer(t);
  const { logs, connected, source } = listen(t, server);
  await connected();
  // A loaded machine or a long GC: nothing runs for 1.5 × pongTimeoutMs, Plex's answers wait unread.
  const end = performance.now() + 1.5 * FAST.pongTimeoutMs;
  while (performance.now() < end);
  await sleep(4 * FAST.pingMs);
  t.notOk(
    logs.some((line) => /no answer from Plex/.test(line.msg)),
    'no reconnect: only time this process was awake counts',
  );
  t.equal(server.connections, 1, 'the one websocket stays');
  t.equal(source.status().counters.reconnects, 0);
});

t.test('a session Plex still lists never idles out; one silent and no longer listed ends', async (t) => {
  const server = await startPlexServer(t);
  const { events, kinds, connected } = listen(t, server, { timings: { idleMs: 600 } });
  await connected();
  const paused = server.play({ player: { address: '10.200.1.1' }, state: 'paused' });
  const vanishing = server.play({ player: { address: '10.200.1.2' } });
  await until(() => events.length >= 3);
  await sleep(1500);
  t.ok(
    kinds('10.200.1.1').filter((kind) => kind === 'pause').length >= 3,
    `the paused session is confirmed by listings without any notification (${kinds('10.200.1.1').join(',')})`,
  );
  server.removeSession(vanishing.sessionKey);
  await until(() => kinds('10.200.1.2').includes('stop'), 5000);
  t.notOk(kinds('10.200.1.1').includes('stop'));
  t.ok(server.session(paused.sessionKey));
});

t.test('https and wss with a self-signed certificate: verifyTls false connects, verifyTls true refuses clearly', async (t) => {
  const server = await startPlexServer(t, { tls: selfSignedCertificate() });
  t.match(server.url, /^https:/);
  const trusting = listen(t, server, { verifyTls: false });
  await trusting.connected();
  server.play({ player: { address: '10.200.1.1' } });
  await until(() => trusting.events.length === 1);
  const strict = listen(t, server, { verifyTls: true });
  await until(() => strict.source.status().state === 'waiting for Plex');
  t.match(strict.source.status().lastError, /self[- ]signed certificate/);
  t.equal(strict.events.length, 0);
});
