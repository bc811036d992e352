/** shaperrd as a child process, realistic Plex log lines, and polling: shared by the daemon tests. */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrafficControl } from '../../lib/tc/traffic-control.js';
import { pino } from 'pino';
import { stringify } from 'yaml';
import type { z } from 'zod';
import { type configSchema, validateConfig } from '../../daemon/config.js';
import { Shaperrd } from '../../daemon/shaperrd.js';
import { createTopology, ip, type Topology } from '../../daemon/support/netns.js';

export const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

let stamp = Date.UTC(2026, 8, 26, 20, 0, 0);
export const plexLine = (address: string, path: string): string => {
  stamp += 7;
  return plexLineAt(new Date(stamp), address, path);
};

/** A request line stamped with `at` in this process's local time, as Plex writes it. */
export function plexLineAt(at: Date, address: string, path: string): string {
  const month = at.toLocaleString('en-US', { month: 'short' });
  const time = at.toTimeString().slice(0, 8);
  const day = String(at.getDate()).padStart(2, '0');
  return `${month} ${day}, ${at.getFullYear()} ${time}.${String(at.getMilliseconds()).padStart(3, '0')} [140562] DEBUG - Request: [${address}:51000 (WAN)] GET ${path} (3 live) #1 TLS GZIP Signed-in Token (remi)\n`;
}
export const play = (address: string, session: string) => plexLine(address, `/video/:/transcode/universal/start.m3u8?session=${session}&X-Plex-Token=tok`);
export const stop = (address: string, session: string) => plexLine(address, `/:/timeline?state=stopped&X-Plex-Session-Identifier=${session}`);

export interface Daemon {
  child: ChildProcess;
  output: string[];
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
}

/**
 * `via` runs the daemon through a wrapper, e.g. `ip netns exec … setpriv …`; `args` follow the config (e.g.
 * --dry-run); `nodeFlags` go to node before the script (e.g. the ones the CLI's shebang gives it).
 */
export function startDaemon(config: string, via: string[] = [], args: string[] = [], nodeFlags: string[] = []): Daemon {
  const command = [...via, process.execPath, ...nodeFlags, CLI, '--config', config, ...args];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (line: string) => void }> = [];
  const onData = (data: Buffer) => {
    for (const line of data.toString().split('\n').filter(Boolean)) {
      output.push(line);
      for (const waiter of waiters.filter((w) => w.pattern.test(line))) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  return {
    child,
    output,
    waitFor: (pattern, timeoutMs = 30_000) =>
      new Promise((resolve, reject) => {
        const seen = output.find((line) => pattern.test(line));
        if (seen) return resolve(seen);
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; output:\n${output.slice(-10).join('\n')}`)), timeoutMs);
        waiters.push({
          pattern,
          resolve: (line) => {
            clearTimeout(timer);
            resolve(line);
          },
        });
      }),
  };
}

/** The client classes (below shaperr's server class) on srv0, in class-handle order: rate and ceil in bits/s. */
export function kernelClientClasses(topology: Topology): { rate: number; ceil: number }[] {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    return tc
      .classes('srv0')
      .filter((tcClass) => tcClass.parent === 0x005a0001)
      .sort((a, b) => a.handle - b.handle)
      .map(({ parameters: { rate, ceil } }) => ({ rate, ceil }));
  } finally {
    tc.close();
  }
}

/** Whether srv0 has a pipe (a class and a filter) for exactly these clients and no other. */
export function kernelHasPipesFor(topology: Topology, clients: readonly string[]): boolean {
  const state = kernelState(topology);
  return (
    state.classes === clients.length &&
    state.destinations.join() ===
      clients
        .map((address) => `${address}/32`)
        .sort()
        .join()
  );
}

export function kernelState(topology: Topology) {
  const tc = TrafficControl.open({ netns: topology.serverNs });
  try {
    const classes = tc.classes('srv0').filter((c) => c.parent === 0x005a0001);
    const filters = tc.filters('srv0', '5a:').filter((f) => f.parameters.classid !== undefined);
    return { classes: classes.length, destinations: filters.map((f) => f.parameters.match?.dst).sort() };
  } finally {
    tc.close();
  }
}

/** Deletes the server's veth (its peer in the client namespace goes with it): the device is gone. */
export async function deleteServerLink(topology: Topology): Promise<void> {
  await ip('-n', topology.serverNs, 'link', 'del', 'srv0');
}

/** Makes the server's veth again after deleteServerLink: the same name, a new device (a new ifindex). */
export async function addServerLink(topology: Topology): Promise<void> {
  await ip('-n', topology.serverNs, 'link', 'add', 'srv0', 'type', 'veth', 'peer', 'name', 'cli0', 'netns', topology.clientNs);
  await ip('-n', topology.serverNs, 'link', 'set', 'srv0', 'up');
}

// Deadlines (as in waitFor), not timings: generous, so the emulated stock-kernel lane passes too.
export const until = async (check: () => boolean, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

/** A temporary directory with an empty Plex log in it, removed at the end of the test. */
export function logDir(t: { teardown(fn: () => unknown): void }, prefix: string): { dir: string; log: string } {
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  return { dir, log };
}

/** Config keys as written in shaperr.yaml (before validation); a key set to undefined is left out. */
export type DaemonConfigKeys = Partial<z.input<typeof configSchema>>;

/**
 * A shaperrd config for the tests and benchmarks: srv0, server 100 Mbit/s, 2 Mbit/s pipes with bfifo
 * leaves (this kernel has no sfq), the state file in `dir`, then the caller's keys over these (`netns`,
 * `log`…; `leaf: undefined` leaves shaperrd's own default).
 */
export function daemonConfig(dir: string, keys: DaemonConfigKeys = {}): DaemonConfigKeys {
  return { device: 'srv0', server: { rate: '100mbit' }, client: { rate: '2mbit' }, leaf: 'bfifo', stateFile: join(dir, 'state.json'), ...keys };
}

/**
 * daemonConfig written as YAML to `dir`/`name`.yaml (again on each call: a reload rereads it); `mode` for
 * a new file, e.g. 0o600 for one holding a token. Returns its path.
 */
export function writeDaemonConfig(dir: string, keys: DaemonConfigKeys = {}, { name = 'shaperr', mode }: { name?: string; mode?: number } = {}): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(path, stringify(daemonConfig(dir, keys)), mode === undefined ? {} : { mode });
  return path;
}

/** One client topology and an in-process shaperrd with its status server on a free 127.0.0.1 port. */
export async function daemonWithStatusPage(t: { teardown(fn: () => unknown): void }, limits: { server: string; client: string; token: string }) {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-status');
  const config = daemonConfig(dir, {
    netns: topology.serverNs,
    server: { rate: limits.server },
    client: { rate: limits.client },
    log,
    status: { listen: '127.0.0.1:0', token: limits.token },
  });
  const daemon = new Shaperrd({ config: validateConfig(config), logger: pino({ level: 'silent' }) });
  await daemon.start();
  t.teardown(() => daemon.stop());
  return { topology, log, daemon };
}
