/**
 * shaperrd: the one-way pipeline sources → sessions → shaper, plus what keeps it honest over time — the
 * state file, the timers (grace, idle, schedules), self-repair when someone removes our qdisc, and reload
 * on SIGHUP. The sources (the Plex log, the Plex API…) are a list of PlaybackSource: none is named here.
 */
import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { type ProgressListener, Shaper, type ShaperOptions, type ShaperState, ShaperWatch, SocketDiag } from '../lib/index.js';
import { type AutoCeilingConfig, autoCeilingConfig, type ShaperrConfig, policyConfig } from './config.js';
import { type Limits, Policy } from './sessions/policy.js';
import { type ClientSummary, type Decision, type SavedClient, SessionTracker } from './sessions/sessions.js';
import { startStatusServer } from './operator/http.js';
import { DaemonMetrics } from './operator/metrics.js';
import { type DaemonState, loadState, saveState } from './apply/state.js';
import { ThroughputMeter } from './support/throughput.js';
import { buildStatus, type OperationProgress, type RecentDecision, type StatusReport } from './operator/status.js';
import { findPlexLog, type SavedPosition } from './sources/tail.js';
import { readRecentLog, rebuildSessions } from './sessions/warm-start.js';
import { lockDevice } from './apply/device-lock.js';
import { clientsToRestore, ShaperPort } from './apply/shaper-port.js';
import type { AbstractLock } from '../native-bindings/abstract-lock.js';
import { type PlannedSource, planSources, type SourcePlan, sourceSettings } from './sources/plan.js';
import type { PlaybackEvent, PlaybackSource, ServerTimings, SourceContext } from './sources/source.js';
import { AutoCeiling } from './ceiling/auto-ceiling.js';
import type { CeilingChange, CeilingRulesFactory } from './ceiling/controller.js';
import { PlexFlowDelay } from './ceiling/flow-delay.js';
import { UdpProbe } from './ceiling/udp-probe.js';

export interface DaemonOptions {
  config: ShaperrConfig;
  logger: Logger;
  /** Decide and print the tc commands, touch nothing. */
  dryRun?: boolean;
  /** Override the log file (else config.log, else the usual locations). */
  logPath?: string;
  /** Every session decision (besides the log), e.g. for the demo's table. */
  onDecision?: (decision: Decision) => void;
  /** Retry, timeout and ping periods of the API sources (tests shorten them). */
  sourceTimings?: Partial<ServerTimings>;
  /** Rules other than shaperr's for the automatic ceiling (the benchmark weighs cake-autorate's against them). */
  ceilingRules?: CeilingRulesFactory;
}

const SWEEP_INTERVAL_MS = 250;
/** Repairs follow the kernel's notifications; this slow full check only backs them up. */
const SAFETY_CHECK_INTERVAL_MS = 30_000;
const SAVE_INTERVAL_MS = 1000;
/** A state file that cannot be written is reported this often, not on every attempt. */
const SAVE_ERROR_INTERVAL_MS = 60_000;
const RECENT_DECISIONS = 30;
const PROGRESS_LOG_INTERVAL_MS = 1000;
/** Fewer pipes than this are restored or repaired in a blink: no progress lines for them. */
const PROGRESS_MIN_PIPES = 500;

/** The automatic ceiling's changes are logged at most this often; the ones between are counted in the next line. */
const CEILING_LOG_INTERVAL_MS = 2000;

/** The Plex log's path, when the log is one of the planned sources. */
const logPathOf = (plan: SourcePlan): string | undefined => plan.sources.find((source) => source.name === 'log')?.target;

/** A reload refused before any of it took effect, with the reason (the old config stays). */
export class ReloadRefused extends Error {}

