/**
 * Drives the automatic server ceiling: every tick it reads the pipes' counters and the downstream delay
 * (Plex's own connections, or the UDP probe), lets the controller decide, and hands a change to the
 * caller, which applies it through the shaper's rebalance (one batch; guarantees never above the ceiling).
 */
import type { BitsPerSecond, PipeCounters } from '../../lib/index.js';
import { type CeilingBounds, type CeilingChange, CeilingController, type CeilingReason, type CeilingRules, type CeilingRulesFactory } from './controller.js';
import { monotonicMs } from '../support/clock.js';
import { ThroughputMeter } from '../support/throughput.js';
import type { PlexFlowDelay } from './flow-delay.js';
import type { UdpProbe } from './udp-probe.js';

export const CEILING_TICK_MS = 100;
/** Pipes backlogged within this long count toward the demand (a pipe between two packets reads empty). */
const DEMAND_MEMORY_MS = 1000;
/** Points kept for the status page's chart: five minutes at one a second. */
const HISTORY_POINTS = 300;

export type CeilingSignalName = 'plex' | 'probe';

export interface CeilingStatus {
  mode: 'auto';
  signal: CeilingSignalName;
  rate: BitsPerSecond;
  min: BitsPerSecond;
  max: BitsPerSecond;
  /** What the link carried for Plex the last time it queued. */
  capacity?: BitsPerSecond;
  /** The downstream queueing delay now, ms (absent: nothing flows). */
  delayMs?: number;
  /** Why the ceiling cannot help, when it cannot. */
  cause?: string;
  lastChange?: { at: string; from: BitsPerSecond; to: BitsPerSecond; reason: CeilingReason; why: string };
  changes: number;
  /** The ceiling once a second over the last minutes, for the status page's chart. */
  history: Array<{ at: string; rate: BitsPerSecond; delayMs?: number }>;
}

export interface AutoCeilingOptions {
  bounds: CeilingBounds;
  start: BitsPerSecond;
  signal: CeilingSignalName;
  flows?: PlexFlowDelay;
  probe?: UdpProbe;
  readPipes: () => PipeCounters;
  /** Applies a new ceiling (throws when the kernel refuses: the controller's view is then put back). */
  apply: (rate: BitsPerSecond, change: CeilingChange) => void;
  onError: (error: unknown) => void;
  /** The cause the ceiling cannot help (the uplink busy with other traffic) began (a text) or ended (undefined). */
  onCause?: (cause: string | undefined) => void;
  /** Other rules than shaperr's controller (the benchmark weighs cake-autorate's against it). */
  rules?: CeilingRulesFactory;
}

export class AutoCeiling {
  private readonly controller: CeilingRules;
  private timer?: NodeJS.Timeout;
  /** What shaperr sent through the server class, tick to tick. */
  private readonly sent = new ThroughputMeter();
  private readonly backloggedAt = new Map<string, { at: number; wantedCeil: number }>();
  private lastChange?: CeilingStatus['lastChange'];
  private changes = 0;
  private readonly history: CeilingStatus['history'] = [];
  private recordedSecond?: number;
  private cause?: string;

  constructor(private readonly options: AutoCeilingOptions) {
    this.controller = (options.rules ?? ((bounds, start) => new CeilingController(bounds, start)))(options.bounds, options.start);
  }

  get rate(): BitsPerSecond {
    return this.controller.rate;
  }

  /** The ceiling without a probe under way: what a restart starts from. */
  get settledRate(): BitsPerSecond {
    return this.controller.settledRate;
  }

  start(): void {
    this.options.probe?.start();
    this.timer = setInterval(() => this.tick(), CEILING_TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.options.probe?.stop();
  }

  /** New bounds (a schedule's cap, a reload): applied at once when the ceiling is outside them. */
  setBounds(bounds: CeilingBounds): void {
    const change = this.controller.setBounds(bounds);
    if (change) this.applyChange(change);
  }

  /** One tick: read, decide, apply. Exposed for tests that drive the clock themselves. */
  tick(at = monotonicMs()): CeilingChange | undefined {
    try {
      const { serverBytes, pipes } = this.options.readPipes();
      const sentRate = this.sent.bitsPerSecond('server', serverBytes, at) ?? 0;
      const probeMs = this.options.probe?.delayMs();
      const flows = this.options.flows?.read(at, pipes, probeMs);
      const delayMs = this.options.signal === 'plex' ? flows?.delayMs : probeMs;
      const change = this.controller.observe({ at, delayMs, deliveredRate: flows?.deliveredRate, sentRate, demand: this.demand(at, pipes) });
      this.record(delayMs);
      if (change) this.applyChange(change);
      if (this.controller.cause !== this.cause) {
        this.cause = this.controller.cause;
        this.options.onCause?.(this.cause);
      }
      return change;
    } catch (error) {
      this.options.onError(error);
      return undefined;
    }
  }

  /** The wanted ceilings of the pipes backlogged lately, added up. */
  private demand(at: number, pipes: PipeCounters['pipes']): BitsPerSecond {
    const present = new Set<string>();
    for (const pipe of pipes) {
      present.add(pipe.address);
      if (pipe.backlog > 0) this.backloggedAt.set(pipe.address, { at, wantedCeil: pipe.wantedCeil });
    }
    let demand = 0;
    for (const [address, entry] of this.backloggedAt) {
      if (!present.has(address) || at - entry.at > DEMAND_MEMORY_MS) this.backloggedAt.delete(address);
      else demand += entry.wantedCeil;
    }
    return demand;
  }

  private applyChange(change: CeilingChange): void {
    try {
      this.options.apply(change.to, change);
    } catch (error) {
      // The kernel kept the old ceiling: so does the controller (the next tick decides again).
      this.controller.restore(change.from);
      throw error;
    }
    this.changes++;
    this.lastChange = { at: new Date().toISOString(), ...change };
  }

  /** One point a second for the chart. */
  private record(delayMs: number | undefined): void {
    const second = Math.floor(Date.now() / 1000);
    if (second === this.recordedSecond) return;
    this.recordedSecond = second;
    const point: CeilingStatus['history'][number] = { at: new Date(second * 1000).toISOString(), rate: this.controller.rate };
    if (delayMs !== undefined) point.delayMs = Math.round(delayMs * 10) / 10;
    this.history.push(point);
    if (this.history.length > HISTORY_POINTS) this.history.shift();
  }

  status(): CeilingStatus {
    const status: CeilingStatus = {
      mode: 'auto',
      signal: this.options.signal,
      rate: this.controller.rate,
      min: this.controller.bounds.min,
      max: this.controller.bounds.max,
      changes: this.changes,
      history: [...this.history],
    };
    const { capacity, delayMs, cause } = this.controller;
    if (capacity !== undefined) status.capacity = Math.round(capacity);
    if (delayMs !== undefined) status.delayMs = Math.round(delayMs * 10) / 10;
    if (cause) status.cause = cause;
    if (this.lastChange) status.lastChange = { ...this.lastChange };
    return status;
  }
}
