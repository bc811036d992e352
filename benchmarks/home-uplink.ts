/**
 * Scenario 7, the home uplink: what a Plex owner feels. Remote players pull 4-second video segments from
 * the Plex host through a 20 Mbit/s modem with a 1 s buffer, while a gamer on the LAN pings a game
 * server through the same modem 50 times a second. Variants: the idle uplink, Plex unshaped, Plex shaped
 * by the library (`Shaper`), and the same driven by the shipped shaperrd from a Plex log.
 *
 * `runHomeUplink({ variant, seconds, streams })` runs one variant (the CI smoke test uses it);
 * `homeUplinkScenario` runs them side by side and reports rows.
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Shaper } from '../lib/index.js';
import { quantumFor } from '../lib/shaper/shares.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { TC_H_ROOT } from '../lib/tc/handle.js';
import { SHAPER_LAYOUT } from '../lib/shaper/layout.js';
import {
  createHomeUplink,
  type HomeUplink,
  homeShaping,
  PLEX,
  percentile,
  pingFigures,
  type PingFigures,
  pipeRate,
  plexStartLine,
  SERVER_CEILING_BITS,
  startGamer,
  startPlayers,
  startServers,
  type StreamResult,
  type StreamSpec,
  streamSpecs,
  UPLINK_BITS,
  utilisationWhileAllFetch,
  watchModem,
} from '../daemon/demo/home-uplink.js';
import { type ShippedDaemon, startShippedDaemon, waitFor } from './shipped-daemon.js';

/** `quanta`: the layout weighed against shaperr's shares (issue: server ceiling): tiny guarantees, quanta as weights. */
export type HomeUplinkVariant = 'idle' | 'unshaped' | 'shaperr' | 'shaperrd' | 'quanta';

const PREFIX = 'shaperr-b';

export interface HomeUplinkOptions {
  variant: HomeUplinkVariant;
  seconds: number;
  /** Remote players (ignored for `idle`). */
  streams: number;
  /** Depth of the modem's buffer in seconds of uplink (default 1, a cable modem's). */
  modemBufferSeconds?: number;
  /** Queue inside each pipe (default bfifo); sfq falls back to bfifo where the kernel has none. */
  leaf?: 'sfq' | 'bfifo';
}

export interface HomeUplinkResult {
  variant: HomeUplinkVariant;
  seconds: number;
  ping: PingFigures;
  streams: StreamResult[];
  modem: {
    peakBacklogBytes: number;
    /** The modem's buffer, for scale. */
    bufferBytes: number;
    drops: number;
    /**
     * What the modem's queue adds to every packet's trip (backlog ÷ uplink rate, per poll): the gamer's
     * lag as the kernel counts it, unaffected by when the gamer's processes get a core.
     */
    queueDelayP99Ms: number;
    queueDelayMaxMs: number;
    /** Bytes carried ÷ what the uplink could carry over the run. */
    utilisation: number;
    /** The same over the stretches where every stream was fetching (0: never all at once). */
    utilisationWhileAllFetch: number;
  };
  /** Whether net.ipv4.tcp_tso_rtt_log exists here (it was set to 0 in the plex netns). */
  tsoRttLogSet: boolean;
  /** Kinds of the qdiscs inside shaperr's pipes, read back from the kernel once shaping is in place (none unshaped). */
  pipeLeaves: string[];
}

export async function runHomeUplink(options: HomeUplinkOptions): Promise<HomeUplinkResult> {
  const [result] = await runHomeUplinkVariants({ ...options, variants: [options.variant] });
  return result!;
}

/**
 * Several variants one after another on one home (one topology, one segment and game server): what a
 * short run under emulation can afford, where building the namespaces costs more than the traffic.
 */
export async function runHomeUplinkVariants({
  variants,
  seconds,
  streams: count,
  modemBufferSeconds = 1,
  leaf = 'bfifo',
}: Omit<HomeUplinkOptions, 'variant'> & { variants: HomeUplinkVariant[] }): Promise<HomeUplinkResult[]> {
  const specs = variants.every((variant) => variant === 'idle') ? [] : streamSpecs(count);
  const home = await createHomeUplink({ prefix: PREFIX, uplinkBitsPerSecond: UPLINK_BITS, modemBufferSeconds, players: specs.length });
  try {
    const servers = await startServers(home);
    try {
      const results: HomeUplinkResult[] = [];
      for (const variant of variants) results.push(await runVariant(home, variant, variant === 'idle' ? [] : specs, seconds, leaf));
      return results;
    } finally {
      servers.stop();
    }
  } finally {
    await home.destroy();
  }
}

