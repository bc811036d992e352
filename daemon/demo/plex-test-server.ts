/**
 * A Plex Media Server stand-in for the tests and the demo: real HTTP(S) and a real websocket speaking
 * Plex's formats. `/status/sessions` answers JSON with PMS's own types (strings for keys and ids, numbers
 * for rates and offsets, booleans for flags) when asked for JSON, else XML with "1"/"0" attributes;
 * `/:/websockets/notifications` sends NotificationContainer frames (or the old `_children` form). The
 * token is accepted as the X-Plex-Token header or query parameter; anything else gets 401.
 *
 * Its fixtures are written from Plex's documented field lists, not from shaperr's client, so a mistake in
 * the client cannot be mirrored here. Faults are scripted: slow, 500 and malformed answers, sockets
 * dropped without a close, sockets that stop answering pings, a restart that starts session keys over.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { XMLBuilder } from 'fast-xml-parser';
import { type WebSocket, WebSocketServer } from 'ws';
import { RestartableServer } from './restartable-server.js';

export type PlexPlaybackState = 'playing' | 'paused' | 'buffering' | 'stopped' | 'error';

/** One playback as PMS models it in /status/sessions (the fields shaperr's issue lists). */
export interface PlexTestSession {
  /** Digits, as a string; allocated by the server when left out. */
  sessionKey: string;
  ratingKey: string;
  title: string;
  type: 'movie' | 'episode' | 'track';
  viewOffset: number;
  playQueueItemID: number;
  state: PlexPlaybackState;
  user: { id: string; title: string };
  player: {
    address: string;
    remotePublicAddress: string;
    local: boolean;
    /** Left out entirely by servers that predate the attribute. */
    relayed?: boolean;
    secure: boolean;
    machineIdentifier: string;
    product: string;
    platform: string;
    title: string;
  };
  /** bandwidth: kbit/s Plex reserved for the stream. */
  session: { id: string; bandwidth: number; location: 'lan' | 'wan' | 'cellular' };
  /** bitrate: kbit/s, the file's average. */
  media: Array<{ bitrate: number }>;
  /** Present once a transcoder runs. */
  transcode?: { key: string; videoDecision: 'transcode' | 'copy' | 'directplay' };
}

export type SessionInput = Partial<Omit<PlexTestSession, 'user' | 'player' | 'session'>> & {
  user?: Partial<PlexTestSession['user']>;
  player?: Partial<PlexTestSession['player']>;
  session?: Partial<PlexTestSession['session']>;
};

export interface PlexTestServerOptions {
  token: string;
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  /** Serve https/wss with this certificate. */
  tls?: { key: string; cert: string };
  friendlyName?: string;
  version?: string;
  machineIdentifier?: string;
}

/** Faults and variants, switchable while the server runs. */
export interface PlexTestBehaviour {
  /** How /status/sessions answers: normally, late, with a 500, with broken JSON, or always as XML. */
  sessions: 'ok' | 'slow' | 'error' | 'malformed' | 'xml-only';
  /** Delay of a 'slow' answer. */
  slowMs: number;
  /** Notification frames in the old `_elementType`/`_children` form. */
  legacyNotifications: boolean;
  /** Websocket pings go unanswered and no frame is sent: a connection whose TCP path died silently. */
  deadSockets: boolean;
}

export interface PlexTestRequest {
  method: string;
  path: string;
  status: number;
  accept?: string;
  /** The client's TCP port: requests with the same one came over the same (kept-alive) connection. */
  clientPort?: number;
}

const XML = new XMLBuilder({ ignoreAttributes: false, attributeNamePrefix: '@', suppressEmptyNode: true });

export class PlexTestServer {
  readonly behaviour: PlexTestBehaviour = { sessions: 'ok', slowMs: 10_000, legacyNotifications: false, deadSockets: false };
  readonly requests: PlexTestRequest[] = [];
  /** Websocket connections accepted so far. */
  connections = 0;
  token: string;
  readonly machineIdentifier: string;
  readonly friendlyName: string;
  readonly version: string;
  private readonly sessions = new Map<string, PlexTestSession>();
  private readonly sockets = new Set<WebSocket>();
  private readonly wss = new WebSocketServer({ noServer: true, autoPong: false });
  private nextSessionKey = 1;
  private nextRatingKey = 1000;
  private readonly http: RestartableServer;

