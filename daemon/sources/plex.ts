/**
 * The Plex API as an event source: Plex's websocket says when a session starts, pauses or stops;
 * `/status/sessions` says who and where (notifications carry neither address nor user). Produces the
 * same PlaybackEvents as the log parser, keyed by the server's machineIdentifier + sessionKey so several
 * servers never collide, plus what only the API knows: the stream's bandwidth, the media bitrate, the
 * player and Plex's own lan/wan label.
 *
 * A session's address is looked up when its key is new and cached: by the time "stopped" arrives the
 * session has often left /status/sessions. A session stops on state=stopped, on a new ratingKey under the
 * same key (clients that never send stop), or when a full listing no longer has it — on every (re)connect,
 * every poll, and when a session has been silent for half the idle time. Streams whose address is not
 * where the bytes go (Plex Relay, Docker's bridge gateway) get no events, and one warning each.
 *
 * A playing notification naming a new transcodeSession says the stream's quality changed: the session is
 * read again (at most once a second per session) so its pipe follows the new bitrate at once.
 *
 * The token travels only in the X-Plex-Token header and is redacted from every message this emits.
 */
import type { Agent as HttpAgent } from 'node:http';
import { networkInterfaces } from 'node:os';
import { XMLParser } from 'fast-xml-parser';
import type WebSocket from 'ws';
import { parseClientAddress } from '../../lib/index.js';
import { redactToken } from './plex-token.js';
import { keepAliveAgent, readFromServer, type ServerGetOptions, ServerHttpError, serverGet } from './server-get.js';
import { defaultServerTimings, ServerLink, SingleFlight, skippedStream } from './server-link.js';
import type { PlaybackEvent, PlaybackKind, PlaybackSource, ServerTimings, SourceContext, SourceRequestResult, SourceStatus } from './source.js';

export type PlexTimings = ServerTimings;

export type PlexRequestResult = SourceRequestResult;

export interface PlexSourceOptions extends Omit<SourceContext, 'idleMs' | 'resumeAt'> {
  url: string;
  token: string;
  verifyTls: boolean;
  /** Addresses that mean "behind this host's container bridge"; default: the host's own bridge gateways. */
  bridgeAddresses?: ReadonlySet<string>;
}

export interface PlexSourceStatus extends SourceStatus {
  /** 'connecting', 'waiting for Plex', 'connected', 'token rejected' or 'stopped'. */
  state: string;
  counters: { notifications: number; listings: number; listingFailures: number; reconnects: number; transcodeChanges: number };
}

/** What /status/sessions says about one session, from JSON or XML alike. */
export interface ListedSession {
  sessionKey: string;
  ratingKey?: string;
  sessionId?: string;
  state?: string;
  user?: string;
  address?: string;
  remotePublicAddress?: string;
  relayed?: boolean;
  product?: string;
  playerTitle?: string;
  location?: string;
  /** kbit/s */
  bandwidth?: number;
  /** kbit/s, of the first Media entry (the one playing). */
  bitrate?: number;
  /** A transcoder runs for it (TranscodeSession listed); else it is direct play. */
  transcoding?: boolean;
  /** The transcoder's session id (the last part of TranscodeSession.key), as playing notifications name it. */
  transcodeSession?: string;
}

interface TrackedSession extends ListedSession {
  /** The key the SessionTracker sees. */
  key: string;
  /** Set when the stream gets no pipe. */
  skipped?: string;
  /** Last notification or listing that showed the session alive. */
  confirmedAt: number;
  /** When a changed transcodeSession last had the session read again (performance.now()). */
  rereadAt?: number;
  /** A re-read waiting for its once-a-second turn. */
  rereadPending?: boolean;
}

/** A session whose transcodeSession changes is read again at most this often. */
const REREAD_INTERVAL_MS = 1000;

export interface PlexRequestOptions {
  /** The server's base URL. */
  url: string;
  token: string;
  verifyTls: boolean;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Connections to reuse; default: Node's global agent. */
  agent?: HttpAgent;
}

