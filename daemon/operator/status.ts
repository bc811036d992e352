/**
 * What `shaperr status`, the status page and `/api/status` show: the kernel's class counters joined with
 * the session table. One builder for all three, so they never disagree.
 */
import type { ClientState, Progress, TcClass } from '../../lib/index.js';
import type { ClientIdentity, Decision } from '../sessions/sessions.js';
import type { SourceStatus } from '../sources/source.js';
import type { CeilingStatus } from '../ceiling/auto-ceiling.js';
import type { ThroughputMeter } from '../support/throughput.js';

export interface SessionInfo extends ClientIdentity {
  state?: 'playing' | 'paused' | 'grace';
  since?: string;
  /** What the client wants (bits per second), when the session table knows better than the kernel. */
  wanted?: { rate: number; ceil: number };
}

export interface ClientStatus extends ClientIdentity {
  state: 'playing' | 'paused' | 'grace' | 'unknown';
  /** Guaranteed now (bits per second): the wanted rate, or its share when the server rate is contended. */
  rate: number;
  /** The most it may take when others leave room (bits per second). */
  ceil: number;
  /** The rate the client wants (bits per second). */
  wanted: number;
  /** Why the guarantee falls short of what it wants, or below 1 Mbit/s. */
  shortfall?: string;
  bytes: number;
  drops: number;
  /** Measured from the byte counter since the previous report; undefined on the first one. */
  bitsPerSecond?: number;
  since?: string;
}

export interface ServerStatus {
  /** The server's limit (bits per second). */
  rate: number;
  ceil: number;
  /** Set when the configured ceil is above the rate: it has no effect (the class sits at the root). */
  note?: string;
  bytes: number;
  drops: number;
  bitsPerSecond?: number;
  /** bitsPerSecond ÷ rate */
  utilisation?: number;
}

export interface RecentDecision {
  at: string;
  action: Decision['action'];
  address: string;
  user?: string;
  reason?: string;
}

export interface StatusReport {
  at: string;
  device: string;
  leaf: string;
  server?: ServerStatus;
  clients: ClientStatus[];
  decisions: RecentDecision[];
  counters?: Record<string, number>;
  /** A long operation under way (e.g. restoring thousands of pipes after a restart). */
  operation?: OperationProgress;
  /** Each source (the log, each media server): its state, sessions, the streams it cannot shape. */
  sources?: SourceStatus[];
  /** bits/s of the server rate kept out of the pipes' guarantees for streams without a pipe (relayed…), all sources together. */
  reservedRate?: number;
  /** The automatic server ceiling (server.rate: auto): where it is, what it measured, why it last moved. */
  ceiling?: CeilingStatus;
}

export interface OperationProgress extends Progress {
  what: string;
}

export interface StatusInput {
  device: string;
  leaf: string;
  clients: readonly ClientState[];
  server?: TcClass;
  sessions: readonly SessionInfo[];
  meter: ThroughputMeter;
  decisions?: readonly RecentDecision[];
  counters?: Record<string, number>;
  operation?: OperationProgress;
}

export function buildStatus(input: StatusInput): StatusReport {
  const at = performance.now();
  const sessions = new Map(input.sessions.map((info) => [info.address, info]));
  const clients = input.clients.map((client): ClientStatus => {
    const info = sessions.get(client.address);
    const bytes = client.statistics?.bytes ?? 0;
    const status: ClientStatus = {
      address: client.address,
      sessions: info?.sessions ?? [],
      state: info ? (info.state ?? (info.sessions.length ? 'playing' : 'grace')) : 'unknown',
      rate: client.rate,
      ceil: client.ceil,
      wanted: info?.wanted?.rate ?? client.wanted.rate,
      bytes,
      drops: client.statistics?.drops ?? 0,
      since: info?.since ?? client.since.toISOString(),
    };
    const measured = input.meter.bitsPerSecond(client.address, bytes, at);
    if (measured !== undefined) status.bitsPerSecond = measured;
    if (info?.user) status.user = info.user;
    if (client.shortfall) status.shortfall = client.shortfall;
    if (info?.source) status.source = info.source;
    if (info?.player) status.player = info.player;
    if (info?.streamBandwidth !== undefined) status.streamBandwidth = info.streamBandwidth;
    return status;
  });
  const report: StatusReport = { at: new Date().toISOString(), device: input.device, leaf: input.leaf, clients, decisions: [...(input.decisions ?? [])] };
  if (input.server) {
    const { rate, ceil } = input.server.parameters;
    const bytes = input.server.statistics?.bytes ?? 0;
    const server: ServerStatus = { rate, ceil, bytes, drops: input.server.statistics?.drops ?? 0 };
    if (ceil > rate) server.note = 'ceil above rate has no effect: the server class has nothing to borrow from, so its rate is the limit';
    const measured = input.meter.bitsPerSecond('server', bytes, at);
    if (measured !== undefined) {
      server.bitsPerSecond = measured;
      server.utilisation = measured / rate;
    }
    report.server = server;
  }
  input.meter.keepOnly(['server', ...clients.map((client) => client.address)]);
  if (input.counters) report.counters = input.counters;
  if (input.operation) report.operation = { ...input.operation };
  return report;
}
