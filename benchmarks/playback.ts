/**
 * `npm run bench:playback [-- headroom|startup]`: what a player sees through a shaperr pipe. Two
 * measurements (each a run of under two minutes), in a throwaway netns with real TCP through real HTB
 * classes, written to benchmarks/results/playback-headroom.md/json and playback-startup.md/json:
 *
 * A. Direct-play headroom. Plex's Media.bitrate is the file's average; a direct-played file sends its
 *    peaks as they are. A file server follows a VBR bitrate trace (below) into a player model with
 *    ExoPlayer's default buffering (Plex's Android apps use ExoPlayer: start at 2.5 s buffered, resume
 *    after a rebuffer at 5 s, load while less than 50 s is ahead), one pipe per headroom with
 *    rate = ceil = average × headroom (ceil = rate: the guarantee alone, as when the server rate is
 *    contended). Every player plays the same sessions: the start of the film, then seeks (one second
 *    before the two heaviest 5-second windows, and four seeded random positions). Counted: rebuffers and
 *    seconds stalled.
 * B. Start-up with ceil = max against ceil = rate: after each play or seek, the time until 10 s of media
 *    are buffered (and until playback starts, 2.5 s), through a pipe of a transcode's rate (average ×
 *    1.25) whose ceil is `max` (20 Mbit/s, the default) or the rate itself, the server rate uncontended.
 *
 * The trace is synthetic and seeded (the same every run), shaped after per-second bitrate plots of CRF
 * x264/x265 film encodes: scenes of 2–15 s at levels spread log-normally around the average, ±10 %
 * frame-type noise inside a scene, and an action sequence every 60–90 s at 2–3× the average for 3–8 s.
 * Its statistics (peak 1-, 5- and 10-second windows over the average) are printed with the results.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Shaper } from '../lib/shaper/shaper.js';
import { createTopology, type Topology } from '../daemon/support/netns.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const PEER = join(HERE, 'playback-peer.mjs');
const MBIT = 1e6;
const AVERAGE = 6 * MBIT;
const TRACE_SECONDS = 900;
const HEADROOMS = [1, 1.25, 1.5, 1.75, 2, 2.5];
const PLAYER = { startBuffer: 2.5, resumeBuffer: 5, maxBuffer: 50, fillTarget: 10 };
const PORT = 32400;

interface SessionResult {
  offset: number;
  stalls: number;
  stalledMs: number;
  startupMs?: number;
  fillMs?: number;
  playedSeconds: number;
  wallMs: number;
}

/** A small seeded generator (mulberry32): the same trace and seek positions every run. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Bits of each second of the film, averaging exactly `average`. */
function vbrTrace(average: number, seconds: number, random: () => number): number[] {
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const trace: number[] = [];
  let nextAction = 60 + random() * 30;
  while (trace.length < seconds) {
    if (trace.length >= nextAction) {
      const level = 2 + random();
      for (let i = 3 + Math.floor(random() * 6); i > 0; i--) trace.push(level * (0.9 + random() * 0.2));
      nextAction = trace.length + 60 + random() * 30;
      continue;
    }
    const level = Math.exp(0.35 * normal()) * 0.85;
    for (let i = 2 + Math.floor(random() * 14); i > 0; i--) trace.push(level * (0.9 + random() * 0.2));
  }
  trace.length = seconds;
  const mean = trace.reduce((a, b) => a + b, 0) / seconds;
  return trace.map((value) => Math.round((value / mean) * average));
}

/** The heaviest `window`-second stretch's average over the whole average, and where each such stretch starts. */
function windows(trace: number[], window: number): Array<{ start: number; ratio: number }> {
  const mean = trace.reduce((a, b) => a + b, 0) / trace.length;
  const out: Array<{ start: number; ratio: number }> = [];
  for (let start = 0; start + window <= trace.length; start++)
    out.push({ start, ratio: trace.slice(start, start + window).reduce((a, b) => a + b, 0) / window / mean });
  return out.sort((a, b) => b.ratio - a.ratio);
}

function spawnPeer(netns: string, args: string[]): { child: ChildProcess; lines: AsyncIterableIterator<string> } {
  const child = spawn('ip', ['netns', 'exec', netns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return { child, lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator]() };
}

/** Runs one player in the clients namespace; its sessions' results. */
async function runPlayer(topology: Topology, dir: string, name: string, localAddress: string, trace: number[], sessions: object[]): Promise<SessionResult[]> {
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({ server: topology.serverAddress, port: PORT, localAddress, trace, sessions, ...PLAYER }));
  const { child, lines } = spawnPeer(topology.clientNs, ['play', config]);
  const results: SessionResult[] = [];
  for await (const line of lines) results.push(JSON.parse(line) as SessionResult);
  if (results.length !== sessions.length)
    throw new Error(`player ${name} ended after ${results.length} of ${sessions.length} sessions (exit ${child.exitCode})`);
  return results;
}