/** What a GET to Plex needs: the token in the X-Plex-Token header only, redacted from every message. */
function plexGetOptions(options: PlexRequestOptions): ServerGetOptions {
  return {
    url: options.url,
    headers: { 'X-Plex-Token': options.token, Accept: 'application/json' },
    verifyTls: options.verifyTls,
    timeoutMs: options.timeoutMs,
    unauthorized: 'Plex rejected the token (401)',
    redact: (text) => redactToken(text, options.token),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.agent ? { agent: options.agent } : {}),
  };
}

/** GET with the token header and a timeout; the body of a 2xx answer, else a ServerHttpError (token redacted). */
export function plexGet(options: PlexRequestOptions, path: string): Promise<string> {
  return serverGet(plexGetOptions(options), path);
}

export interface PlexIdentity {
  machineIdentifier: string;
  name?: string;
  version?: string;
}

/** The answer to GET / : the server's name, version and machineIdentifier. */
export function parseIdentity(body: string): PlexIdentity {
  const root = record(record(JSON.parse(body)).MediaContainer);
  const machineIdentifier = asString(root.machineIdentifier);
  if (!machineIdentifier) throw new Error('no machineIdentifier: is this a Plex Media Server?');
  const identity: PlexIdentity = { machineIdentifier };
  const name = asString(root.friendlyName);
  const version = asString(root.version);
  if (name) identity.name = name;
  if (version) identity.version = version;
  return identity;
}

const PATH_NOTIFICATIONS = '/:/websockets/notifications';
const xmlParser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '', isArray: (_name, _path, _leaf, isAttribute) => !isAttribute });

const asString = (value: unknown): string | undefined => (typeof value === 'string' ? value : typeof value === 'number' ? String(value) : undefined);
const asNumber = (value: unknown): number | undefined => {
  const number = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  return Number.isFinite(number) ? number : undefined;
};
const asBoolean = (value: unknown): boolean | undefined =>
  value === true || value === '1' || value === 1 ? true : value === false || value === '0' || value === 0 ? false : undefined;
const record = (value: unknown): Record<string, unknown> =>
  value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};

/** The IPv4 addresses of this host's container bridges (docker0, br-…, podman, cni): Docker's proxy speaks from them. */
export function hostBridgeAddresses(): Set<string> {
  const found = new Set<string>();
  for (const [name, addresses] of Object.entries(networkInterfaces())) {
    if (!/^(docker\d*|br-|podman|cni|virbr)/.test(name)) continue;
    for (const address of addresses ?? []) found.add(address.address);
  }
  return found;
}

/** One Metadata entry (JSON types or XML strings alike) → a ListedSession; undefined without a sessionKey. */
export function listedSession(item: Record<string, unknown>): ListedSession | undefined {
  const sessionKey = asString(item.sessionKey);
  if (!sessionKey) return undefined;
  const player = record(item.Player);
  const session = record(item.Session);
  const user = record(item.User);
  const media = Array.isArray(item.Media) ? item.Media.map(record) : [];
  const listed: ListedSession = { sessionKey };
  const set = <K extends keyof ListedSession>(key: K, value: ListedSession[K] | undefined) => {
    if (value !== undefined) listed[key] = value;
  };
  set('ratingKey', asString(item.ratingKey));
  set('sessionId', asString(session.id));
  set('state', asString(player.state));
  set('user', asString(user.title));
  set('address', asString(player.address));
  set('remotePublicAddress', asString(player.remotePublicAddress));
  set('relayed', asBoolean(player.relayed));
  set('product', asString(player.product));
  set('playerTitle', asString(player.title));
  set('location', asString(session.location));
  set('bandwidth', asNumber(session.bandwidth));
  set('bitrate', asNumber(media[0]?.bitrate));
  listed.transcoding = item.TranscodeSession !== undefined && item.TranscodeSession !== null;
  set('transcodeSession', asString(record(item.TranscodeSession).key)?.split('/').pop());
  return listed;
}

