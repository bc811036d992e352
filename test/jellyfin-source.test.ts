/**
 * The Jellyfin and Emby sources against the Jellyfin/Emby test server: real HTTP and a real websocket on
 * loopback, speaking the servers' formats (payloads typed with @jellyfin/sdk). Events as the SessionTracker
 * gets them; the push-less fallback; streams that get no pipe; every fault (server down, 401, slow and
 * malformed answers, a dropped or silently dead socket, a restart). Every test also checks that the API key
 * appears in no log line, status, event or request URL.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { MediaServerSource, type MediaServerSourceOptions, type MediaServerTimings, parseMediaSessions } from '../daemon/sources/jellyfin.js';
import type { PlaybackEvent, SourceRequestResult } from '../daemon/sources/source.js';
import { until } from './helpers/daemon.js';
import { type JellyfinTestServer, SECRET_KEY, startJellyfinServer } from './helpers/jellyfin.js';
import { sleep } from './helpers/plex.js';

const FAST: Partial<MediaServerTimings> = {
  retryMinMs: 50,
  retryMaxMs: 400,
  unauthorizedRetryMs: 600,
  requestTimeoutMs: 300,
  pingMs: 100,
  pongTimeoutMs: 400,
  pollMs: 0,
};

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

function listen(t: Test, server: JellyfinTestServer, options: Partial<MediaServerSourceOptions> = {}) {
  const events: Array<PlaybackEvent & { at: number }> = [];
  const logs: LogLine[] = [];
  const requests: Array<{ endpoint: string; result: SourceRequestResult }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  const source = new MediaServerSource({
    kind: server.kind,
    url: server.url,
    apiKey: SECRET_KEY,
    verifyTls: true,
    idleMs: 60_000,
    onEvent: (event) => events.push({ ...event, at: Date.now() }),
    logger: pino({ level: 'debug' }, sink),
    onRequest: (endpoint, result) => requests.push({ endpoint, result }),
    ...options,
    timings: { ...FAST, ...options.timings },
  });
  source.start();
  t.teardown(async () => {
    await source.stop();
    const everything = JSON.stringify({ logs, status: source.status(), events, urls: server.requests.map((request) => request.url) });
    // Teardown cannot assert; a leak fails the test by throwing.
    if (everything.includes(SECRET_KEY)) throw new Error('the API key leaked into a log line, the status, an event or a URL');
  });
  const kinds = (address?: string) => events.filter((event) => address === undefined || event.address === address).map((event) => event.kind);
  /** Kinds without the progress events every push repeats. */
  const changes = (address?: string) => kinds(address).filter((kind) => kind !== 'progress');
  const count = (counter: string) => source.status().counters[counter] ?? 0;
  const connected = () => until(() => source.status().state === 'connected' && count('listings') >= 1, 10_000);
  return { source, events, logs, requests, kinds, changes, connected, count };
}

t.test(
  'the test server speaks Jellyfin: the MediaBrowser header and nothing else, 401 otherwise, ForceKeepAlive, KeepAlive, SessionsStart pushes',
  async (t) => {
    const server = await startJellyfinServer(t);
    server.play({ remoteEndPoint: '10.200.1.5', nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 3_000_000 } });
    const auth = { Authorization: `MediaBrowser Token="${SECRET_KEY}", Client="test", Device="t", DeviceId="dev-1", Version="1"` };
    const listed = await fetch(`${server.url}/Sessions`, { headers: auth });
    t.equal(listed.status, 200);
    const [session] = (await listed.json()) as Array<Record<string, never>>;
    t.equal(session!.RemoteEndPoint, '10.200.1.5');
    t.match(session!, { PlayState: { IsPaused: false, PlayMethod: 'Transcode' }, TranscodingInfo: { Bitrate: 3_000_000 }, NowPlayingItem: { Type: 'Movie' } });
    t.equal((await fetch(`${server.url}/Sessions`, { headers: { Authorization: 'MediaBrowser Token="wrong"' } })).status, 401, 'a wrong key');
    t.equal((await fetch(`${server.url}/Sessions?api_key=${SECRET_KEY}`)).status, 401, 'the legacy api_key query is refused');
    t.equal((await fetch(`${server.url}/Sessions`, { headers: { 'X-Emby-Token': SECRET_KEY } })).status, 401, "Emby's header is not Jellyfin's");
    const { default: WebSocket } = await import('ws');
    const socket = new WebSocket(`${server.url.replace('http', 'ws')}/socket`, { headers: auth });
    const messages: Array<{ MessageType: string; Data?: unknown }> = [];
    socket.on('message', (data) => messages.push(JSON.parse(data.toString())));
    await new Promise((resolve) => socket.once('open', resolve));
    await until(() => messages.length >= 1);
    t.match(messages[0], { MessageType: 'ForceKeepAlive', Data: 60 }, 'the server names its keep-alive period first');
    socket.send(JSON.stringify({ MessageType: 'KeepAlive' }));
    socket.send(JSON.stringify({ MessageType: 'SessionsStart', Data: '0,1500' }));
    await until(() => messages.some((m) => m.MessageType === 'Sessions') && messages.some((m) => m.MessageType === 'KeepAlive'));
    t.equal(parseMediaSessions(messages.find((m) => m.MessageType === 'Sessions')!.Data).length, 1, 'the pushed list is the session list');
    socket.close();
    t.same([...server.deviceIds], ['dev-1'], 'the server reads the DeviceId from the header');
  },
);

