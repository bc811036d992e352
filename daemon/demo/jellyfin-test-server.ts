/**
 * A Jellyfin (or Emby) server stand-in for the tests and the demo: real HTTP and a real websocket speaking
 * the servers' own formats. `GET /System/Info` and `GET /Sessions` answer PascalCase JSON; `GET /Items?Ids=`
 * gives an item's media sources; the websocket (`/socket`, Emby `/embywebsocket`) opens with ForceKeepAlive,
 * answers KeepAlive, and after `{"MessageType":"SessionsStart","Data":"<delay>,<interval>"}` pushes the
 * whole session list as `Sessions` messages at once and whenever a playback starts, stops, pauses or changes.
 *
 * Jellyfin takes its API key in `Authorization: MediaBrowser Token="…", …, DeviceId="…"`; Emby in
 * `X-Emby-Token` (its device in `X-Emby-Authorization`). Nothing else is accepted: a key in the URL gets
 * 401 like a wrong key, so a client that leaks its key into URLs fails here. The two dialects differ only
 * in the `dialects` table below.
 *
 * Every payload is typed with the official @jellyfin/sdk models, each object with its own model (the SDK's
 * declaration files import each other without extensions, which NodeNext resolution cannot follow, so a
 * nested field typed through its parent would go unchecked). The fixtures follow those models, never
 * shaperr's client. Faults are scripted: slow, 500 and malformed listings, a server that pushes nothing,
 * garbage frames, sockets dropped without a close, sockets that stop answering, a restart.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { BaseItemDto } from '@jellyfin/sdk/lib/generated-client/models/base-item-dto.js';
import type { BaseItemDtoQueryResult } from '@jellyfin/sdk/lib/generated-client/models/base-item-dto-query-result.js';
import type { BaseItemKind } from '@jellyfin/sdk/lib/generated-client/models/base-item-kind.js';
import type { LibraryUpdateInfo } from '@jellyfin/sdk/lib/generated-client/models/library-update-info.js';
import type { ForceKeepAliveMessage } from '@jellyfin/sdk/lib/generated-client/models/force-keep-alive-message.js';
import type { MediaSourceInfo } from '@jellyfin/sdk/lib/generated-client/models/media-source-info.js';
import type { MediaStream } from '@jellyfin/sdk/lib/generated-client/models/media-stream.js';
import type { MediaStreamType } from '@jellyfin/sdk/lib/generated-client/models/media-stream-type.js';
import type { PlayMethod } from '@jellyfin/sdk/lib/generated-client/models/play-method.js';
import type { PlayerStateInfo } from '@jellyfin/sdk/lib/generated-client/models/player-state-info.js';
import type { SessionInfoDto } from '@jellyfin/sdk/lib/generated-client/models/session-info-dto.js';
import type { SessionMessageType } from '@jellyfin/sdk/lib/generated-client/models/session-message-type.js';
import type { SessionsMessage } from '@jellyfin/sdk/lib/generated-client/models/sessions-message.js';
import type { TaskResult } from '@jellyfin/sdk/lib/generated-client/models/task-result.js';
import type { SystemInfo } from '@jellyfin/sdk/lib/generated-client/models/system-info.js';
import type { UserDataChangeInfo } from '@jellyfin/sdk/lib/generated-client/models/user-data-change-info.js';
import type { TranscodingInfo } from '@jellyfin/sdk/lib/generated-client/models/transcoding-info.js';
import { type WebSocket, WebSocketServer } from 'ws';
import { RestartableServer } from './restartable-server.js';

export type MediaServerKind = 'jellyfin' | 'emby';

interface Dialect {
  productName: string;
  version: string;
  socketPath: string;
  /** The API key and the client's DeviceId from a request's headers (undefined: none given). */
  credentials(request: IncomingMessage): { key?: string; deviceId?: string };
}

/** `Key="value", Key2="value"` pairs of a MediaBrowser authorization header. */
export function mediaBrowserParameters(header: string | undefined): Record<string, string> {
  const parameters: Record<string, string> = {};
  const body = header?.replace(/^\s*(MediaBrowser|Emby)\s+/i, '') ?? '';
  for (const match of body.matchAll(/([A-Za-z]+)="([^"]*)"/g)) parameters[match[1]!] = decodeURIComponent(match[2]!);
  return parameters;
}

