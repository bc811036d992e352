/**
 * `npm run soak [-- --quick]`: what shaperrd loses, duplicates or leaks when it is treated badly — kill -9
 * in a seek storm, log rotations and truncations under a stream of lines, fuzzed and oversized lines, its
 * qdisc, device or a client's filter removed under it (event-driven repair), a burst of kernel
 * notifications and an overflow of them, websocket drops and Plex restarts (the Plex API source).
 * Every row is a count (or a memory figure, or a repair time), never a time target; writes benchmarks/results/soak.md and
 * soak.json (`--quick`: soak-quick.*, which the CI smoke test runs).
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PlexTestServer } from '../daemon/demo/plex-test-server.js';
import { LogTailer, rotatedPath } from '../daemon/sources/tail.js';
import { parseClientAddress } from '../lib/address.js';
import { clientFilterRef } from '../lib/shaper/layout.js';
import { TcMonitor, type TcNotification } from '../lib/tc/monitor.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import {
  CLI,
  type Daemon,
  type DaemonConfigKeys,
  kernelHasPipesFor,
  kernelState,
  play,
  plexLine,
  startDaemon,
  stop,
  writeDaemonConfig,
} from '../test/helpers/daemon.js';
import { createTopology, type Topology } from '../daemon/support/netns.js';

const quick = process.argv.includes('--quick');
/** `--only <word>`: just the scenarios whose name has it (results: soak-<word>.*). */
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : undefined;
const HERE = fileURLToPath(new URL('.', import.meta.url));
const PREFIX = 'shaperr-s';

interface Row {
  scenario: string;
  figure: string;
  value: number;
  unit: string;
  target?: string;
  note?: string;
}
const rows: Row[] = [];
const record = (row: Row) => {
  rows.push(row);
  process.stderr.write(`  ${row.scenario} · ${row.figure}: ${row.value} ${row.unit}\n`);
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const random = (low: number, high: number) => low + Math.random() * (high - low);
const exited = (daemon: Daemon) =>
  new Promise((resolve) => (daemon.child.exitCode !== null || daemon.child.signalCode !== null ? resolve(undefined) : daemon.child.once('exit', resolve)));

function scratch(name: string): { dir: string; log: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), `shaperr-soak-${name}-`));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  return { dir, log, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** What both soak daemons (log source and Plex API source) run with, besides their source. */
const SOAK_CONFIG: DaemonConfigKeys = { server: { rate: '1gbit' }, graceSeconds: 1, idleSeconds: 600 };

const writeConfig = (dir: string, topology: Topology, log: string): string => writeDaemonConfig(dir, { ...SOAK_CONFIG, netns: topology.serverNs, log });

/** Until the daemon has read the whole log (its saved position is the log's end), or the deadline. */
async function caughtUp(dir: string, log: string, deadlineMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    try {
      const state = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as { log?: { offset: number } };
      if (state.log?.offset === statSync(log).size) return true;
    } catch {
      // not written yet, or mid-rename
    }
    await sleep(50);
  }
  return false;
}

// ---- 1. kill -9 in a seek storm -------------------------------------------------------------------------