t.test('play → start within 1 s of the push, with user, player, address and the transcode bitrate; pause, resume, quality change, stop', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, kinds, changes, connected, source, count } = listen(t, server);
  await connected();
  const pushed = Date.now();
  const session = server.play({
    userName: 'alice',
    client: 'Jellyfin Web',
    remoteEndPoint: '::ffff:203.0.113.7',
    nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 4_000_000 },
  });
  await until(() => events.length >= 1);
  t.ok(events[0]!.at - pushed < 1000, `the event came ${events[0]!.at - pushed} ms after the push`);
  t.match(events[0], {
    kind: 'start',
    address: '203.0.113.7',
    sessionKey: `${server.serverId}:${session.id}`,
    user: 'alice',
    player: 'Jellyfin Web',
    bandwidth: 4_000_000,
    directPlay: false,
    source: 'jellyfin',
  });
  server.pause(session.id);
  await until(() => kinds().includes('pause'));
  server.pause(session.id, false);
  await until(() => kinds().at(-1) === 'progress');
  server.setTranscodeBitrate(session.id, 8_000_000);
  await until(() => events.some((event) => event.bandwidth === 8_000_000));
  t.equal(events.at(-1)!.kind, 'progress', 'a quality change is the same session with a new need');
  server.noise();
  server.stop(session.id);
  await until(() => kinds().includes('stop'));
  t.same(changes(), ['start', 'pause', 'stop'], 'other messages change nothing');
  t.ok(
    events.every((event) => event.sessionKey === events[0]!.sessionKey),
    'one session key throughout',
  );
  t.equal(source.status().sessions, 0);
  t.ok(count('pushes') >= 5, 'everything came by push');
});

t.test('direct play: the video stream bitrate, else the media source bitrate fetched once per item; a browsing session never plays', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, connected, source, changes } = listen(t, server);
  await connected();
  server.addSession({ remoteEndPoint: '10.200.1.9', client: 'Jellyfin Android' }); // browsing: no NowPlayingItem
  const streamed = server.play({ remoteEndPoint: '10.200.1.1', nowPlaying: { playMethod: 'DirectPlay', videoBitrate: 7_000_000 } });
  const unknown = server.play({
    remoteEndPoint: '10.200.1.2',
    nowPlaying: { playMethod: 'DirectPlay', videoBitrate: undefined, mediaSourceBitrate: 9_500_000 },
  });
  server.play({ remoteEndPoint: '10.200.1.3', nowPlaying: { playMethod: 'DirectStream', transcodeBitrate: 6_000_000 } }); // a remux
  await until(() => events.filter((event) => event.kind === 'start').length === 3);
  t.match(
    events.find((event) => event.address === '10.200.1.3'),
    { kind: 'start', bandwidth: 6_000_000, directPlay: true },
    "a remux: the transcoder's bitrate, with direct play's headroom",
  );
  t.match(
    events.find((event) => event.address === '10.200.1.1'),
    { kind: 'start', mediaBitrate: 7_000_000, directPlay: true },
  );
  t.match(
    events.find((event) => event.address === '10.200.1.2'),
    { kind: 'start', mediaBitrate: 9_500_000, directPlay: true },
  );
  for (let i = 0; i < 3; i++) server.pause(unknown.id, i % 2 === 0);
  server.pause(streamed.id);
  await until(() => changes('10.200.1.1').includes('pause'));
  t.equal(server.requests.filter((request) => request.path === '/Items').length, 1, 'the item was looked up once, not per push');
  t.notOk(
    events.some((event) => event.address === '10.200.1.9'),
    'the browsing session has no events',
  );
  t.equal(source.status().sessions, 3);
});

