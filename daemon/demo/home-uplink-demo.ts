/**
 * The demo's home uplink: three remote viewers stream from the Plex host through a 20 Mbit/s modem while
 * a gamer on the LAN pings a game server through it. The gamer pings an idle link first; then the viewers
 * stream without shaperr (the modem's buffer fills, the ping climbs); then a shaperrd for this home starts
 * with the automatic ceiling (`server: { rate: auto }`), and the modem's rate drops to 10 Mbit/s and comes
 * back while it runs: the ceiling follows it down and back up. Last, for contrast, the same shaperrd is
 * reloaded with the old fixed ceiling (18 Mbit/s, 90 % of the plan) and the link drops again. Two table
 * lines a second, a line per ceiling change with its reason, and a summary per phase. Everything lives in
 * the demo's sandbox namespaces.
 */
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import type { CeilingStatus } from '../ceiling/auto-ceiling.js';
import { validateConfig } from '../config.js';
import { Shaperrd } from '../shaperrd.js';
import {
  createHomeUplink,
  homeShaping,
  monotonicMs,
  percentile,
  plexStartLine,
  readModem,
  runModemSchedule,
  SERVER_CEILING_BITS,
  startGamer,
  startPlayers,
  startServers,
  stepSchedule,
  streamSpecs,
  UPLINK_BITS,
  watchModem,
} from './home-uplink.js';

/** The modem's rate while the link is down: less than the viewers want (3 + 4 + 6 Mbit/s and refills). */
const DROPPED_BITS = 10e6;
/** The automatic ceiling's bounds: the plan's rate at most, and low enough for any drop of the demo's. */
const AUTO_MIN_BITS = 2e6;
const AUTO_MAX_BITS = UPLINK_BITS;
/**
 * After a change (shaperr on over the unshaped stretch's queue, the link dropping) the ceiling cuts and the
 * modem's queue drains within this long: each phase's figures are also given from then on.
 */
const SETTLE_SECONDS = 2;
/** How often shaperrd's status is read: its ceiling decides every 100 ms, so no change goes unseen. */
const STATUS_POLL_MS = 100;

export type HomePhaseName = 'idle' | 'unshaped' | 'auto' | 'autoDropped' | 'autoBack' | 'fixed' | 'fixedDropped';

/** The home's script: each phase from a fraction of the demo on, the modem at its rate. */
const PHASES: ReadonlyArray<{ name: HomePhaseName; from: number; modemBits: number; label: string }> = [
  { name: 'idle', from: 0, modemBits: UPLINK_BITS, label: 'idle link (the gamer alone)' },
  { name: 'unshaped', from: 0.07, modemBits: UPLINK_BITS, label: 'viewers, without shaperr' },
  { name: 'auto', from: 0.22, modemBits: UPLINK_BITS, label: 'shaperr, automatic ceiling' },
  { name: 'autoDropped', from: 0.36, modemBits: DROPPED_BITS, label: 'automatic, link dropped' },
  { name: 'autoBack', from: 0.52, modemBits: UPLINK_BITS, label: 'automatic, link back' },
  { name: 'fixed', from: 0.8, modemBits: UPLINK_BITS, label: 'old fixed ceiling 18 Mbit/s' },
  { name: 'fixedDropped', from: 0.84, modemBits: DROPPED_BITS, label: 'fixed, link dropped' },
];

export interface PhaseSummary {
  name: HomePhaseName;
  label: string;
  /** Seconds since the home started. */
  fromSeconds: number;
  toSeconds: number;
  /** The modem's rate read from its class in the kernel (its last reading in the phase). */
  modemBitsPerSecond: number;
  /** Over the whole phase. */
  whole: StretchFigures;
  /** From SETTLE_SECONDS into the phase on: what holds once the ceiling has reacted (absent: too short a phase). */
  settled?: StretchFigures;
  /** shaperr's server ceiling read from its class in the kernel (absent: shaperr off). */
  ceiling?: { lowestBitsPerSecond: number; highestBitsPerSecond: number; lastBitsPerSecond: number };
}

export interface StretchFigures {
  /** The gamer's pings answered (none: its figures are 0 and shown as —). */
  pings: number;
  gamerP50Ms: number;
  gamerP99Ms: number;
  gamerMaxMs: number;
  /** The modem's largest queue, from its kernel counters, and the delay it meant at the rate then. */
  modemPeakBacklogBytes: number;
  modemPeakQueueMs: number;
}

export interface HomeUplinkDemoSummary {
  phases: PhaseSummary[];
  /** The automatic ceiling's changes as shaperrd's status showed them (a poll a tick: rarely one unseen). */
  ceilingChanges: Array<{ atSeconds: number; from: number; to: number; reason: string; why: string }>;
  /** All its changes, by its own count. */
  ceilingChangeCount: number;
  streams: Array<{ bitsPerSecond: number; stalls: number; startupSeconds: number | null }>;
}