async function killDuringSeekStorm(): Promise<void> {
  const scenario = `kill -9 in a seek storm (${quick ? 3 : 50} times)`;
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: PREFIX });
  const files = scratch('kill');
  try {
    const config = writeConfig(files.dir, topology, files.log);
    // 15 clients keep playing and seek all the time; 5 more start and really stop now and then.
    const core = Array.from({ length: 15 }, (_, i) => `198.18.0.${i + 1}`);
    const churn = Array.from({ length: 5 }, (_, i) => `198.18.1.${i + 1}`);
    const session = new Map<string, number>();
    const playing = new Set<string>();
    const begin = (address: string) => {
      session.set(address, (session.get(address) ?? 0) + 1);
      playing.add(address);
      return play(address, `${address}-${session.get(address)}`);
    };
    appendFileSync(files.log, core.map(begin).join(''));
    let events = 0;
    const storm = () => {
      let text = '';
      for (let i = 0; i < 10; i++) {
        const address = core[Math.floor(Math.random() * core.length)]!;
        text += stop(address, `${address}-${session.get(address)}`) + begin(address);
        events += 2;
      }
      if (Math.random() < 0.1) {
        const address = churn[Math.floor(Math.random() * churn.length)]!;
        if (playing.has(address)) {
          text += stop(address, `${address}-${session.get(address)}`);
          playing.delete(address);
        } else text += begin(address);
        events++;
      }
      appendFileSync(files.log, text);
    };

    let orphaned = 0;
    let missing = 0;
    let wronglyDropped = 0;
    let notCaughtUp = 0;
    const coreDrop = new RegExp(`decision (release|expire) (${core.map((address) => address.replaceAll('.', '\\.')).join('|')})"`);
    const iterations = quick ? 3 : 50;
    let writer: NodeJS.Timeout | undefined;
    for (let iteration = 0; iteration <= iterations; iteration++) {
      const daemon = startDaemon(config);
      await daemon.waitFor(/shaperrd started/);
      // Settle with the storm paused: the kernel must hold exactly the clients playing.
      clearInterval(writer);
      if (!(await caughtUp(files.dir, files.log))) notCaughtUp++;
      await sleep(1600); // grace 1 s for the clients that really stopped
      const state = kernelState(topology);
      const inKernel = new Set(state.destinations.map((destination) => destination?.replace(/\/32$/, '')));
      orphaned += [...inKernel].filter((address) => !playing.has(address!)).length + Math.max(0, state.classes - state.destinations.length);
      missing += [...playing].filter((address) => !inKernel.has(address)).length;
      wronglyDropped += daemon.output.filter((line) => coreDrop.test(line)).length;
      if (iteration === iterations) {
        daemon.child.kill('SIGTERM');
        await exited(daemon);
        break;
      }
      writer = setInterval(storm, 10); // ~2,000 events/s
      await sleep(random(200, 1500));
      daemon.child.kill('SIGKILL');
      await exited(daemon);
      wronglyDropped += daemon.output.filter((line) => coreDrop.test(line)).length;
      await sleep(random(0, 500)); // the storm goes on while shaperrd is down
    }
    record({
      scenario,
      figure: 'orphaned kernel objects after settling (pipes no playing client explains), summed over restarts',
      value: orphaned,
      unit: 'objects',
      target: '0',
    });
    record({
      scenario,
      figure: 'missing kernel objects after settling (playing clients without a pipe), summed over restarts',
      value: missing,
      unit: 'pipes',
      target: '0',
    });
    record({
      scenario,
      figure: 'sessions wrongly dropped (a client that never stopped released or expired)',
      value: wronglyDropped,
      unit: 'sessions',
      target: '0',
    });
    record({
      scenario,
      figure: 'log events written',
      value: events,
      unit: 'events',
      note: `${notCaughtUp} restarts did not catch up with the log within 30 s`,
    });
  } finally {
    files.remove();
    await topology.destroy();
  }
}

// ---- 2. rotations and truncations while lines flow ---------------------------------------------------------

async function rotationsAndTruncations(): Promise<void> {
  const operations = quick ? 50 : 1000;
  const scenario = `${operations} rotations and truncations while lines flow`;
  const files = scratch('rotate');
  const tailer = new LogTailer({ path: files.log, from: 'start' });
  const seen = new Map<number, number>();
  tailer.on('line', (line) => {
    const number = Number(/^line (\d+) /.exec(line)?.[1]);
    if (Number.isInteger(number)) seen.set(number, (seen.get(number) ?? 0) + 1);
  });
  try {
    await tailer.start();
    /** Epoch of each line: a file, or a file between two truncations. */
    const epochOf: number[] = [];
    const truncatedEpochs = new Set<number>();
    /** Epochs whose file was deleted by a rotation (moved past the last generation, .5). */
    const deletedEpochs = new Set<number>();
    /** Epochs of the files in .1 … .5 (index 1 … 5); a file holds several epochs when it was truncated. */
    const generations: number[][] = [];
    let epochsInCurrentFile: number[] = [0];
    let epoch = 0;
    let next = 0;
    let rotations = 0;
    let truncations = 0;
    const write = (count: number) => {
      let text = '';
      for (let i = 0; i < count; i++) {
        epochOf[next] = epoch;
        text += `line ${next++} ${'x'.repeat(80)}\n`;
      }
      appendFileSync(files.log, text);
    };
    for (let operation = 0; operation < operations; operation++) {
      for (let burst = Math.floor(random(1, 5)); burst > 0; burst--) {
        write(Math.floor(random(5, 40)));
        await sleep(random(0, 3));
      }
      if (Math.random() < 0.6) {
        // Plex's rotation: .4 → .5 … .1 → .2, the log → .1, a new log.
        for (let generation = 4; generation >= 1; generation--) {
          if (existsSync(rotatedPath(files.log, generation))) renameSync(rotatedPath(files.log, generation), rotatedPath(files.log, generation + 1));
        }
        renameSync(files.log, rotatedPath(files.log, 1));
        writeFileSync(files.log, '');
        for (const deleted of generations[5] ?? []) deletedEpochs.add(deleted);
        generations.splice(1, 0, epochsInCurrentFile);
        generations.length = 6;
        epochsInCurrentFile = [];
        rotations++;
      } else {
        truncateSync(files.log, 0); // copytruncate-style: whatever was not read yet is gone for every reader
        truncatedEpochs.add(epoch);
        truncations++;
      }
      epoch++;
      epochsInCurrentFile.push(epoch);
      await sleep(random(0, 3));
    }
    write(100);
    const deadline = Date.now() + 10_000;
    while (!seen.has(next - 1) && Date.now() < deadline) await sleep(20);
    await sleep(500);
    let lost = 0;
    let truncatedUnread = 0;
    let deletedUnread = 0;
    let twice = 0;
    for (let number = 0; number < next; number++) {
      const count = seen.get(number) ?? 0;
      if (count > 1) twice += count - 1;
      if (count > 0) continue;
      const lineEpoch = epochOf[number]!;
      if (truncatedEpochs.has(lineEpoch)) truncatedUnread++;
      else if (deletedEpochs.has(lineEpoch)) deletedUnread++;
      else lost++;
    }
    record({
      scenario,
      figure: 'lines lost that were readable (in a file that was rotated or still there)',
      value: lost,
      unit: 'lines',
      target: '0',
      note: `${next} lines, ${rotations} rotations, ${truncations} truncations`,
    });
    record({ scenario, figure: 'lines read twice', value: twice, unit: 'lines', target: '0' });
    record({
      scenario,
      figure: 'lines no tailer can see: written just before a truncation and not read yet',
      value: truncatedUnread,
      unit: 'lines',
      note: 'a truncated file keeps no trace of them',
    });
    record({
      scenario,
      figure: 'lines in files deleted by rotation (past .5) before the tailer reached them',
      value: deletedUnread,
      unit: 'lines',
      note: 'six rotations before one wake-up: only when the writer starves the reader (here: synchronous writes, ms apart)',
    });
  } finally {
    await tailer.stop();
    files.remove();
  }
}