t.test('addresses: bare IPv4, bare IPv6, ::ffff: mapped; loopback, a bridge and a proxy get no pipe, one warning each, their bandwidth reserved', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, logs, connected, source } = listen(t, server, { bridgeAddresses: new Set(['172.17.0.1']), proxyAddresses: ['192.0.2.80'] });
  await connected();
  server.play({ remoteEndPoint: '198.51.100.4' });
  server.play({ remoteEndPoint: '2001:db8::7' });
  server.play({ remoteEndPoint: '::ffff:198.51.100.5' });
  server.play({ userName: 'bob', client: 'Jellyfin Roku', remoteEndPoint: '127.0.0.1', nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 3_000_000 } });
  server.play({ userName: 'carol', remoteEndPoint: '::ffff:172.17.0.1', nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 2_000_000 } });
  const proxied = server.play({ userName: 'dave', remoteEndPoint: '192.0.2.80', nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 1_000_000 } });
  await until(() => events.length >= 3 && source.status().skipped.length === 3);
  for (let i = 0; i < 3; i++) server.pause(proxied.id, i % 2 === 0);
  await sleep(200);
  t.same(
    events
      .filter((event) => event.kind === 'start')
      .map((event) => event.address)
      .sort(),
    ['198.51.100.4', '198.51.100.5', '2001:db8::7'],
  );
  const warnings = logs.filter((line) => line.level === 40 && /^not shaping/.test(line.msg));
  t.equal(warnings.length, 3, 'one warning per session, however many pushes');
  t.match(warnings.map((line) => line.msg).sort(), [
    /^not shaping bob on Jellyfin Roku \(SHIELD Android TV\): the address 127\.0\.0\.1 is loopback/,
    /^not shaping carol .*172\.17\.0\.1/,
    /^not shaping dave .*192\.0\.2\.80/,
  ]);
  t.equal(source.reservedBandwidth(), 6_000_000, 'their bandwidth is kept out of the pipes');
  server.stop(proxied.id);
  await until(() => source.reservedBandwidth() === 5_000_000);
  t.notOk(
    events.some((event) => event.kind === 'stop'),
    'its stop gives no event either',
  );
});

t.test('a dropped websocket: reconnect and full reconcile — ended meanwhile released, started meanwhile picked up, one DeviceId', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, changes, connected, source } = listen(t, server);
  await connected();
  server.play({ remoteEndPoint: '10.200.1.1' });
  const leaving = server.play({ remoteEndPoint: '10.200.1.2' });
  await until(() => events.filter((e) => e.kind === 'start').length === 2);
  server.dropSockets();
  server.endSession(leaving.id); // ended while nobody listened
  server.play({ remoteEndPoint: '10.200.1.3' }); // started while nobody listened
  await until(() => changes('10.200.1.2').includes('stop') && changes('10.200.1.3').includes('start'), 10_000);
  t.ok(server.connections >= 2, `reconnected (${server.connections} connections)`);
  t.same(changes('10.200.1.1'), ['start'], 'the session that played on is confirmed, not restarted');
  t.same(changes('10.200.1.2'), ['start', 'stop']);
  t.equal(source.status().sessions, 2);
  t.equal(server.deviceIds.size, 1, 'every request and socket presented the same DeviceId');
  t.ok(server.received.filter((message) => message.MessageType === 'SessionsStart').length >= 2, 'SessionsStart again on the new socket');
});

t.test('the server restarted: clean close, sessions gone → stopped; the same device playing again → a new start', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, changes, connected, logs } = listen(t, server);
  await connected();
  const before = server.play({ remoteEndPoint: '10.200.1.1', deviceId: 'tv-1' });
  await until(() => events.length >= 1);
  server.restart();
  await until(() => changes('10.200.1.1').includes('stop'), 10_000);
  const after = server.play({ remoteEndPoint: '10.200.1.1', deviceId: 'tv-1' });
  t.equal(after.id, before.id, 'Jellyfin gives the device the same session id');
  await until(() => changes('10.200.1.1').length === 3, 10_000);
  t.same(changes('10.200.1.1'), ['start', 'stop', 'start']);
  t.ok(logs.some((line) => line.msg === 'Jellyfin websocket reconnected'));
});