const kbit = (bits: number) => `${Math.round(bits / 1000)}kbit`;
const percentile = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((p / 100) * values.length))]!;

/** What both scenarios share: the namespaces, the pipes, the trace and its description. */
interface Bench {
  topology: Topology;
  dir: string;
  shaper: Shaper;
  trace: number[];
  about: About;
}

interface About {
  machine: Record<string, string | number>;
  trace: Record<string, number>;
  player: typeof PLAYER;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('benchmarks need root (network namespaces)');
  const wanted = process.argv[2];
  if (wanted !== undefined && wanted !== 'headroom' && wanted !== 'startup')
    throw new Error(`unknown scenario ${JSON.stringify(wanted)}: expected headroom or startup`);
  const random = seeded(12);
  const trace = vbrTrace(AVERAGE, TRACE_SECONDS, random);
  const [peak, ...others] = windows(trace, 5);
  const nextPeak = others.find((w) => Math.abs(w.start - peak!.start) > 30)!;
  const shape = {
    averageBitsPerSecond: AVERAGE,
    seconds: TRACE_SECONDS,
    'peak 1 s ÷ average': windows(trace, 1)[0]!.ratio,
    'peak 5 s ÷ average': peak!.ratio,
    'peak 10 s ÷ average': windows(trace, 10)[0]!.ratio,
    'seconds above 1.5× the average': trace.filter((bits) => bits > 1.5 * AVERAGE).length / trace.length,
  };
  const randomSeeks = [0, 1, 2, 3].map(() => Math.floor(60 + random() * (TRACE_SECONDS - 180)));

  const topology = await createTopology({ clients: HEADROOMS.length + 2, ipv6: false, prefix: 'shaperr-b' });
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-playback-'));
  let server: ChildProcess | undefined;
  const shaper = await Shaper.open({
    device: 'srv0',
    netns: topology.serverNs,
    server: { rate: '400mbit' },
    client: { rate: '1mbit' },
    leaf: 'bfifo',
    onWarning: () => {},
  });
  try {
    const peer = spawnPeer(topology.serverNs, ['serve', topology.serverAddress, String(PORT)]);
    server = peer.child;
    if ((await peer.lines.next()).value !== 'listening') throw new Error('the file server did not start');
    const machine = { date: new Date().toISOString(), cpu: cpus()[0]?.model ?? 'unknown CPU', cores: cpus().length, node: process.version };
    const bench: Bench = { topology, dir, shaper, trace, about: { machine, trace: shape, player: PLAYER } };
    if (wanted !== 'startup') {
      // A rebuffer after a seek comes in its first seconds, while the buffer is short: later ones are rare.
      await headroomScenario(bench, [
        { offset: 0, wallSeconds: 24, what: 'start of the film' },
        { offset: peak!.start - 1, wallSeconds: 16, what: 'seek before the heaviest 5 s' },
        { offset: nextPeak.start - 1, wallSeconds: 16, what: 'seek before the next heaviest 5 s' },
        ...randomSeeks.map((offset) => ({ offset, wallSeconds: 12, what: 'seek to a random position' })),
      ]);
    }
    if (wanted !== 'headroom') await startupScenario(bench, [0, peak!.start - 1, ...randomSeeks]);
  } finally {
    server?.kill();
    await shaper.close({ teardown: true });
    await topology.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A: one pipe per headroom (rate = ceil), all players at once: the same machine noise for each. */
async function headroomScenario(
  { topology, dir, shaper, trace, about }: Bench,
  sessions: Array<{ offset: number; wallSeconds: number; what: string }>,
): Promise<void> {
  process.stderr.write(`A. direct-play headroom: ${HEADROOMS.length} players, ${sessions.reduce((sum, session) => sum + session.wallSeconds, 0)} s…\n`);
  await Promise.all(HEADROOMS.map((headroom, i) => shaper.throttle(topology.clientAddresses[i]!, { rate: kbit(AVERAGE * headroom) })));
  const results = await Promise.all(
    HEADROOMS.map((headroom, i) => runPlayer(topology, dir, `headroom-${headroom}`, topology.clientAddresses[i]!, trace, sessions)),
  );
  const headroom = HEADROOMS.map((headroom, i) => {
    const played = results[i]!;
    return {
      headroom,
      rate: AVERAGE * headroom,
      rebuffers: played.reduce((sum, s) => sum + s.stalls, 0),
      stalledSeconds: played.reduce((sum, s) => sum + s.stalledMs, 0) / 1000,
      playedSeconds: played.reduce((sum, s) => sum + s.playedSeconds, 0),
      sessions: played.map((s, k) => ({ ...s, what: sessions[k]!.what })),
    };
  });
  publish('playback-headroom', { ...about, headroom }, renderHeadroom);
}

/** B: start-up after play and seeks through a transcode-sized pipe, ceil = max against ceil = rate, both at once. */
async function startupScenario({ topology, dir, shaper, trace, about }: Bench, offsets: number[]): Promise<void> {
  process.stderr.write('B. start-up with and without ceil = max…\n');
  const rate = AVERAGE * 1.25;
  const variants = [
    { name: 'ceil = max (20 Mbit/s, the default)', ceil: 20 * MBIT },
    { name: 'ceil = rate (ceil: auto)', ceil: rate },
  ];
  const addresses = topology.clientAddresses.slice(HEADROOMS.length);
  await Promise.all(variants.map((variant, i) => shaper.throttle(addresses[i]!, { rate: kbit(rate), ceil: kbit(variant.ceil) })));
  const sessions = offsets.map((offset) => ({ offset, untilFilled: true }));
  const results = await Promise.all(variants.map((_variant, i) => runPlayer(topology, dir, `startup-${i}`, addresses[i]!, trace, sessions)));
  const startup = variants.map((variant, i) => {
    const played = results[i]!;
    const fills = played.map((s) => s.fillMs!);
    const starts = played.map((s) => s.startupMs!);
    return {
      variant: variant.name,
      rate,
      ceil: variant.ceil,
      fillMedianMs: percentile(fills, 50),
      fillMaxMs: Math.max(...fills),
      startMedianMs: percentile(starts, 50),
      startMaxMs: Math.max(...starts),
      sessions: played,
    };
  });
  publish('playback-startup', { ...about, startup }, renderStartup);
}

interface HeadroomReport extends About {
  headroom: Array<{
    headroom: number;
    rate: number;
    rebuffers: number;
    stalledSeconds: number;
    playedSeconds: number;
    sessions: Array<SessionResult & { what: string }>;
  }>;
}
interface StartupReport extends About {
  startup: Array<{ variant: string; rate: number; ceil: number; fillMedianMs: number; fillMaxMs: number; startMedianMs: number; startMaxMs: number }>;
}

/** Writes results/NAME.json and NAME.md and prints the markdown. */
function publish<T extends About>(name: string, report: T, render: (report: T) => string[]): void {
  const out = join(HERE, 'results');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, `${name}.json`), `${JSON.stringify(report, null, 2)}\n`);
  const markdown = [...header(report), ...render(report), ''].join('\n');
  writeFileSync(join(out, `${name}.md`), markdown);
  process.stdout.write(markdown);
}

