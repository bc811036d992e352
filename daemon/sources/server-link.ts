/**
 * What every media-server source does around its connection, whatever the server: timers it clears at
 * stop, the retry after a failure (doubling up to a cap, a long wait after a 401, one log line per change
 * of state), a websocket watchdog for paths that die without a close, and one listing at a time.
 */
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { ServerHttpError } from './server-get.js';
import type { ServerTimings, SkippedStream, SourceContext } from './source.js';

/** Every server source's periods unless it says otherwise (tests shorten them). */
export const defaultServerTimings: ServerTimings = {
  retryMinMs: 1000,
  retryMaxMs: 30_000,
  unauthorizedRetryMs: 5 * 60_000,
  requestTimeoutMs: 5000,
  pingMs: 15_000,
  pongTimeoutMs: 30_000,
  pollMs: 30_000,
  idleMs: 120_000,
};

export interface ServerLinkOptions {
  /** The server's kind in words: 'Jellyfin', 'Emby', 'Plex'. */
  label: string;
  url: string;
  /** Fields every log line about this server carries. */
  logContext: Record<string, string>;
  logger: SourceContext['logger'];
  timings: ServerTimings;
  redact: (text: string) => string;
  /** The state and the error after a 401 ('key rejected', 'Jellyfin rejected the API key'). */
  rejected: { state: string; error: string };
  /** Called for each (re)connection attempt. */
  connect: () => void;
}

/** What a source does with its server's websocket; the link does the rest (errors, signs of life). */
export interface ServerSocketHandlers {
  opened(socket: WebSocket): void;
  message(text: string): void;
  /** The socket is gone; `failure` says why when it never opened (a refused upgrade, a network error). */
  closed(failure: unknown, code: number): void;
}

export class ServerLink {
  state = 'connecting';
  lastError?: string;
  /** When the websocket last showed a sign of life (a frame, a pong, its opening). */
  alive = 0;
  private retryDelay: number;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly options: ServerLinkOptions) {
    this.retryDelay = options.timings.retryMinMs;
  }

  get stopped(): boolean {
    return this.state === 'stopped';
  }

  get waitingState(): string {
    return `waiting for ${this.options.label}`;
  }

  every(ms: number, run: () => void): void {
    if (ms <= 0) return;
    const timer = setInterval(run, ms);
    timer.unref();
    this.timers.add(timer);
  }

  after(ms: number, run: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      run();
    }, ms);
    timer.unref();
    this.timers.add(timer);
  }

  stop(): void {
    this.state = 'stopped';
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  /** The link is up: the backoff starts over. Whether it had been down before (a reconnect). */
  connected(): boolean {
    const wasDown = this.state !== 'connecting';
    this.state = 'connected';
    this.retryDelay = this.options.timings.retryMinMs;
    this.lastError = undefined;
    return wasDown;
  }

  /** Any failure to reach the server: one clear line per change of state, then a retry (backoff, or later after a 401). */
  failed(error: unknown): void {
    if (this.stopped) return;
    const { label, url, logContext, logger, timings, rejected } = this.options;
    const message = this.options.redact((error as Error).message ?? String(error));
    if (error instanceof ServerHttpError && error.result === 'unauthorized') {
      if (this.state !== rejected.state) logger.error(logContext, `${message} at ${url}; retrying every ${Math.round(timings.unauthorizedRetryMs / 1000)} s`);
      this.state = rejected.state;
      this.lastError = rejected.error;
      this.after(timings.unauthorizedRetryMs, this.options.connect);
      return;
    }
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, timings.retryMaxMs);
    if (this.state !== this.waitingState) logger.warn({ ...logContext, err: message, retryMs: delay }, `${this.waitingState} at ${url}: ${message}`);
    else logger.debug({ ...logContext, err: message, retryMs: delay }, `${label} still unreachable`);
    this.state = this.waitingState;
    this.lastError = message;
    this.after(delay, this.options.connect);
  }

  /**
   * Opens the server's websocket: a 401 on the upgrade becomes the rejected error (its retry comes later),
   * another refusal an http-error; every frame and pong counts as a sign of life.
   */
  openSocket(url: URL, headers: Record<string, string>, verifyTls: boolean, handlers: ServerSocketHandlers): WebSocket {
    const socket = new WebSocket(url, { headers, rejectUnauthorized: verifyTls, handshakeTimeout: this.options.timings.requestTimeoutMs });
    let failure: unknown;
    socket.on('unexpected-response', (_request, response: IncomingMessage) => {
      failure =
        response.statusCode === 401
          ? new ServerHttpError(`${this.options.rejected.error} (401)`, 'unauthorized')
          : new ServerHttpError(`websocket refused with HTTP ${response.statusCode}`, 'http-error');
      response.resume();
      socket.terminate();
    });
    socket.on('error', (error) => (failure ??= error));
    socket.on('open', () => {
      if (this.stopped) return socket.terminate();
      this.alive = Date.now();
      handlers.opened(socket);
    });
    socket.on('pong', () => (this.alive = Date.now()));
    socket.on('message', (data) => {
      this.alive = Date.now();
      handlers.message(data.toString());
    });
    socket.on('close', (code) => handlers.closed(failure, code));
    return socket;
  }

  /**
   * Pings the socket every pingMs; when nothing (no pong, no message) came for pongTimeoutMs the path is
   * dead though TCP never said so: the socket is terminated, and its close handler reconnects. Only time
   * this process was awake counts: a tick that comes late (a loaded machine, a long GC stalled it) starts
   * the wait over, since the server's answer may sit unread, or it had no ping to answer.
   */
  watch(socket: WebSocket, lastAlive: () => number): NodeJS.Timeout {
    const { timings, logger, logContext, label } = this.options;
    let waitingSince = Date.now();
    let previousTick = performance.now();
    const timer = setInterval(() => {
      const tick = performance.now();
      const stalled = tick - previousTick > 2 * timings.pingMs;
      previousTick = tick;
      const now = Date.now();
      if (stalled || lastAlive() > waitingSince) waitingSince = now;
      else if (now - waitingSince > timings.pongTimeoutMs) {
        logger.warn(logContext, `no answer from ${label} for ${Math.round((now - lastAlive()) / 1000)} s: reconnecting`);
        socket.terminate();
        return;
      }
      socket.ping();
    }, timings.pingMs);
    timer.unref();
    return timer;
  }
}

/** Runs one at a time; a request while one runs makes exactly one more run right after it. */
export class SingleFlight {
  private running?: Promise<void>;
  private again = false;

  constructor(
    private readonly run: () => Promise<void>,
    private readonly mayRun: () => boolean,
  ) {}

  request(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.run().finally(() => {
      this.running = undefined;
      if (this.again && this.mayRun()) {
        this.again = false;
        this.request();
      }
    });
  }

  /** Resolves when the run in flight (if any) has ended. */
  async settled(): Promise<void> {
    await this.running?.catch(() => undefined);
  }
}

/** A stream without a pipe as the status lists it: who, where, its bandwidth (bits/s) when known, and why. */
export function skippedStream(
  session: string,
  reason: string,
  known: { user?: string | undefined; player?: string | undefined; address?: string | undefined; bandwidth?: number | undefined },
): SkippedStream {
  const entry: SkippedStream = { session, reason };
  if (known.user) entry.user = known.user;
  if (known.player) entry.player = known.player;
  if (known.address) entry.address = known.address;
  if (known.bandwidth !== undefined) entry.bandwidth = known.bandwidth;
  return entry;
}