  private constructor(options: PlexTestServerOptions) {
    this.token = options.token;
    this.machineIdentifier = options.machineIdentifier ?? randomBytes(20).toString('hex');
    this.friendlyName = options.friendlyName ?? 'shaperr test server';
    this.version = options.version ?? '1.41.3.9314-a0bfb8370';
    this.http = new RestartableServer(
      (request, response) => void this.onRequest(request, response),
      (request, socket, head) => this.onUpgrade(request, socket, head),
      { host: options.host, port: options.port, tls: options.tls },
    );
  }

  static async start(options: PlexTestServerOptions): Promise<PlexTestServer> {
    const server = new PlexTestServer(options);
    await server.listen();
    return server;
  }

  get url(): string {
    return this.http.url;
  }

  /** TCP connections open now (HTTP kept alive, websockets). */
  get openConnections(): number {
    return this.http.openConnections;
  }

  /** Starts listening (again, on the same port after `down()`). */
  listen(): Promise<void> {
    return this.http.listen();
  }

  /** Plex goes away: every connection is cut (no close frame) and nothing listens until `listen()`. */
  async down(): Promise<void> {
    for (const socket of this.sockets) socket.terminate();
    await this.http.down();
  }

  async close(): Promise<void> {
    await this.down();
    this.wss.close();
  }

  /** Plex restarted: sockets closed cleanly (1001), every session gone, session keys start over at 1. */
  restart(): void {
    for (const socket of this.sockets) socket.close(1001, 'server restarting');
    this.sessions.clear();
    this.nextSessionKey = 1;
  }

  /** Cuts every websocket without a close frame (a dropped connection); HTTP keeps working. */
  dropSockets(): void {
    for (const socket of this.sockets) socket.terminate();
  }

  get openSockets(): number {
    return this.sockets.size;
  }

  /** Adds (or replaces) a session as /status/sessions lists it; no notification is sent. */
  addSession(input: SessionInput = {}): PlexTestSession {
    const sessionKey = input.sessionKey ?? String(this.nextSessionKey++);
    const address = input.player?.address ?? '10.200.1.1';
    const local = input.player?.local ?? input.session?.location === 'lan';
    const session: PlexTestSession = {
      sessionKey,
      ratingKey: input.ratingKey ?? String(this.nextRatingKey++),
      title: input.title ?? 'Big Buck Bunny',
      type: input.type ?? 'movie',
      viewOffset: input.viewOffset ?? 0,
      playQueueItemID: input.playQueueItemID ?? 1,
      state: input.state ?? 'playing',
      user: { id: '1', title: 'remi', ...input.user },
      player: {
        address,
        remotePublicAddress: address,
        local,
        relayed: false,
        secure: true,
        machineIdentifier: randomBytes(12).toString('hex'),
        product: 'Plex for Android (TV)',
        platform: 'Android',
        title: 'SHIELD Android TV',
        ...input.player,
      },
      session: { id: randomBytes(12).toString('hex'), bandwidth: 6000, location: local ? 'lan' : 'wan', ...input.session },
      media: input.media ?? [{ bitrate: 5000 }],
    };
    if (input.player && 'relayed' in input.player && input.player.relayed === undefined) delete session.player.relayed;
    if (input.transcode) session.transcode = input.transcode;
    this.sessions.set(sessionKey, session);
    return session;
  }

  session(sessionKey: string): PlexTestSession | undefined {
    return this.sessions.get(sessionKey);
  }

  /** Changes a listed session in place (state, bandwidth, ratingKey…). */
  updateSession(sessionKey: string, change: (session: PlexTestSession) => void): PlexTestSession {
    const session = this.sessions.get(sessionKey);
    if (!session) throw new Error(`no session ${sessionKey}`);
    change(session);
    return session;
  }

  /** Drops a session from /status/sessions without any notification (it ended while nobody listened). */
  removeSession(sessionKey: string): void {
    this.sessions.delete(sessionKey);
  }

  /** A new playback: listed, then announced as playing — what PMS does when a client presses play. */
  play(input: SessionInput = {}): PlexTestSession {
    const session = this.addSession({ ...input, state: input.state ?? 'playing' });
    this.notify(session.sessionKey);
    return session;
  }

  /** State change of a listed session, announced at once (stopped also removes it from the listing). */
  setState(sessionKey: string, state: PlexPlaybackState): void {
    const session = this.updateSession(sessionKey, (s) => (s.state = state));
    this.notify(session.sessionKey);
    if (state === 'stopped') this.sessions.delete(sessionKey);
  }

