/**
 * `npx tsx benchmarks/idle-cpu.ts [seconds]`: what listening costs while nothing happens — a TcMonitor open
 * in this process, against the same process without one (alternated windows of `seconds`, default 10), and a whole shaperrd with three pipes on a quiet
 * log (its repair watch, tail, sweep and save timers). CPU time over the window (user + system) as a share
 * of one core. Writes benchmarks/results/idle-cpu.md and .json. Needs root (a throwaway netns).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TcMonitor } from '../lib/tc/monitor.js';
import { play, startDaemon, writeDaemonConfig } from '../test/helpers/daemon.js';
import { createTopology } from '../daemon/support/netns.js';

const seconds = Number(process.argv[2] ?? 10);
const HERE = fileURLToPath(new URL('.', import.meta.url));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const CLOCK_TICKS_PER_SECOND = 100;
const ROUNDS = 3;
const SETTLE_MS = 3000;
const median = (values: readonly number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const range = (values: readonly number[]) => `${Math.min(...values).toFixed(3)}–${Math.max(...values).toFixed(3)}`;

/** This process's CPU over the window, in % of one core. */
async function ownCpu(): Promise<number> {
  await sleep(SETTLE_MS); // past the one-off work of opening or closing (first calls compiled, garbage collected)
  const from = process.cpuUsage();
  const started = performance.now();
  await sleep(seconds * 1000);
  const used = process.cpuUsage(from);
  return ((used.user + used.system) / 1000 / (performance.now() - started)) * 100;
}

/** Another process's CPU over the window, from /proc (utime + stime, in clock ticks), in % of one core. */
async function processCpu(pid: number, windowSeconds: number): Promise<number> {
  const ticks = () => {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return Number(fields[11]) + Number(fields[12]);
  };
  const from = ticks();
  const started = performance.now();
  await sleep(windowSeconds * 1000);
  return (((ticks() - from) / CLOCK_TICKS_PER_SECOND) * 1000 * 100) / (performance.now() - started);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces)');
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: 'shaperr-i' });
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-idle-'));
  const rows: { what: string; value: number; unit: string; note?: string }[] = [];
  const cpu = (what: string, percent: number, note?: string) =>
    rows.push({ what, value: Number(percent.toFixed(3)), unit: '% of a core', ...(note ? { note } : {}) });
  try {
    // Alternated, three windows each: an idle node process has its own background noise (GC, compiler threads).
    const without: number[] = [];
    const withMonitor: number[] = [];
    let reads = 0;
    for (let round = 0; round < ROUNDS; round++) {
      without.push(await ownCpu());
      const monitor = TcMonitor.open({ netns: topology.serverNs, onNotifications: () => {} });
      withMonitor.push(await ownCpu());
      reads += monitor.stats.reads;
      monitor.close();
    }
    cpu('this process, no monitor (median of 3 windows)', median(without), range(without));
    cpu('this process, a TcMonitor open (median of 3 windows)', median(withMonitor), range(withMonitor));
    rows.push({ what: 'times the monitor read its socket meanwhile', value: reads, unit: 'reads' });

    const log = join(dir, 'Plex Media Server.log');
    writeFileSync(log, ['198.18.7.1', '198.18.7.2', '198.18.7.3'].map((address, i) => play(address, `idle${i}`)).join(''));
    const config = writeDaemonConfig(dir, { netns: topology.serverNs, server: { rate: '1gbit' }, log, idleSeconds: 3600 });
    const daemon = startDaemon(config);
    try {
      await daemon.waitFor(/shaperrd started/);
      await sleep(5000); // past the start's own work
      // One long window: /proc counts in 10 ms ticks.
      cpu(`shaperrd, 3 pipes, quiet log (over ${3 * seconds} s)`, await processCpu(daemon.child.pid!, 3 * seconds));
    } finally {
      const exited = new Promise((resolve) => daemon.child.once('exit', resolve));
      daemon.child.kill('SIGTERM');
      await exited; // it saves its state on the way out
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await topology.destroy();
  }
  const table = [
    `# idle CPU over ${seconds} s (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, node ${process.version})`,
    '',
    '| what | result | range |',
    '| --- | ---: | --- |',
    ...rows.map((row) => `| ${row.what} | ${row.value} ${row.unit} | ${row.note ?? ''} |`),
    '',
  ].join('\n');
  process.stdout.write(table);
  mkdirSync(join(HERE, 'results'), { recursive: true });
  writeFileSync(join(HERE, 'results', 'idle-cpu.md'), table);
  writeFileSync(join(HERE, 'results', 'idle-cpu.json'), `${JSON.stringify({ seconds, rows }, null, 2)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`idle-cpu failed: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