const headerText = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value[0] : value);

const dialects: Record<MediaServerKind, Dialect> = {
  jellyfin: {
    productName: 'Jellyfin Server',
    version: '10.10.7',
    socketPath: '/socket',
    credentials(request) {
      const header = headerText(request.headers.authorization);
      if (!header || !/^\s*MediaBrowser\s/i.test(header)) return {};
      const parameters = mediaBrowserParameters(header);
      return { key: parameters.Token, deviceId: parameters.DeviceId };
    },
  },
  emby: {
    productName: 'Emby Server',
    version: '4.8.10.0',
    socketPath: '/embywebsocket',
    credentials(request) {
      const device = mediaBrowserParameters(headerText(request.headers['x-emby-authorization']));
      const url = new URL(request.url ?? '/', 'http://emby');
      return { key: headerText(request.headers['x-emby-token']), deviceId: device.DeviceId ?? url.searchParams.get('deviceId') ?? undefined };
    },
  },
};

/** What is playing in a session (absent: the client is browsing or idle). */
export interface TestNowPlaying {
  itemId: string;
  name: string;
  type: BaseItemKind;
  /** bits/s of the file's video stream; undefined: the server does not know it (then the media source says). */
  videoBitrate?: number;
  /** bits/s of the whole file (its media source): only `GET /Items` tells it. */
  mediaSourceBitrate: number;
  playMethod: PlayMethod;
  /** bits/s the transcoder targets; only with playMethod Transcode. */
  transcodeBitrate?: number;
  isPaused: boolean;
}

export interface JellyfinTestSession {
  /** Jellyfin derives it from the client and the device, so a device keeps its session id across restarts. */
  id: string;
  userId: string;
  userName: string;
  client: string;
  deviceName: string;
  deviceId: string;
  /** As the server writes it: bare IPv4, bare IPv6 or `::ffff:` mapped. */
  remoteEndPoint: string;
  nowPlaying?: TestNowPlaying;
}

export type TestSessionInput = Partial<Omit<JellyfinTestSession, 'id' | 'nowPlaying'>> & { nowPlaying?: Partial<TestNowPlaying> };

export interface JellyfinTestServerOptions {
  kind?: MediaServerKind;
  apiKey: string;
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  serverName?: string;
  /** Seconds the server gives in ForceKeepAlive (real servers: 60). */
  keepAliveSeconds?: number;
}

/** Faults and variants, switchable while the server runs. */
export interface JellyfinTestBehaviour {
  /** How `GET /Sessions` answers: normally, late, with a 500, or with broken JSON. */
  sessions: 'ok' | 'slow' | 'error' | 'malformed';
  slowMs: number;
  /** false: SessionsStart is accepted and nothing is ever pushed (jellyfin/jellyfin #13479). */
  push: boolean;
  /** Sockets stay open but send nothing and answer neither pings nor KeepAlive: a silently dead path. */
  deadSockets: boolean;
  /** The websocket's upgrade is answered 400, as by a reverse proxy that does not pass websockets. */
  refuseSockets: boolean;
}

export interface JellyfinTestRequest {
  method: string;
  path: string;
  /** The path with its query string, as the client sent it (to prove no key travels in a URL). */
  url: string;
  status: number;
  deviceId?: string;
}

/** A socket that sent SessionsStart: the first push waits for its initial delay. */
interface Subscriber {
  started: boolean;
  timer?: NodeJS.Timeout;
}

const TICKS_PER_SECOND = 10_000_000;

export class JellyfinTestServer {
  readonly behaviour: JellyfinTestBehaviour = { sessions: 'ok', slowMs: 10_000, push: true, deadSockets: false, refuseSockets: false };
  readonly requests: JellyfinTestRequest[] = [];
  /** Websocket connections accepted so far, and the messages clients sent on them. */
  connections = 0;
  readonly received: Array<{ MessageType?: string; Data?: unknown }> = [];
  apiKey: string;
  readonly kind: MediaServerKind;
  readonly serverId: string;
  private readonly dialect: Dialect;
  private readonly sessions = new Map<string, JellyfinTestSession>();
  private readonly sockets = new Map<WebSocket, Subscriber | undefined>();
  private readonly wss = new WebSocketServer({ noServer: true, autoPong: false });
  private readonly http: RestartableServer;
  private nextItem = 1;