async function runVariant(
  home: HomeUplink,
  variant: HomeUplinkVariant,
  specs: StreamSpec[],
  seconds: number,
  leaf: 'sfq' | 'bfifo',
): Promise<HomeUplinkResult> {
  const cleanups: Array<() => unknown> = [];
  try {
    if (variant === 'shaperr' || variant === 'quanta') cleanups.unshift(await shapeWithLibrary(home, specs, leaf, variant === 'quanta'));
    if (variant === 'shaperrd') cleanups.unshift(await shapeWithDaemon(home, specs, leaf));
    const pipeLeaves = readPipeLeaves(home);
    const modem = watchModem(home);
    cleanups.unshift(() => {
      try {
        modem.stop(); // already stopped unless the run failed
      } catch {
        // the run's own error is the one to report
      }
    });
    const gamer = startGamer(home, seconds);
    const players = specs.length ? startPlayers(home, specs, seconds) : undefined;
    const [ping, streams] = await Promise.all([gamer.done, players?.done ?? []]);
    const report = modem.stop();
    const queueDelays = report.samples.map((sample) => (sample.backlog * 8 * 1000) / UPLINK_BITS);
    return {
      variant,
      seconds,
      ping: pingFigures(ping.rtts, ping.sent),
      streams,
      modem: {
        peakBacklogBytes: report.peakBacklog,
        bufferBytes: home.modemBufferBytes,
        drops: report.drops,
        queueDelayP99Ms: percentile(queueDelays, 99),
        queueDelayMaxMs: Math.max(...queueDelays),
        utilisation: (report.bytes * 8) / ((report.samples.at(-1)!.at - report.samples[0]!.at) / 1000) / UPLINK_BITS,
        utilisationWhileAllFetch: players ? utilisationWhileAllFetch(home, report, players.fetches) : 0,
      },
      tsoRttLogSet: home.tsoRttLogSet,
      pipeLeaves,
    };
  } finally {
    for (const cleanup of cleanups) await cleanup();
  }
}

/** The distinct kinds of the leaf qdiscs under shaperr's root on the plex host's device. */
function readPipeLeaves(home: HomeUplink): string[] {
  const tc = TrafficControl.open({ netns: home.plexNs });
  try {
    const leaves = tc.qdiscs(PLEX.device).filter((qdisc) => qdisc.parent !== TC_H_ROOT && qdisc.parent >>> 16 === SHAPER_LAYOUT.rootMajor);
    return [...new Set(leaves.map((qdisc) => qdisc.kind))].sort();
  } finally {
    tc.close();
  }
}

/**
 * The library: server ceiling 90 % of the uplink, one pipe per player at bitrate × 1.25, `wantedLeaf` leaves.
 * With `quanta`, every pipe is then rewritten to the other layout: guaranteed 8 kbit/s, ceil its rate,
 * quantum its weight, so HTB's round robin alone shares the server rate.
 */
async function shapeWithLibrary(home: HomeUplink, specs: StreamSpec[], wantedLeaf: 'sfq' | 'bfifo', quanta = false): Promise<() => Promise<void>> {
  const { device, netns, server, client, leaf, exempt } = homeShaping(home, specs, wantedLeaf);
  const shaper = await Shaper.open({ device, netns, server, client, leaf, exempt, onWarning: () => {} });
  for (const spec of specs) await shaper.throttle(spec.address, { rate: pipeRate(spec) });
  if (quanta) {
    const tc = TrafficControl.open({ netns });
    try {
      for (const pipe of shaper.clients()) {
        const options = { rate: 8000, ceil: Math.min(pipe.wanted.rate, server.rate), quantum: quantumFor(pipe.wanted.rate), mtu: 1600 };
        const { error } = tc.changeClass(device, { kind: 'htb', parent: '5a:1', classid: pipe.classid, options });
        if (error) throw error;
      }
    } finally {
      tc.close();
    }
  }
  return () => shaper.close({ teardown: true });
}

/**
 * The whole product: the shipped shaperrd with the same limits (per-player rates as network overrides),
 * each player's playback start appended to the Plex log it follows; shaping is in place once every
 * player's class is in the kernel.
 */
async function shapeWithDaemon(home: HomeUplink, specs: StreamSpec[], leaf: 'sfq' | 'bfifo'): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-bench-'));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  let daemon: ShippedDaemon | undefined;
  const tc = TrafficControl.open({ netns: home.plexNs });
  try {
    daemon = await startShippedDaemon(
      {
        ...homeShaping(home, specs, leaf),
        log,
        stateFile: join(dir, 'state.json'),
        // The run has no timeline lines: sessions must outlive it.
        idleSeconds: 3600,
      },
      dir,
    );
    appendFileSync(log, specs.map((spec, i) => plexStartLine(spec.address, `bench-${i}`)).join(''));
    await waitFor(() => tc.classes(PLEX.device).length === specs.length + 1, 10_000, `shaperrd did not throttle all ${specs.length} players`);
  } catch (error) {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  } finally {
    tc.close();
  }
  return async () => {
    await daemon!.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}

// ---- the scenario's rows -------------------------------------------------------------------------------

export interface Row {
  scenario: string;
  variant: string;
  value: number;
  unit: string;
  note?: string;
}

const LABELS: Record<HomeUplinkVariant, string> = {
  idle: 'idle uplink',
  unshaped: 'Plex unshaped',
  shaperr: 'shaperr (library)',
  shaperrd: 'shaperrd from a Plex log',
  quanta: 'other layout: tiny guarantees, quanta as weights',
};