/** /status/sessions as JSON or (from servers that refuse JSON) XML. */
export function parseSessionListing(body: string): ListedSession[] {
  const text = body.trimStart();
  if (text.startsWith('{')) {
    const container = record(record(JSON.parse(text)).MediaContainer);
    const metadata = container.Metadata ?? [];
    if (!Array.isArray(metadata)) throw new Error('MediaContainer.Metadata is not a list');
    return metadata
      .map(record)
      .map(listedSession)
      .filter((item) => item !== undefined);
  }
  if (text.startsWith('<')) {
    const parsed = xmlParser.parse(text) as Record<string, unknown>;
    const containers = parsed.MediaContainer;
    if (!Array.isArray(containers)) throw new Error('no MediaContainer element');
    const container = record(containers[0]);
    const items: ListedSession[] = [];
    // Video, Track, Photo…: every child element with a sessionKey is a session.
    for (const value of Object.values(container)) {
      if (!Array.isArray(value)) continue;
      for (const element of value.map(record)) {
        const first = (name: string) => record((element[name] as unknown[] | undefined)?.[0]);
        const item = listedSession({
          ...element,
          Player: first('Player'),
          Session: first('Session'),
          User: first('User'),
          Media: element.Media,
          TranscodeSession: element.TranscodeSession ? first('TranscodeSession') : undefined,
        });
        if (item) items.push(item);
      }
    }
    return items;
  }
  throw new Error('neither JSON nor XML');
}

/** The play-state entries of a notification frame, in the current or the old `_children` form; others: none. */
export function playNotifications(frame: unknown): Array<Record<string, unknown>> {
  const outer = record(frame);
  const container = outer.NotificationContainer ? record(outer.NotificationContainer) : outer;
  if (container.type !== 'playing') return [];
  const list = container.PlaySessionStateNotification ?? container._children ?? [];
  if (!Array.isArray(list)) return [];
  return list.map(record).filter((entry) => entry._elementType === undefined || entry._elementType === 'PlaySessionStateNotification');
}

const stripMapped = (address: string): string => address.replace(/^::ffff:/i, '');

export class PlexSource implements PlaybackSource {
  readonly name = 'plex';
  private readonly timings: PlexTimings;
  private readonly tracked = new Map<string, TrackedSession>();
  /** Session keys announced stopped (with their ratingKey) that Plex may still list for a moment. */
  private readonly stoppedKeys = new Map<string, string | undefined>();
  private readonly bridges: ReadonlySet<string>;
  private socket?: WebSocket;
  private pingTimer?: NodeJS.Timeout;
  /** The connection's state, retries and timers, as every server source keeps them. */
  private readonly link: ServerLink;
  /** One full listing at a time; a request during one runs one more right after it. */
  private readonly listings: SingleFlight;
  private server?: PlexIdentity;
  /** Cancels requests in flight at stop. */
  private readonly aborter = new AbortController();
  /**
   * This source's own keep-alive connections: polls and lookups reuse one instead of a TCP (and TLS)
   * handshake each, and stop() closes them (the global agent would keep them open after a reload).
   */
  private readonly agent: HttpAgent;
  private readonly counters = { notifications: 0, listings: 0, listingFailures: 0, reconnects: 0, transcodeChanges: 0 };

  constructor(private readonly options: PlexSourceOptions) {
    this.timings = { ...defaultServerTimings, ...options.timings };
    this.link = new ServerLink({
      label: 'Plex',
      url: options.url,
      logContext: { plex: options.url },
      logger: options.logger,
      timings: this.timings,
      redact: (text) => this.redact(text),
      rejected: { state: 'token rejected', error: 'Plex rejected the token' },
      connect: () => void this.connect(),
    });
    this.listings = new SingleFlight(
      () => this.listAndReconcile(),
      () => !this.stopped,
    );
    this.bridges = options.bridgeAddresses ?? hostBridgeAddresses();
    this.agent = keepAliveAgent(options.url, options.verifyTls);
  }

