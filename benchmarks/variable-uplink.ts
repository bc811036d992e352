/**
 * Scenario 9, the variable uplink: does shaperr's automatic server ceiling follow a home uplink whose
 * capacity moves? A 20 Mbit/s modem with a 1 s buffer; three remote players 20–80 ms away (behind the
 * delay line) whose pipes want 6 + 8 + 10 Mbit/s, more than the uplink at its best; the LAN gamer pinging
 * the game server 50 times a second. On the same home, one after another: fixed ceilings at the old
 * capacity (18 Mbit/s) and at the low one (9), `rate: auto` with the plex signal and with the probe
 * signal, cake-autorate's published rules driving the same ceiling on the plex signal, and no shaping.
 * Each variant goes through the same phases: steps 20 → 10 → 20 Mbit/s, a slow sine 8–20, a 6 Mbit/s LAN
 * upload (UDP) on then off, a bulk TCP LAN upload on then off.
 *
 * Every daemon runs inside the Plex host's namespace, as it would on the host (the probe's socket is made
 * in the daemon's own namespace). Its status page is on that namespace's loopback, which this process
 * cannot reach: a small poller runs there and prints what it reads.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  createHomeUplink,
  GAME_SERVER,
  type Gamer,
  type HomeUplink,
  homeShaping,
  monotonicMs,
  PLEX,
  type Players,
  percentile,
  pingPlayerPath,
  playerAddress,
  plexStartLine,
  type RateSchedule,
  runModemSchedule,
  setModemRate,
  sineSchedule,
  startGamer,
  startPlayers,
  startServers,
  startUploader,
  startUploadSink,
  stepSchedule,
  type StreamSpec,
  type UploaderSpec,
  watchModem,
} from '../daemon/demo/home-uplink.js';
import { TrafficControl } from '../lib/index.js';
import { startDelayLine } from './delay-line.js';
import type { Row } from './home-uplink.js';
import { shippedNodeFlags, waitFor } from './shipped-daemon.js';

const PREFIX = 'shaperr-b';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SHIPPED_DAEMON = join(ROOT, 'dist/daemon/cli.js');
const CEILING_RULES_DAEMON = join(ROOT, 'benchmarks/ceiling-rules-daemon.ts');

const MBIT = 1e6;
const UPLINK = 20 * MBIT;
/** What each player's pipe wants (the stream's bitrate × 1.25, as homeShaping's overrides give it). */
const PIPES = [6 * MBIT, 8 * MBIT, 10 * MBIT];
/** One-way delays: round trips of 20, 50 and 80 ms. */
const ONE_WAY_DELAYS_MS = [10, 25, 40];
const AUTO_BOUNDS = { min: '2mbit', max: '30mbit' } as const;
/** Every automatic variant starts at the old fixed ceiling, where cake-autorate's base is. */
const AUTO_START = '18mbit';
/** The gamer's round trips in the first second after a step are left out of its figures. */
const SETTLE_MS = 1000;
/** The modem's queue counts as drained below this (reaction time). */
const DRAINED_MS = 10;
/** The signal comparison's thresholds: a queue, and none. */
const SIGNAL_QUEUE_MS = 12;
const SIGNAL_CLEAR_MS = 5;
const STATUS_POLL_MS = { signal: 100, counters: 1000 } as const;

export type VariableUplinkVariant = 'fixed-old' | 'fixed-low' | 'auto-plex' | 'auto-probe' | 'cake-autorate' | 'unshaped';

const LABELS: Record<VariableUplinkVariant, string> = {
  'fixed-old': '(a) fixed ceiling 18 Mbit/s',
  'fixed-low': '(b) fixed ceiling 9 Mbit/s',
  'auto-plex': '(c) rate: auto, plex signal',
  'auto-probe': '(d) rate: auto, probe signal',
  'cake-autorate': "(e) cake-autorate's rules, plex signal",
  unshaped: '(f) unshaped',
};

/** One stretch of a variant: the modem's rate over it, and a LAN uploader on for its first half. */
interface Phase {
  name: string;
  seconds: number;
  modem: RateSchedule;
  /** Instants of the schedule that are steps (ms from the phase's start). */
  stepsAtMs: number[];
  uploader?: UploaderSpec;
}