/** Every variant side by side, for 3 streams (they fit the ceiling) and 6 (more than it holds). */
export async function homeUplinkScenario(record: (row: Row) => void, { quick }: { quick: boolean }): Promise<void> {
  const seconds = quick ? 4 : 120;
  const idle = await runHomeUplink({ variant: 'idle', seconds, streams: 0 });
  for (const count of quick ? [3] : [3, 6]) {
    const scenario = `7. home uplink (20 Mbit/s, 1 s modem buffer; ${count} streams of ${streamSpecs(count)
      .map((s) => s.bitsPerSecond / 1e6)
      .join('+')} Mbit/s; ${seconds} s each)`;
    const results: HomeUplinkResult[] = [idle];
    for (const variant of ['unshaped', 'shaperr', 'shaperrd', ...(quick ? [] : (['quanta'] as const))] as const)
      results.push(await runHomeUplink({ variant, seconds, streams: count }));
    for (const result of results) recordVariant(record, scenario, result);
    const p99 = (variant: HomeUplinkVariant) => results.find((r) => r.variant === variant)!.ping.p99;
    record({ scenario, variant: 'gamer p99 ratio: unshaped ÷ shaperr', value: p99('unshaped') / p99('shaperr'), unit: '×' });
    record({ scenario, variant: 'gamer p99: shaperr − idle (target ≤ 5)', value: p99('shaperr') - p99('idle'), unit: 'ms' });
    record({ scenario, variant: 'gamer p99: shaperrd − idle (target ≤ 5)', value: p99('shaperrd') - p99('idle'), unit: 'ms' });
    if (!quick) record({ scenario, variant: 'gamer p99: other layout (quanta) − idle', value: p99('quanta') - p99('idle'), unit: 'ms' });
    if (!idle.tsoRttLogSet)
      record({
        scenario,
        variant: 'net.ipv4.tcp_tso_rtt_log',
        value: 0,
        unit: 'absent',
        note: 'this kernel has no tcp_tso_rtt_log: the Plex host sends TSO lumps sized for µs round trips',
      });
  }
}

function recordVariant(record: (row: Row) => void, scenario: string, result: HomeUplinkResult): void {
  const label = LABELS[result.variant];
  const { ping, modem } = result;
  const lost = ping.lost ? `${ping.lost} pings unanswered` : undefined;
  record({ scenario, variant: `${label}: gamer RTT p50`, value: ping.p50, unit: 'ms' });
  record({ scenario, variant: `${label}: gamer RTT p99`, value: ping.p99, unit: 'ms', ...(lost ? { note: lost } : {}) });
  record({ scenario, variant: `${label}: gamer RTT p99.9`, value: ping.p999, unit: 'ms' });
  record({ scenario, variant: `${label}: gamer RTT max (target ≤ idle + 15 with shaperr)`, value: ping.max, unit: 'ms' });
  record({ scenario, variant: `${label}: gamer jitter (mean change between pings)`, value: ping.jitter, unit: 'ms' });
  record({
    scenario,
    variant: `${label}: modem peak backlog`,
    value: modem.peakBacklogBytes / 1024,
    unit: 'KiB',
    note: `buffer ${Math.round(modem.bufferBytes / 1024)} KiB, polled every 20 ms`,
  });
  record({ scenario, variant: `${label}: modem drops`, value: modem.drops, unit: 'packets' });
  record({
    scenario,
    variant: `${label}: modem queueing delay p99 (backlog ÷ uplink rate)`,
    value: modem.queueDelayP99Ms,
    unit: 'ms',
    note: 'what the queue adds to each packet, from the kernel counters',
  });
  record({ scenario, variant: `${label}: modem queueing delay max`, value: modem.queueDelayMaxMs, unit: 'ms' });
  record({ scenario, variant: `${label}: uplink utilisation`, value: modem.utilisation * 100, unit: '%' });
  if (result.variant === 'idle') return;
  record({
    scenario,
    variant: `${label}: uplink utilisation while every stream fetches (target ≥ 80)`,
    value: modem.utilisationWhileAllFetch * 100,
    unit: '%',
  });
  // Stalls are a failure only where every pipe fits under the server ceiling.
  const fits = result.streams.reduce((sum, stream) => sum + pipeRate(stream), 0) <= SERVER_CEILING_BITS;
  for (const stream of result.streams) {
    const name = `${label}: stream ${stream.bitsPerSecond / 1e6} Mbit/s (${stream.address})`;
    record({
      scenario,
      variant: `${name} stalls${fits ? ' (target 0)' : ''}`,
      value: stream.stalls,
      unit: 'stalls',
      note: `${stream.lateSegments} of ${stream.segments} segments late, ${stream.stalledSeconds.toFixed(1)} s stalled`,
    });
    record({ scenario, variant: `${name} start-up (request → playback)`, value: stream.startupSeconds ?? Number.NaN, unit: 's' });
    record({ scenario, variant: `${name} mean goodput`, value: stream.goodputBitsPerSecond / 1e6, unit: 'Mbit/s' });
  }
}