t.test('server down at start: "waiting for Jellyfin", retries doubling to the cap (1 s → 30 s; here 50 → 400 ms), then plays', async (t) => {
  const server = await startJellyfinServer(t);
  await server.down();
  const { source, logs, events, connected } = listen(t, server);
  await until(() => logs.filter((line) => line.retryMs !== undefined).length >= 5, 10_000);
  t.equal(source.status().state, 'waiting for Jellyfin');
  t.match(source.status().lastError, /ECONNREFUSED/);
  t.equal(logs.filter((line) => line.level === 40 && /^waiting for Jellyfin/.test(line.msg)).length, 1, 'one warning, not one per retry');
  t.same(
    logs
      .filter((line) => line.retryMs !== undefined)
      .map((line) => line.retryMs)
      .slice(0, 5),
    [50, 100, 200, 400, 400],
  );
  server.addSession({ remoteEndPoint: '10.200.1.1', nowPlaying: {} });
  await server.listen();
  await connected();
  await until(() => events.length >= 1);
  t.equal(events[0]!.kind, 'start', 'the reconcile on connect finds what already played');
});

t.test('401: one error line, retried every unauthorizedRetryMs, recovers once the key is right', async (t) => {
  const server = await startJellyfinServer(t);
  server.apiKey = 'another-key-entirely';
  const { source, logs, events, connected } = listen(t, server);
  await until(() => server.requests.filter((r) => r.status === 401).length >= 3, 10_000);
  t.equal(source.status().state, 'key rejected');
  t.equal(source.status().lastError, 'Jellyfin rejected the API key');
  const errors = logs.filter((line) => line.level >= 50);
  t.equal(errors.length, 1, 'one error line');
  t.match(errors[0]!.msg, /^Jellyfin rejected the API key \(401\)/);
  server.apiKey = SECRET_KEY;
  server.play({ remoteEndPoint: '10.200.1.1' });
  await connected();
  await until(() => events.length >= 1);
});

t.test('malformed pushes and slow, failing or malformed listings: one clear line each, nothing lost', async (t) => {
  const server = await startJellyfinServer(t);
  server.behaviour.slowMs = 2000;
  const { source, events, logs, requests, connected, changes, count } = listen(t, server, { timings: { pollMs: 150 } });
  await connected();
  server.play({ remoteEndPoint: '10.200.1.1' });
  await until(() => events.length >= 1);
  server.sendRaw('this is not json');
  server.sendRaw(JSON.stringify({ MessageType: 'Sessions', Data: { not: 'a list' } }));
  await until(() => logs.some((line) => /malformed Jellyfin Sessions message/.test(line.msg)));
  t.ok(logs.some((line) => /not JSON/.test(line.msg)));
  for (const [behaviour, result] of [
    ['slow', 'timeout'],
    ['error', 'http-error'],
    ['malformed', 'malformed'],
  ] as const) {
    server.behaviour.sessions = behaviour;
    const seen = requests.length;
    await until(() => requests.slice(seen).some((r) => r.endpoint === '/Sessions' && r.result === result), 10_000);
    t.pass(`${behaviour} → ${result}`);
  }
  const failures = logs.filter((line) => /session listing failed/.test(line.msg));
  t.ok(failures.length >= 3 && failures.length <= 4, `one line per distinct failure, not one per poll (${failures.length})`);
  t.ok(
    failures.some((line) => /no answer within 0\.3 s/.test(line.msg)),
    'the timeout is named',
  );
  t.same(changes(), ['start'], 'no session was dropped for a bad message or a failed listing');
  server.behaviour.sessions = 'ok';
  const listings = count('listings');
  await until(() => count('listings') > listings);
  t.equal(source.status().state, 'connected', 'the websocket stayed up throughout');
});

t.test('a server that pushes nothing: after the wait, polling every 2 s, said in the status; play → start within 3 s', async (t) => {
  const server = await startJellyfinServer(t);
  server.behaviour.push = false;
  const { source, events, logs, connected } = listen(t, server, { timings: { pushWaitMs: 500 } });
  await connected();
  await until(() => source.status().note !== undefined, 5000);
  t.match(source.status().note, /^polling GET \/Sessions every 2 s: no Sessions message within 0\.5 s of SessionsStart/);
  t.equal(logs.filter((line) => /polling GET \/Sessions/.test(line.msg)).length, 1, 'one warning');
  const played = Date.now();
  server.play({ remoteEndPoint: '10.200.1.1' });
  await until(() => events.length >= 1, 5000);
  t.ok(events[0]!.at - played <= 3000, `the start came ${events[0]!.at - played} ms after the play`);
  server.behaviour.push = true;
  server.pause(server.sessionList()[0]!.Id!);
  await until(() => source.status().note === undefined, 5000);
  t.ok(
    logs.some((line) => /pushes sessions now: polling stopped/.test(line.msg)),
    'back to pushes once one arrives',
  );
});