export class Shaperrd {
  private shaper?: Shaper;
  /** The sessions' decisions go to the shaper through it (the apply stage). */
  private shaperPort?: ShaperPort;
  /** Where playback events come from, as the config plans them. */
  private sources: PlaybackSource[] = [];
  private tracker?: SessionTracker;
  private policy: Policy;
  private serverLimits?: Limits;
  /** bits/s of the server rate kept for streams without a pipe (see updateReserve). */
  private reservedRate = 0;
  private timers: NodeJS.Timeout[] = [];
  /** The log's read position last saved (a new one makes the state dirty). */
  private savedLogPosition?: SavedPosition;
  /** The Plex log, when it is one of the sources. */
  private logPath?: string;
  private dirty = false;
  /** The DeviceId presented to each media server, kept in the state file (see DaemonState.devices). */
  private deviceIds: Record<string, string> = {};
  private stopping = false;
  private statusServer?: Server;
  private readonly recentDecisions: RecentDecision[] = [];
  private readonly meter = new ThroughputMeter();
  private operation?: OperationProgress;
  private watch?: ShaperWatch;
  /** The automatic server ceiling (server.rate: auto), while it runs. */
  private ceiling?: AutoCeiling;
  private ceilingLog = { at: -Infinity, unlogged: 0 };
  private deviceLock?: AbstractLock;
  /** When a failed save was last reported (undefined: the last save worked). */
  private saveFailureReportedAt?: number;
  readonly counters = { events: 0, throttles: 0, releases: 0, repairs: 0, errors: 0 };
  readonly metrics: DaemonMetrics;

  constructor(private options: DaemonOptions) {
    this.policy = new Policy(policyConfig(options.config));
    this.metrics = new DaemonMetrics({ status: () => this.readStatus(), shaper: () => this.shaper?.stats });
  }

  private get config(): ShaperrConfig {
    return this.options.config;
  }

  private get log(): Logger {
    return this.options.logger;
  }

  async start(): Promise<void> {
    const { config } = this;
    // Before anything touches the device or the state file: a second shaperrd must leave the first alone.
    if (!this.options.dryRun) this.deviceLock = lockDevice(config, 'not starting a second one (stop it first, or shape another device)');
    const saved = this.options.dryRun ? undefined : await loadState(config.stateFile, (message) => this.log.warn(message));
    this.deviceIds = { ...saved?.devices };
    const auto = autoCeilingConfig(config);
    this.serverLimits = auto ? this.autoStartLimits(auto, saved?.ceiling?.rate) : this.policy.serverLimitsAt(new Date());
    this.shaper = await Shaper.open(this.shaperOptions(this.serverLimits));
    this.shaperPort = new ShaperPort(this.shaper, {
      idleMs: config.idleSeconds * 1000,
      onChange: (action, count) => {
        if (action === 'throttle') this.counters.throttles += count;
        else this.counters.releases += count;
        this.dirty = true;
      },
      onError: (error, address, what) => this.kernelError(error, address, what),
    });
    this.tracker = new SessionTracker({
      graceMs: config.graceSeconds * 1000,
      idleMs: config.idleSeconds * 1000,
      policy: this.policy,
      shaper: this.shaperPort,
      onDecision: (decision) => this.onDecision(decision),
      onError: (error, address) => this.kernelError(error, address),
    });
    const plan = this.sourcesFor(config);
    this.log.info(plan.reason);
    this.logPath = logPathOf(plan);
    // The status page first: it shows the progress of restoring thousands of pipes.
    if (config.status) {
      this.statusServer = await startStatusServer({
        listen: config.status.listen,
        ...(config.status.token ? { token: config.status.token } : {}),
        status: () => this.readStatus(),
        metrics: this.metrics.registry,
      });
      this.log.info({ url: this.statusUrl, token: config.status.token ? 'required' : 'none' }, 'status page and /metrics listening');
    }
    const resumeAt = this.logPath && saved?.log && saved.log.path === this.logPath ? { inode: saved.log.inode, offset: saved.log.offset } : undefined;
    const warm = resumeAt || !this.logPath ? undefined : await this.warmStart(this.logPath);
    await this.reconcile(saved, warm?.clients ?? []);

    await this.startSources(plan, resumeAt ?? warm?.position);
    // Before the save below: a state saved without the ceiling would lose the last good one to a crash now.
    if (auto && !this.options.dryRun) this.startCeiling(auto, this.serverLimits.rate);
    // The log's starting position is saved at once: a crash before the first line must not skip what comes next.
    if (this.logPath) await this.save();
    if (!this.options.dryRun) this.watch = this.watchShaper(this.shaper);
    this.log.info(
      {
        sources: plan.sources.map((source) => `${source.name} ${source.target}`),
        device: config.device,
        leaf: this.shaper.leafKind,
        dryRun: !!this.options.dryRun,
      },
      'shaperrd started',
    );

    this.every(SWEEP_INTERVAL_MS, () => {
      this.tracker?.sweep();
      this.updateReserve();
    });
    // Schedules change at whole minutes: checked just after each one starts.
    this.every(60_000, () => this.applySchedule(), 60_000 - (Date.now() % 60_000) + 50);
    if (!this.options.dryRun) {
      this.every(SAFETY_CHECK_INTERVAL_MS, () => void this.watch?.check('safety check'));
      this.every(SAVE_INTERVAL_MS, () => void this.saveIfDirty());
    }
  }