  private constructor(private readonly options: JellyfinTestServerOptions) {
    this.kind = options.kind ?? 'jellyfin';
    this.dialect = dialects[this.kind];
    this.apiKey = options.apiKey;
    this.serverId = randomUUID().replaceAll('-', '');
    this.http = new RestartableServer(
      (request, response) => void this.onRequest(request, response),
      (request, socket, head) => this.onUpgrade(request, socket, head),
      { host: options.host, port: options.port },
    );
  }

  static async start(options: JellyfinTestServerOptions): Promise<JellyfinTestServer> {
    const server = new JellyfinTestServer(options);
    await server.listen();
    return server;
  }

  get url(): string {
    return this.http.url;
  }

  get socketPath(): string {
    return this.dialect.socketPath;
  }

  get openSockets(): number {
    return this.sockets.size;
  }

  /** Every DeviceId clients have presented (a client that keeps its id adds one device, not one per reconnect). */
  get deviceIds(): Set<string> {
    return new Set(this.requests.map((request) => request.deviceId).filter((id) => id !== undefined));
  }

  /** Starts listening (again, on the same port after `down()`). */
  listen(): Promise<void> {
    return this.http.listen();
  }

  /** The server goes away: every connection cut without a close frame, nothing listening until `listen()`. */
  async down(): Promise<void> {
    for (const socket of this.sockets.keys()) socket.terminate();
    await this.http.down();
  }

  async close(): Promise<void> {
    await this.down();
    this.wss.close();
  }

  /** The server restarted: sockets closed cleanly (1001) and every session forgotten. */
  restart(): void {
    for (const socket of this.sockets.keys()) socket.close(1001, 'server restarting');
    this.sessions.clear();
  }

  /** Cuts every websocket without a close frame; HTTP keeps working. */
  dropSockets(): void {
    for (const socket of this.sockets.keys()) socket.terminate();
  }

  /** A client session (a device signed in); it plays when `nowPlaying` is given. */
  addSession(input: TestSessionInput = {}): JellyfinTestSession {
    const client = input.client ?? 'Jellyfin Android';
    const deviceId = input.deviceId ?? randomUUID();
    const session: JellyfinTestSession = {
      id: createHash('md5').update(`${client}${deviceId}`).digest('hex'),
      userId: input.userId ?? randomUUID().replaceAll('-', ''),
      userName: input.userName ?? 'remi',
      client,
      deviceName: input.deviceName ?? 'SHIELD Android TV',
      deviceId,
      remoteEndPoint: input.remoteEndPoint ?? '10.200.1.1',
    };
    if (input.nowPlaying) session.nowPlaying = this.nowPlaying(input.nowPlaying);
    this.sessions.set(session.id, session);
    this.changed();
    return session;
  }

  /** A device starts playing: a new session, or a new item in an existing one. */
  play(input: TestSessionInput & { sessionId?: string } = {}): JellyfinTestSession {
    const existing = input.sessionId ? this.sessions.get(input.sessionId) : undefined;
    if (!existing) return this.addSession({ ...input, nowPlaying: input.nowPlaying ?? {} });
    return this.update(existing.id, (session) => (session.nowPlaying = this.nowPlaying(input.nowPlaying ?? {})));
  }

  pause(sessionId: string, isPaused = true): JellyfinTestSession {
    return this.update(sessionId, (session) => (this.playing(session).isPaused = isPaused));
  }

  /** The client asked for another quality: the transcoder's target changes. */
  setTranscodeBitrate(sessionId: string, bitsPerSecond: number): JellyfinTestSession {
    return this.update(sessionId, (session) => {
      const playing = this.playing(session);
      playing.playMethod = 'Transcode';
      playing.transcodeBitrate = bitsPerSecond;
    });
  }

  /** Playback stops; the session stays (the client is still signed in), as the real servers keep it. */
  stop(sessionId: string): JellyfinTestSession {
    return this.update(sessionId, (session) => delete session.nowPlaying);
  }

