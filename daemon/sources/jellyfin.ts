/**
 * Jellyfin (10.9+) and Emby as event sources. Both push the whole session list over their websocket once
 * asked (`SessionsStart`), and list it on `GET /Sessions`; each session names its client's address
 * (RemoteEndPoint), user, player, what plays (NowPlayingItem), whether it is paused, and for a transcode the
 * bitrate the transcoder targets. Every list, pushed or fetched, is a full reconcile: a session playing
 * for the first time starts, one no longer playing (or gone) stops, the rest progress or pause.
 *
 * Servers that push nothing to an API key exist (jellyfin/jellyfin #13479): without a Sessions message
 * within pushWaitMs of SessionsStart the source polls `GET /Sessions` every fallbackPollMs, and says so in
 * its status, until a push arrives; likewise while a reverse proxy refuses the websocket's upgrade. A
 * session whose address is not where its bytes go (loopback, this
 * host, a container bridge, a configured proxy) gets no pipe, one warning, and its bandwidth reserved.
 *
 * Emby is Jellyfin's ancestor and speaks the same messages and session fields; its differences (the
 * socket's path, the key's header) are the `dialects` table. The key travels only in a header and is
 * redacted from every message this emits.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Agent as HttpAgent } from 'node:http';
import { hostname, networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import WebSocket from 'ws';
import { parseClientAddress } from '../../lib/index.js';
import type { MediaServerKind } from '../config.js';
import { hostBridgeAddresses } from './plex.js';
import { redactToken, type TokenChoice } from './plex-token.js';
import { keepAliveAgent, readFromServer, ServerHttpError } from './server-get.js';
import { defaultServerTimings, ServerLink, SingleFlight, skippedStream } from './server-link.js';
import type { PlaybackEvent, PlaybackSource, ServerTimings, SourceContext, SourceStatus } from './source.js';

export type { MediaServerKind };

/** What shaperr tells the server its version is (the Version of the authorization header). */
const VERSION = '0.1.0';

/** Who shaperr says it is: the server lists one device per DeviceId, so the id must not change per connection. */
interface DeviceIdentity {
  deviceId: string;
  device: string;
  version: string;
}

interface Dialect {
  label: string;
  socketPath: string;
  /** The websocket's query (Emby's documentation names the device there; never the key). */
  socketQuery(identity: DeviceIdentity): Record<string, string>;
  headers(apiKey: string, identity: DeviceIdentity): Record<string, string>;
}

const quoted = (identity: DeviceIdentity) =>
  `Client="shaperr", Device="${encodeURIComponent(identity.device)}", DeviceId="${identity.deviceId}", Version="${identity.version}"`;

/** Everything that differs between Jellyfin and Emby. */
const dialects: Record<MediaServerKind, Dialect> = {
  jellyfin: {
    label: 'Jellyfin',
    socketPath: '/socket',
    socketQuery: () => ({}),
    headers: (apiKey, identity) => ({ Authorization: `MediaBrowser Token="${apiKey}", ${quoted(identity)}` }),
  },
  emby: {
    label: 'Emby',
    socketPath: '/embywebsocket',
    socketQuery: (identity) => ({ deviceId: identity.deviceId }),
    headers: (apiKey, identity) => ({ 'X-Emby-Token': apiKey, 'X-Emby-Authorization': `MediaBrowser ${quoted(identity)}` }),
  },
};

/** How to reach one server: its name in words, the headers every request carries (the key among them), the websocket. */
export interface MediaServerAccess {
  label: string;
  headers: Record<string, string>;
  socketUrl: URL;
}

/** Under what the daemon keeps a server's DeviceId (SourceContext.deviceIdFor, the state file's devices). */
export const deviceKey = (kind: MediaServerKind, url: string): string => `${kind} ${url}`;