export interface HomeUplinkDemo {
  /** Starts the gamer, the script and its clock (the namespaces and servers are up already). */
  start(): void;
  /** Table lines on the last second. */
  lines(): string[];
  /** A line per ceiling change since the last call. */
  takeEvents(): string[];
  /** Waits for the end of the demo's traffic, removes everything and sums up. */
  finish(): Promise<HomeUplinkDemoSummary>;
  /** Ends every process at once (an interrupted demo); the sandbox removes the namespaces. */
  kill(): void;
}

/** One read of shaperrd's status: the server class's ceil from the kernel, and the automatic ceiling's view. */
interface ShaperrSample {
  at: number;
  serverCeil?: number;
  ceiling?: Pick<CeilingStatus, 'rate' | 'delayMs'>;
}

const mbit = (bits: number) => `${(bits / 1e6).toFixed(2)} Mbit/s`;
const ms = (value: number) => `${value.toFixed(1)} ms`;
/** The largest of many values, 0 for none (a long demo has too many samples to spread into Math.max). */
const largest = (values: readonly number[]) => values.reduce((a, b) => Math.max(a, b), 0);
const queueMs = (reading: { backlog: number; bitsPerSecond: number }) => (reading.backlog * 8 * 1000) / reading.bitsPerSecond;

/**
 * cubic on the Plex host, as Linux and Windows default to (bbr keeps shorter queues by itself, so the
 * fixed ceiling's failure would look milder), where the host already lets namespaces pick it: widening
 * that host-wide list would be a change outside the sandbox. Elsewhere the host's default.
 */
function plexCongestionControl(): { plexCongestionControl?: string } {
  const allowed = readFileSync('/proc/sys/net/ipv4/tcp_allowed_congestion_control', 'utf8').trim().split(/\s+/);
  return allowed.includes('cubic') ? { plexCongestionControl: 'cubic' } : {};
}