// ---- 3. fuzzed, spliced and 1 MB lines ------------------------------------------------------------------------

function fuzzLine(): string {
  const kind = Math.random();
  if (kind < 0.4) {
    // Random bytes: invalid UTF-8, NULs, carriage returns, no newline inside.
    const bytes = Buffer.from(Array.from({ length: Math.floor(random(1, 400)) }, () => Math.floor(random(0, 256))).filter((byte) => byte !== 0x0a));
    return bytes.toString('latin1');
  }
  // Few addresses: the clients real lines among the garbage throttle stay few, so RSS shows leaks, not state.
  const address = `198.19.0.${Math.floor(random(1, 9))}`;
  const real = Math.random() < 0.5 ? play(address, `f${Math.floor(random(0, 1e6))}`) : stop(address, `f${Math.floor(random(0, 1e6))}`);
  if (kind < 0.8) {
    // Two real lines spliced at random points, as interleaved writers would leave them.
    const other = plexLine(address, '/:/timeline?state=playing&X-Plex-Session-Identifier=spliced');
    return real.slice(0, Math.floor(random(0, real.length))) + other.slice(Math.floor(random(0, other.length))).replace(/\n$/, '');
  }
  // A real line with garbage in its address, path or query.
  const garbage = Buffer.from(Array.from({ length: 40 }, () => Math.floor(random(0x21, 0x7f)))).toString('latin1');
  return real.replace(/\n$/, '').replace(Math.random() < 0.5 ? address : 'session=', Math.random() < 0.5 ? garbage : `${garbage}[${'9'.repeat(300)}]`);
}

/** The node flags shaperrd's shebang gives it (a smaller young generation, no optimizing compiler): RSS as shipped. */
const shippedNodeFlags = (): string[] => /^#!.*?\bnode\s+(.*)$/m.exec(readFileSync(CLI, 'utf8'))?.[1]?.trim().split(/\s+/) ?? [];
const GC_HOOK = fileURLToPath(new URL('gc-on-signal.mjs', import.meta.url));
const mib = (bytes: number) => Number((bytes / 2 ** 20).toFixed(2));

/** A full GC in the daemon (see gc-on-signal.mjs), then its RSS and heap. */
interface Memory {
  rss: number;
  heapUsed: number;
}

