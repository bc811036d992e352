/**
 * Sessions: playback events → which clients must be throttled, and at what limits.
 *
 * Per client address, the set of live sessions. The first live session throttles at once (the first burst
 * is what hurts); the last one ending schedules a release after a grace period, which any new session
 * cancels — so the STOP/START pairs of a seek storm never reach the kernel. Sessions that vanish without a
 * stop (app killed, network gone) end after an idle time with neither log activity nor bytes through
 * the client's class.
 *
 * The tracker only decides; applying is the job of the `ClientShaper` port, called through a per-client
 * queue so that at most one kernel change per client is in flight and the last decision wins.
 */
import type { PlaybackEvent } from '../sources/source.js';
import type { Limits, Policy, PolicyInput, StreamNeed } from './policy.js';

/** What the sessions stage needs from the shaper (the real Shaper, or a dry-run printer). */
export interface ClientShaper {
  throttle(address: string, limits: Limits): Promise<unknown>;
  /** Several changes with one rebalance of the server rate (config reload); an entry refused has an `error`. */
  throttleAll?(entries: readonly { address: string; limits: Limits }[]): Promise<readonly { error?: Error }[]>;
  release(address: string): Promise<unknown>;
  /** Bytes sent through the client's class so far, to tell a paused-but-alive client from a vanished one. */
  bytesSent?(address: string): number | undefined;
}

export interface SessionTrackerOptions {
  /** How long a client with no live session keeps its pipe (seek storms, quick next episode). */
  graceMs: number;
  /** A session with no log activity and no bytes for this long has vanished. */
  idleMs: number;
  policy: Policy;
  shaper: ClientShaper;
  /** Milliseconds clock; injectable for tests. */
  now?: () => number;
  /** Every decision, for the structured log. */
  onDecision?: (decision: Decision) => void;
  /** A kernel change failed (it is retried on the next event or sweep). */
  onError?: (error: unknown, address: string) => void;
}

export interface Decision {
  action: 'throttle' | 'release' | 'change' | 'exempt' | 'grace' | 'resume' | 'expire';
  address: string;
  session?: string;
  user?: string;
  limits?: Limits;
  reason?: string;
  /** For kernel changes: milliseconds from the event (or timer) to the kernel's ACK. */
  latencyMs?: number;
}

interface LiveSession {
  lastSeen: number;
  paused: boolean;
  /** What the stream needs, when its source knows (the Plex API does; `rate: auto` uses it). */
  need?: StreamNeed;
  /** The source's name (restored sessions have none until a source mentions them again). */
  source?: string;
}

interface ClientRecord {
  address: string;
  user?: string;
  /** What its source says of its network (remoteOnly). */
  local?: boolean;
  /** The player's product name (Plex API). */
  player?: string;
  /** Live sessions, the one heard from longest ago first. */
  sessions: Map<string, LiveSession>;
  /** Sessions that were stopped, and when: a late ping or timeline line must not bring them back. */
  stopped: Map<string, number>;
  /** When the last session ended; release is due at releaseAt. */
  releaseAt?: number;
  /** Limits wanted in the kernel now (undefined: no pipe), and why these. */
  wanted?: Limits;
  why?: string;
  /** Limits the kernel has (as far as we know). */
  applied?: Limits;
  /** Wall-clock ms since when the client has had a pipe. */
  throttledSince?: number;
  /** Bytes through the class at the last idle check, and when they last moved. */
  lastBytes?: number;
  bytesMovedAt: number;
  inFlight?: Promise<void>;
}

/**
 * A client address rarely plays more than a few streams at once. Start lines with ever new session keys
 * and no stop (a misbehaving player, garbage in the log) would otherwise pile up for as long as the
 * client's bytes keep its sessions alive: beyond this many, the one heard from longest ago goes.
 */
const MAX_LIVE_SESSIONS = 32;
/** Stragglers follow their stop within seconds: the latest stops per client are all that need remembering. */
const MAX_STOPPED_SESSIONS = 64;

/** Sets `key` as the newest entry of an insertion-ordered map, dropping the oldest beyond `limit`; returns those dropped. */
function setNewest<V>(map: Map<string, V>, key: string, value: V, limit: number): [string, V][] {
  map.delete(key);
  map.set(key, value);
  const dropped: [string, V][] = [];
  for (const entry of map) {
    if (map.size <= limit) break;
    map.delete(entry[0]);
    dropped.push(entry);
  }
  return dropped;
}