/** `deviceId`: the one kept for this server; none kept yet: a new one. */
export function mediaServerAccess(kind: MediaServerKind, url: string, apiKey: string, deviceId: string | undefined): MediaServerAccess {
  const dialect = dialects[kind];
  const identity: DeviceIdentity = { deviceId: deviceId ?? randomBytes(16).toString('hex'), device: hostname(), version: VERSION };
  const socketUrl = new URL(dialect.socketPath, url.replace(/^http/, 'ws'));
  for (const [name, value] of Object.entries(dialect.socketQuery(identity))) socketUrl.searchParams.set(name, value);
  return { label: dialect.label, headers: dialect.headers(apiKey, identity), socketUrl };
}

/** The answer to `GET /System/Info`: the server's id, name and version. */
export function parseSystemInfo(body: string, label: string): { id: string; name?: string; version?: string } {
  const root = record(JSON.parse(body));
  const id = asString(root.Id);
  if (!id) throw new Error(`no Id: is this a ${label} server?`);
  const server: { id: string; name?: string; version?: string } = { id };
  const name = asString(root.ServerName);
  const version = asString(root.Version);
  if (name) server.name = name;
  if (version) server.version = version;
  return server;
}

export interface MediaServerTimings extends ServerTimings {
  /** No Sessions message this long after SessionsStart: the server pushes nothing to this key, poll instead. */
  pushWaitMs: number;
  /** The poll period of that fallback. */
  fallbackPollMs: number;
}

export const defaultMediaServerTimings: MediaServerTimings = { ...defaultServerTimings, pushWaitMs: 10_000, fallbackPollMs: 2000 };

export interface MediaServerSourceOptions extends SourceContext {
  kind: MediaServerKind;
  url: string;
  apiKey: string;
  verifyTls: boolean;
  /** Default: the context's deviceIdFor (the daemon's, kept in its state file). */
  deviceId?: string;
  timings?: Partial<MediaServerTimings>;
  /** Addresses that mean "behind this host's container bridge"; default: the host's own bridge gateways. */
  bridgeAddresses?: ReadonlySet<string>;
  /** Reverse proxies in front of the server: a session from one hides its real client. */
  proxyAddresses?: readonly string[];
}

/** What the source needs to know of one session; from a pushed or a fetched list alike. */
export interface ListedMediaSession {
  id: string;
  address?: string;
  user?: string;
  client?: string;
  device?: string;
  /** The playing item's id; undefined: the session plays nothing (browsing, idle). */
  itemId?: string;
  paused: boolean;
  playMethod?: string;
  /** bits/s the transcoder targets (TranscodingInfo.Bitrate). */
  transcodeBitrate?: number;
  /** bits/s of the playing video stream (or, for music, the audio stream). */
  streamBitrate?: number;
}

interface TrackedSession extends ListedMediaSession {
  itemId: string;
  /** The key the SessionTracker sees. */
  key: string;
  /** bits/s of the item's media source, fetched once when the session names no bitrate. */
  sourceBitrate?: number;
  skipped?: string;
  confirmedAt: number;
  /** When the tracker last had an event for it. */
  reportedAt: number;
}

/** What the tracker is told of a session: a change in it is an event at once. */
const playbackState = (session: TrackedSession): string => `${session.paused} ${session.transcodeBitrate} ${session.streamBitrate} ${session.sourceBitrate}`;

const record = (value: unknown): Record<string, unknown> =>
  value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
const asString = (value: unknown): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined);
const asBitrate = (value: unknown): number | undefined => (typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : undefined);

/** One SessionInfoDto → what the source reads of it; undefined without an Id. */
export function listedMediaSession(dto: Record<string, unknown>): ListedMediaSession | undefined {
  const id = asString(dto.Id);
  if (!id) return undefined;
  const playState = record(dto.PlayState);
  const item = dto.NowPlayingItem ? record(dto.NowPlayingItem) : undefined;
  const session: ListedMediaSession = { id, paused: playState.IsPaused === true };
  const set = <K extends keyof ListedMediaSession>(key: K, value: ListedMediaSession[K] | undefined) => {
    if (value !== undefined) session[key] = value;
  };
  set('address', asString(dto.RemoteEndPoint));
  set('user', asString(dto.UserName));
  set('client', asString(dto.Client));
  set('device', asString(dto.DeviceName));
  if (!item) return session;
  set('itemId', asString(item.Id) ?? `${id}:playing`);
  set('playMethod', asString(playState.PlayMethod));
  set('transcodeBitrate', asBitrate(record(dto.TranscodingInfo).Bitrate));
  const streams = Array.isArray(item.MediaStreams) ? item.MediaStreams.map(record) : [];
  const main = (type: string) => streams.find((stream) => stream.Type === type && stream.IsDefault === true) ?? streams.find((stream) => stream.Type === type);
  set('streamBitrate', asBitrate((main('Video') ?? main('Audio'))?.BitRate));
  return session;
}