async function memoryAfterGc(daemon: Daemon): Promise<Memory> {
  const from = daemon.output.length;
  daemon.child.kill('SIGUSR2');
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const line = daemon.output.slice(from).find((each) => each.startsWith('soak-memory '));
    if (line) {
      const { heapUsed } = JSON.parse(line.slice('soak-memory '.length)) as { heapUsed: number };
      return { rss: Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${daemon.child.pid}/status`, 'utf8'))?.[1]) * 1024, heapUsed };
    }
    await sleep(20);
  }
  throw new Error('the daemon did not report its memory after a GC');
}

/**
 * The issue's count of fuzzed lines goes into the daemon twice. The first pass sets the high-water mark
 * (V8's heap, malloc arenas); a leak keeps growing in the second. Each reading follows a full GC, so
 * garbage not yet collected does not count.
 */
async function fuzzedLines(): Promise<void> {
  const total = quick ? 5000 : 100_000;
  const megabyteLines = quick ? 3 : 100;
  const scenario = `${total.toLocaleString('en-US')} fuzzed, spliced and 1 MB lines`;
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: PREFIX });
  const files = scratch('fuzz');
  try {
    const daemon = startDaemon(writeConfig(files.dir, topology, files.log), [], [], [...shippedNodeFlags(), '--expose-gc', '--import', GC_HOOK]);
    await daemon.waitFor(/shaperrd started/);
    // Warm up with ordinary traffic, then take the baseline.
    for (let i = 0; i < 20; i++) appendFileSync(files.log, play(`198.19.9.${i + 1}`, `warm${i}`) + stop(`198.19.9.${i + 1}`, `warm${i}`));
    await caughtUp(files.dir, files.log);
    await sleep(2000);
    const readings = [await memoryAfterGc(daemon)];
    let written = 0;
    const megabyteEvery = Math.floor(total / megabyteLines);
    let finished = true;
    for (const pass of [1, 2]) {
      while (written < pass * total && daemon.child.exitCode === null) {
        let text = '';
        for (let i = 0; i < 1000 && written < pass * total; i++, written++) {
          text += written % megabyteEvery === 0 ? `${'M'.repeat(1 << 20)}\n` : `${fuzzLine()}\n`;
        }
        appendFileSync(files.log, text);
        await sleep(5);
      }
      finished &&= await caughtUp(files.dir, files.log, 120_000);
      await sleep(1000); // the last decisions' kernel changes
      if (daemon.child.exitCode === null) readings.push(await memoryAfterGc(daemon));
    }
    const crashed = daemon.child.exitCode !== null || daemon.child.signalCode !== null;
    const [before, first, second] = [0, 1, 2].map((index) => readings[index] ?? { rss: Number.NaN, heapUsed: Number.NaN }) as [Memory, Memory, Memory];
    const flags = `node ${shippedNodeFlags().join(' ')} as shipped; read after a full GC`;
    record({
      scenario,
      figure: 'crashes',
      value: crashed ? 1 : 0,
      unit: 'crashes',
      target: '0',
      note: finished ? `every line read (${written.toLocaleString('en-US')} lines in two passes)` : 'the daemon did not reach the end of the log',
    });
    record({
      scenario,
      figure: 'RSS growth over the lines (first pass, against before them)',
      value: mib(first.rss - before.rss),
      unit: 'MiB',
      target: '< 10 MB',
      note: `${mib(before.rss)} → ${mib(first.rss)} MiB; ${megabyteLines} lines of 1 MiB per pass; ${flags}`,
    });
    record({
      scenario,
      figure: 'RSS growth over a second pass of as many lines (a leak shows here)',
      value: mib(second.rss - first.rss),
      unit: 'MiB',
      note: `→ ${mib(second.rss)} MiB`,
    });
    record({
      scenario,
      figure: 'JavaScript heap in use after each pass, growth over the second one',
      value: mib(second.heapUsed - first.heapUsed),
      unit: 'MiB',
      note: `${mib(before.heapUsed)} → ${mib(first.heapUsed)} → ${mib(second.heapUsed)} MiB`,
    });
    daemon.child.kill('SIGTERM');
    await exited(daemon);
  } finally {
    files.remove();
    await topology.destroy();
  }
}

// ---- 4. event-driven repair --------------------------------------------------------------------------------

const percentile = (sorted: readonly number[], share: number) => sorted[Math.min(sorted.length - 1, Math.ceil(share * sorted.length) - 1)] ?? Number.NaN;

/**
 * shaperrd with three pipes, and someone removing them again and again: the root qdisc, the whole device
 * (deleted and added again: a new ifindex), one client's filter. A second listener stamps the
 * kernel's notification of the removal and those of the daemon's filters coming back, each when the kernel
 * wakes it; the time between is what a client goes unshaped.
 */
async function eventRepair(): Promise<void> {
  const times = quick ? 10 : 100;
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: PREFIX });
  const files = scratch('repair');
  const heard: { at: number; notification: TcNotification }[] = [];
  const monitor = TcMonitor.open({
    netns: topology.serverNs,
    onNotifications: (batch) => {
      const at = performance.now();
      for (const notification of batch) heard.push({ at, notification });
    },
  });
  const tc = TrafficControl.open({ netns: topology.serverNs });
  const clients = ['198.18.5.1', '198.18.5.2', '198.18.5.3'];
  const destination = (notification: TcNotification) =>
    notification.object === 'filter' ? notification.filter?.parameters.match?.dst?.replace(/\/32$/, '') : undefined;
  try {
    appendFileSync(files.log, clients.map((address, i) => play(address, `repair${i}`)).join(''));
    const daemon = startDaemon(writeConfig(files.dir, topology, files.log));
    await daemon.waitFor(/shaperrd started/);
    const allBack = () => kernelHasPipesFor(topology, clients);
    while (!allBack()) await sleep(20);

    /** Runs `remove` and returns ms from its notification to the last of `restored` filters being back (undefined: not within 5 s). */
    const measure = async (
      remove: () => Promise<void> | void,
      isRemoval: (notification: TcNotification) => boolean,
      restored: readonly string[],
    ): Promise<number | undefined> => {
      const from = heard.length;
      await remove();
      const deadline = performance.now() + 5000;
      while (performance.now() < deadline) {
        const since = heard.slice(from);
        const removal = since.findIndex(({ notification }) => isRemoval(notification));
        if (removal >= 0) {
          const back = since
            .slice(removal + 1)
            .filter(({ notification }) => notification.object === 'filter' && notification.action === 'new' && notification.portId !== tc.portId);
          const last = restored.map((address) => back.find(({ notification }) => destination(notification) === address)?.at);
          if (last.every((at) => at !== undefined) && allBack()) return Math.max(...(last as number[])) - since[removal]!.at;
        }
        await sleep(2);
      }
      return undefined;
    };

    const scenarios: { name: string; run: (i: number) => Promise<number | undefined> }[] = [
      {
        name: 'root deletions (tc qdisc del root)',
        run: () =>
          measure(
            () => void tc.deleteQdisc('srv0', { handle: '5a:' }),
            (notification) => notification.object === 'qdisc' && notification.action === 'del' && notification.qdisc.handle === 0x005a0000,
            clients,
          ),
      },
      {
        name: 'single-filter deletions',
        run: (i) => {
          const victim = parseClientAddress(clients[i % clients.length]!);
          const filter = tc.filters('srv0', '5a:').find((each) => each.parameters.match?.dst === `${victim.text}/32`);
          if (!filter) return Promise.resolve(undefined);
          return measure(
            () => void tc.deleteFilter('srv0', clientFilterRef(0x005a0000, victim, filter.handle & 0xfff)),
            (notification) => notification.object === 'filter' && notification.action === 'del' && destination(notification) === victim.text,
            [victim.text],
          );
        },
      },
      {
        name: 'link re-creations (ip link del + add: a new ifindex)',
        run: async () => {
          const old = tc.link('srv0', { refresh: true }).ifindex;
          const time = await measure(
            async () => {
              await topology.exec(topology.serverNs, 'ip', ['link', 'del', 'srv0']);
              await topology.exec(topology.serverNs, 'ip', ['link', 'add', 'srv0', 'type', 'veth', 'peer', 'name', 'cli0', 'netns', topology.clientNs]);
            },
            (notification) => notification.object === 'link' && notification.action === 'new' && notification.name === 'srv0' && notification.ifindex !== old,
            clients,
          );
          tc.link('srv0', { refresh: true });
          return time;
        },
      },
    ];
    for (const { name, run } of scenarios) {
      const measured: number[] = [];
      let missed = 0;
      for (let i = 0; i < times; i++) {
        const time = await run(i);
        if (time === undefined) missed++;
        else measured.push(time);
        await sleep(random(20, 60));
      }
      measured.sort((a, b) => a - b);
      const ms = (value: number) => Number(value.toFixed(1));
      const scenario = `${times} ${name}`;
      record({ scenario, figure: 'not repaired within 5 s', value: missed, unit: 'times', target: '0' });
      record({
        scenario,
        figure: 'notification → pipes back, p99',
        value: ms(percentile(measured, 0.99)),
        unit: 'ms',
        target: '< 50 ms',
        note: `median ${ms(percentile(measured, 0.5))} ms`,
      });
      record({ scenario, figure: 'notification → pipes back, max', value: ms(measured.at(-1) ?? Number.NaN), unit: 'ms', target: '< 50 ms' });
    }
    const overflows = daemon.output.filter((line) => /notifications were lost/.test(line)).length;
    record({ scenario: 'event-driven repair', figure: 'receive buffer overflows in the daemon over all of the above', value: overflows, unit: 'overflows' });
    daemon.child.kill('SIGTERM');
    await exited(daemon);
  } finally {
    monitor.close();
    tc.close();
    files.remove();
    await topology.destroy();
  }
}

// ---- 5. a burst of kernel notifications, and an overflow ---------------------------------------------------

/** shaperrd's notification socket (the one on the link and tc groups) as the kernel lists it in the namespace. */
async function notificationSocket(topology: Topology): Promise<{ queuedBytes: number; dropped: number }> {
  const table = await topology.exec(topology.serverNs, 'cat', ['/proc/net/netlink']);
  // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; groups 0x9 = RTNLGRP_LINK (bit 0) + RTNLGRP_TC (bit 3).
  const socket = table
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .find((fields) => fields[1] === '0' && fields[3] === '00000009');
  if (!socket) throw new Error('shaperrd has no socket on the link and tc groups');
  return { queuedBytes: Number(socket[4]), dropped: Number(socket[8]) };
}

/**
 * While shaperrd is stopped (SIGSTOP: a starved or swapped-out daemon), another tool flaps a link of its
 * own (an MTU change is one link notification, ~2.3 KB queued) and someone deletes shaperr's objects in
 * the middle; then shaperrd runs again and reads everything in one go.
 * 1. 10,000 notifications with every client's filter deleted among them: each deletion must be repaired.
 * 2. Flapping until the kernel drops notifications (ENOBUFS), then shaperr's root deleted — its
 *    notification is dropped too: only the full check after the overflow can notice it.
 */
async function notificationBurst(): Promise<void> {
  const burst = 10_000;
  const scenario = `a burst of ${burst.toLocaleString('en-US')} kernel notifications in one read`;
  const overflowScenario = 'notifications dropped (ENOBUFS) with the root deleted meanwhile';
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: PREFIX });
  const files = scratch('burst');
  const tc = TrafficControl.open({ netns: topology.serverNs });
  const clients = Array.from({ length: 20 }, (_, i) => `198.18.6.${i + 1}`);
  let flaps = 0;
  const flap = (count: number) => {
    let batch = '';
    for (let i = 0; i < count; i++) batch += `link set other0 mtu ${1400 + (flaps++ % 2)}\n`;
    execFileSync('ip', ['-n', topology.serverNs, '-batch', '-'], { input: batch });
  };
  try {
    await topology.exec(topology.serverNs, 'ip', ['link', 'add', 'other0', 'type', 'veth', 'peer', 'name', 'other1']);
    appendFileSync(files.log, clients.map((address, i) => play(address, `burst${i}`)).join(''));
    const daemon = startDaemon(writeConfig(files.dir, topology, files.log));
    await daemon.waitFor(/shaperrd started/);
    const allBack = () => kernelHasPipesFor(topology, clients);
    const missingAfter = async (ms: number) => {
      const deadline = Date.now() + ms;
      while (!allBack() && Date.now() < deadline) await sleep(20);
      return clients.length - kernelState(topology).destinations.length;
    };
    if ((await missingAfter(20_000)) > 0) throw new Error('the pipes never came up');

    // 1. The burst, every client's filter deleted in its middle.
    daemon.child.kill('SIGSTOP');
    flap(burst / 2);
    for (const address of clients) {
      const victim = parseClientAddress(address);
      const filter = tc.filters('srv0', '5a:').find((each) => each.parameters.match?.dst === `${victim.text}/32`);
      if (filter) tc.deleteFilter('srv0', clientFilterRef(0x005a0000, victim, filter.handle & 0xfff));
    }
    flap(burst / 2 - clients.length);
    const queued = await notificationSocket(topology);
    daemon.child.kill('SIGCONT');
    const lost = await missingAfter(10_000);
    record({
      scenario,
      figure: 'filter deletions in the burst not repaired (decisions lost)',
      value: lost,
      unit: 'pipes',
      target: '0',
      note: `${clients.length} clients' filters deleted among ${burst.toLocaleString('en-US')} notifications of another tool's link; shaperrd stopped (SIGSTOP) meanwhile`,
    });
    record({
      scenario,
      figure: 'notifications the kernel dropped during the burst',
      value: queued.dropped,
      unit: 'notifications',
      target: '0',
      note: `${mib(queued.queuedBytes)} MiB queued for shaperrd's socket: its receive buffer holds the burst`,
    });

    // 2. An overflow, and the root deleted while notifications are being dropped.
    const overflowLines = () => daemon.output.filter((line) => /notifications were lost/.test(line)).length;
    const reportedBefore = overflowLines();
    daemon.child.kill('SIGSTOP');
    let socket = await notificationSocket(topology);
    const droppedBefore = socket.dropped;
    const flapsBefore = flaps;
    while (socket.dropped === droppedBefore && flaps - flapsBefore < 200_000) {
      flap(5000);
      socket = await notificationSocket(topology);
    }
    tc.deleteQdisc('srv0', { handle: '5a:' });
    const afterRootDeleted = await notificationSocket(topology);
    daemon.child.kill('SIGCONT');
    const resumed = Date.now();
    const missing = await missingAfter(15_000);
    const reportedSince = () => overflowLines() - reportedBefore;
    // The pipes can be back before the daemon's line about the overflow has come through its stdout to us.
    while (reportedSince() === 0 && Date.now() - resumed < 15_000) await sleep(20);
    const reported = reportedSince();
    record({
      scenario: overflowScenario,
      figure: "notifications the kernel dropped for shaperrd (its socket's drop count)",
      value: afterRootDeleted.dropped - droppedBefore,
      unit: 'notifications',
      note: `after ${(flaps - flapsBefore).toLocaleString('en-US')} link changes (${mib(socket.queuedBytes)} MiB queued); the root's deletion among the dropped: ${afterRootDeleted.dropped > socket.dropped ? 'yes' : 'no'}`,
    });
    record({ scenario: overflowScenario, figure: 'overflows shaperrd reported (ENOBUFS seen)', value: reported, unit: 'overflows', target: '≥ 1' });
    record({
      scenario: overflowScenario,
      figure: 'pipes missing 15 s later (the full check after the overflow puts the root back)',
      value: missing,
      unit: 'pipes',
      target: '0',
      note: `${clients.length} pipes`,
    });
    daemon.child.kill('SIGTERM');
    await exited(daemon);
  } finally {
    tc.close();
    files.remove();
    await topology.destroy();
  }
}