  /** The session ends (the client went away), pushed like any change. */
  endSession(sessionId: string): void {
    this.sessions.delete(sessionId);
    this.changed();
  }

  /** Changes a session in place and pushes the new list. */
  update(sessionId: string, change: (session: JellyfinTestSession) => void): JellyfinTestSession {
    const session = this.sessions.get(sessionId);
    if (!session) throw new Error(`no session ${sessionId}`);
    change(session);
    this.changed();
    return session;
  }

  session(sessionId: string): JellyfinTestSession | undefined {
    return this.sessions.get(sessionId);
  }

  /** Sends raw text on every websocket (garbage frames). */
  sendRaw(text: string): void {
    for (const socket of this.sockets.keys()) socket.send(text);
  }

  /** Messages a client must ignore: library changes, user data, a scheduled task. */
  noise(): void {
    const library: LibraryUpdateInfo = { ItemsAdded: [randomUUID()], ItemsRemoved: [], ItemsUpdated: [], FoldersAddedTo: [], FoldersRemovedFrom: [] };
    const userData: UserDataChangeInfo = { UserId: randomUUID(), UserDataList: [] };
    const task: TaskResult = { Name: 'Scan Media Library', Status: 'Completed', Key: 'RefreshLibrary', Id: randomUUID() };
    this.broadcast('LibraryChanged', library);
    this.broadcast('UserDataChanged', userData);
    this.broadcast('ScheduledTaskEnded', task);
  }

  /** GET /Sessions as the server answers it now. */
  sessionList(): SessionInfoDto[] {
    return [...this.sessions.values()].map((session) => sessionDto(session, this.serverId));
  }

  private playing(session: JellyfinTestSession): TestNowPlaying {
    if (!session.nowPlaying) throw new Error(`session ${session.id} plays nothing`);
    return session.nowPlaying;
  }

  private nowPlaying(input: Partial<TestNowPlaying>): TestNowPlaying {
    const playMethod = input.playMethod ?? (input.transcodeBitrate !== undefined ? 'Transcode' : 'DirectPlay');
    const playing: TestNowPlaying = {
      itemId: input.itemId ?? `${(this.nextItem++).toString(16).padStart(8, '0')}a1b2c3d4e5f6a7b8c9d0e1f2a3b4`,
      name: input.name ?? 'Big Buck Bunny',
      type: input.type ?? 'Movie',
      mediaSourceBitrate: input.mediaSourceBitrate ?? 5_500_000,
      playMethod,
      isPaused: input.isPaused ?? false,
    };
    if ('videoBitrate' in input) {
      if (input.videoBitrate !== undefined) playing.videoBitrate = input.videoBitrate;
    } else playing.videoBitrate = 5_000_000;
    // A transcode always has a target; a remux (DirectStream) may name one too.
    if (playMethod === 'Transcode') playing.transcodeBitrate = input.transcodeBitrate ?? 4_000_000;
    else if (input.transcodeBitrate !== undefined) playing.transcodeBitrate = input.transcodeBitrate;
    return playing;
  }

  private items(ids: string[]): BaseItemDtoQueryResult {
    const found = [...this.sessions.values()].map((session) => session.nowPlaying).filter((playing) => playing && ids.includes(playing.itemId));
    const items = found.map((playing) => itemWithSources(playing!, this.serverId));
    return { Items: items, TotalRecordCount: items.length, StartIndex: 0 };
  }

  private send(socket: WebSocket, type: SessionMessageType, data: unknown): void {
    if (this.behaviour.deadSockets) return;
    const message = data === undefined ? { MessageType: type, MessageId: randomUUID() } : { MessageType: type, MessageId: randomUUID(), Data: data };
    socket.send(JSON.stringify(message));
  }

  private broadcast(type: SessionMessageType, data: unknown): void {
    for (const socket of this.sockets.keys()) this.send(socket, type, data);
  }

  /** Something changed: a playback start, stop, pause or quality change is pushed at once, as the servers do. */
  private changed(): void {
    for (const [socket, subscriber] of this.sockets) if (subscriber?.started) this.push(socket);
  }