/** A `GET /Sessions` answer or a Sessions message's Data: a list of sessions, else an Error. */
export function parseMediaSessions(data: unknown): ListedMediaSession[] {
  if (!Array.isArray(data)) throw new Error('the session list is not a JSON array');
  return data
    .map(record)
    .map(listedMediaSession)
    .filter((session) => session !== undefined);
}

export class MediaServerSource implements PlaybackSource {
  readonly name: MediaServerKind;
  private readonly timings: MediaServerTimings;
  private readonly access: MediaServerAccess;
  private readonly link: ServerLink;
  private readonly listings: SingleFlight;
  private readonly tracked = new Map<string, TrackedSession>();
  /** bits/s of each playing item's media source, fetched once (null: the server did not say). */
  private readonly itemBitrates = new Map<string, number | null>();
  private readonly unshapeableAddresses: ReadonlySet<string>;
  private readonly aborter = new AbortController();
  private readonly agent: HttpAgent;
  private readonly counters = { messages: 0, pushes: 0, listings: 0, listingFailures: 0, reconnects: 0, itemLookups: 0 };
  private socket?: WebSocket;
  private socketTimers: NodeJS.Timeout[] = [];
  private server?: { name?: string; version?: string; id: string };
  /** Set once a Sessions message arrived; until then (after pushWaitMs) the source polls. */
  private pushed = false;
  private fallbackPoll?: NodeJS.Timeout;
  /** Why the source polls, while it does. */
  private pollReason?: string;
  /** Lists are applied one after the other, in the order they came. */
  private applying: Promise<void> = Promise.resolve();

  constructor(private readonly options: MediaServerSourceOptions) {
    this.name = options.kind;
    this.timings = { ...defaultMediaServerTimings, idleMs: options.idleMs, ...options.timings };
    this.access = mediaServerAccess(options.kind, options.url, options.apiKey, options.deviceId ?? options.deviceIdFor?.(deviceKey(options.kind, options.url)));
    this.unshapeableAddresses = new Set([...(options.bridgeAddresses ?? hostBridgeAddresses()), ...hostAddresses(), ...(options.proxyAddresses ?? [])]);
    this.agent = keepAliveAgent(options.url, options.verifyTls);
    this.link = new ServerLink({
      label: this.access.label,
      url: options.url,
      logContext: this.logContext,
      logger: options.logger,
      timings: this.timings,
      redact: (text) => this.redact(text),
      rejected: { state: 'key rejected', error: `${this.access.label} rejected the API key` },
      connect: () => void this.connect(),
    });
    this.listings = new SingleFlight(
      () => this.listAndApply(),
      () => !this.link.stopped,
    );
  }

  start(): void {
    void this.connect();
    this.link.every(this.timings.pollMs, () => this.poll());
    this.link.every(Math.max(250, this.timings.idleMs / 4), () => this.lookUpSilent());
  }

  async stop(): Promise<void> {
    this.link.stop();
    this.closeSocketTimers();
    clearInterval(this.fallbackPoll);
    this.socket?.terminate();
    this.aborter.abort();
    await this.listings.settled();
    await this.applying;
    this.agent.destroy();
  }