function phases(quick: boolean): Phase[] {
  const step = quick ? 2 : 40;
  const sinePeriod = quick ? 4 : 60;
  const sinePeriods = quick ? 1 : 2;
  const upload = quick ? 2 : 30;
  const steady = () => UPLINK;
  return [
    {
      name: `steps 20 → 10 → 20 Mbit/s, ${step} s each`,
      seconds: 3 * step,
      modem: stepSchedule([
        { atMs: 0, bitsPerSecond: UPLINK },
        { atMs: step * 1000, bitsPerSecond: UPLINK / 2 },
        { atMs: 2 * step * 1000, bitsPerSecond: UPLINK },
      ]),
      stepsAtMs: [step * 1000, 2 * step * 1000],
    },
    {
      name: `sine 8–20 Mbit/s, ${sinePeriods} × ${sinePeriod} s`,
      seconds: sinePeriods * sinePeriod,
      modem: sineSchedule({ lowBitsPerSecond: 8 * MBIT, highBitsPerSecond: UPLINK, periodMs: sinePeriod * 1000 }),
      stepsAtMs: [],
    },
    {
      name: `LAN upload 6 Mbit/s UDP, ${upload} s on then ${upload} s off`,
      seconds: 2 * upload,
      modem: steady,
      stepsAtMs: [],
      uploader: { protocol: 'udp', bitsPerSecond: 6 * MBIT },
    },
    { name: `LAN bulk TCP upload, ${upload} s on then ${upload} s off`, seconds: 2 * upload, modem: steady, stepsAtMs: [], uploader: { protocol: 'tcp' } },
  ];
}

// ---- the daemon inside the Plex namespace ------------------------------------------------------------

interface NetnsDaemon {
  statusUrl: string;
  stop(): Promise<void>;
}

/**
 * Writes `config` (with a status page on the namespace's loopback) to `dir` and runs `program` on it inside
 * `netns`; resolves once it logged its start.
 */
async function startDaemonInNetns(netns: string, program: string[], config: object, dir: string): Promise<NetnsDaemon> {
  const file = join(dir, 'shaperr.yaml');
  writeFileSync(file, JSON.stringify({ ...config, status: { listen: '127.0.0.1:0' } })); // JSON is YAML
  // `ip netns exec` execs the program: the pid is the daemon's.
  const daemon = spawn('ip', ['netns', 'exec', netns, process.execPath, ...program, '--config', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let errors = '';
  daemon.stdout!.on('data', (data: Buffer) => (output += data.toString()));
  daemon.stderr!.on('data', (data: Buffer) => (errors += data.toString()));
  const exited = new Promise<void>((resolve) => daemon.once('close', () => resolve()));
  const stop = async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGTERM');
    await exited;
  };
  await waitFor(() => output.includes('"shaperrd started"') || daemon.exitCode !== null, 20_000, 'shaperrd did not start').catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  if (daemon.exitCode !== null) throw new Error(`shaperrd exited with ${daemon.exitCode}: ${errors.trim().split('\n').slice(-3).join(' | ')}`);
  const statusLine = output.split('\n').find((line) => line.includes('"status page and /metrics listening"'));
  if (!statusLine) {
    await stop();
    throw new Error('shaperrd started without saying where its status page listens');
  }
  return { statusUrl: JSON.parse(statusLine).url as string, stop };
}

interface StatusPoint {
  at: number;
  delayMs?: number;
  changes: number;
}

interface StatusPoller {
  points: StatusPoint[];
  kernelRequests: Array<{ at: number; total: number }>;
  /** The ceiling's changes so far by reason (/metrics), read every second. */
  reasons: Array<{ at: number; counts: Record<string, number> }>;
  stop(): void;
}

/**
 * Reads /api/status every `intervalMs` and /metrics' kernel requests every second from inside the
 * namespace, each reading stamped with CLOCK_MONOTONIC (the modem poll's clock). Plain JS for bare node.
 */
const POLLER = `
const [base, intervalMs] = process.argv.slice(1);
const now = () => Number(process.hrtime.bigint()) / 1e6;
let metricsAt = -Infinity;
for (;;) {
  const at = now();
  try {
    const status = await (await fetch(base + 'api/status')).json();
    const c = status.ceiling;
    console.log('status ' + JSON.stringify({ at, delayMs: c?.delayMs, changes: c?.changes ?? 0 }));
    if (at - metricsAt >= ${STATUS_POLL_MS.counters}) {
      metricsAt = at;
      const text = await (await fetch(base + 'metrics')).text();
      console.log('metrics ' + at + ' ' + /^shaperr_kernel_requests_total (\\S+)$/m.exec(text)[1]);
      const reasons = {};
      for (const [, reason, count] of text.matchAll(/^shaperr_ceiling_changes_total\\{reason="([^"]+)"\\} (\\S+)$/gm)) reasons[reason] = Number(count);
      console.log('reasons ' + at + ' ' + JSON.stringify(reasons));
    }
  } catch (error) {
    console.error(String(error));
  }
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, at + Number(intervalMs) - now())));
}`;

function startStatusPoller(netns: string, statusUrl: string, intervalMs: number): StatusPoller {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', netns, process.execPath, '--input-type=module', '-e', POLLER, statusUrl, String(intervalMs)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const poller: StatusPoller = { points: [], kernelRequests: [], reasons: [], stop: () => child.kill('SIGKILL') };
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const [kind, ...rest] = line.split(' ');
    if (kind === 'status') poller.points.push(JSON.parse(rest.join(' ')) as StatusPoint);
    else if (kind === 'metrics') poller.kernelRequests.push({ at: Number(rest[0]), total: Number(rest[1]) });
    else if (kind === 'reasons') poller.reasons.push({ at: Number(rest[0]), counts: JSON.parse(rest.slice(1).join(' ')) as Record<string, number> });
  });
  return poller;
}