  /** The sources `config` asks for (refused when the log is one of them and none is found). */
  private sourcesFor(config: ShaperrConfig): SourcePlan {
    const logPath = this.options.logPath ?? config.log ?? findPlexLog();
    const plan = planSources(config, logPath);
    if (plan.usesLog && !logPath) throw new Error('no Plex Media Server log found in the usual places; set `log:` in the config or pass --log');
    return plan;
  }

  /** Creates and starts the planned sources; a log source resumes at `resumeAt` (else at the end of the file). */
  private async startSources(plan: SourcePlan, resumeAt: SavedPosition | undefined): Promise<void> {
    this.logPath = logPathOf(plan);
    this.sources = plan.sources.map((planned) => planned.create(this.sourceContext(planned, resumeAt)));
    for (const source of this.sources) this.metrics.sourceStarted(source.name);
    await Promise.all(this.sources.map((source) => source.start()));
  }

  private sourceContext(planned: PlannedSource, resumeAt: SavedPosition | undefined): SourceContext {
    return {
      logger: this.log,
      idleMs: this.config.idleSeconds * 1000,
      onEvent: (event) => this.onEvent(event),
      onRequest: (endpoint, result) => this.metrics.sourceRequests.inc({ source: planned.name, endpoint, result }),
      deviceIdFor: (server) => this.deviceIdFor(server),
      ...(this.options.sourceTimings ? { timings: this.options.sourceTimings } : {}),
      ...(resumeAt ? { resumeAt } : {}),
    };
  }

  /** The DeviceId presented to a media server: made at random the first time, then the saved one. */
  private deviceIdFor(server: string): string {
    let id = this.deviceIds[server];
    if (!id) {
      id = randomBytes(16).toString('hex');
      this.deviceIds[server] = id;
      this.dirty = true;
    }
    return id;
  }

  /** SIGHUP with new source settings: every source starts over, the log where it was (the same file) or at its end. */
  private async restartSources(plan: SourcePlan): Promise<void> {
    const logPath = this.logPath;
    const position = this.logPosition();
    await Promise.all(this.sources.map((source) => source.stop()));
    this.log.info(plan.reason);
    const sameLog = plan.sources.some((source) => source.name === 'log' && source.target === logPath);
    await this.startSources(plan, sameLog ? position : undefined);
    this.dirty = true;
  }

  /** The log source's read position, when the log is one of the sources. */
  private logPosition(): SavedPosition | undefined {
    for (const source of this.sources) {
      const position = source.position?.();
      if (position) return position;
    }
    return undefined;
  }

  /**
   * Streams a server sends without a pipe (relayed, behind Docker's proxy) still use the uplink: the
   * bandwidth it reserved for them is kept out of the pipes' guarantees.
   */
  private updateReserve(): void {
    const reserve = this.sources.reduce((sum, source) => sum + source.reservedBandwidth(), 0);
    if (!this.shaper || reserve === this.reservedRate) return;
    this.shaper.setReservedRate(reserve);
    this.reservedRate = reserve;
    this.log.info({ reservedRate: reserve }, `${reserve / 1e6} Mbit/s of the server rate kept for streams without a pipe`);
  }

  /** The bounds of the automatic ceiling now: min and max, max lowered by a schedule in force. */
  private ceilingBounds(auto: AutoCeilingConfig, policy = this.policy): { min: number; max: number } {
    const max = Math.min(auto.max, policy.serverLimitsAt(new Date()).rate);
    return { min: Math.min(auto.min, max), max };
  }

  /** Where the automatic ceiling starts: the last good ceiling saved, else `start`, else max; within the bounds. */
  private autoStartLimits(auto: AutoCeilingConfig, saved?: number, policy = this.policy): Limits {
    const { min, max } = this.ceilingBounds(auto, policy);
    const rate = Math.min(max, Math.max(min, saved ?? auto.start ?? auto.max));
    return { rate, ceil: rate };
  }