const mbit = (bits: number) => (bits / MBIT).toFixed(2);
const seconds = (ms: number) => (ms / 1000).toFixed(2);

function header(report: About): string[] {
  return [
    '# Playback through a shaperr pipe',
    '',
    Object.entries(report.machine)
      .map(([key, value]) => `- ${key}: ${value}`)
      .join('\n'),
    `- trace: synthetic VBR film (seeded), ${report.trace.seconds} s at an average of ${mbit(report.trace.averageBitsPerSecond!)} Mbit/s; peak 1 s ${report.trace['peak 1 s ÷ average']!.toFixed(2)}×, peak 5 s ${report.trace['peak 5 s ÷ average']!.toFixed(2)}×, peak 10 s ${report.trace['peak 10 s ÷ average']!.toFixed(2)}× the average; ${(report.trace['seconds above 1.5× the average']! * 100).toFixed(1)} % of seconds above 1.5×`,
    `- player: ExoPlayer's default buffering (starts at ${PLAYER.startBuffer} s, resumes at ${PLAYER.resumeBuffer} s after a rebuffer, loads while < ${PLAYER.maxBuffer} s ahead)`,
    '',
  ];
}

function renderHeadroom(report: HeadroomReport): string[] {
  return [
    '## A. Direct play: rebuffers per headroom (rate = ceil = average × headroom)',
    '',
    `Sessions per player: ${report.headroom[0]!.sessions.map((s) => `${s.what} (${s.offset} s)`).join('; ')}.`,
    '',
    '| headroom | pipe | rebuffers | seconds stalled | seconds played | stalls per session |',
    '| ---: | ---: | ---: | ---: | ---: | --- |',
    ...report.headroom.map(
      (row) =>
        `| ${row.headroom} | ${mbit(row.rate)} Mbit/s | ${row.rebuffers} | ${row.stalledSeconds.toFixed(1)} | ${row.playedSeconds.toFixed(0)} | ${row.sessions.map((s) => `${s.stalls} (${seconds(s.stalledMs)} s)`).join(', ')} |`,
    ),
  ];
}

function renderStartup(report: StartupReport): string[] {
  return [
    '## B. Start-up after play or seek: time until 10 s of media are buffered',
    '',
    '| pipe | 10 s buffered, median | max | playback starts (2.5 s), median | max |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...report.startup.map(
      (row) =>
        `| ${mbit(row.rate)} Mbit/s, ${row.variant} | ${seconds(row.fillMedianMs)} s | ${seconds(row.fillMaxMs)} s | ${seconds(row.startMedianMs)} s | ${seconds(row.startMaxMs)} s |`,
    ),
  ];
}

main().catch((error: unknown) => {
  process.stderr.write(`benchmark failed: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