  status(): SourceStatus {
    const skipped = [...this.tracked.values()]
      .filter((session) => session.skipped)
      .map((session) =>
        skippedStream(session.key, session.skipped!, { user: session.user, player: session.client, address: session.address, bandwidth: this.need(session) }),
      );
    const status: SourceStatus = {
      source: this.name,
      target: this.options.url,
      state: this.link.state,
      sessions: this.tracked.size,
      skipped,
      counters: { ...this.counters },
    };
    if (this.server) status.server = { ...this.server };
    if (this.link.lastError) status.lastError = this.link.lastError;
    if (this.fallbackPoll) status.note = this.pollingNote;
    return status;
  }

  reservedBandwidth(): number {
    let total = 0;
    for (const session of this.tracked.values()) if (session.skipped) total += this.need(session) ?? 0;
    return total;
  }

  private get pollingNote(): string {
    return `polling GET /Sessions every ${this.timings.fallbackPollMs / 1000} s: ${this.pollReason}`;
  }

  private get label(): string {
    return this.access.label;
  }

  private get logContext(): Record<string, string> {
    return { [this.name]: this.options.url };
  }

  private redact(text: string): string {
    return redactToken(text, this.options.apiKey);
  }

  // ── connection ────────────────────────────────────────────────────────────

  private async connect(): Promise<void> {
    if (this.link.stopped) return;
    try {
      const info = await this.get('/System/Info', (body) => parseSystemInfo(body, this.label));
      if (this.server?.id !== info.id)
        this.options.logger.info(
          { ...this.logContext, server: info.name, version: info.version },
          `${this.label} server "${info.name ?? info.id}" ${info.version ?? ''}`.trim(),
        );
      this.server = info;
    } catch (error) {
      return this.link.failed(error);
    }
    if (!this.link.stopped) this.openSocket();
  }

  private openSocket(): void {
    const socket = this.link.openSocket(this.access.socketUrl, this.access.headers, this.options.verifyTls, {
      opened: () => {
        const reconnected = this.link.connected();
        this.options.logger.info(this.logContext, reconnected ? `${this.label} websocket reconnected` : `listening to ${this.label} sessions`);
        // The list at once (0 ms), then as sessions change (at most every 1.5 s for progress alone).
        socket.send(JSON.stringify({ MessageType: 'SessionsStart', Data: '0,1500' }));
        this.closeSocketTimers();
        this.pushed = false;
        const pushWait = setTimeout(() => {
          if (!this.pushed)
            this.startPolling(`no Sessions message within ${this.timings.pushWaitMs / 1000} s of SessionsStart (the server pushes nothing to this key)`);
        }, this.timings.pushWaitMs);
        pushWait.unref();
        this.socketTimers = [this.link.watch(socket, () => this.link.alive), pushWait];
        this.listings.request();
      },
      message: (text) => this.onMessage(socket, text),
      closed: (failure, code) => {
        this.closeSocketTimers();
        if (this.socket !== socket || this.link.stopped) return;
        this.socket = undefined;
        this.counters.reconnects++;
        if (failure instanceof ServerHttpError && failure.result === 'http-error') return this.pollWithoutSocket(failure.message);
        this.link.failed(failure ?? new Error(`websocket closed (code ${code})`));
      },
    });
    this.socket = socket;
  }

  private closeSocketTimers(): void {
    for (const timer of this.socketTimers) clearTimeout(timer);
    this.socketTimers = [];
  }

  /** Polls `GET /Sessions` until a push arrives; a new reason is told once. */
  private startPolling(reason: string): void {
    const changed = reason !== this.pollReason;
    this.pollReason = reason;
    if (changed) this.options.logger.warn(this.logContext, `${this.label}: ${this.pollingNote}`);
    if (this.fallbackPoll) return;
    this.fallbackPoll = setInterval(() => this.poll(), this.timings.fallbackPollMs);
    this.fallbackPoll.unref();
  }

  /**
   * The HTTP API answers but the websocket's upgrade is refused (a reverse proxy that does not pass
   * websockets): sessions are followed by polling, and the websocket is tried again every retryMaxMs.
   */
  private pollWithoutSocket(refusal: string): void {
    this.link.connected();
    this.startPolling(
      `the websocket ${new URL(this.access.socketUrl).pathname} was refused (${refusal}); tried again every ${this.timings.retryMaxMs / 1000} s`,
    );
    this.listings.request();
    this.link.after(this.timings.retryMaxMs, () => void this.connect());
  }