// ---- 6. websocket drops and Plex restarts (the Plex API source) ---------------------------------------------

/**
 * shaperrd following the Plex test server's API (no log). 100 times, at random, the websocket is cut
 * without a close frame, or Plex restarts (sockets closed, every session gone, session keys start over
 * at 1 — the clients that keep playing come back under new keys, most of them another client's old key —
 * and nothing listens for up to half a second). While shaperrd is cut off a client stops and another
 * starts, unannounced; once it is back, one more starts or stops with a notification. After each round
 * settles the kernel must hold a pipe for exactly the clients Plex lists: none lost, none stuck; and a
 * client that kept playing is never released.
 */
async function plexDropsAndRestarts(): Promise<void> {
  const rounds = quick ? 6 : 100;
  const scenario = `${rounds} websocket drops and Plex restarts (Plex API source)`;
  const topology = await createTopology({ clients: 1, ipv6: false, prefix: PREFIX });
  const files = scratch('plex');
  const server = await PlexTestServer.start({ token: 'soak-token' });
  const pool = Array.from({ length: 10 }, (_, i) => `198.18.7.${i + 1}`);
  const keyOf = new Map<string, string>(); // playing client → its session key now
  const begin = (address: string, announce: boolean) => {
    const input = { player: { address }, session: { location: 'wan' as const } };
    keyOf.set(address, (announce ? server.play(input) : server.addSession(input)).sessionKey);
  };
  const end = (address: string, announce: boolean) => {
    const key = keyOf.get(address)!;
    if (announce) server.setState(key, 'stopped');
    else server.removeSession(key);
    keyOf.delete(address);
  };
  const pick = <T>(items: readonly T[]): T | undefined => items[Math.floor(Math.random() * items.length)];
  const idle = () => pool.filter((address) => !keyOf.has(address));
  try {
    const config = writeDaemonConfig(
      files.dir,
      { ...SOAK_CONFIG, netns: topology.serverNs, source: 'plex', plex: { url: server.url, token: 'soak-token' } },
      { mode: 0o600 },
    );
    for (const address of pool.slice(0, 6)) begin(address, false);
    const daemon = startDaemon(config);
    await daemon.waitFor(/listening to Plex notifications/);
    const inKernel = () => new Set(kernelState(topology).destinations.map((destination) => destination?.replace(/\/32$/, '')));
    /** Waits until the kernel holds exactly the playing clients (or 10 s); returns [lost, stuck]. */
    const settle = async (): Promise<[number, number]> => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const pipes = inKernel();
        const lost = [...keyOf.keys()].filter((address) => !pipes.has(address)).length;
        const stuck = [...pipes].filter((address) => !keyOf.has(address!)).length;
        if ((lost === 0 && stuck === 0) || Date.now() > deadline) return [lost, stuck];
        await sleep(50);
      }
    };
    let [lost, stuck] = await settle();
    let drops = 0;
    let restarts = 0;
    let wronglyReleased = 0;
    let notReconnected = 0;
    for (let round = 0; round < rounds; round++) {
      const from = daemon.output.length;
      const connections = server.connections;
      const kept = new Set(keyOf.keys());
      if (Math.random() < 0.5) {
        server.dropSockets();
        drops++;
      } else {
        server.restart();
        await server.down();
        // The clients that keep playing come back first, in another order: most keys now name another client.
        const playing = [...keyOf.keys()].sort(() => Math.random() - 0.5);
        keyOf.clear();
        for (const address of playing) begin(address, false);
        await sleep(random(0, 500));
        await server.listen();
        restarts++;
      }
      // Unannounced while shaperrd is cut off: one client stops, another starts.
      const stopping = pick([...keyOf.keys()]);
      if (stopping) {
        end(stopping, false);
        kept.delete(stopping);
      }
      const starting = pick(idle());
      if (starting) begin(starting, false);
      const deadline = Date.now() + 15_000;
      while ((server.connections === connections || server.openSockets === 0) && Date.now() < deadline) await sleep(20);
      if (server.openSockets === 0) notReconnected++;
      // Announced once it is back.
      if (Math.random() < 0.5) {
        const next = pick(idle());
        if (next) begin(next, true);
      } else {
        const leaving = pick([...keyOf.keys()]);
        if (leaving) {
          end(leaving, true);
          kept.delete(leaving);
        }
      }
      const [roundLost, roundStuck] = await settle();
      lost += roundLost;
      stuck += roundStuck;
      const released = new RegExp(`decision (release|expire) (${[...kept].map((address) => address.replaceAll('.', '\\.')).join('|') || '-'})"`);
      wronglyReleased += daemon.output.slice(from).filter((line) => released.test(line)).length;
    }
    record({
      scenario,
      figure: 'sessions lost (a client Plex lists, without a pipe after settling), summed over rounds',
      value: lost,
      unit: 'sessions',
      target: '0',
      note: `${drops} websocket drops, ${restarts} Plex restarts; 10 clients, 6 playing at the start`,
    });
    record({
      scenario,
      figure: 'sessions stuck (a pipe for a client Plex no longer lists, after settling), summed over rounds',
      value: stuck,
      unit: 'sessions',
      target: '0',
      note: 'a client that stopped while shaperrd was cut off is released on reconnect',
    });
    record({
      scenario,
      figure: 'clients that kept playing but were released',
      value: wronglyReleased,
      unit: 'clients',
      target: '0',
      note: `${notReconnected} rounds without a reconnect within 15 s`,
    });
    daemon.child.kill('SIGTERM');
    await exited(daemon);
  } finally {
    await server.close();
    files.remove();
    await topology.destroy();
  }
}