  /**
   * The viewer picks another quality (kbit/s): PMS starts a new transcoder under a new key, lists the
   * stream's new bandwidth and announces it playing, naming the new transcodeSession.
   */
  changeQuality(sessionKey: string, bandwidth: number): PlexTestSession {
    const session = this.updateSession(sessionKey, (s) => {
      s.session.bandwidth = bandwidth;
      s.transcode = { key: `/transcode/sessions/${randomBytes(8).toString('hex')}`, videoDecision: 'transcode' };
    });
    this.notify(sessionKey);
    return session;
  }

  /** Sends one PlaySessionStateNotification per session key (the periodic ~10 s one, or a state change). */
  notify(...sessionKeys: string[]): void {
    const entries = sessionKeys.map((key) => {
      const session = this.sessions.get(key);
      if (!session) throw new Error(`no session ${key}`);
      return notificationEntry(session);
    });
    this.broadcast('playing', 'PlaySessionStateNotification', entries);
  }

  /** Frames shaperr must ignore: library activity, timeline and reachability. */
  noise(): void {
    this.broadcast('activity', 'ActivityNotification', [
      { event: 'updated', uuid: randomBytes(8).toString('hex'), Activity: { type: 'library.update.section', title: 'Scanning', progress: 40 } },
    ]);
    this.broadcast('timeline', 'TimelineEntry', [{ identifier: 'com.plexapp.plugins.library', sectionID: '1', itemID: '3', type: 1, state: 5 }]);
    this.broadcast('reachability', 'ReachabilityNotification', [{ reachability: true }]);
  }

  /** Sends raw text on every websocket (garbage frames). */
  sendRaw(text: string): void {
    for (const socket of this.sockets) socket.send(text);
  }

  private broadcast(type: string, listName: string, entries: object[]): void {
    if (this.behaviour.deadSockets) return;
    const frame = this.behaviour.legacyNotifications
      ? { _elementType: 'NotificationContainer', type, size: entries.length, _children: entries.map((entry) => ({ _elementType: listName, ...entry })) }
      : { NotificationContainer: { type, size: entries.length, [listName]: entries } };
    const text = JSON.stringify(frame);
    for (const socket of this.sockets) socket.send(text);
  }

  private authorised(request: IncomingMessage, url: URL): boolean {
    const given = request.headers['x-plex-token'] ?? url.searchParams.get('X-Plex-Token');
    return given === this.token;
  }

  private async onRequest(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://plex');
    const accept = request.headers.accept ?? '';
    const wantsJson = accept.includes('application/json');
    const answer = (status: number, body: string, type: string) => {
      const clientPort = request.socket.remotePort;
      this.requests.push({ method: request.method ?? 'GET', path: url.pathname, status, ...(accept ? { accept } : {}), ...(clientPort ? { clientPort } : {}) });
      response.writeHead(status, { 'content-type': type, 'x-plex-protocol': '1.0' }).end(body);
    };
    // /identity is the one endpoint PMS serves without a token.
    if (url.pathname === '/identity') {
      const container = { size: 0, claimed: true, machineIdentifier: this.machineIdentifier, version: this.version };
      return wantsJson
        ? answer(200, JSON.stringify({ MediaContainer: container }), 'application/json')
        : answer(200, xmlDocument({ MediaContainer: xmlAttributes(container) }), 'text/xml;charset=utf-8');
    }
    if (!this.authorised(request, url))
      return answer(401, '<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>', 'text/html');
    if (url.pathname === '/') {
      const container = {
        size: 0,
        friendlyName: this.friendlyName,
        machineIdentifier: this.machineIdentifier,
        version: this.version,
        myPlex: true,
        platform: 'Linux',
        transcoderActiveVideoSessions: 0,
      };
      return wantsJson
        ? answer(200, JSON.stringify({ MediaContainer: container }), 'application/json')
        : answer(200, xmlDocument({ MediaContainer: xmlAttributes(container) }), 'text/xml;charset=utf-8');
    }
    if (url.pathname === '/status/sessions') {
      const mode = this.behaviour.sessions;
      if (mode === 'slow') await new Promise((resolve) => setTimeout(resolve, this.behaviour.slowMs));
      if (mode === 'error') return answer(500, '<html><body><h1>500 Internal Server Error</h1></body></html>', 'text/html');
      if (mode === 'malformed') return answer(200, '{"MediaContainer":{"size":1,"Metadata":[{"sessionKey":"1",', 'application/json');
      const sessions = [...this.sessions.values()];
      if (wantsJson && mode !== 'xml-only') return answer(200, JSON.stringify(sessionsJson(sessions)), 'application/json');
      return answer(200, sessionsXml(sessions), 'text/xml;charset=utf-8');
    }
    return answer(404, '<html><body><h1>404 Not Found</h1></body></html>', 'text/html');
  }