  /** The server's keep-alive contract: it drops a socket that sends no KeepAlive within the period it names. */
  private keepAlive(socket: WebSocket, seconds: unknown): void {
    if (typeof seconds !== 'number' || !(seconds > 0)) return;
    const timer = setInterval(
      () => {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ MessageType: 'KeepAlive' }));
      },
      (seconds * 1000) / 2,
    );
    timer.unref();
    this.socketTimers.push(timer);
  }

  // ── messages ──────────────────────────────────────────────────────────────

  private onMessage(socket: WebSocket, text: string): void {
    let message: Record<string, unknown>;
    try {
      message = record(JSON.parse(text));
    } catch {
      this.options.logger.warn({ ...this.logContext, bytes: text.length }, `ignored a ${this.label} message that is not JSON`);
      return;
    }
    this.counters.messages++;
    if (message.MessageType === 'ForceKeepAlive') this.keepAlive(socket, message.Data);
    if (message.MessageType !== 'Sessions') return;
    let sessions: ListedMediaSession[];
    try {
      sessions = parseMediaSessions(message.Data);
    } catch (error) {
      this.options.logger.warn(
        this.logContext,
        `ignored a malformed ${this.label} Sessions message (${(error as Error).message}); reading GET /Sessions instead`,
      );
      this.listings.request();
      return;
    }
    this.counters.pushes++;
    this.pushed = true;
    if (this.fallbackPoll) {
      this.options.logger.info(this.logContext, `${this.label} pushes sessions now: polling stopped`);
      clearInterval(this.fallbackPoll);
      this.fallbackPoll = undefined;
      this.pollReason = undefined;
    }
    this.apply(sessions);
  }

  // ── HTTP ──────────────────────────────────────────────────────────────────

  private get<T>(path: string, read: (body: string) => T): Promise<T> {
    const options = {
      url: this.options.url,
      headers: { ...this.access.headers, Accept: 'application/json' },
      verifyTls: this.options.verifyTls,
      timeoutMs: this.timings.requestTimeoutMs,
      unauthorized: `${this.label} rejected the API key (401)`,
      redact: (text: string) => this.redact(text),
      signal: this.aborter.signal,
      agent: this.agent,
    };
    return readFromServer(options, path, read, this.options.onRequest);
  }

  private poll(): void {
    if (this.link.state === 'connected') this.listings.request();
  }

  /** Sessions silent for half the idle time are listed again: a paused one never idles out. */
  private lookUpSilent(): void {
    if (this.link.state !== 'connected') return;
    const silentSince = Date.now() - this.timings.idleMs / 2;
    if ([...this.tracked.values()].some((session) => session.confirmedAt < silentSince)) this.listings.request();
  }

  private async listAndApply(): Promise<void> {
    let sessions: ListedMediaSession[];
    try {
      sessions = await this.get('/Sessions', (body) => parseMediaSessions(JSON.parse(body)));
    } catch (error) {
      if (this.link.stopped) return;
      this.counters.listingFailures++;
      const message = this.redact((error as Error).message);
      // Polled every 2 s, a lasting fault is told once; the sessions stay as they were (nothing is ended on it).
      if (message !== this.link.lastError)
        this.options.logger.warn(
          { ...this.logContext, err: message },
          `${this.label} session listing failed: ${message}; sessions kept, the next poll retries`,
        );
      this.link.lastError = message;
      if (error instanceof ServerHttpError && error.result === 'unauthorized') this.socket?.terminate();
      return;
    }
    if (this.link.stopped) return;
    this.counters.listings++;
    if (this.link.state === 'connected') this.link.lastError = undefined;
    this.apply(sessions);
    await this.applying;
  }

  // ── sessions ──────────────────────────────────────────────────────────────

  private apply(sessions: ListedMediaSession[]): void {
    this.applying = this.applying
      .then(() => this.reconcile(sessions))
      .catch((error) => this.options.logger.error({ ...this.logContext, err: (error as Error).message }, 'reconcile failed'));
  }

  private async reconcile(sessions: readonly ListedMediaSession[]): Promise<void> {
    const playing = sessions.filter((session): session is ListedMediaSession & { itemId: string } => session.itemId !== undefined);
    await this.lookUpItems(
      playing.filter((session) => session.transcodeBitrate === undefined && session.streamBitrate === undefined).map((session) => session.itemId),
    );
    if (this.link.stopped || !this.server) return;
    const now = Date.now();
    const present = new Set<string>();
    for (const session of playing) {
      present.add(session.id);
      const known = this.tracked.get(session.id);
      if (known && known.itemId === session.itemId) {
        const before = playbackState(known);
        // A missing field in this list must not keep an old value (a transcode that ended becomes direct play).
        delete known.transcodeBitrate;
        delete known.streamBitrate;
        Object.assign(known, session, { key: known.key, address: known.address, skipped: known.skipped, confirmedAt: now });
        this.withSourceBitrate(known);
        // Every list names every session: only a change is told at once, the rest now and then so the tracker keeps them.
        const due = playbackState(known) !== before || now - known.reportedAt >= this.timings.idleMs / 4;
        if (!known.skipped && due) this.emit(known.paused ? 'pause' : 'progress', known);
        continue;
      }
      if (known) this.end(known); // the next item: a stop, then a start
      this.begin(session, now);
    }
    for (const known of [...this.tracked.values()]) if (!present.has(known.id)) this.end(known);
    // Bitrates of items nothing plays any more are forgotten: the cache stays as small as what plays.
    const playingItems = new Set(playing.map((session) => session.itemId));
    for (const itemId of this.itemBitrates.keys()) if (!playingItems.has(itemId)) this.itemBitrates.delete(itemId);
  }

  /** The media source bitrate of items whose session names none, once per item. */
  private async lookUpItems(itemIds: string[]): Promise<void> {
    const wanted = [...new Set(itemIds)].filter((id) => !this.itemBitrates.has(id));
    if (wanted.length === 0) return;
    this.counters.itemLookups++;
    try {
      const found = await this.get(`/Items?Ids=${wanted.map(encodeURIComponent).join(',')}&Fields=MediaSources`, (body) => {
        const items = record(JSON.parse(body)).Items;
        if (!Array.isArray(items)) throw new Error('no Items list');
        return items.map(record);
      });
      for (const id of wanted) {
        const item = found.find((entry) => entry.Id === id);
        const sources = Array.isArray(item?.MediaSources) ? item.MediaSources.map(record) : [];
        this.itemBitrates.set(id, asBitrate(sources[0]?.Bitrate) ?? null);
      }
    } catch (error) {
      if (this.link.stopped) return;
      for (const id of wanted) this.itemBitrates.set(id, null);
      this.options.logger.warn(
        { ...this.logContext, err: this.redact((error as Error).message) },
        `${this.label}: the playing item's bitrate is unknown (rate: auto falls back to its default)`,
      );
    }
  }

  private withSourceBitrate(session: TrackedSession): void {
    const bitrate = this.itemBitrates.get(session.itemId);
    if (bitrate) session.sourceBitrate = bitrate;
  }

  /** bits/s the stream uses: the transcoder's target, else the stream's, else the file's. */
  private need(session: TrackedSession): number | undefined {
    return session.transcodeBitrate ?? session.streamBitrate ?? session.sourceBitrate;
  }

  private begin(listed: ListedMediaSession & { itemId: string }, now: number): void {
    const session: TrackedSession = { ...listed, key: `${this.server!.id}:${listed.id}`, confirmedAt: now, reportedAt: now };
    this.withSourceBitrate(session);
    this.tracked.set(session.id, session);
    const reason = this.unshapeable(session);
    if (reason) {
      session.skipped = reason;
      const who = `${session.user ?? 'unknown user'} on ${session.client ?? 'unknown player'}${session.device ? ` (${session.device})` : ''}`;
      this.options.logger.warn(
        { ...this.logContext, session: session.key, user: session.user, player: session.client, address: session.address },
        `not shaping ${who}: ${reason}; its ${this.need(session) ? `${(this.need(session)! / 1e6).toFixed(1)} Mbit/s are` : 'bandwidth is'} kept out of the pipes`,
      );
      return;
    }
    this.emit('start', session);
    if (session.paused) this.emit('pause', session);
  }

  /** Why this session's address is not where its bytes go, if it is not. */
  private unshapeable(session: TrackedSession): string | undefined {
    if (!session.address) return `${this.label} lists no address for the player`;
    let address: string;
    try {
      address = parseClientAddress(session.address).text;
    } catch {
      return `${this.label} lists an address shaperr cannot read (${JSON.stringify(session.address)})`;
    }
    session.address = address;
    if (ipaddr.parse(address).range() === 'loopback')
      return `the address ${address} is loopback: a reverse proxy on this host hides the real client (list it in ${this.label}'s known proxies)`;
    if (this.unshapeableAddresses.has(address))
      return `the address ${address} is this host, a container bridge or a proxy: the real client is hidden (host networking, or the proxy in ${this.label}'s known proxies)`;
    return undefined;
  }

  private end(session: TrackedSession): void {
    this.tracked.delete(session.id);
    if (!session.skipped) this.emit('stop', session);
  }

  private emit(kind: PlaybackEvent['kind'], session: TrackedSession): void {
    session.reportedAt = Date.now();
    const event: PlaybackEvent = {
      kind,
      address: session.address!,
      port: 0,
      sessionKey: session.key,
      timestamp: new Date(),
      path: '/Sessions',
      source: this.name,
    };
    if (session.user) event.user = session.user;
    if (session.client) event.player = session.client;
    if (session.transcodeBitrate !== undefined) event.bandwidth = session.transcodeBitrate;
    else {
      const bitrate = session.streamBitrate ?? session.sourceBitrate;
      if (bitrate !== undefined) event.mediaBitrate = bitrate;
    }
    // A remux (DirectStream) sends the file's own bits, peaks and all, even through the transcoder's container.
    event.directPlay = session.playMethod ? session.playMethod !== 'Transcode' : session.transcodeBitrate === undefined;
    this.options.onEvent(event);
  }
}