/** Builds the home (namespaces, modem, servers); start() sets it going. */
export async function prepareHomeUplinkDemo({ durationSeconds, dir }: { durationSeconds: number; dir: string }): Promise<HomeUplinkDemo> {
  const specs = streamSpecs(3);
  const home = await createHomeUplink({ prefix: 'shaperr-demo', players: specs.length, ...plexCongestionControl() });
  const servers = await startServers(home).catch(async (error: unknown) => {
    await home.destroy();
    throw error;
  });
  const log = join(dir, 'home Plex Media Server.log');
  writeFileSync(log, '');
  const shaping = homeShaping(home, specs);
  const common = { log, stateFile: join(dir, 'home-state.json'), idleSeconds: 600 };
  const autoConfig = validateConfig({ ...shaping, ...common, server: { rate: 'auto', min: AUTO_MIN_BITS, max: AUTO_MAX_BITS } });
  // The old ceiling: homeShaping's server rate, 90 % of the plan.
  const fixedConfig = validateConfig({ ...shaping, ...common });
  const daemon = new Shaperrd({ config: autoConfig, logger: pino({ level: 'info' }, pino.destination(join(dir, 'home-shaperrd.log'))) });
  const phaseStart = (name: HomePhaseName) => PHASES.find((phase) => phase.name === name)!.from * durationSeconds * 1000;

  let began = 0;
  let modem: ReturnType<typeof watchModem> | undefined;
  let modemSchedule: ReturnType<typeof runModemSchedule> | undefined;
  let gamer: ReturnType<typeof startGamer> | undefined;
  let players: ReturnType<typeof startPlayers> | undefined;
  let poller: NodeJS.Timeout | undefined;
  const timers: NodeJS.Timeout[] = [];
  /** The script's steps that ran (or failed), awaited before the daemon stops. */
  const steps: Array<Promise<void>> = [];
  let failure: unknown;
  const shaperrSamples: ShaperrSample[] = [];
  const ceilingChanges: HomeUplinkDemoSummary['ceilingChanges'] = [];
  let seenChanges = 0;
  const events: string[] = [];
  let shownUpTo = 0;
  let mode: 'off' | 'auto' | 'fixed' = 'off';

  /** Runs a step of the script `delayMs` after the start; its failure ends the demo at finish(). */
  const scheduleStep = (delayMs: number, step: () => Promise<void> | void) => {
    const run = async () => {
      try {
        await step();
      } catch (error) {
        failure ??= error;
      }
    };
    timers.push(setTimeout(() => steps.push(run()), delayMs));
  };
  /** Reads shaperrd's status and turns each new ceiling change into a line. */
  const poll = () => {
    const report = daemon.status();
    const sample: ShaperrSample = { at: monotonicMs() };
    if (report.server) sample.serverCeil = report.server.ceil;
    if (report.ceiling) sample.ceiling = { rate: report.ceiling.rate, ...(report.ceiling.delayMs === undefined ? {} : { delayMs: report.ceiling.delayMs }) };
    shaperrSamples.push(sample);
    const ceiling = report.ceiling;
    if (!ceiling?.lastChange || ceiling.changes === seenChanges) return;
    const { from, to, reason, why } = ceiling.lastChange;
    // At most one change a tick, and a poll a tick: a late poll shows the last and counts the others.
    const unseen = ceiling.changes - seenChanges - 1;
    seenChanges = ceiling.changes;
    ceilingChanges.push({ atSeconds: (sample.at - began) / 1000, from, to, reason, why });
    events.push(`home ceiling ${mbit(from)} → ${mbit(to)}: ${why}${unseen ? ` (after ${unseen} more since the last look)` : ''}`);
  };

  const kill = () => {
    for (const timer of timers) clearTimeout(timer);
    clearInterval(poller);
    for (const stop of [() => modemSchedule?.stop(), () => modem?.stop()]) {
      try {
        stop();
      } catch {
        // the demo is ending anyway; its figures are not needed
      }
    }
    servers.stop();
    players?.stop();
    gamer?.stop();
  };

  return {
    kill,
    start() {
      began = monotonicMs();
      shownUpTo = began;
      modem = watchModem(home);
      modemSchedule = runModemSchedule(home, stepSchedule(PHASES.map((phase) => ({ atMs: phaseStart(phase.name), bitsPerSecond: phase.modemBits }))));
      gamer = startGamer(home, durationSeconds);
      scheduleStep(phaseStart('unshaped'), () => {
        players = startPlayers(home, specs, durationSeconds - phaseStart('unshaped') / 1000);
      });
      scheduleStep(phaseStart('auto'), async () => {
        await daemon.start();
        mode = 'auto';
        appendFileSync(log, specs.map((spec, i) => plexStartLine(spec.address, `home-${i}`)).join(''));
        poller = setInterval(() => {
          try {
            poll();
          } catch (error) {
            failure ??= error;
            clearInterval(poller);
          }
        }, STATUS_POLL_MS);
      });
      scheduleStep(phaseStart('fixed'), async () => {
        poll(); // the automatic ceiling's last changes, before the reload stops it
        await daemon.reload(fixedConfig);
        mode = 'fixed';
      });
    },
    takeEvents: () => events.splice(0),
    lines() {
      const now = monotonicMs();
      // Answered in the last second (a ping stuck behind a long queue shows when it comes back).
      const recent = (gamer?.samples ?? [])
        .filter((sample) => sample.sentAt + sample.rtt >= shownUpTo && sample.sentAt + sample.rtt < now)
        .map((sample) => sample.rtt);
      shownUpTo = now;
      const reading = readModem(home);
      const ping = recent.length ? `gamer ping ${ms(percentile(recent, 50)).padStart(8)} (max ${ms(Math.max(...recent))})` : 'gamer ping —';
      const latest = shaperrSamples.at(-1);
      const shaperr =
        mode === 'off'
          ? 'shaperr off'
          : mode === 'fixed'
            ? `shaperr: fixed ceiling ${mbit(latest?.serverCeil ?? SERVER_CEILING_BITS)}`
            : `shaperr: ceiling ${mbit(latest?.ceiling?.rate ?? AUTO_MAX_BITS).padStart(12)} (auto), uplink delay ${latest?.ceiling?.delayMs === undefined ? '—' : ms(latest.ceiling.delayMs)}`;
      const buffers = players?.latest?.streams.map((stream) => `${stream.buffer.toFixed(0).padStart(2)} s`).join(' ') ?? '';
      const stalls = players?.latest?.streams.reduce((sum, stream) => sum + stream.stalls, 0) ?? 0;
      return [
        `${`home uplink: modem ${reading.bitsPerSecond / 1e6} Mbit/s`.padEnd(31)}${shaperr.padEnd(62)}modem queue ${ms(queueMs(reading)).padStart(9)}`,
        `${''.padEnd(31)}${ping.padEnd(62)}3 viewers' buffers ${buffers}, ${stalls} stalls`,
      ];
    },
    async finish() {
      try {
        if (!gamer || !modem || !modemSchedule) throw new Error('the home uplink demo was never started');
        const [, streams] = await Promise.all([gamer.done, players ? players.done : Promise.resolve([])]);
        await Promise.all(steps);
        if (failure) throw failure;
        clearInterval(poller);
        modemSchedule.stop();
        const report = modem.stop();
        const ended = began + durationSeconds * 1000;
        const phases = PHASES.map((phase, i): PhaseSummary => {
          const from = began + phaseStart(phase.name);
          const next = PHASES[i + 1];
          const to = next ? began + phaseStart(next.name) : ended;
          const figures = (since: number): StretchFigures => {
            const rtts = gamer!.samples.filter((sample) => sample.sentAt >= since && sample.sentAt < to).map((sample) => sample.rtt);
            const modemSamples = report.samples.filter((sample) => sample.at >= since && sample.at < to);
            return {
              pings: rtts.length,
              gamerP50Ms: percentile(rtts, 50),
              gamerP99Ms: percentile(rtts, 99),
              gamerMaxMs: largest(rtts),
              modemPeakBacklogBytes: largest(modemSamples.map((sample) => sample.backlog)),
              modemPeakQueueMs: largest(modemSamples.map(queueMs)),
            };
          };
          const lastModemReading = report.samples.filter((sample) => sample.at < to).at(-1);
          const ceils = shaperrSamples
            .filter((sample) => sample.at >= from && sample.at < to && sample.serverCeil !== undefined)
            .map((sample) => sample.serverCeil!);
          return {
            name: phase.name,
            label: phase.label,
            fromSeconds: (from - began) / 1000,
            toSeconds: (to - began) / 1000,
            modemBitsPerSecond: lastModemReading?.bitsPerSecond ?? 0,
            whole: figures(from),
            ...(to - from >= 2 * SETTLE_SECONDS * 1000 ? { settled: figures(from + SETTLE_SECONDS * 1000) } : {}),
            ...(ceils.length
              ? {
                  ceiling: {
                    lowestBitsPerSecond: ceils.reduce((a, b) => Math.min(a, b)),
                    highestBitsPerSecond: largest(ceils),
                    lastBitsPerSecond: ceils.at(-1)!,
                  },
                }
              : {}),
          };
        });
        return {
          phases,
          ceilingChanges,
          ceilingChangeCount: seenChanges,
          streams: streams.map(({ bitsPerSecond, stalls, startupSeconds }) => ({ bitsPerSecond, stalls, startupSeconds })),
        };
      } finally {
        kill();
        await Promise.all(steps);
        await daemon.stop().catch(() => undefined);
        await home.destroy();
      }
    },
  };
}

