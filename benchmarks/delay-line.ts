/**
 * The delay line (delay-line.c) from TypeScript: compiled with `cc -O2` at first use into
 * node_modules/.cache/shaperr (one binary per version of the source), started between two TUN devices
 * and stopped with its counters. `startDelayLine` is the starter createHomeUplink's `remote` option takes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { DelayLineSpec } from '../daemon/demo/home-uplink.js';

const SOURCE = fileURLToPath(new URL('./delay-line.c', import.meta.url));
const CACHE = fileURLToPath(new URL('../node_modules/.cache/shaperr/', import.meta.url));
const NETNS_DIR = '/var/run/netns';

export interface DelayLineOptions extends DelayLineSpec {
  /** Packets each FIFO holds before it drops (default 1024; one FIFO per direction and address). */
  queuePackets?: number;
  /**
   * SCHED_FIFO priority (default 10; false: an ordinary process). The line stands for the internet's
   * propagation delay, which a busy test machine's scheduler must not add to.
   */
  realtimePriority?: number | false;
}

/** The program's counters (its "stats" line). */
export interface DelayLineStats {
  forwarded: number;
  /** Packets dropped because their FIFO was full. */
  droppedFull: number;
  /** Longer than a FIFO's slot (2 KiB): none on a 1500-byte MTU. */
  droppedOversize: number;
  /** Neither IPv4 nor IPv6. */
  droppedUnknown: number;
  writeErrors: number;
  /** How late after its deadline a packet left, at most and on average. */
  lateMaxUs: number;
  lateMeanUs: number;
}

export interface DelayLine {
  /** The counters so far. */
  stats(): Promise<DelayLineStats>;
  /** Ends the program and returns its final counters; throws if it had died. */
  stop(): Promise<DelayLineStats>;
}

/** The compiled program, built on first use; one clear error when there is no C compiler or it fails. */
export function delayLineBinary(): string {
  const source = readFileSync(SOURCE);
  const binary = join(CACHE, `delay-line-${createHash('sha256').update(source).digest('hex').slice(0, 16)}`);
  if (existsSync(binary)) return binary;
  mkdirSync(CACHE, { recursive: true });
  // Compiled under a name of its own, then renamed: a parallel run never executes a half-written file.
  const partial = `${binary}.${process.pid}.tmp`;
  const compiled = spawnSync('cc', ['-O2', '-Wall', '-o', partial, SOURCE], { encoding: 'utf8' });
  if (compiled.error) throw new Error(`the delay line needs a C compiler: running cc failed (${compiled.error.message})`);
  if (compiled.status !== 0) {
    rmSync(partial, { force: true });
    throw new Error(`cc could not compile ${SOURCE}: ${compiled.stderr.trim()}`);
  }
  renameSync(partial, binary);
  return binary;
}

const STATS_FIELDS: Record<string, keyof DelayLineStats> = {
  forwarded: 'forwarded',
  dropped_full: 'droppedFull',
  dropped_oversize: 'droppedOversize',
  dropped_unknown: 'droppedUnknown',
  write_errors: 'writeErrors',
  late_max_us: 'lateMaxUs',
  late_mean_us: 'lateMeanUs',
};

/** A "stats key=value …" line; throws naming the line when it is not one. */
export function parseStatsLine(line: string): DelayLineStats {
  const fields = new Map(
    line
      .split(' ')
      .slice(1)
      .map((field) => field.split('=') as [string, string]),
  );
  const stats = Object.fromEntries(Object.entries(STATS_FIELDS).map(([key, name]) => [name, Number(fields.get(key))])) as unknown as DelayLineStats;
  if (!line.startsWith('stats ') || Object.values(stats).some((value) => !Number.isFinite(value)))
    throw new Error(`the delay line printed a malformed stats line: ${JSON.stringify(line)}`);
  return stats;
}

const netnsPath = (netns: string): string => (netns.includes('/') ? netns : join(NETNS_DIR, netns));

/** Starts the delay line between `ends` and resolves once both devices are up. */
export async function startDelayLine({ ends, delaysMs, defaultDelayMs = 0, queuePackets = 1024, realtimePriority = 10 }: DelayLineOptions): Promise<DelayLine> {
  const args = [
    '--default',
    String(defaultDelayMs),
    '--queue',
    String(queuePackets),
    ...(realtimePriority === false ? [] : ['--realtime', String(realtimePriority)]),
    ...ends.flatMap(({ netns, device }) => [netnsPath(netns), device]),
    ...Object.entries(delaysMs).map(([address, ms]) => `${address}=${ms}`),
  ];
  const child = spawn(delayLineBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (data: Buffer) => (stderr += data.toString()));
  const exited = new Promise<string>((resolve) => {
    child.once('error', (error) => resolve(`could not start: ${error.message}`));
    child.once('close', (code, signal) => resolve(signal ? `was killed by ${signal}` : `exited with ${code}`));
  });
  const death = async () => {
    const how = await exited;
    return new Error(`the delay line ${how}${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
  };
  let ready = (): void => {};
  const started = new Promise<void>((resolve) => (ready = resolve));
  const waiting: Array<(line: string) => void> = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line === 'ready') ready();
    else if (line.startsWith('stats ')) waiting.shift()?.(line);
  });
  await Promise.race([started, death().then((error) => Promise.reject(error))]);
  let stopping = false;
  /** The next stats line after `signal`, or the program's death as an error. */
  const statsAfter = async (signal: NodeJS.Signals): Promise<DelayLineStats> => {
    if (child.exitCode !== null || child.signalCode !== null) throw await death();
    const line = new Promise<string>((resolve) => waiting.push(resolve));
    child.kill(signal);
    return parseStatsLine(await Promise.race([line, death().then((error) => Promise.reject(error))]));
  };
  return {
    stats: () => statsAfter('SIGUSR1'),
    async stop() {
      if (stopping) throw new Error('the delay line was already stopped');
      stopping = true;
      const stats = await statsAfter('SIGTERM');
      await exited;
      return stats;
    },
  };
}
