/**
 * The demo's home uplink: three remote viewers stream from the Plex host through a 20 Mbit/s modem while
 * a gamer on the LAN pings a game server through it. shaperr is off for the first stretch (the modem's
 * buffer fills, the ping climbs), then a shaperrd for this home starts and the viewers' playback starts
 * are logged (the ping falls back, the streams keep playing). One table line a second; a summary with
 * both stretches side by side. Everything lives in the demo's sandbox namespaces.
 */
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { validateConfig } from '../config.js';
import { Shaperrd } from '../shaperrd.js';
import {
  createHomeUplink,
  homeShaping,
  type ModemReport,
  monotonicMs,
  percentile,
  plexStartLine,
  startGamer,
  startPlayers,
  startServers,
  streamSpecs,
  watchModem,
} from './home-uplink.js';

/** When shaperr turns on, as a fraction of the demo; the modem's 1 s buffer then needs time to drain. */
const SWITCH_AT = 0.4;
const DRAIN_SECONDS = 2;

export interface StretchSummary {
  gamerP50Ms: number;
  gamerP99Ms: number;
  gamerMaxMs: number;
  /** The modem's largest queue over the stretch, from its kernel counters. */
  modemPeakBacklogBytes: number;
}

export interface HomeUplinkDemoSummary {
  /** Seconds into the demo when shaperr turned on. */
  shaperrOnAtSeconds: number;
  /** Before shaperr (the first second, TCP's ramp-up, left out). */
  unshaped: StretchSummary;
  /** With shaperr, once the modem's queue had drained. */
  shaperr: StretchSummary;
  streams: Array<{ bitsPerSecond: number; stalls: number; startupSeconds: number | null }>;
}

export interface HomeUplinkDemo {
  /** One table line on what happened in the last second. */
  line(): string;
  /** Waits for the end of the demo's traffic, removes everything and sums up. */
  finish(): Promise<HomeUplinkDemoSummary>;
  /** Ends every process at once (an interrupted demo); the sandbox removes the namespaces. */
  kill(): void;
}

export async function startHomeUplinkDemo({ durationSeconds, dir }: { durationSeconds: number; dir: string }): Promise<HomeUplinkDemo> {
  const specs = streamSpecs(3);
  const home = await createHomeUplink({ prefix: 'shaperr-demo', players: specs.length });
  const servers = await startServers(home);
  const began = monotonicMs();
  const modem = watchModem(home);
  const gamer = startGamer(home, durationSeconds);
  const players = startPlayers(home, specs, durationSeconds);
  const onAt = began + durationSeconds * SWITCH_AT * 1000;
  const log = join(dir, 'home Plex Media Server.log');
  writeFileSync(log, '');
  const daemon = new Shaperrd({
    config: validateConfig({ ...homeShaping(home, specs), log, stateFile: join(dir, 'home-state.json'), idleSeconds: 600 }),
    logger: pino({ level: 'info' }, pino.destination(join(dir, 'home-shaperrd.log'))),
  });
  let daemonStarted: Promise<void> | undefined;
  const switchOn = setTimeout(() => {
    daemonStarted = daemon.start().then(() => appendFileSync(log, specs.map((spec, i) => plexStartLine(spec.address, `home-${i}`)).join('')));
  }, onAt - began);
  let shownUpTo = began;
  const kill = () => {
    clearTimeout(switchOn);
    try {
      modem.stop();
    } catch {
      // the demo is ending anyway; its figures are not needed
    }
    servers.stop();
    players.stop();
    gamer.stop();
  };

  return {
    kill,
    line() {
      const now = monotonicMs();
      const recent = gamer.samples.filter((sample) => sample.sentAt >= shownUpTo && sample.sentAt < now).map((sample) => sample.rtt);
      shownUpTo = now;
      const buffers = players.latest?.streams.map((stream) => `${stream.buffer.toFixed(0).padStart(2)} s`).join(' ') ?? '';
      const stalls = players.latest?.streams.reduce((sum, stream) => sum + stream.stalls, 0) ?? 0;
      const ping = recent.length
        ? `gamer ping ${percentile(recent, 50).toFixed(1).padStart(6)} ms (max ${Math.max(...recent).toFixed(1)})`
        : 'gamer ping       — ';
      return `${'home uplink 20 Mbit/s'.padEnd(28)}${(now < onAt ? 'shaperr off' : 'shaperr on').padEnd(13)}${ping.padEnd(38)}3 viewers' buffers ${buffers}, ${stalls} stalls`;
    },
    async finish() {
      try {
        const [, streams] = await Promise.all([gamer.done, players.done]);
        const report = modem.stop();
        const stretch = (from: number, to: number): StretchSummary => {
          const rtts = gamer.samples.filter((sample) => sample.sentAt >= from && sample.sentAt < to).map((sample) => sample.rtt);
          return {
            gamerP50Ms: percentile(rtts, 50),
            gamerP99Ms: percentile(rtts, 99),
            gamerMaxMs: Math.max(0, ...rtts),
            modemPeakBacklogBytes: peakBacklog(report, from, to),
          };
        };
        return {
          shaperrOnAtSeconds: (onAt - began) / 1000,
          unshaped: stretch(began + 1000, onAt),
          shaperr: stretch(onAt + DRAIN_SECONDS * 1000, Infinity),
          streams: streams.map(({ bitsPerSecond, stalls, startupSeconds }) => ({ bitsPerSecond, stalls, startupSeconds })),
        };
      } finally {
        kill();
        await daemonStarted?.catch(() => undefined);
        await daemon.stop().catch(() => undefined);
        await home.destroy();
      }
    },
  };
}

const peakBacklog = (report: ModemReport, from: number, to: number): number =>
  Math.max(0, ...report.samples.filter((sample) => sample.at >= from && sample.at < to).map((sample) => sample.backlog));

export function describeHomeUplink(summary: HomeUplinkDemoSummary): string[] {
  const stretch = (label: string, s: StretchSummary) =>
    `    ${label.padEnd(30)}gamer ping p50 ${s.gamerP50Ms.toFixed(2)} ms, p99 ${s.gamerP99Ms.toFixed(2)} ms, max ${s.gamerMaxMs.toFixed(2)} ms; modem queue up to ${(s.modemPeakBacklogBytes / 1024).toFixed(0)} KiB`;
  const stalls = summary.streams.reduce((sum, stream) => sum + stream.stalls, 0);
  return [
    `  home uplink (20 Mbit/s modem, 3 viewers at ${summary.streams.map((s) => s.bitsPerSecond / 1e6).join(' + ')} Mbit/s, a gamer pinging 50×/s):`,
    stretch('without shaperr', summary.unshaped),
    stretch(`with shaperr (from ${summary.shaperrOnAtSeconds.toFixed(0)} s)`, summary.shaperr),
    `    gamer p99: ${summary.unshaped.gamerP99Ms.toFixed(2)} ms → ${summary.shaperr.gamerP99Ms.toFixed(2)} ms; viewers: ${stalls} stalls`,
  ];
}
