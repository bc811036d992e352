/**
 * The automatic ceiling on a real home uplink (daemon/demo/home-uplink.ts): a modem (HTB + a 1 s bfifo
 * buffer) whose rate moves, three remote players 20–80 ms away behind a TUN delay line wanting 6 + 8 + 10
 * Mbit/s, Plex's side on cubic, shaperrd with `server: { rate: auto, min: 2mbit, max: 30mbit }` so that
 * neither bound does the work. What counts is read from the kernel: the modem's backlog ÷ its current
 * rate is the queue the gamer would wait behind, its byte counter what the uplink carried, the server
 * class's rate the ceiling.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import {
  createHomeUplink,
  type HomeUplink,
  PLEX,
  percentile,
  plexStartLine,
  readModem,
  setModemRate,
  startPlayers,
  startServers,
  startUploader,
  startUploadSink,
  type StreamSpec,
} from '../daemon/demo/home-uplink.js';
import { startDelayLine } from '../benchmarks/delay-line.js';
import { hasCommand, netnsUnavailable } from '../daemon/support/netns.js';
import { type Daemon, logDir, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';

// Three homes, each run for a minute or two (the idle phase alone is the issue's 60 s).
t.setTimeout(600_000);

const MBIT = 1e6;
const skip = netnsUnavailable() || (!hasCommand('cc') && 'needs a C compiler for the delay line');
/** Pipes of 6, 8 and 10 Mbit/s (stream bitrate × 1.25): 24 Mbit/s wanted, more than the link carries. */
const STREAMS: StreamSpec[] = [4.8e6, 6.4e6, 8e6].map((bitsPerSecond, i) => ({ address: `203.0.113.${10 + i}`, bitsPerSecond }));
const pipeRate = (spec: StreamSpec) => Math.round(spec.bitsPerSecond * 1.25);

interface Lab {
  home: HomeUplink;
  daemon: Daemon;
  log: string;
  config: string;
  stateFile: string;
  statusUrl: string;
  /** The modem's queue delay (ms) and bytes, sampled every 20 ms from its counters. */
  samples: Array<{ at: number; queueMs: number; bytes: number; bitsPerSecond: number }>;
  ceiling(): number;
  status(): Promise<{ ceiling?: { rate: number; capacity?: number; cause?: string; changes: number }; server?: { rate: number } }>;
}

async function openLab(
  t: Test,
  { slowPlayer, streams = STREAMS }: { slowPlayer?: { index: number; bitsPerSecond: number }; streams?: StreamSpec[] } = {},
): Promise<Lab> {
  const home = await createHomeUplink({
    prefix: 'shaperr-t',
    players: streams.length,
    remote: { oneWayDelayMs: [10, 20, 40].slice(0, streams.length), startDelayLine, ...(slowPlayer ? { slowPlayer } : {}) },
    plexCongestionControl: 'cubic',
    lanCongestionControl: 'cubic',
  });
  t.teardown(() => home.destroy());
  const servers = await startServers(home);
  t.teardown(() => servers.stop());
  const sink = await startUploadSink(home);
  t.teardown(() => sink.stop());
  const { dir, log } = logDir(t, 'shaperr-uplink');
  const config = writeDaemonConfig(dir, {
    device: PLEX.device,
    netns: home.plexNs,
    server: { rate: 'auto', min: '2mbit', max: '30mbit', start: '18mbit' },
    client: { rate: '18mbit' },
    exempt: ['127.0.0.0/8', '10.77.0.0/16'],
    overrides: streams.map((spec) => ({ network: `${spec.address}/32`, rate: pipeRate(spec) })),
    log,
    idleSeconds: 3600,
    status: { listen: '127.0.0.1:0' },
  });
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  // What the ceiling did, for reading a failure.
  t.teardown(() =>
    t.comment(
      daemon.output
        .filter((line) => /server ceiling \d/.test(line))
        .map((line) => JSON.parse(line).msg)
        .join('\n'),
    ),
  );
  await daemon.waitFor(/automatic server ceiling on/, 120_000);
  const statusUrl = JSON.parse(await daemon.waitFor(/status page and \/metrics listening/)).url as string;
  const tc = TrafficControl.open({ netns: home.plexNs });
  t.teardown(() => tc.close());
  const samples: Lab['samples'] = [];
  const sampler = setInterval(() => {
    const modem = readModem(home);
    samples.push({ at: performance.now(), queueMs: (modem.backlog * 8 * 1000) / modem.bitsPerSecond, bytes: modem.bytes, bitsPerSecond: modem.bitsPerSecond });
  }, 20);
  t.teardown(() => clearInterval(sampler));
  return {
    home,
    daemon,
    log,
    config,
    stateFile: join(dir, 'state.json'),
    statusUrl,
    samples,
    ceiling: () => tc.getClass(PLEX.device, '5a:1')!.parameters.rate,
    status: async () => (await fetch(`${statusUrl}api/status`)).json() as ReturnType<Lab['status']>,
  };
}