/** The changes between two readings of the by-reason counters, e.g. "probe 3, probe failed 3" ("none"). */
function changesByReason(from: Record<string, number>, to: Record<string, number>): string {
  const moved = Object.entries(to)
    .map(([reason, count]) => [reason, count - (from[reason] ?? 0)] as const)
    .filter(([, count]) => count > 0);
  return moved.length ? moved.map(([reason, count]) => `${reason} ${count}`).join(', ') : 'none';
}

/** The latest reading at or before `at` (readings in time order), or the first one. */
function readingAt<T extends { at: number }>(readings: readonly T[], at: number): T | undefined {
  let low = 0;
  let high = readings.length - 1;
  if (high < 0 || readings[0]!.at > at) return readings[0];
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (readings[middle]!.at <= at) low = middle;
    else high = middle - 1;
  }
  return readings[low];
}

// ---- one variant --------------------------------------------------------------------------------------

interface ModemSample {
  at: number;
  bytes: number;
  backlog: number;
  bitsPerSecond: number;
}

const queueMs = (sample: ModemSample): number => (sample.backlog * 8 * 1000) / sample.bitsPerSecond;

interface PhaseWindow {
  phase: Phase;
  from: number;
  to: number;
  /** Steps of the modem's rate and the uploader going on or off (monotonic ms). */
  events: number[];
  stallsBefore: number[];
  stallsAfter: number[];
}

interface VariantRun {
  variant: VariableUplinkVariant;
  windows: PhaseWindow[];
  modem: ModemSample[];
  gamer: Gamer['samples'];
  status?: StatusPoller;
  loadBefore: number;
  loadAfter: number;
}

interface Home {
  uplink: HomeUplink;
  specs: StreamSpec[];
  note: string;
}

/** The shaperr settings of the home for one variant; undefined: unshaped. */
function daemonConfig(home: Home, variant: VariableUplinkVariant, dir: string): object | undefined {
  if (variant === 'unshaped') return undefined;
  const { netns: _netns, server, ...shaping } = homeShaping(home.uplink, home.specs);
  const auto = (signal: 'plex' | 'probe') => ({
    rate: 'auto',
    ...AUTO_BOUNDS,
    start: AUTO_START,
    signal,
    ...(signal === 'probe' ? { probe: `${GAME_SERVER.address}:${GAME_SERVER.port}` } : {}),
  });
  const servers: Record<Exclude<VariableUplinkVariant, 'unshaped'>, object> = {
    'fixed-old': server,
    'fixed-low': { rate: 9 * MBIT, ceil: 9 * MBIT },
    'auto-plex': auto('plex'),
    'auto-probe': auto('probe'),
    'cake-autorate': auto('plex'),
  };
  // The daemon runs in the Plex namespace: no netns setting, as on the host itself.
  return { ...shaping, server: servers[variant], log: join(dir, 'Plex Media Server.log'), stateFile: join(dir, 'state.json'), idleSeconds: 3600 };
}

interface Shaping {
  status?: StatusPoller;
  stop(): Promise<void>;
}

/**
 * Starts the variant's daemon with the players' sessions (and `idlePipes` more) and waits for every pipe.
 * Its status is read ten times a second for the signal's comparison with the modem; `countersOnly` reads
 * it once a second (at 1,000 pipes, ten reads a second cost the daemon ~60 % of a core).
 */