  start(): void {
    void this.connect();
    this.link.every(this.timings.pollMs, () => this.poll());
    this.link.every(Math.max(250, this.timings.idleMs / 4), () => this.lookUpSilent());
  }

  async stop(): Promise<void> {
    this.link.stop();
    clearInterval(this.pingTimer);
    this.socket?.terminate();
    this.aborter.abort();
    await this.listings.settled();
    this.agent.destroy();
  }

  status(): PlexSourceStatus {
    const skipped = [...this.tracked.values()]
      .filter((session) => session.skipped)
      .map((session) =>
        skippedStream(session.key, session.skipped!, {
          user: session.user,
          player: session.product,
          address: session.address,
          bandwidth: session.bandwidth === undefined ? undefined : session.bandwidth * 1000,
        }),
      );
    const status: PlexSourceStatus = {
      source: this.name,
      target: this.options.url,
      state: this.link.state,
      sessions: this.tracked.size,
      skipped,
      counters: { ...this.counters },
    };
    if (this.server) {
      const { machineIdentifier, name, version } = this.server;
      status.server = { id: machineIdentifier, ...(name ? { name } : {}), ...(version ? { version } : {}) };
    }
    if (this.link.lastError) status.lastError = this.link.lastError;
    return status;
  }

  /** bits/s Plex reserved for the streams that get no pipe (they still use the uplink). */
  reservedBandwidth(): number {
    let total = 0;
    for (const session of this.tracked.values()) if (session.skipped && session.bandwidth !== undefined) total += session.bandwidth * 1000;
    return total;
  }

  private get stopped(): boolean {
    return this.link.stopped;
  }

  private redact(text: string): string {
    return redactToken(text, this.options.token);
  }

  // ── connection ────────────────────────────────────────────────────────────

  private async connect(): Promise<void> {
    if (this.stopped) return;
    try {
      const server = await this.get('/', parseIdentity);
      const { name, version, machineIdentifier } = server;
      if (this.server?.machineIdentifier !== machineIdentifier)
        this.options.logger.info({ plex: this.options.url, ...server }, `Plex server "${name ?? machineIdentifier}" ${version ?? ''}`.trim());
      this.server = server;
    } catch (error) {
      return this.link.failed(error);
    }
    if (!this.stopped) this.openSocket();
  }

  private openSocket(): void {
    const url = new URL(PATH_NOTIFICATIONS, this.options.url.replace(/^http/, 'ws'));
    const headers = { 'X-Plex-Token': this.options.token, Accept: 'application/json' };
    const socket = this.link.openSocket(url, headers, this.options.verifyTls, {
      opened: () => {
        const wasDown = this.link.connected();
        this.options.logger.info({ plex: this.options.url }, wasDown ? 'Plex notifications reconnected' : 'listening to Plex notifications');
        clearInterval(this.pingTimer);
        this.pingTimer = this.link.watch(socket, () => this.link.alive);
        this.requestListing();
      },
      message: (text) => this.onFrame(text),
      closed: (failure, code) => {
        clearInterval(this.pingTimer);
        if (this.socket !== socket || this.stopped) return;
        this.socket = undefined;
        this.counters.reconnects++;
        this.link.failed(failure ?? new Error(`websocket closed (code ${code})`));
      },
    });
    this.socket = socket;
  }

  // ── HTTP ──────────────────────────────────────────────────────────────────

  private get requestOptions(): ServerGetOptions {
    return plexGetOptions({
      url: this.options.url,
      token: this.options.token,
      verifyTls: this.options.verifyTls,
      timeoutMs: this.timings.requestTimeoutMs,
      signal: this.aborter.signal,
      agent: this.agent,
    });
  }

  /** One request, counted once: ok only when `read` understands the answer. */
  private get<T>(path: string, read: (body: string) => T): Promise<T> {
    return readFromServer(this.requestOptions, path, read, this.options.onRequest);
  }

  // ── sessions ──────────────────────────────────────────────────────────────

  private poll(): void {
    if (this.link.state === 'connected') this.requestListing();
  }

