/**
 * The one interface every event source implements (the Plex log tail, the Plex API, Jellyfin, Emby…), and
 * the source-neutral playback event they all produce. The daemon holds a list of these and knows no
 * source by name: a new source is one file implementing PlaybackSource plus one config branch.
 */
import type { Logger } from 'pino';
import type { SavedPosition } from './tail.js';

export type PlaybackKind = 'start' | 'progress' | 'pause' | 'stop';

export interface PlaybackEvent {
  kind: PlaybackKind;
  /** Normalised client address (IPv4, or compressed IPv6; IPv4-mapped becomes IPv4). */
  address: string;
  /** The client's port when the source knows it (the log does), else 0. */
  port: number;
  /** The server's own label of the client network, as written ("WAN", "Subnet", "LAN", "WAN (cellular)"). */
  network?: string;
  /**
   * Whether the server says the client is on the local network (remoteOnly): each source sets it from what
   * its server says; undefined when it does not say, and the configured localNetworks decide.
   */
  local?: boolean;
  /** Identity of the playback, unique across sources and servers (an API source prefixes its server's id). */
  sessionKey: string;
  user?: string;
  timestamp: Date;
  /** What the event came from: a request path of the log, an API endpoint. */
  path: string;
  /** The source's name ('log', 'plex', 'jellyfin', 'emby'); absent means 'log'. */
  source?: string;
  /** The server's own location label (Plex: lan, wan, cellular). */
  location?: string;
  /** The player's product name. */
  player?: string;
  /** bits/s the server reserved for the stream (Plex's Session.bandwidth, a transcode's bitrate). */
  bandwidth?: number;
  /** bits/s: the media's average bitrate. */
  mediaBitrate?: number;
  /** The stream is the file as it is (no transcoder running). */
  directPlay?: boolean;
  /** bits/s: the video bitrate cap a transcode start request asks for (the log's `maxVideoBitrate`). */
  maxVideoBitrate?: number;
  /** Gateway mode: the port the server's streams leave the router from (its publicPort). */
  publicPort?: number;
}

/** How one HTTP request to a media server ended (the `result` label of the requests metric). */
export type SourceRequestResult = 'ok' | 'timeout' | 'http-error' | 'malformed' | 'unreachable' | 'unauthorized';

/** A stream the source sees but cannot give a pipe (relayed, behind a proxy or a container bridge). */
export interface SkippedStream {
  session: string;
  user?: string;
  player?: string;
  address?: string;
  /** bits/s the server reserved for it: it still uses the uplink. */
  bandwidth?: number;
  reason: string;
}

/** What each source reports for the status page, /api/status and `shaperr status`. */
export interface SourceStatus {
  /** The source's name: 'log', 'plex', 'jellyfin', 'emby'. */
  source: string;
  /** What it listens to: the server's URL, or the log file's path. */
  target: string;
  /** Its connection state in words ('connected', 'waiting for Plex', 'token rejected', 'following', 'stopped'…). */
  state: string;
  /** The server's name and version once known. */
  server?: { name?: string; version?: string; id?: string };
  /** Sessions it tracks now. */
  sessions: number;
  /** Streams that get no pipe, and why. */
  skipped: SkippedStream[];
  lastError?: string;
  /** Something the operator should know about how it works now (e.g. 'polling every 2 s: the server pushes nothing'). */
  note?: string;
  counters: Record<string, number>;
}

export interface PlaybackSource {
  /** The source's name, as in PlaybackEvent.source and SourceStatus.source. */
  readonly name: string;
  /** Starts listening; resolves once it is set up (a server that is down is waited for in the background, not here). */
  start(): void | Promise<void>;
  /** Stops listening and closes its connections; no event after it resolves. */
  stop(): Promise<void>;
  status(): SourceStatus;
  /** bits/s the server reserved for the streams this source cannot pipe: kept out of the pipes' guarantees. */
  reservedBandwidth(): number;
  /** A log source's read position, saved in the state file so that a restart resumes right there. */
  position?(): SavedPosition | undefined;
}

/** One line of `shaperr check` about a source. */
export interface SourceCheckLine {
  verdict: 'ok' | 'warn' | 'fail';
  what: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

/** Retry, timeout and poll periods of a server source (tests shorten them); a source may add its own. */
export interface ServerTimings {
  /** First reconnect delay; doubles up to retryMaxMs. */
  retryMinMs: number;
  retryMaxMs: number;
  /** After a 401: the key will not fix itself quickly. */
  unauthorizedRetryMs: number;
  /** Any HTTP request (and the websocket handshake). */
  requestTimeoutMs: number;
  pingMs: number;
  /** No pong (nor any frame) for this long: the connection is dead though TCP never said so. */
  pongTimeoutMs: number;
  /** Full reconcile period; 0: only on (re)connect. */
  pollMs: number;
  /** The tracker's idle time: a session silent for half of it is looked up. */
  idleMs: number;
}

/** What the daemon hands every source it creates. */
export interface SourceContext {
  onEvent: (event: PlaybackEvent) => void;
  logger: Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>;
  /** Every HTTP request's outcome, for metrics (labelled with the source's name). */
  onRequest?: (endpoint: string, result: SourceRequestResult) => void;
  /** Overrides of the server timings (tests); a server's configured poll period wins over pollMs here. */
  timings?: Partial<ServerTimings>;
  /** The tracker's idle time (ms). */
  idleMs: number;
  /** Where a log source resumes (the saved position, or where the warm start stopped); others ignore it. */
  resumeAt?: SavedPosition;
  /** The id this host presents to `server` (a media server's kind and URL), the same across restarts (the daemon keeps it in its state file). */
  deviceIdFor?: (server: string) => string;
}