/** This host's own addresses: a session "from" one is a proxy or a container on this host. */
function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flatMap((addresses) => addresses ?? [])
    .map((address) => address.address);
}

/** Where a server's API key is set: in the config, or in a file it names. */
export interface ApiKeySettings {
  apiKey?: string | undefined;
  apiKeyFile?: string | undefined;
}

export const apiKeyVariable = (kind: MediaServerKind): string => `${kind.toUpperCase()}_API_KEY`;

/**
 * The key from `apiKey`, `apiKeyFile` or the JELLYFIN_API_KEY / EMBY_API_KEY environment variable, with
 * where it came from (safe to print); undefined when none is set. Throws, naming the file, when the file
 * cannot be read or is empty.
 */
export function findApiKey(server: ApiKeySettings, kind: MediaServerKind, env: NodeJS.ProcessEnv): TokenChoice | undefined {
  if (server.apiKey) return { token: server.apiKey, source: `${kind}.apiKey` };
  if (server.apiKeyFile) {
    let key: string;
    try {
      key = readFileSync(server.apiKeyFile, 'utf8').trim();
    } catch (error) {
      throw new Error(`cannot read ${kind}.apiKeyFile ${server.apiKeyFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    if (!key) throw new Error(`${kind}.apiKeyFile ${server.apiKeyFile} is empty`);
    return { token: key, source: `apiKeyFile ${server.apiKeyFile}` };
  }
  const variable = apiKeyVariable(kind);
  const fromEnv = env[variable]?.trim();
  return fromEnv ? { token: fromEnv, source: `the ${variable} environment variable` } : undefined;
}