async function startShaping(home: Home, variant: VariableUplinkVariant, { idlePipes = 0, countersOnly = false } = {}): Promise<Shaping> {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-bench-'));
  const config = daemonConfig(home, variant, dir);
  if (!config) return { stop: async () => rmSync(dir, { recursive: true, force: true }) };
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  const program = variant === 'cake-autorate' ? ['--import', 'tsx', CEILING_RULES_DAEMON] : [...shippedNodeFlags(), SHIPPED_DAEMON];
  const daemon = await startDaemonInNetns(home.uplink.plexNs, program, config, dir);
  const tc = TrafficControl.open({ netns: home.uplink.plexNs });
  let status: StatusPoller | undefined;
  const stop = async () => {
    status?.stop();
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const addresses = [...home.specs.map((spec) => spec.address), ...Array.from({ length: idlePipes }, (_, i) => idleAddress(i))];
    appendFileSync(log, addresses.map((address, i) => plexStartLine(address, `bench-${i}`)).join(''));
    const pipes = addresses.length + 1;
    await waitFor(() => tc.classes(PLEX.device).length >= pipes, 30_000, `shaperrd did not throttle all ${addresses.length} clients`);
    const signal = !countersOnly && (variant === 'auto-plex' || variant === 'auto-probe' || variant === 'cake-autorate');
    status = startStatusPoller(home.uplink.plexNs, daemon.statusUrl, signal ? STATUS_POLL_MS.signal : STATUS_POLL_MS.counters);
    return { status, stop };
  } catch (error) {
    await stop();
    throw error;
  } finally {
    tc.close();
  }
}

/** Clients that never send (as scenario 8's): outside every local network, in the benchmarking range. */
const idleAddress = (i: number): string => `198.18.${(i >> 8) & 255}.${i & 255}`;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function runVariant(home: Home, variant: VariableUplinkVariant, quick: boolean): Promise<VariantRun> {
  const loadBefore = loadavg()[0]!;
  const plan = phases(quick);
  const warmUpSeconds = quick ? 2 : 10;
  const seconds = warmUpSeconds + plan.reduce((sum, phase) => sum + phase.seconds, 0);
  const shaping = await startShaping(home, variant);
  const modem = watchModem(home.uplink);
  let players: Players | undefined;
  let gamer: Gamer | undefined;
  try {
    // Longer than the phases: they start a little late each (an uploader connects first).
    players = startPlayers(home.uplink, home.specs, seconds + 30);
    gamer = startGamer(home.uplink, seconds + 30);
    await sleep(warmUpSeconds * 1000);
    const stalls = () => players!.latest?.streams.map((stream) => stream.stalls) ?? home.specs.map(() => 0);
    const windows: PhaseWindow[] = [];
    for (const phase of plan) {
      const stallsBefore = stalls();
      const from = monotonicMs();
      const schedule = runModemSchedule(home.uplink, phase.modem);
      const events = phase.stepsAtMs.map((ms) => from + ms);
      try {
        if (phase.uploader) {
          const uploader = await startUploader(home.uplink, phase.uploader);
          events.push(monotonicMs());
          await sleep(from + (phase.seconds * 1000) / 2 - monotonicMs());
          events.push(monotonicMs());
          await uploader.stop();
        }
        await sleep(from + phase.seconds * 1000 - monotonicMs());
      } finally {
        schedule.stop();
      }
      windows.push({ phase, from, to: monotonicMs(), events: events.sort((a, b) => a - b), stallsBefore, stallsAfter: stalls() });
    }
    const report = modem.stop();
    return {
      variant,
      windows,
      modem: report.samples,
      gamer: [...gamer.samples],
      ...(shaping.status ? { status: shaping.status } : {}),
      loadBefore,
      loadAfter: loadavg()[0]!,
    };
  } finally {
    gamer?.stop();
    // Stopped before its end, it has no summary: its samples are what counts.
    await gamer?.done.catch(() => undefined);
    players?.stop();
    await players?.done.catch(() => undefined);
    try {
      modem.stop();
    } catch {
      // the run's own error is the one to report
    }
    await shaping.stop();
    // Back to the full uplink for the next variant.
    setModemRate(home.uplink, UPLINK);
  }
}

// ---- figures ------------------------------------------------------------------------------------------

interface PhaseFigures {
  gamer: { p50: number; p99: number; max: number; count: number; excluded: number };
  queueP99Ms: number;
  capacityUsed: number;
  /**
   * Per event, ms from it until the queue it built drained below DRAINED_MS (0: it built none), and until
   * the queue stayed below that up to the next event; undefined: not within the window.
   */
  reactions: Array<{ drainedMs: number | undefined; settledMs: number | undefined }>;
  ceilingChangesPerMinute?: number;
  /** The phase's ceiling changes by reason, e.g. "probe 3, probe failed 3". */
  changesByReason?: string;
  kernelRequestsPerMinute?: number;
  stalls: number;
}