  /** Sessions silent for half the idle time are looked up: a paused one Plex still lists never idles out. */
  private lookUpSilent(): void {
    if (this.link.state !== 'connected') return;
    const silentSince = Date.now() - this.timings.idleMs / 2;
    if ([...this.tracked.values()].some((session) => session.confirmedAt < silentSince)) this.requestListing();
  }

  private requestListing(): void {
    this.listings.request();
  }

  private async listAndReconcile(): Promise<void> {
    let listed: ListedSession[];
    try {
      listed = await this.get('/status/sessions', parseSessionListing);
    } catch (error) {
      if (this.stopped) return;
      this.counters.listingFailures++;
      const message = this.redact((error as Error).message);
      this.link.lastError = message;
      this.options.logger.warn({ plex: this.options.url, err: message }, `Plex session listing failed: ${message}; the next poll retries`);
      if (error instanceof ServerHttpError && error.result === 'unauthorized') this.socket?.terminate();
      return;
    }
    if (this.stopped || !this.server) return;
    this.counters.listings++;
    this.reconcile(listed);
  }

  private reconcile(listed: readonly ListedSession[]): void {
    const now = Date.now();
    const present = new Set<string>();
    for (const key of this.stoppedKeys.keys()) if (!listed.some((item) => item.sessionKey === key)) this.stoppedKeys.delete(key);
    for (const item of listed) {
      present.add(item.sessionKey);
      if (this.stoppedKeys.has(item.sessionKey) && this.stoppedKeys.get(item.sessionKey) === item.ratingKey) continue; // lingering after its stop
      const known = this.tracked.get(item.sessionKey);
      const sameSession =
        known &&
        (item.ratingKey === undefined || item.ratingKey === known.ratingKey) &&
        (item.sessionId === undefined || known.sessionId === undefined || item.sessionId === known.sessionId);
      if (known && sameSession) {
        Object.assign(known, item, { key: known.key, address: known.address, confirmedAt: now });
        if (!known.skipped) this.emit(known.state === 'paused' ? 'pause' : 'progress', known, 'listing');
        continue;
      }
      if (known) this.end(known, 'listing'); // a new playback under the same session key (Plex restarted)
      this.begin(item, now);
    }
    for (const known of [...this.tracked.values()]) if (!present.has(known.sessionKey)) this.end(known, 'listing');
  }

  private begin(item: ListedSession, now: number): void {
    const tracked: TrackedSession = { ...item, key: `${this.server!.machineIdentifier}:${item.sessionKey}`, confirmedAt: now };
    const reason = this.unshapeable(tracked);
    this.tracked.set(item.sessionKey, tracked);
    if (reason) {
      tracked.skipped = reason;
      const who = `${tracked.user ?? 'unknown user'} on ${tracked.product ?? tracked.playerTitle ?? 'unknown player'}`;
      this.options.logger.warn(
        { plex: this.options.url, session: tracked.key, user: tracked.user, player: tracked.product, address: tracked.address },
        `not shaping ${who}: ${reason}`,
      );
      return;
    }
    this.emit('start', tracked, 'listing');
    if (tracked.state === 'paused') this.emit('pause', tracked, 'listing');
  }

  /** Why this stream's address is not where its bytes go, if it is not. */
  private unshapeable(session: TrackedSession): string | undefined {
    const relayedByDefault = session.relayed === undefined && session.location !== 'lan' && session.remotePublicAddress === '127.0.0.1';
    if (session.relayed === true || relayedByDefault) return 'Plex Relay carries this stream (its bytes go to the relay, not to the player)';
    if (!session.address) return 'Plex lists no address for the player';
    try {
      session.address = parseClientAddress(stripMapped(session.address)).text;
    } catch {
      return `Plex lists an address shaperr cannot read (${JSON.stringify(session.address)})`;
    }
    if (this.bridges.has(session.address))
      return `the address ${session.address} is this host's container bridge: Plex runs behind Docker's proxy and the real client is hidden (use host networking)`;
    return undefined;
  }