/** Starts the players' streams: their sessions in the Plex log, then their players for `seconds`. */
async function play(lab: Lab, seconds: number, streams = STREAMS) {
  appendFileSync(lab.log, streams.map((spec, i) => plexStartLine(spec.address, `uplink-${i}`)).join(''));
  const tc = TrafficControl.open({ netns: lab.home.plexNs });
  try {
    await until(() => tc.classes(PLEX.device).length === streams.length + 1);
  } finally {
    tc.close();
  }
  return startPlayers(lab.home, streams, seconds);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/**
 * One of issue #20's figures (still open): asserted as todo, so the run shows whether this machine met it
 * without failing on a loaded one. The plain assertion beside it is the bound that must always hold.
 */
const issueTarget = (t: Test, met: boolean, target: string) => t.ok(met, `issue #20 target: ${target}`, { todo: 'issue #20 target, not met on every machine' });
const since = (lab: Lab, from: number, to = performance.now()) => lab.samples.filter((sample) => sample.at >= from && sample.at <= to);
/** Bits per second the modem carried between two instants, from its byte counter. */
function carried(lab: Lab, from: number, to: number): number {
  const window = since(lab, from, to);
  return ((window.at(-1)!.bytes - window[0]!.bytes) * 8) / ((window.at(-1)!.at - window[0]!.at) / 1000);
}

t.test('idle, then the link steps 20 → 10 → 20 Mbit/s under players who want more', { skip }, async (t) => {
  const lab = await openLab(t);
  // Idle for 60 s (pipes made, nothing plays): the ceiling neither drifts nor changes.
  appendFileSync(lab.log, STREAMS.map((spec, i) => plexStartLine(spec.address, `idle-${i}`)).join(''));
  await sleep(60_000);
  t.equal(lab.ceiling(), 18 * MBIT, 'idle 60 s: the ceiling has not drifted');
  t.equal((await lab.status()).ceiling?.changes, 0, 'idle 60 s: no change');
  t.notOk(
    lab.daemon.output.some((line) => /server ceiling \d/.test(line)),
    'idle 60 s: no change logged',
  );

  const players = await play(lab, 80);
  await sleep(25_000);
  // Step down.
  setModemRate(lab.home, 10 * MBIT);
  const down = performance.now();
  await sleep(25_000);
  const afterDown = since(lab, down);
  const clear = afterDown.find((sample, i) => sample.queueMs < 10 && afterDown.slice(i).every((later) => later.at > sample.at + 500 || later.queueMs < 10));
  const clearMs = clear ? clear.at - down : Number.POSITIVE_INFINITY;
  // Unshaped, it never clears.
  t.ok(clearMs <= 5000, `modem queue under 10 ms ${clear ? `${Math.round(clearMs)} ms` : 'never'} after the step down`);
  issueTarget(t, clearMs <= 1000, 'the queue clears within 1 s of the step down');
  const rest = afterDown.filter((sample) => clear && sample.at > clear.at).map((sample) => sample.queueMs);
  // Unshaped, the queue sits at the modem's whole second.
  t.ok(percentile(rest, 99) <= 60, `modem queue p99 ${percentile(rest, 99).toFixed(1)} ms over the rest of the phase`);
  issueTarget(t, percentile(rest, 99) <= 10, 'the queue p99 stays under 10 ms after it cleared');
  const used = carried(lab, down + 2000, performance.now()) / (10 * MBIT);
  // A ceiling walked to min would move a fifth of it.
  t.ok(used >= 0.5, `Plex moved ${(used * 100).toFixed(0)} % of the 10 Mbit/s`);
  issueTarget(t, used >= 0.85, 'Plex moves ≥ 85 % of the reduced link');
  const settled = JSON.parse(readFileSync(lab.stateFile, 'utf8')).ceiling?.rate as number | undefined;
  t.ok(settled !== undefined && settled < 10 * MBIT, `the ceiling followed the link down (last good ${settled === undefined ? '?' : settled / MBIT} Mbit/s)`);

  // Step up.
  setModemRate(lab.home, 20 * MBIT);
  const up = performance.now();
  let reached: number | undefined;
  await until(() => {
    if (lab.ceiling() >= 18 * MBIT) reached = performance.now();
    return reached !== undefined || performance.now() - up > 25_000;
  }, 30_000);
  const reachedMs = reached === undefined ? Number.POSITIVE_INFINITY : reached - up;
  t.ok(reachedMs <= 25_000, `the ceiling reached 90 % of 20 Mbit/s ${reached ? `${(reachedMs / 1000).toFixed(1)} s` : 'not within 25 s'} after the step up`);
  issueTarget(t, reachedMs <= 10_000, 'the ceiling reaches 90 % of the raised link within 10 s');
  players.stop();
  await players.done;

  // A restart starts from the last good ceiling, not from `start`.
  const exited = new Promise<number | null>((resolve) => lab.daemon.child.once('exit', resolve));
  lab.daemon.child.kill('SIGTERM');
  t.equal(await exited, 0, 'stops cleanly');
  const saved = JSON.parse(readFileSync(lab.stateFile, 'utf8')).ceiling.rate as number;
  t.not(saved, 18 * MBIT, `the state file keeps the ceiling it reached (${(saved / MBIT).toFixed(2)} Mbit/s)`);
  const again = startDaemon(lab.config);
  t.teardown(() => again.child.kill('SIGKILL'));
  await again.waitFor(/automatic server ceiling on/, 120_000);
  t.equal(lab.ceiling(), saved, 'a restart starts from it');
  again.child.kill('SIGTERM');
});

t.test('LAN uploaders: a capped one makes the ceiling yield and come back; a bulk one leaves it at min with the cause told', { skip }, async (t) => {
  const lab = await openLab(t);
  const players = await play(lab, 120);
  await sleep(15_000);
  const capped = await startUploader(lab.home, { protocol: 'udp', bitsPerSecond: 6 * MBIT });
  const from = performance.now();
  await sleep(30_000);
  const settled = lab.ceiling();
  // Yields to the uploader, but is not driven to min by it.
  t.ok(
    settled >= 4 * MBIT && settled <= 16 * MBIT,
    `with a 6 Mbit/s uploader the ceiling settled at ${(settled / MBIT).toFixed(2)} Mbit/s (capacity − 6 = 14)`,
  );
  issueTarget(t, Math.abs(settled - 14 * MBIT) <= 1.4 * MBIT, 'the ceiling settles within 10 % of capacity − 6');
  const queue = since(lab, from + 5000).map((sample) => sample.queueMs);
  t.ok(percentile(queue, 99) <= 40, `modem queue p99 ${percentile(queue, 99).toFixed(1)} ms with the uploader`);
  issueTarget(t, percentile(queue, 99) <= 10, 'the modem queue p99 stays ≤ 10 ms with the uploader');
  await capped.stop();
  await until(() => lab.ceiling() >= 0.85 * 20 * MBIT, 40_000);
  t.pass('the ceiling came back after the uploader stopped');

  const bulk = await startUploader(lab.home, { protocol: 'tcp' });
  await until(() => lab.ceiling() === 2 * MBIT, 30_000);
  t.pass('a bulk upload from another host: the ceiling stops at min');
  await lab.daemon.waitFor(/the uplink is busy with other traffic/, 15_000);
  t.equal((await lab.status()).ceiling?.cause, 'the uplink is busy with other traffic', 'the status says why');
  await bulk.stop();
  await until(() => lab.ceiling() >= 0.5 * 20 * MBIT, 40_000);
  t.pass('and it comes back once the bulk upload stops');
  players.stop();
  await players.done;
});

t.test('a player behind its own slow 3 Mbit/s link does not pull the ceiling below what the others use', { skip }, async (t) => {
  const lab = await openLab(t, { slowPlayer: { index: 2, bitsPerSecond: 3 * MBIT } });
  const players = await play(lab, 45);
  const from = performance.now() + 10_000;
  const lowest = { rate: Number.POSITIVE_INFINITY };
  await sleep(10_000);
  const watch = setInterval(() => (lowest.rate = Math.min(lowest.rate, lab.ceiling())), 100);
  await sleep(30_000);
  clearInterval(watch);
  const others = pipeRate(STREAMS[0]!) + pipeRate(STREAMS[1]!);
  // The walk to min this guards against: one player's own queue read as the uplink's.
  t.ok(lowest.rate > 2 * MBIT, `the ceiling stayed at ≥ ${(lowest.rate / MBIT).toFixed(2)} Mbit/s, never at min`);
  issueTarget(t, lowest.rate >= others, `the ceiling stays above the other two pipes' ${others / MBIT} Mbit/s`);
  const used = carried(lab, from, performance.now());
  t.ok(used >= 0.5 * (others + 3 * MBIT), `the uplink carried ${(used / MBIT).toFixed(2)} Mbit/s: the others' pipes and the slow player's link`);
  issueTarget(t, used >= 0.85 * (others + 3 * MBIT), 'the uplink carries ≥ 85 % of the others’ pipes and the slow player’s link');
  players.stop();
  await players.done;
});