  /** Starts the automatic ceiling from `start` (bits/s), reading Plex's connections or the UDP probe. */
  private startCeiling(auto: AutoCeilingConfig, start: number): void {
    const { config } = this;
    const probe = auto.probe ? new UdpProbe(auto.probe) : undefined;
    const flows =
      auto.signal === 'plex'
        ? new PlexFlowDelay(SocketDiag.open(config.netns ? { netns: config.netns } : {}), {
            plexPort: auto.plexPort,
            leftOut: [...config.exempt, ...config.localNetworks],
          })
        : undefined;
    this.ceiling = new AutoCeiling({
      bounds: this.ceilingBounds(auto),
      start,
      signal: auto.signal,
      ...(flows ? { flows } : {}),
      ...(probe ? { probe } : {}),
      readPipes: () => this.shaper!.pipeCounters(),
      apply: (rate, change) => this.applyCeiling(rate, change),
      onError: (error) => this.kernelError(error, undefined, 'automatic ceiling failed a tick; trying again at the next'),
      onCause: (cause) =>
        cause
          ? this.log.warn({ ceiling: this.ceiling?.rate }, `automatic ceiling at its min: ${cause}, which only the router can shape`)
          : this.log.info({ ceiling: this.ceiling?.rate }, 'the other traffic on the uplink stopped'),
      ...(this.options.ceilingRules ? { rules: this.options.ceilingRules } : {}),
    });
    this.ceiling.start();
    this.dirty = true;
    this.log.info(
      { start, min: auto.min, max: auto.max, signal: auto.signal, plexPort: flows ? auto.plexPort : undefined, probe: auto.probe?.text },
      'automatic server ceiling on',
    );
  }

  private stopCeiling(): void {
    this.ceiling?.stop();
    this.ceiling = undefined;
  }

  /** One change of the automatic ceiling: through the shaper's rebalance, logged at most every 2 s. */
  private applyCeiling(rate: number, change: CeilingChange): void {
    // Another tool's root in shaperr's place: the ceiling waits with everything else until a repair.
    if (this.watch?.foreignRoot()) throw new Error("another root qdisc is in shaperr's place: the ceiling waits for a repair");
    const limits = { rate, ceil: rate };
    this.shaper!.setServerLimits(limits);
    this.serverLimits = limits;
    this.dirty = true;
    this.metrics.ceilingChanges.inc({ reason: change.reason });
    const now = performance.now();
    if (now - this.ceilingLog.at < CEILING_LOG_INTERVAL_MS) {
      this.ceilingLog.unlogged++;
      return;
    }
    const unlogged = this.ceilingLog.unlogged;
    this.ceilingLog = { ...this.ceilingLog, at: now, unlogged: 0 };
    const { capacity, delayMs } = this.ceiling?.status() ?? {};
    this.log.info(
      { from: change.from, to: change.to, reason: change.reason, capacity, delayMs, ...(unlogged ? { changesNotLogged: unlogged } : {}) },
      `server ceiling ${(change.to / 1e6).toFixed(2)} Mbit/s: ${change.why}`,
    );
  }

  /** Runs `run` every `ms` (first after `firstAfterMs`, default `ms`); a failure is logged, never thrown. */
  private every(ms: number, run: () => unknown, firstAfterMs = ms): void {
    const guarded = () => {
      try {
        run();
      } catch (error) {
        this.log.error({ err: (error as Error).message }, 'periodic task failed');
      }
    };
    const first = setTimeout(() => {
      guarded();
      if (this.stopping) return;
      const timer = setInterval(guarded, ms);
      timer.unref();
      this.timers.push(timer);
    }, firstAfterMs);
    first.unref();
    this.timers.push(first);
  }

  private shaperOptions(server: Limits): ShaperOptions {
    const { config } = this;
    const options: ShaperOptions = {
      device: config.device,
      server,
      client: this.policy.defaults,
      leaf: config.leaf,
      exempt: config.exempt,
      takeover: config.takeover,
      onWarning: (message) => this.log.warn(message),
    };
    if (config.netns) options.netns = config.netns;
    if (config.gateway) options.sourcePort = config.gateway.plexPort;
    if (this.options.dryRun) {
      options.dryRun = true;
      options.onChange = ({ command }) => this.log.info({ command }, 'dry run: would apply');
    }
    return options;
  }