const sameLimits = (a: Limits | undefined, b: Limits | undefined): boolean =>
  a === b || (a !== undefined && b !== undefined && a.rate === b.rate && a.ceil === b.ceil);

/** Who a client is and what it plays: what the session table and the status report both name. */
export interface ClientIdentity {
  address: string;
  user?: string;
  /** Which sources see it playing: a source's name ('log', 'plex', 'jellyfin'…), or several joined with '+' (log+plex). */
  source?: string;
  player?: string;
  /** bits/s its streams need, as the Plex API reports them (Session.bandwidth, else media bitrate). */
  streamBandwidth?: number;
  sessions: string[];
}

export interface ClientSummary extends ClientIdentity {
  state: 'playing' | 'paused' | 'grace';
  limits?: Limits;
  throttled: boolean;
  /** ISO time since when the client has had a pipe. */
  since?: string;
}

export class SessionTracker {
  private readonly clients = new Map<string, ClientRecord>();
  private readonly now: () => number;
  /** Kernel changes made, for metrics and the seek-storm guarantee. */
  kernelChanges = 0;

  constructor(private options: SessionTrackerOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Feeds one playback event. */
  handle(event: PlaybackEvent): void {
    const { policy } = this.options;
    const verdict = policy.limitsFor({ ...event, sources: [event.source ?? 'log'] });
    if (verdict.exempt) {
      if (event.kind === 'start')
        this.decide({
          action: 'exempt',
          address: event.address,
          session: event.sessionKey,
          reason: verdict.exempt,
          ...(event.user ? { user: event.user } : {}),
        });
      return;
    }
    const now = this.now();
    let client = this.clients.get(event.address);
    if (event.kind === 'stop') {
      if (!client) return;
      setNewest(client.stopped, event.sessionKey, now, MAX_STOPPED_SESSIONS);
      if (!client.sessions.delete(event.sessionKey)) return;
      this.endedOne(client, now, 'stop');
      if (client.sessions.size > 0) this.rewant(client, now);
      return;
    }
    if (event.kind !== 'start' && client?.stopped.has(event.sessionKey)) return; // a straggler of a stopped session
    if (!client) {
      client = { address: event.address, sessions: new Map(), stopped: new Map(), bytesMovedAt: now };
      this.clients.set(event.address, client);
    }
    client.stopped.delete(event.sessionKey);
    if (event.user) client.user = event.user;
    if (event.local !== undefined) client.local = event.local;
    if (event.player) client.player = event.player;
    const session: LiveSession = { lastSeen: now, paused: event.kind === 'pause', source: event.source ?? 'log' };
    const need = streamNeed(event) ?? client.sessions.get(event.sessionKey)?.need;
    if (need) session.need = need;
    for (const [key] of setNewest(client.sessions, event.sessionKey, session, MAX_LIVE_SESSIONS)) {
      this.decide({
        action: 'expire',
        address: client.address,
        session: key,
        reason: `more than ${MAX_LIVE_SESSIONS} live sessions: the one heard from longest ago`,
      });
    }
    if (client.releaseAt !== undefined) {
      client.releaseAt = undefined;
      this.decide({ action: 'resume', address: client.address, session: event.sessionKey });
    }
    this.rewant(client, now);
  }

  /** Limits for the client's live sessions together (with `rate: auto` their needs add up). */
  private rewant(client: ClientRecord, now: number): void {
    const verdict = this.options.policy.limitsFor(this.policyInput(client));
    client.wanted = verdict.limits;
    client.why = verdict.why;
    this.converge(client, now);
  }

  private policyInput(client: ClientRecord): PolicyInput {
    const streams = streamNeeds(client);
    const sources = [...new Set([...client.sessions.values()].flatMap((session) => (session.source ? [session.source] : [])))];
    return {
      address: client.address,
      streams,
      sources,
      ...(client.user ? { user: client.user } : {}),
      ...(client.local !== undefined ? { local: client.local } : {}),
    };
  }

  private endedOne(client: ClientRecord, now: number, reason: string): void {
    if (client.sessions.size > 0) return;
    client.releaseAt = now + this.options.graceMs;
    this.decide({ action: 'grace', address: client.address, reason });
  }

  /**
   * Runs the timers: releases clients whose grace ran out, expires vanished sessions. Call it every few
   * hundred ms; returns the time of the next due timer (or undefined).
   */
  sweep(): number | undefined {
    const now = this.now();
    let next: number | undefined;
    const earliest = (at: number): void => {
      next = next === undefined ? at : Math.min(next, at);
    };
    for (const client of this.clients.values()) {
      if (this.expireVanished(client, now) && client.sessions.size > 0) this.rewant(client, now);
      if (client.releaseAt !== undefined && client.releaseAt <= now) {
        client.releaseAt = undefined;
        client.wanted = undefined;
        this.converge(client, now);
      } else if (client.releaseAt !== undefined) {
        earliest(client.releaseAt);
      }
      this.converge(client, now); // retries a change that failed earlier
      this.forgetIfIdle(client);
    }
    return next;
  }

  private forgetIfIdle(client: ClientRecord): void {
    if (client.wanted === undefined && client.applied === undefined && client.sessions.size === 0 && !client.inFlight) {
      this.clients.delete(client.address);
    }
  }

  /** Whether a session expired. */
  private expireVanished(client: ClientRecord, now: number): boolean {
    for (const [key, at] of client.stopped) if (now - at > this.options.idleMs) client.stopped.delete(key);
    if (client.sessions.size === 0) return false;
    const before = client.sessions.size;
    const bytes = this.options.shaper.bytesSent?.(client.address);
    if (bytes !== undefined && bytes !== client.lastBytes) {
      client.lastBytes = bytes;
      client.bytesMovedAt = now;
    }
    const idleSince = (session: LiveSession): number => Math.max(session.lastSeen, client.bytesMovedAt);
    for (const [key, session] of client.sessions) {
      if (now - idleSince(session) < this.options.idleMs) continue;
      client.sessions.delete(key);
      this.decide({ action: 'expire', address: client.address, session: key, reason: `no activity for ${Math.round((now - idleSince(session)) / 1000)} s` });
    }
    // A vanished client has no reason for a grace period: nothing is about to resume.
    if (client.sessions.size === 0) client.releaseAt = now;
    return client.sessions.size < before;
  }

  /**
   * Brings the kernel to `wanted`, one change at a time per client; the latest wish wins. `batched` is
   * this client's part of a change made together with others.
   */
  private converge(client: ClientRecord, startedAt: number, batched?: Promise<unknown>): void {
    if (client.inFlight || sameLimits(client.wanted, client.applied)) return;
    const wanted = client.wanted;
    const action: Decision['action'] = wanted === undefined ? 'release' : client.applied === undefined ? 'throttle' : 'change';
    const change = batched ?? (wanted === undefined ? this.options.shaper.release(client.address) : this.options.shaper.throttle(client.address, wanted));
    this.kernelChanges++;
    let failed = false;
    client.inFlight = change
      .then(
        () => {
          if (client.applied === undefined) client.throttledSince = Date.now();
          if (wanted === undefined) delete client.throttledSince;
          client.applied = wanted;
          this.decide({
            action,
            address: client.address,
            latencyMs: this.now() - startedAt,
            ...(wanted ? { limits: wanted } : {}),
            ...(wanted && client.why ? { reason: client.why } : {}),
            ...(client.user ? { user: client.user } : {}),
          });
        },
        (error: unknown) => {
          failed = true;
          this.options.onError?.(error, client.address);
        },
      )
      .finally(() => {
        client.inFlight = undefined;
        // Events that arrived meanwhile may want something else already; a failure waits for the next
        // event or sweep instead of retrying in a tight loop.
        if (!failed && !sameLimits(client.wanted, client.applied)) this.converge(client, this.now());
        else this.forgetIfIdle(client);
      });
  }

  private decide(decision: Decision): void {
    this.options.onDecision?.(decision);
  }

  /** Resolves when no kernel change is in flight (tests, shutdown). */
  async settled(): Promise<void> {
    for (;;) {
      const pending = [...this.clients.values()].flatMap((client) => (client.inFlight ? [client.inFlight] : []));
      if (pending.length === 0) return;
      await Promise.all(pending);
    }
  }

  /** Swaps the policy (config reload); call reapplyPolicy to apply it to live clients. */
  setPolicy(policy: Policy): void {
    this.options = { ...this.options, policy };
  }

  /** Re-evaluates every client's limits (after a config reload or a schedule boundary). */
  reapplyPolicy(limitsFor: (client: PolicyInput) => Limits | undefined): void {
    const now = this.now();
    const together: ClientRecord[] = [];
    for (const client of this.clients.values()) {
      if (client.sessions.size === 0 && client.wanted === undefined) continue;
      client.wanted = client.sessions.size === 0 && client.releaseAt === undefined ? undefined : limitsFor(this.policyInput(client));
      const changesPipe = client.wanted !== undefined && client.applied !== undefined && !client.inFlight && !sameLimits(client.wanted, client.applied);
      if (changesPipe && this.options.shaper.throttleAll) together.push(client);
      else this.converge(client, now);
    }
    if (together.length === 0) return;
    // Pipes whose limits change go to the kernel in one batch: one rebalance of the server rate for all.
    const outcomes = this.options.shaper.throttleAll!(together.map((client) => ({ address: client.address, limits: client.wanted! })));
    for (const [index, client] of together.entries()) {
      this.converge(
        client,
        now,
        outcomes.then((all) => {
          if (all[index]?.error) throw all[index].error;
        }),
      );
    }
  }

  /** Restores state saved by an earlier run: these clients are in the kernel with these limits. */
  restore(saved: readonly SavedClient[]): void {
    const now = this.now();
    for (const entry of saved) {
      const sessions = new Map(entry.sessions.map((key) => [key, { lastSeen: now, paused: false }] as const));
      const record: ClientRecord = { address: entry.address, sessions, stopped: new Map(), wanted: entry.limits, applied: entry.limits, bytesMovedAt: now };
      if (entry.user) record.user = entry.user;
      record.throttledSince = entry.since ? Date.parse(entry.since) : Date.now();
      if (sessions.size === 0) record.releaseAt = now + this.options.graceMs;
      this.clients.set(entry.address, record);
    }
  }

  /** What to save so a restart can pick up where this run stopped. */
  snapshot(): SavedClient[] {
    return [...this.clients.values()]
      .filter((client) => client.applied !== undefined)
      .map((client) => ({
        address: client.address,
        sessions: [...client.sessions.keys()],
        limits: client.applied!,
        ...(client.user ? { user: client.user } : {}),
        ...(client.throttledSince ? { since: new Date(client.throttledSince).toISOString() } : {}),
      }));
  }

  summary(): ClientSummary[] {
    return [...this.clients.values()].map((client) => {
      const sessions = [...client.sessions.keys()];
      const paused = sessions.length > 0 && [...client.sessions.values()].every((session) => session.paused);
      const summary: ClientSummary = {
        address: client.address,
        sessions,
        state: sessions.length === 0 ? 'grace' : paused ? 'paused' : 'playing',
        throttled: client.applied !== undefined,
      };
      if (client.user) summary.user = client.user;
      if (client.player) summary.player = client.player;
      const live = [...client.sessions.values()];
      const sources = new Set(live.map((session) => session.source ?? 'log'));
      if (sources.size) summary.source = [...sources].sort().join('+');
      const needs = streamNeeds(client).map((need) => need.bandwidth ?? need.maxVideoBitrate ?? need.mediaBitrate ?? 0);
      if (needs.length) summary.streamBandwidth = needs.reduce((a, b) => a + b, 0);
      if (client.applied) summary.limits = client.applied;
      if (client.throttledSince) summary.since = new Date(client.throttledSince).toISOString();
      return summary;
    });
  }
}

export interface SavedClient {
  address: string;
  sessions: string[];
  limits: Limits;
  user?: string;
  /** ISO time since when the client has had a pipe. */
  since?: string;
}

/** The known needs of a client's live streams. With `source: both` one stream shows up in the log and an API: the API's figures win when it has any. */
function streamNeeds(client: ClientRecord): StreamNeed[] {
  const known = [...client.sessions.values()].filter((session) => session.need);
  const fromApi = known.filter((session) => session.source !== 'log');
  return (fromApi.length ? fromApi : known).map((session) => session.need!);
}

/** What a playback event says about its stream's needs (from the log: only a transcode's bitrate cap). */
function streamNeed(event: PlaybackEvent): StreamNeed | undefined {
  if (event.bandwidth === undefined && event.mediaBitrate === undefined && event.maxVideoBitrate === undefined) return undefined;
  const need: StreamNeed = { source: event.source ?? 'log' };
  if (event.bandwidth !== undefined) need.bandwidth = event.bandwidth;
  if (event.mediaBitrate !== undefined) need.mediaBitrate = event.mediaBitrate;
  if (event.maxVideoBitrate !== undefined) need.maxVideoBitrate = event.maxVideoBitrate;
  if (event.directPlay !== undefined) need.directPlay = event.directPlay;
  return need;
}