  private onUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void {
    const url = new URL(request.url ?? '/', 'http://plex');
    const refuse = (status: string) => {
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (url.pathname !== '/:/websockets/notifications') {
      refuse('404 Not Found');
      return;
    }
    if (!this.authorised(request, url)) {
      this.requests.push({ method: 'GET', path: url.pathname, status: 401 });
      refuse('401 Unauthorized');
      return;
    }
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.requests.push({ method: 'GET', path: url.pathname, status: 101 });
      this.connections++;
      this.sockets.add(ws);
      ws.on('ping', (data) => {
        if (!this.behaviour.deadSockets) ws.pong(data);
      });
      ws.on('close', () => this.sockets.delete(ws));
      ws.on('error', () => this.sockets.delete(ws));
    });
  }
}

function notificationEntry(session: PlexTestSession): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    sessionKey: session.sessionKey,
    clientIdentifier: session.player.machineIdentifier,
    guid: '',
    ratingKey: session.ratingKey,
    url: '',
    key: `/library/metadata/${session.ratingKey}`,
    viewOffset: session.viewOffset,
    playQueueItemID: session.playQueueItemID,
    playQueueID: 7,
    state: session.state,
  };
  if (session.transcode) entry.transcodeSession = session.transcode.key.split('/').pop();
  return entry;
}

/** A playing item's own attributes, the same in both of PMS's listings. */
function itemAttributes(session: PlexTestSession) {
  return {
    addedAt: 1690000000,
    key: `/library/metadata/${session.ratingKey}`,
    ratingKey: session.ratingKey,
    sessionKey: session.sessionKey,
    title: session.title,
    type: session.type,
    viewOffset: session.viewOffset,
  };
}

/** PMS's JSON: keys and ids as strings, rates and offsets as numbers, flags as booleans. */
function sessionsJson(sessions: readonly PlexTestSession[]): object {
  return {
    MediaContainer: {
      size: sessions.length,
      Metadata: sessions.map((session) => {
        const metadata: Record<string, unknown> = {
          ...itemAttributes(session),
          duration: 596000,
          Media: session.media.map((media, index) => ({
            id: String(index + 1),
            bitrate: media.bitrate,
            videoResolution: '1080',
            container: 'mkv',
            Part: [{ id: String(index + 1), decision: session.transcode ? 'transcode' : 'directplay' }],
          })),
          User: { id: session.user.id, thumb: 'https://plex.tv/users/x/avatar', title: session.user.title },
          Player: { ...session.player, profile: 'Android', state: session.state, userID: Number(session.user.id), version: '10.25.1' },
          Session: { ...session.session },
        };
        if (session.transcode)
          metadata.TranscodeSession = {
            key: session.transcode.key,
            throttled: false,
            progress: 12.5,
            speed: 2.1,
            videoDecision: session.transcode.videoDecision,
          };
        return metadata;
      }),
    },
  };
}

/** The same listing as XML: every value an attribute, flags "1"/"0". */
function sessionsXml(sessions: readonly PlexTestSession[]): string {
  const tagOf = { movie: 'Video', episode: 'Video', track: 'Track' } as const;
  const grouped: Record<string, object[]> = {};
  for (const session of sessions) {
    const element: Record<string, unknown> = {
      ...xmlAttributes(itemAttributes(session)),
      Media: session.media.map((media, index) => xmlAttributes({ id: index + 1, bitrate: media.bitrate, videoResolution: '1080' })),
      User: xmlAttributes(session.user),
      Player: xmlAttributes({ ...session.player, state: session.state, userID: session.user.id }),
      Session: xmlAttributes(session.session),
    };
    if (session.transcode)
      element.TranscodeSession = xmlAttributes({ key: session.transcode.key, throttled: false, videoDecision: session.transcode.videoDecision });
    grouped[tagOf[session.type]] ??= [];
    grouped[tagOf[session.type]]!.push(element);
  }
  return xmlDocument({ MediaContainer: { ...xmlAttributes({ size: sessions.length }), ...grouped } });
}

function xmlAttributes(values: object): Record<string, string> {
  const attributes: Record<string, string> = {};
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined) continue;
    attributes[`@${name}`] = typeof value === 'boolean' ? (value ? '1' : '0') : String(value);
  }
  return attributes;
}

function xmlDocument(content: object): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n${XML.build(content) as string}`;
}