function phaseFigures(run: VariantRun, window: PhaseWindow): PhaseFigures {
  const { from, to, events } = window;
  const settling = (at: number) => events.some((event) => at >= event && at < event + SETTLE_MS);
  const inWindow = run.gamer.filter((sample) => sample.sentAt >= from && sample.sentAt < to);
  const rtts = inWindow.filter((sample) => !settling(sample.sentAt)).map((sample) => sample.rtt);
  const modem = run.modem.filter((sample) => sample.at >= from && sample.at <= to);
  let carried = 0;
  let capacity = 0;
  for (let i = 1; i < modem.length; i++) {
    carried += (modem[i]!.bytes - modem[i - 1]!.bytes) * 8;
    capacity += (modem[i - 1]!.bitsPerSecond * (modem[i]!.at - modem[i - 1]!.at)) / 1000;
  }
  const reactions = events.map((event, i) => {
    const end = events[i + 1] ?? to;
    const after = modem.filter((sample) => sample.at >= event && sample.at < end);
    const queued = (sample: ModemSample) => queueMs(sample) >= DRAINED_MS;
    const drainedAt = (index: number) => (index === -1 || index >= after.length ? undefined : after[index]!.at - event);
    // The event's own queue starts within the settling second (a later one is a probe's or a burst's).
    const built = after.findIndex((sample) => queued(sample) || sample.at >= event + SETTLE_MS);
    const drainedMs = built === -1 || !queued(after[built]!) ? 0 : drainedAt(after.findIndex((sample, j) => j > built && !queued(sample)));
    let lastQueued = after.length - 1;
    while (lastQueued >= 0 && !queued(after[lastQueued]!)) lastQueued--;
    return { drainedMs, settledMs: lastQueued === -1 ? 0 : drainedAt(lastQueued + 1) };
  });
  const minutes = (to - from) / 60_000;
  const figures: PhaseFigures = {
    gamer: { p50: percentile(rtts, 50), p99: percentile(rtts, 99), max: Math.max(0, ...rtts), count: rtts.length, excluded: inWindow.length - rtts.length },
    queueP99Ms: percentile(modem.map(queueMs), 99),
    capacityUsed: capacity ? carried / capacity : 0,
    reactions,
    stalls: window.stallsAfter.reduce((sum, stalls, i) => sum + stalls - (window.stallsBefore[i] ?? 0), 0),
  };
  if (run.status) {
    const first = readingAt(run.status.points, from);
    const last = readingAt(run.status.points, to);
    if (first && last) figures.ceilingChangesPerMinute = (last.changes - first.changes) / minutes;
    figures.changesByReason = changesByReason(readingAt(run.status.reasons, from)?.counts ?? {}, readingAt(run.status.reasons, to)?.counts ?? {});
    const before = readingAt(run.status.kernelRequests, from);
    const after = readingAt(run.status.kernelRequests, to);
    if (before && after) figures.kernelRequestsPerMinute = (after.total - before.total) / ((after.at - before.at) / 60_000 || minutes);
  }
  return figures;
}

interface SignalFigures {
  pairs: number;
  /** Readings without a delay (nothing flowed): left out of the comparison. */
  silent: number;
  meanAbsoluteErrorMs: number;
  bestLagMs: number;
  meanAbsoluteErrorAtBestLagMs: number;
  /** Share of readings saying "queue" (> 12 ms) while the modem's is < 5 ms, and the reverse. */
  falseQueue: number;
  missedQueue: number;
}

/** The daemon's delay signal against the modem's queue delay at the same instants (and shifted by a lag). */
function signalFigures(run: VariantRun): SignalFigures | undefined {
  const points = run.status?.points ?? [];
  const readings = points.filter((point) => point.delayMs !== undefined);
  const truthAt = (at: number) => {
    const sample = readingAt(run.modem, at);
    return sample ? queueMs(sample) : 0;
  };
  if (readings.length === 0) return undefined;
  const meanError = (lagMs: number) => readings.reduce((sum, point) => sum + Math.abs(point.delayMs! - truthAt(point.at - lagMs)), 0) / readings.length;
  let bestLagMs = 0;
  for (let lag = 0; lag <= 2000; lag += 20) if (meanError(lag) < meanError(bestLagMs)) bestLagMs = lag;
  const share = (test: (signal: number, truth: number) => boolean) =>
    readings.filter((point) => test(point.delayMs!, truthAt(point.at))).length / readings.length;
  return {
    pairs: readings.length,
    silent: points.length - readings.length,
    meanAbsoluteErrorMs: meanError(0),
    bestLagMs,
    meanAbsoluteErrorAtBestLagMs: meanError(bestLagMs),
    falseQueue: share((signal, truth) => signal > SIGNAL_QUEUE_MS && truth < SIGNAL_CLEAR_MS),
    missedQueue: share((signal, truth) => truth > SIGNAL_QUEUE_MS && signal < SIGNAL_CLEAR_MS),
  };
}

// ---- the scenario -------------------------------------------------------------------------------------