  private kernelError(error: unknown, address?: string, what = 'repair failed; retrying at the next notification or safety check'): void {
    this.counters.errors++;
    this.metrics.kernelErrors.inc();
    if (address) this.log.error({ address, err: (error as Error).message }, `kernel change for ${address} failed`);
    else this.log.error({ err: (error as Error).message }, what);
  }

  /** After a restart: the tracker takes the saved sessions back (one without a live session gets a grace period), the kernel is made to match them. */
  private async reconcile(saved: DaemonState | undefined, recent: readonly SavedClient[]): Promise<void> {
    const clients = clientsToRestore(saved, recent);
    this.tracker!.restore(clients);
    const { adopted, orphansRemoved } = await this.shaperPort!.reconcile(clients, this.progressReporter('restoring pipes'));
    if (!clients.length && !adopted) return;
    this.metrics.reconciliations.inc({ reason: 'restart' });
    this.log.info({ saved: clients.length - recent.length, fromRecentLog: recent.length, adopted, orphansRemoved }, 'reconciled with the kernel');
  }

  /**
   * No saved position: the clients playing in the last idleSeconds of the log (see warm-start.ts), and
   * the position after them, where following the log continues.
   */
  private async warmStart(path: string): Promise<{ clients: SavedClient[]; position?: SavedPosition }> {
    const started = performance.now();
    const { config } = this;
    const recent = await readRecentLog(path, config.idleSeconds * 1000);
    const clients = await rebuildSessions(recent.lines, {
      policy: this.policy,
      trustedProxies: config.trustedProxies,
      graceMs: config.graceSeconds * 1000,
      idleMs: config.idleSeconds * 1000,
    });
    this.log.info(
      {
        lines: recent.lines.length,
        bytes: recent.bytesRead,
        rotatedFileRead: recent.rotatedFileRead,
        playing: clients.length,
        ms: Math.round(performance.now() - started),
      },
      'warm start: read back the recent log',
    );
    return { clients, ...(recent.position ? { position: recent.position } : {}) };
  }

  /** Progress of a long operation: in the status report, and in the log at most once a second. */
  private progressReporter(what: string): ProgressListener {
    const started = performance.now();
    let logged = started;
    return ({ done, total }) => {
      const now = performance.now();
      const worthLogging = total >= PROGRESS_MIN_PIPES;
      if (done === total) {
        this.operation = undefined;
        if (worthLogging) this.log.info({ pipes: total, ms: Math.round(now - started) }, `${what}: done`);
        return;
      }
      this.operation = { what, done, total };
      if (worthLogging && (done === 0 || now - logged >= PROGRESS_LOG_INTERVAL_MS)) {
        logged = now;
        this.log.info({ done, total }, `${what}: ${done}/${total}`);
      }
    };
  }

  private onEvent(event: PlaybackEvent): void {
    this.counters.events++;
    this.metrics.events.inc({ kind: event.kind, source: event.source ?? 'log' });
    // Gateway mode: the server's port first, so that a pipe the event makes matches it.
    this.shaperPort!.noteEvent(event);
    this.tracker!.handle(event);
  }

  /** Puts the root or single pipes back as soon as the kernel reports them removed (root deleted, device re-created). */
  private watchShaper(shaper: Shaper): ShaperWatch {
    const { config } = this;
    return ShaperWatch.open(shaper, {
      device: config.device,
      ...(config.netns ? { netns: config.netns } : {}),
      takeover: config.takeover,
      onRepairStart: (reason, scope) => {
        this.counters.repairs++;
        this.metrics.reconciliations.inc({ reason: 'repair' });
        this.log.warn(
          { reason },
          scope === 'tree'
            ? 'shaperr qdisc missing on the device (deleted, or the link was re-created): re-applying'
            : 'client pipes damaged: re-applying them',
        );
        return scope === 'tree' ? this.progressReporter('repairing pipes') : undefined;
      },
      onRepaired: (report) => {
        this.log.info({ ...report, ms: Math.round(report.ms * 10) / 10 }, 'repaired');
        // The tree came back with the limits of the last change that worked: a schedule that moved meanwhile applies now.
        if (report.scope === 'tree') this.applySchedule();
      },
      onForeignRoot: (description) =>
        this.kernelError(
          new Error(`another root qdisc (${description}) replaced shaperr's on ${config.device}; leaving it alone (set takeover to replace it)`),
          undefined,
          'not repairing',
        ),
      onOverflow: () => this.log.warn('kernel notifications were lost (receive buffer full): checking everything'),
      onError: (error) => this.kernelError(error),
    });
  }