// ---- report --------------------------------------------------------------------------------------------

function machine(): Record<string, string> {
  return {
    date: new Date().toISOString(),
    cpu: cpus()[0]?.model ?? 'unknown CPU',
    cores: String(cpus().length),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    node: process.version,
    mode: quick ? 'quick' : 'full',
  };
}

const cell = (text: string) => text.replaceAll('|', '\\|');

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the soak needs root (network namespaces)');
  execFileSync('ip', ['-V']); // iproute2 builds the namespaces
  const about = machine();
  const started = performance.now();
  const durations: string[] = [];
  for (const [name, run] of [
    ['kill -9 in a seek storm', killDuringSeekStorm],
    ['rotations and truncations', rotationsAndTruncations],
    ['fuzzed lines', fuzzedLines],
    ['event-driven repair', eventRepair],
    ['notification burst', notificationBurst],
    ['plex drops and restarts', plexDropsAndRestarts],
  ] as const) {
    if (only && !name.includes(only)) continue;
    process.stderr.write(`${name}…\n`);
    const scenarioStarted = performance.now();
    await run();
    durations.push(`${name} ${Math.round((performance.now() - scenarioStarted) / 1000)} s`);
  }
  about.duration = `${Math.round((performance.now() - started) / 1000)} s (${durations.join(', ')})`;
  const table = [
    `# shaperr soak (${about.mode})`,
    '',
    Object.entries(about)
      .map(([key, value]) => `- ${key}: ${value}`)
      .join('\n'),
    '',
    '| scenario | figure | result | target | note |',
    '| --- | --- | ---: | --- | --- |',
    ...rows.map((row) => `| ${cell(row.scenario)} | ${cell(row.figure)} | ${row.value} ${row.unit} | ${row.target ?? ''} | ${cell(row.note ?? '')} |`),
    '',
  ].join('\n');
  process.stdout.write(`${table}\n`);
  const out = join(HERE, 'results');
  mkdirSync(out, { recursive: true });
  const suffix = `${quick ? '-quick' : ''}${only ? `-${only}` : ''}`;
  writeFileSync(join(out, `soak${suffix}.md`), table);
  writeFileSync(join(out, `soak${suffix}.json`), `${JSON.stringify({ machine: about, rows }, null, 2)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`soak failed: ${(error as Error).stack ?? error}\n`);
  process.exit(1);
});