  private push(socket: WebSocket): void {
    if (!this.behaviour.push || this.behaviour.deadSockets) return;
    const message: SessionsMessage = { MessageType: 'Sessions', MessageId: randomUUID(), Data: this.sessionList() };
    socket.send(JSON.stringify(message));
  }

  private async onRequest(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://server');
    const { key, deviceId } = this.dialect.credentials(request);
    const answer = (status: number, body: unknown) => {
      this.requests.push({ method: request.method ?? 'GET', path: url.pathname, url: request.url ?? '/', status, ...(deviceId ? { deviceId } : {}) });
      if (typeof body === 'string') response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
      else response.writeHead(status, { 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(body));
    };
    if (key !== this.apiKey) return answer(401, '');
    if (url.pathname === '/System/Info') {
      const info: SystemInfo = {
        ServerName: this.options.serverName ?? 'shaperr test server',
        Version: this.dialect.version,
        ProductName: this.dialect.productName,
        Id: this.serverId,
        OperatingSystem: 'Linux',
        StartupWizardCompleted: true,
        WebSocketPortNumber: this.http.port,
      };
      return answer(200, info);
    }
    if (url.pathname === '/Sessions') {
      const mode = this.behaviour.sessions;
      if (mode === 'slow') await new Promise((resolve) => setTimeout(resolve, this.behaviour.slowMs));
      if (mode === 'error') return answer(500, 'Error processing request.');
      if (mode === 'malformed') return answer(200, '[{"Id":"0f3e","PlayState":{"IsPaused":fal');
      return answer(200, this.sessionList());
    }
    if (url.pathname === '/Items') return answer(200, this.items((url.searchParams.get('Ids') ?? '').split(',')));
    return answer(404, '');
  }

  private onUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void {
    const url = new URL(request.url ?? '/', 'http://server');
    const { key, deviceId } = this.dialect.credentials(request);
    const refuse = (status: number, text: string) => {
      this.requests.push({ method: 'GET', path: url.pathname, url: request.url ?? '/', status, ...(deviceId ? { deviceId } : {}) });
      socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (url.pathname !== this.dialect.socketPath) refuse(404, 'Not Found');
    else if (key !== this.apiKey) refuse(401, 'Unauthorized');
    else if (this.behaviour.refuseSockets) refuse(400, 'Bad Request');
    else this.accept(request, socket, head, url, deviceId);
  }

  private accept(request: IncomingMessage, socket: Socket, head: Buffer, url: URL, deviceId: string | undefined): void {
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.requests.push({ method: 'GET', path: url.pathname, url: request.url ?? '/', status: 101, ...(deviceId ? { deviceId } : {}) });
      this.connections++;
      this.sockets.set(ws, undefined);
      const keepAlive: ForceKeepAliveMessage = { Data: this.options.keepAliveSeconds ?? 60 };
      this.send(ws, 'ForceKeepAlive', keepAlive.Data);
      ws.on('ping', (data) => {
        if (!this.behaviour.deadSockets) ws.pong(data);
      });
      ws.on('message', (data) => this.onMessage(ws, data.toString()));
      ws.on('close', () => this.forget(ws));
      ws.on('error', () => this.forget(ws));
    });
  }

  private onMessage(socket: WebSocket, text: string): void {
    let message: { MessageType?: string; Data?: unknown };
    try {
      message = JSON.parse(text) as typeof message;
    } catch {
      return;
    }
    this.received.push(message);
    if (message.MessageType === 'KeepAlive') {
      this.send(socket, 'KeepAlive', undefined);
    } else if (message.MessageType === 'SessionsStart') {
      // Data is "<initial delay ms>,<interval ms>"; changes are pushed as they happen, so only the delay matters here.
      const delay = Number(String(message.Data ?? '0').split(',')[0]);
      const subscriber: Subscriber = { started: false };
      this.forget(socket);
      this.sockets.set(socket, subscriber);
      subscriber.timer = setTimeout(
        () => {
          subscriber.started = true;
          if (this.sockets.has(socket)) this.push(socket);
        },
        Number.isFinite(delay) ? delay : 0,
      );
    } else if (message.MessageType === 'SessionsStop') {
      this.forget(socket);
      if (socket.readyState === socket.OPEN) this.sockets.set(socket, undefined);
    }
  }