  private applySchedule(): void {
    const auto = autoCeilingConfig(this.config);
    if (auto && this.ceiling) {
      // A schedule caps the automatic ceiling while it is in force.
      this.ceiling.setBounds(this.ceilingBounds(auto));
      return;
    }
    const limits = this.policy.serverLimitsAt(new Date());
    if (this.serverLimits && limits.rate === this.serverLimits.rate && limits.ceil === this.serverLimits.ceil) return;
    // Another tool's root in shaperr's place (the watch said so once): the change waits until a repair puts shaperr's root back.
    if (this.watch?.foreignRoot()) return;
    this.shaper?.setServerLimits(limits);
    this.serverLimits = limits;
    this.log.info({ server: limits }, 'server limits changed (schedule)');
  }

  private snapshot(): DaemonState {
    const state: DaemonState = {
      version: 1,
      device: this.config.device,
      savedAt: new Date().toISOString(),
      clients: this.tracker?.snapshot() ?? [],
    };
    const position = this.logPosition();
    if (this.logPath && position) state.log = { path: this.logPath, inode: String(position.inode), offset: position.offset };
    if (Object.keys(this.deviceIds).length) state.devices = { ...this.deviceIds };
    // The last good automatic ceiling (not a probe under way): a restart starts from it.
    if (this.ceiling) {
      const { history: _history, delayMs: _delay, mode: _mode, ...ceiling } = this.ceiling.status();
      state.ceiling = { ...ceiling, rate: this.ceiling.settledRate };
    }
    return state;
  }

  private async saveIfDirty(): Promise<void> {
    const position = this.logPosition();
    const logMoved = position?.offset !== this.savedLogPosition?.offset || position?.inode !== this.savedLogPosition?.inode;
    if ((!this.dirty && !logMoved) || this.options.dryRun) return;
    await this.save();
  }

  /** Writes the state file; a failure is one error line a minute (shaping goes on) until a save works. */
  private async save(): Promise<void> {
    if (this.options.dryRun) return;
    this.dirty = false;
    this.savedLogPosition = this.logPosition();
    try {
      await saveState(this.config.stateFile, this.snapshot());
      if (this.saveFailureReportedAt !== undefined) this.log.info({ stateFile: this.config.stateFile }, 'state file written again');
      this.saveFailureReportedAt = undefined;
    } catch (error) {
      this.dirty = true;
      const now = Date.now();
      if (this.saveFailureReportedAt !== undefined && now - this.saveFailureReportedAt < SAVE_ERROR_INTERVAL_MS) return;
      this.saveFailureReportedAt = now;
      this.log.error(
        { err: (error as Error).message, stateFile: this.config.stateFile },
        'cannot save state (shaping goes on; reported once a minute until it works)',
      );
    }
  }

  private onDecision(decision: Decision): void {
    this.log.info(decision, `decision ${decision.action} ${decision.address}`);
    if (decision.latencyMs !== undefined) this.metrics.kernelOperationSeconds.observe({ operation: decision.action }, decision.latencyMs / 1000);
    const recent: RecentDecision = { at: new Date().toISOString(), action: decision.action, address: decision.address };
    if (decision.user) recent.user = decision.user;
    if (decision.reason) recent.reason = decision.reason;
    this.recentDecisions.push(recent);
    if (this.recentDecisions.length > RECENT_DECISIONS) this.recentDecisions.shift();
    this.options.onDecision?.(decision);
  }

  /** Where the status page listens (the real port when configured with port 0). */
  get statusUrl(): string | undefined {
    const address = this.statusServer?.address();
    if (!address || typeof address === 'string') return undefined;
    return `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}/`;
  }

  /** Kernel counters joined with the sessions, read in one go. */
  status(): StatusReport {
    return this.report(this.shaper?.state());
  }

  /**
   * The same for the status page, /api/status and /metrics: the kernel's counters read a few dozen classes
   * per event-loop turn, so that a page open on thousands of pipes does not hold up the daemon's events.
   */
  async readStatus(): Promise<StatusReport> {
    return this.report(await this.shaper?.readState());
  }