  private end(session: TrackedSession, via: 'notification' | 'listing'): void {
    this.tracked.delete(session.sessionKey);
    if (!session.skipped) this.emit('stop', session, via);
  }

  private emit(kind: PlaybackKind, session: TrackedSession, via: 'notification' | 'listing'): void {
    const event: PlaybackEvent = {
      kind,
      address: session.address!,
      port: 0,
      sessionKey: session.key,
      timestamp: new Date(),
      path: via === 'notification' ? PATH_NOTIFICATIONS : '/status/sessions',
      source: this.name,
    };
    if (session.user) event.user = session.user;
    if (session.location) {
      event.location = session.location;
      event.network = session.location === 'lan' ? 'LAN' : `WAN (${session.location})`;
      event.local = session.location === 'lan';
    }
    if (session.product) event.player = session.product;
    if (session.bandwidth !== undefined) event.bandwidth = session.bandwidth * 1000;
    if (session.bitrate !== undefined) event.mediaBitrate = session.bitrate * 1000;
    if (session.transcoding !== undefined) event.directPlay = !session.transcoding;
    this.options.onEvent(event);
  }

  // ── notifications ─────────────────────────────────────────────────────────

  private onFrame(text: string): void {
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      this.options.logger.debug({ plex: this.options.url, bytes: text.length }, 'ignored a notification that is not JSON');
      return;
    }
    for (const entry of playNotifications(frame)) this.onPlayNotification(entry);
  }

  private onPlayNotification(entry: Record<string, unknown>): void {
    const sessionKey = asString(entry.sessionKey);
    const state = asString(entry.state);
    if (!sessionKey || !state) return;
    this.counters.notifications++;
    const known = this.tracked.get(sessionKey);
    if (state !== 'stopped') this.stoppedKeys.delete(sessionKey);
    if (!known) {
      if (state !== 'stopped') this.requestListing(); // a new session: who and where come from the listing
      return;
    }
    known.confirmedAt = Date.now();
    const ratingKey = asString(entry.ratingKey);
    if (state === 'stopped') {
      this.stoppedKeys.set(sessionKey, known.ratingKey);
      this.end(known, 'notification');
      return;
    }
    if (ratingKey !== undefined && known.ratingKey !== undefined && ratingKey !== known.ratingKey) {
      // Clients that never send stop: the next item under the same key is a stop and a start.
      this.end(known, 'notification');
      const next: TrackedSession = { ...known, ratingKey, state, confirmedAt: Date.now() };
      delete next.sessionId;
      this.tracked.set(sessionKey, next);
      if (!next.skipped) this.emit('start', next, 'notification');
      this.requestListing(); // the new item's bandwidth and bitrate
      return;
    }
    known.state = state;
    if (!known.skipped) this.emit(state === 'paused' ? 'pause' : 'progress', known, 'notification');
    this.followTranscode(known, asString(entry.transcodeSession));
  }

  /**
   * A transcodeSession other than the one known says the stream changed (a new quality, direct play ↔
   * transcode): the listing has its new bandwidth. Read at once, or when the session's second is over.
   */
  private followTranscode(session: TrackedSession, transcodeSession: string | undefined): void {
    if (transcodeSession === undefined || transcodeSession === session.transcodeSession) return;
    // A transcoder the listing showed without its key: the first name heard is the one known, not a change.
    const changed = session.transcodeSession !== undefined || !session.transcoding;
    session.transcodeSession = transcodeSession;
    if (!changed || session.rereadPending) return;
    this.counters.transcodeChanges++;
    const wait = (session.rereadAt ?? -Infinity) + REREAD_INTERVAL_MS - performance.now();
    const reread = () => {
      session.rereadPending = false;
      session.rereadAt = performance.now();
      if (this.tracked.get(session.sessionKey) === session) this.requestListing();
    };
    if (wait <= 0) {
      reread();
      return;
    }
    session.rereadPending = true;
    this.link.after(wait, reread);
  }
}