  private forget(socket: WebSocket): void {
    clearTimeout(this.sockets.get(socket)?.timer);
    this.sockets.delete(socket);
  }
}

/** One session as `GET /Sessions` and the Sessions message list it. */
function sessionDto(session: JellyfinTestSession, serverId: string): SessionInfoDto {
  const playing = session.nowPlaying;
  const playState: PlayerStateInfo = { CanSeek: true, IsPaused: playing?.isPaused ?? false, IsMuted: false, RepeatMode: 'RepeatNone' };
  if (playing) {
    playState.PlayMethod = playing.playMethod;
    playState.PositionTicks = 42 * TICKS_PER_SECOND;
    playState.MediaSourceId = playing.itemId;
  }
  const dto: SessionInfoDto = {
    PlayState: playState,
    RemoteEndPoint: session.remoteEndPoint,
    PlayableMediaTypes: ['Audio', 'Video'],
    Id: session.id,
    UserId: session.userId,
    UserName: session.userName,
    Client: session.client,
    LastActivityDate: new Date().toISOString(),
    LastPlaybackCheckIn: new Date().toISOString(),
    DeviceName: session.deviceName,
    DeviceId: session.deviceId,
    ApplicationVersion: '2.6.1',
    IsActive: true,
    SupportsMediaControl: true,
    SupportsRemoteControl: true,
    HasCustomDeviceName: false,
    ServerId: serverId,
    NowPlayingQueue: [],
    SupportedCommands: [],
  };
  if (playing) {
    dto.NowPlayingItem = nowPlayingItem(playing, serverId);
    if (playing.transcodeBitrate !== undefined) {
      const remux = playing.playMethod !== 'Transcode';
      const transcoding: TranscodingInfo = {
        AudioCodec: 'aac',
        VideoCodec: 'h264',
        Container: 'ts',
        IsVideoDirect: remux,
        IsAudioDirect: remux,
        Bitrate: playing.transcodeBitrate,
        Framerate: 24,
        CompletionPercentage: 12.5,
        Width: 1920,
        Height: 1080,
        AudioChannels: 2,
        TranscodeReasons: remux ? ['ContainerNotSupported'] : ['ContainerBitrateExceedsLimit'],
      };
      dto.TranscodingInfo = transcoding;
    }
  }
  return dto;
}

function videoStream(playing: TestNowPlaying): MediaStream {
  const type: MediaStreamType = 'Video';
  const stream: MediaStream = { Codec: 'h264', Type: type, Index: 0, IsDefault: true, Width: 1920, Height: 1080, IsExternal: false };
  if (playing.videoBitrate !== undefined) stream.BitRate = playing.videoBitrate;
  return stream;
}

function audioStream(): MediaStream {
  const type: MediaStreamType = 'Audio';
  return { Codec: 'aac', Type: type, Index: 1, IsDefault: true, BitRate: 192_000, Channels: 2, IsExternal: false };
}

/** The item as a session lists it: its streams, no media sources (those cost a `GET /Items`). */
function nowPlayingItem(playing: TestNowPlaying, serverId: string): BaseItemDto {
  const streams = playing.type === 'Audio' ? [audioStream()] : [videoStream(playing), audioStream()];
  return {
    Name: playing.name,
    ServerId: serverId,
    Id: playing.itemId,
    Type: playing.type,
    MediaType: playing.type === 'Audio' ? 'Audio' : 'Video',
    RunTimeTicks: 596 * TICKS_PER_SECOND,
    MediaStreams: streams,
  };
}

function itemWithSources(playing: TestNowPlaying, serverId: string): BaseItemDto {
  const source: MediaSourceInfo = {
    Protocol: 'File',
    Id: playing.itemId,
    Type: 'Default',
    Container: 'mkv',
    Name: playing.name,
    Bitrate: playing.mediaSourceBitrate,
    SupportsDirectPlay: true,
    SupportsTranscoding: true,
  };
  return { ...nowPlayingItem(playing, serverId), MediaSources: [source] };
}