async function createHome(quick: boolean): Promise<Home> {
  const specs = PIPES.map((pipe, i) => ({ address: playerAddress(i), bitsPerSecond: pipe / 1.25 }));
  const options = {
    prefix: PREFIX,
    uplinkBitsPerSecond: UPLINK,
    modemBufferSeconds: 1,
    players: specs.length,
    remote: { oneWayDelayMs: ONE_WAY_DELAYS_MS, startDelayLine },
  };
  let uplink: HomeUplink;
  let note: string;
  try {
    uplink = await createHomeUplink({ ...options, plexCongestionControl: 'cubic', lanCongestionControl: 'cubic' });
    note = 'Plex and LAN on cubic';
  } catch (error) {
    if (!/congestion control/.test((error as Error).message)) throw error;
    uplink = await createHomeUplink(options);
    note = `cubic refused (${(error as Error).message}): Plex on ${uplink.plexCongestionControl}`;
  }
  return { uplink, specs, note: `${note}${quick ? '; quick: short phases' : ''}` };
}

const VARIANTS: VariableUplinkVariant[] = ['fixed-old', 'fixed-low', 'auto-plex', 'auto-probe', 'cake-autorate', 'unshaped'];
/**
 * The quick run (the CI smoke test) keeps one variant per code path: the shipped daemon on the probe, the
 * launcher on the plex signal, none; the steady-churn run adds the shipped daemon on the plex signal.
 */
const QUICK_VARIANTS: VariableUplinkVariant[] = ['auto-probe', 'cake-autorate', 'unshaped'];

export async function variableUplinkScenario(record: (row: Row) => void, { quick }: { quick: boolean }): Promise<void> {
  const plan = phases(quick);
  const scenario = `9. variable uplink (20 Mbit/s modem, 1 s buffer; 3 players 20–80 ms away wanting ${PIPES.map((pipe) => pipe / MBIT).join('+')} Mbit/s; LAN gamer at 50/s)`;
  const home = await createHome(quick);
  try {
    const servers = await startServers(home.uplink);
    const sink = await startUploadSink(home.uplink).catch((error: unknown) => {
      servers.stop();
      throw error;
    });
    try {
      const idleGamerP99 = await baselines(record, scenario, home, quick);
      const runs: VariantRun[] = [];
      for (const variant of quick ? QUICK_VARIANTS : VARIANTS) {
        process.stderr.write(`  ${LABELS[variant]}…\n`);
        runs.push(await runVariant(home, variant, quick));
      }
      recordRuns(record, scenario, home, runs, idleGamerP99);
      await steadyChurn(record, scenario, home, quick);
    } finally {
      sink.stop();
      servers.stop();
    }
  } finally {
    await home.uplink.destroy();
  }
  record({ scenario, variant: 'phases', value: plan.length, unit: 'phases', note: plan.map((phase) => phase.name).join('; ') });
}

/** The idle path's round trips to each player and the idle gamer, before any variant; returns the gamer's p99. */
async function baselines(record: (row: Row) => void, scenario: string, home: Home, quick: boolean): Promise<number> {
  const seconds = quick ? 2 : 10;
  for (const [index, delay] of ONE_WAY_DELAYS_MS.entries()) {
    const { rtts, sent } = await pingPlayerPath(home.uplink, index, seconds);
    const note = `${seconds} s at 50/s, ${sent - rtts.length} unanswered; delay line ${2 * delay} ms`;
    record({ scenario, variant: `idle path to player ${index}: RTT p50`, value: percentile(rtts, 50), unit: 'ms', note });
    record({ scenario, variant: `idle path to player ${index}: RTT p99`, value: percentile(rtts, 99), unit: 'ms' });
  }
  const gamer = await startGamer(home.uplink, seconds).done;
  const p99 = percentile(gamer.rtts, 99);
  const load = loadavg()[0]!;
  record({
    scenario,
    variant: 'idle link: gamer RTT p99 (publish only at ≤ 5 ms with load ≤ 1)',
    value: p99,
    unit: 'ms',
    note: `p50 ${percentile(gamer.rtts, 50).toFixed(2)} ms; load average ${load.toFixed(2)}; ${home.note}`,
  });
  return p99;
}