  private report(state: ShaperState | undefined): StatusReport {
    const shaper = this.shaper;
    const report = buildStatus({
      device: this.config.device,
      leaf: shaper?.leafKind ?? this.config.leaf,
      ...(state ?? { clients: [] }),
      sessions: this.sessions(),
      meter: this.meter,
      decisions: this.recentDecisions,
      counters: { ...this.counters, ...shaper?.stats },
      ...(this.operation ? { operation: this.operation } : {}),
    });
    if (this.sources.length) {
      report.sources = this.sources.map((source) => source.status());
      report.reservedRate = this.reservedRate;
    }
    if (this.ceiling) report.ceiling = this.ceiling.status();
    return report;
  }

  /** Clients with live or lingering sessions, as the tracker sees them. */
  sessions(): ClientSummary[] {
    return this.tracker?.summary() ?? [];
  }

  /**
   * SIGHUP: new config, same live sessions. All or nothing: everything that can refuse it (what must not
   * change, the Plex sources, shaperr's root on the device, the kernel taking the server limits) is met
   * before any of it takes effect, so a refusal (thrown) keeps the old config whole. Turned on, takeover is
   * the one step that stays done: another tool's root, once replaced, is shaperr's again.
   */
  async reload(config: ShaperrConfig): Promise<void> {
    if (config.device !== this.config.device || config.netns !== this.config.netns || config.gateway?.plexPort !== this.config.gateway?.plexPort) {
      throw new ReloadRefused('device, netns and gateway cannot change on reload; restart shaperrd');
    }
    const sources = sourceSettings(config) !== sourceSettings(this.config) ? this.sourcesFor(config) : undefined;
    const policy = new Policy(policyConfig(config));
    const auto = autoCeilingConfig(config);
    // Into auto: from the ceiling in force (or the automatic one's), within the new bounds.
    const serverLimits = auto ? this.autoStartLimits(auto, this.ceiling?.settledRate ?? this.serverLimits?.rate, policy) : policy.serverLimitsAt(new Date());
    await this.applyKernelPart(config, serverLimits);
    // From here on nothing refuses: the new config takes effect whole.
    this.options = { ...this.options, config };
    this.serverLimits = serverLimits;
    this.policy = policy;
    this.tracker!.setPolicy(policy);
    this.tracker!.reapplyPolicy((client) => policy.limitsFor(client).limits);
    if (sources) await this.restartSources(sources);
    this.stopCeiling();
    if (auto && !this.options.dryRun) this.startCeiling(auto, serverLimits.rate);
    this.log.info({ server: serverLimits, automatic: !!auto }, 'configuration reloaded');
  }

  /**
   * A reload's kernel part: takeover as the new config says (a deleted root is put back at once, another
   * tool's replaced when takeover is on), then the new server limits. Refused, the watch's takeover is
   * set back and the shaper keeps its old limits.
   */
  private async applyKernelPart(config: ShaperrConfig, serverLimits: Limits): Promise<void> {
    const watch = this.watch;
    try {
      const foreign = await watch?.setTakeover(config.takeover);
      if (foreign) {
        throw new ReloadRefused(
          `device ${config.device}'s root qdisc is ${foreign}, not shaperr's, and ` +
            (config.takeover
              ? 'taking it over failed (the repair error is logged above)'
              : 'takeover is off: remove that qdisc or set takeover: true, then reload again'),
        );
      }
      try {
        this.shaper!.setServerLimits(serverLimits);
      } catch (error) {
        throw new Error(`the kernel refused the new server limits: ${(error as Error).message}`);
      }
    } catch (error) {
      if (watch && config.takeover !== this.config.takeover) await watch.setTakeover(this.config.takeover);
      throw error;
    }
  }

  /** Stops reading, removes the rules unless keepRulesOnExit, saves state. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const timer of this.timers) clearInterval(timer);
    // Stopped but kept: the state saved below holds its last good ceiling.
    this.ceiling?.stop();
    if (this.statusServer) await new Promise((resolve) => this.statusServer!.close(resolve).closeAllConnections());
    await Promise.all(this.sources.map((source) => source.stop()));
    await this.watch?.close();
    await this.tracker?.settled();
    await this.save();
    await this.shaper?.close({ teardown: !this.config.keepRulesOnExit && !this.options.dryRun });
    this.deviceLock?.release();
    this.log.info({ keptRules: this.config.keepRulesOnExit, ...this.counters }, 'shaperrd stopped');
  }
}