t.test('a proxy that refuses the websocket: sessions followed by polling, said in the status; pushes again once it passes', async (t) => {
  const server = await startJellyfinServer(t);
  server.behaviour.refuseSockets = true;
  const { source, events, logs, connected, changes } = listen(t, server, { timings: { retryMaxMs: 1000 } });
  await connected();
  t.equal(source.status().state, 'connected', 'the HTTP API answers: connected');
  t.match(
    source.status().note,
    /^polling GET \/Sessions every 2 s: the websocket \/socket was refused \(websocket refused with HTTP 400\); tried again every 1 s$/,
  );
  const played = Date.now();
  const session = server.play({ remoteEndPoint: '10.200.1.1' });
  await until(() => events.length >= 1, 5000);
  t.ok(events[0]!.at - played <= 3000, `the start came ${events[0]!.at - played} ms after the play`);
  await sleep(2500);
  t.equal(logs.filter((line) => /was refused/.test(line.msg)).length, 1, 'told once, however many retries');
  server.behaviour.refuseSockets = false;
  await until(() => source.status().note === undefined && server.openSockets === 1, 5000);
  server.stop(session.id);
  await until(() => changes().includes('stop'));
  t.same(changes(), ['start', 'stop']);
});

t.test('keep-alive: KeepAlive every half of the period the server names; a silently dead socket is replaced and reconciled', async (t) => {
  const server = await startJellyfinServer(t, { keepAliveSeconds: 0.4 });
  const { events, logs, connected, changes } = listen(t, server);
  await connected();
  await until(() => server.received.filter((message) => message.MessageType === 'KeepAlive').length >= 3, 5000);
  const session = server.play({ remoteEndPoint: '10.200.1.1' });
  await until(() => events.length >= 1);
  server.behaviour.deadSockets = true;
  await until(() => logs.some((line) => /^no answer from Jellyfin for \d+ s: reconnecting/.test(line.msg)), 10_000);
  server.behaviour.deadSockets = false;
  server.endSession(session.id);
  await until(() => server.connections >= 2 && changes().includes('stop'), 10_000);
  t.same(changes(), ['start', 'stop'], 'what changed while the path was dead is reconciled');
});

t.test('every push lists every session: only changes become events at once; a quiet session is still confirmed now and then', async (t) => {
  const server = await startJellyfinServer(t);
  const { events, connected, count } = listen(t, server, { idleMs: 60_000 });
  await connected();
  const watched = server.play({ remoteEndPoint: '10.200.1.1' });
  await until(() => events.length === 1);
  for (let i = 0; i < 20; i++) server.play({ remoteEndPoint: `10.200.2.${i}` }); // 20 pushes, each listing the first session again
  await until(() => count('pushes') >= 21 && events.filter((event) => event.kind === 'start').length === 21);
  t.same(
    events.filter((event) => event.address === '10.200.1.1').map((event) => event.kind),
    ['start'],
    'the unchanged session got no event from the 20 pushes that listed it',
  );
  server.pause(watched.id);
  await until(() => events.some((event) => event.address === '10.200.1.1' && event.kind === 'pause'));

  const quiet = listen(t, server, { idleMs: 400 });
  await quiet.connected();
  await sleep(1500);
  const confirmations = quiet.events.filter((event) => event.address === '10.200.1.1').map((event) => event.kind);
  t.ok(confirmations.filter((kind) => kind === 'pause').length >= 3, `a paused session nobody touches is confirmed by listings (${confirmations.join(',')})`);
});

t.test('Emby: /embywebsocket and X-Emby-Token, the same sessions; its 401 named', async (t) => {
  const server = await startJellyfinServer(t, { kind: 'emby' });
  t.equal(
    (await fetch(`${server.url}/Sessions`, { headers: { Authorization: `MediaBrowser Token="${SECRET_KEY}"` } })).status,
    401,
    "Jellyfin's header is not Emby's",
  );
  const { events, changes, connected, source } = listen(t, server);
  await connected();
  t.ok(server.requests.some((request) => request.path === '/embywebsocket' && request.status === 101));
  const session = server.play({ client: 'Emby Theater', remoteEndPoint: '10.200.1.7', nowPlaying: { playMethod: 'Transcode', transcodeBitrate: 6_000_000 } });
  await until(() => events.length >= 1);
  t.match(events[0], { kind: 'start', address: '10.200.1.7', source: 'emby', bandwidth: 6_000_000, player: 'Emby Theater' });
  server.stop(session.id);
  await until(() => changes().includes('stop'));
  t.equal(source.status().source, 'emby');
  t.equal(server.deviceIds.size, 1, 'one DeviceId, in X-Emby-Authorization');
  server.apiKey = 'rotated';
  server.dropSockets();
  await until(() => source.status().state === 'key rejected', 10_000);
  t.equal(source.status().lastError, 'Emby rejected the API key');
});