export function describeHomeUplink(summary: HomeUplinkDemoSummary): string[] {
  const phase = (name: HomePhaseName) => summary.phases.find((p) => p.name === name)!;
  const megabits = (bits: number) => (bits / 1e6).toFixed(2);
  const p99 = (figures?: StretchFigures) => (figures?.pings ? ms(figures.gamerP99Ms) : '—');
  const queue = (figures?: StretchFigures) => (figures ? ms(figures.modemPeakQueueMs) : '—');
  const row = (p: PhaseSummary) => {
    const c = p.ceiling;
    const ceiling = !c
      ? 'off'
      : c.lowestBitsPerSecond === c.highestBitsPerSecond
        ? megabits(c.lastBitsPerSecond)
        : `${megabits(c.lastBitsPerSecond)} (${megabits(c.lowestBitsPerSecond)}…${megabits(c.highestBitsPerSecond)})`;
    return `    ${p.label.padEnd(29)}${`${p.modemBitsPerSecond / 1e6} Mbit/s`.padEnd(11)}${ceiling.padEnd(22)}${`${p99(p.whole)} → ${p99(p.settled)}`.padEnd(24)}${queue(p.whole)} → ${queue(p.settled)}`;
  };
  const stalls = summary.streams.reduce((sum, stream) => sum + stream.stalls, 0);
  const [idle, fixed, auto] = [phase('idle').whole, phase('fixedDropped'), phase('autoDropped')];
  return [
    `  home uplink (20 Mbit/s modem dropping to ${DROPPED_BITS / 1e6} and back, 3 viewers at ${summary.streams.map((s) => s.bitsPerSecond / 1e6).join(' + ')} Mbit/s, a gamer pinging 50×/s):`,
    `    ${'phase'.padEnd(29)}${'modem'.padEnd(11)}${'ceiling Mbit/s'.padEnd(22)}${'gamer ping p99'.padEnd(24)}modem queue, peak`,
    ...summary.phases.map(row),
    `    (a → b: over the whole phase → after its first ${SETTLE_SECONDS} s, once the ceiling has reacted)`,
    `    when the link dropped to ${DROPPED_BITS / 1e6} Mbit/s: with the old fixed ceiling the gamer's p99 climbs to ${p99(fixed.whole)} (${p99(fixed.settled)} after ${SETTLE_SECONDS} s);` +
      ` with the automatic one ${p99(auto.whole)} while it cut, then ${p99(auto.settled)} (idle link: ${p99(idle)})`,
    `    the automatic ceiling changed ${summary.ceilingChangeCount} times; viewers: ${stalls} stalls`,
  ];
}