function recordRuns(record: (row: Row) => void, scenario: string, home: Home, runs: VariantRun[], idleGamerP99: number): void {
  const figures = new Map(runs.map((run) => [run.variant, run.windows.map((window) => phaseFigures(run, window))]));
  for (const run of runs) {
    const label = LABELS[run.variant];
    const load = `load average ${run.loadBefore.toFixed(2)} before, ${run.loadAfter.toFixed(2)} after`;
    record({ scenario, variant: `${label}: load average before → after`, value: run.loadAfter, unit: '', note: `${load}; ${home.note}` });
    for (const [i, window] of run.windows.entries()) {
      const f = figures.get(run.variant)![i]!;
      const name = `${label} · ${window.phase.name}`;
      const changes = window.phase.uploader ? 'changes (uploader on, off)' : 'steps';
      const excluded = window.events.length
        ? `the first ${SETTLE_MS / 1000} s after each of ${window.events.length} ${changes} excluded (${f.gamer.excluded} pings)`
        : 'no steps';
      record({ scenario, variant: `${name}: gamer RTT p50`, value: f.gamer.p50, unit: 'ms', note: excluded });
      record({ scenario, variant: `${name}: gamer RTT p99`, value: f.gamer.p99, unit: 'ms', note: `${f.gamer.count} pings; ${excluded}; ${load} the variant` });
      record({ scenario, variant: `${name}: gamer RTT max`, value: f.gamer.max, unit: 'ms' });
      record({
        scenario,
        variant: `${name}: modem queue delay p99 (backlog × 8 ÷ its current rate)`,
        value: f.queueP99Ms,
        unit: 'ms',
        note: 'polled every 20 ms',
      });
      record({ scenario, variant: `${name}: capacity used (modem bytes ÷ its rate's integral)`, value: f.capacityUsed * 100, unit: '%' });
      if (window.events.length) {
        const list = (values: Array<number | undefined>) => values.map((ms) => (ms === undefined ? 'never' : `${Math.round(ms)}`)).join(', ');
        const drained = f.reactions.map((reaction) => reaction.drainedMs);
        record({
          scenario,
          variant: `${name}: reaction time (step → its queue < ${DRAINED_MS} ms), worst`,
          value: Math.max(0, ...drained.map((ms) => ms ?? window.to - window.from)),
          unit: 'ms',
          note: `per ${window.phase.uploader ? 'change' : 'step'}: ${list(drained)} ms (never: not within the window); below ${DRAINED_MS} ms for good after ${list(f.reactions.map((reaction) => reaction.settledMs))} ms`,
        });
      }
      if (f.ceilingChangesPerMinute !== undefined)
        record({
          scenario,
          variant: `${name}: ceiling changes per minute`,
          value: f.ceilingChangesPerMinute,
          unit: '/min',
          note: `by reason: ${f.changesByReason}`,
        });
      if (f.kernelRequestsPerMinute !== undefined)
        record({
          scenario,
          variant: `${name}: kernel requests per minute`,
          value: f.kernelRequestsPerMinute,
          unit: '/min',
          note: 'shaperr_kernel_requests_total',
        });
      record({ scenario, variant: `${name}: player stalls`, value: f.stalls, unit: 'stalls' });
    }
  }
  for (const variant of ['auto-plex', 'auto-probe'] as const) {
    const run = runs.find((candidate) => candidate.variant === variant);
    const signal = run && signalFigures(run);
    if (!signal) continue;
    const name = `${LABELS[variant]}: signal against the modem's queue delay`;
    const note = `${signal.pairs} readings of /api/status ceiling.delayMs every ${STATUS_POLL_MS.signal} ms against the modem's at the same instant (${signal.silent} more without a delay: nothing flowed)`;
    record({ scenario, variant: `${name}, mean absolute error`, value: signal.meanAbsoluteErrorMs, unit: 'ms', note });
    record({
      scenario,
      variant: `${name}, lag that aligns them best`,
      value: signal.bestLagMs,
      unit: 'ms',
      note: `mean absolute error there ${signal.meanAbsoluteErrorAtBestLagMs.toFixed(2)} ms`,
    });
    record({
      scenario,
      variant: `${name}, says > ${SIGNAL_QUEUE_MS} ms while the queue is < ${SIGNAL_CLEAR_MS} ms`,
      value: signal.falseQueue * 100,
      unit: '%',
    });
    record({
      scenario,
      variant: `${name}, says < ${SIGNAL_CLEAR_MS} ms while the queue is > ${SIGNAL_QUEUE_MS} ms`,
      value: signal.missedQueue * 100,
      unit: '%',
    });
  }
  const cake = figures.get('cake-autorate');
  for (const variant of ['auto-plex', 'auto-probe'] as const) {
    const ours = figures.get(variant);
    if (!ours) continue;
    for (const [i, f] of ours.entries()) {
      const rival = cake?.[i];
      const gamerMet = f.gamer.p99 - idleGamerP99 <= 10;
      const capacityMet = f.capacityUsed >= 0.85;
      const beatsCake = rival ? beats(f, rival) : undefined;
      const met = gamerMet && capacityMet && beatsCake !== false;
      record({
        scenario,
        variant: `goal · ${LABELS[variant]} · ${runs[0]!.windows[i]!.phase.name} (gamer p99 ≤ idle + 10 ms, ≥ 85 % used, beats cake-autorate)`,
        value: met ? 1 : 0,
        unit: met ? 'met' : 'missed',
        note: [
          `gamer p99 ${f.gamer.p99.toFixed(1)} ms vs idle ${idleGamerP99.toFixed(1)} (≤ +10: ${gamerMet ? 'yes' : 'no'})`,
          `capacity used ${(f.capacityUsed * 100).toFixed(0)} % (≥ 85: ${capacityMet ? 'yes' : 'no'})`,
          rival
            ? `queue p99 ${f.queueP99Ms.toFixed(1)} ms vs cake-autorate's ${rival.queueP99Ms.toFixed(1)} at ${(rival.capacityUsed * 100).toFixed(0)} % used (better: ${beatsCake ? 'yes' : 'no'})`
            : 'no cake-autorate run to weigh against',
        ].join('; '),
      });
    }
  }
}

/**
 * Better than cake-autorate: a shorter queue at no less capacity used, or the same queue at more. Within
 * 1 ms (a full-size packet at 10 Mbit/s is 1.2 ms) and 1 point they count as the same.
 */
function beats(ours: PhaseFigures, rival: PhaseFigures): boolean {
  const sameQueue = Math.abs(ours.queueP99Ms - rival.queueP99Ms) <= 1;
  const sameUse = Math.abs(ours.capacityUsed - rival.capacityUsed) <= 0.01;
  const shorterQueue = !sameQueue && ours.queueP99Ms < rival.queueP99Ms;
  const moreUse = !sameUse && ours.capacityUsed > rival.capacityUsed;
  return (shorterQueue && (sameUse || moreUse)) || (sameQueue && moreUse);
}

/**
 * (c) with many idle pipes besides the players, at a steady capacity: how often the ceiling and the kernel move.
 * Two windows: the first two minutes (probes at the capacity fail and back off, 5 s growing to a minute),
 * then the steady state the target is about.
 */
async function steadyChurn(record: (row: Row) => void, scenario: string, home: Home, quick: boolean): Promise<void> {
  const idlePipes = quick ? 100 : 1000;
  const settleSeconds = quick ? 3 : 120;
  const seconds = quick ? 5 : 180;
  const loadBefore = loadavg()[0]!;
  // Counters only: what is measured here is the daemon's own churn, not the signal.
  const shaping = await startShaping(home, 'auto-plex', { idlePipes, countersOnly: true });
  let players: Players | undefined;
  try {
    players = startPlayers(home.uplink, home.specs, settleSeconds + seconds + 30);
    // The players' start is no steady state.
    await sleep((quick ? 2 : 10) * 1000);
    const status = shaping.status!;
    const mark = () => ({
      at: monotonicMs(),
      changes: status.points.at(-1)?.changes ?? 0,
      requests: status.kernelRequests.at(-1)?.total ?? 0,
      reasons: status.reasons.at(-1)?.counts ?? {},
    });
    const start = mark();
    await sleep(settleSeconds * 1000);
    const settled = mark();
    await sleep(seconds * 1000);
    const end = mark();
    const name = `${LABELS['auto-plex']} with ${idlePipes} idle pipes, steady 20 Mbit/s`;
    const note = `load average ${loadBefore.toFixed(2)} before, ${loadavg()[0]!.toFixed(2)} after`;
    const perMinute = (from: ReturnType<typeof mark>, to: ReturnType<typeof mark>, key: 'changes' | 'requests') =>
      (to[key] - from[key]) / ((to.at - from.at) / 60_000);
    record({
      scenario,
      variant: `${name}, first ${settleSeconds} s (probes backing off): ceiling changes per minute`,
      value: perMinute(start, settled, 'changes'),
      unit: '/min',
      note,
    });
    record({ scenario, variant: `${name}, first ${settleSeconds} s: kernel requests per minute`, value: perMinute(start, settled, 'requests'), unit: '/min' });
    record({
      scenario,
      variant: `${name}, the ${seconds} s after: ceiling changes per minute (target ≤ 2)`,
      value: perMinute(settled, end, 'changes'),
      unit: '/min',
      note: `by reason: ${changesByReason(settled.reasons, end.reasons)} (the first ${settleSeconds} s: ${changesByReason(start.reasons, settled.reasons)})`,
    });
    record({ scenario, variant: `${name}, the ${seconds} s after: kernel requests per minute`, value: perMinute(settled, end, 'requests'), unit: '/min' });
  } finally {
    players?.stop();
    await players?.done.catch(() => undefined);
    await shaping.stop();
  }
}
