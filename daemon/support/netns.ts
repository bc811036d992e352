/**
 * Throwaway network namespaces, for the demo, the tests and the benchmarks: created with `ip netns add`,
 * named `<prefix><pid>-<random>-<role>` so leftovers of a killed run can be told apart, and removed on
 * exit. Nothing here touches the host's own interfaces.
 *
 * It lives beside the daemon, not in lib (the library never spawns a process; this runs `ip`), not in
 * test/ (the demo ships in the package, which must not import tests) and not in demo/ (tests and
 * benchmarks are not the demo).
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
const created = new Set<string>();
const NETNS_DIR = '/var/run/netns';
/** The tests' prefix; the demo and the benchmarks pass their own. */
const TEST_PREFIX = 'shaperr-t';

export async function ip(...args: string[]): Promise<string> {
  const { stdout } = await run('ip', args);
  return stdout;
}

/** Runs a command inside a namespace and returns its stdout. */
export async function inNetns(netns: string, command: string, ...args: string[]): Promise<string> {
  const { stdout } = await run('ip', ['netns', 'exec', netns, command, ...args], { maxBuffer: 64 << 20 });
  return stdout;
}

export const hasCommand = (command: string, versionFlag = '--version'): boolean => {
  try {
    execFileSync(command, [versionFlag], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** Whether this process may create namespaces (root); tests skip with this reason otherwise. */
export const netnsUnavailable = (): string | false => (process.getuid?.() === 0 ? false : 'needs root to create network namespaces');

function removeNetns(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
  created.delete(name);
}

export function removeAllNamespaces(): void {
  for (const name of [...created]) removeNetns(name);
}

process.on('exit', removeAllNamespaces);

/** Namespaces created by this process that still exist. */
export function liveNamespaces(): string[] {
  return [...created];
}

/** `prefix` is an option, not a second string: role and prefix cannot be swapped unnoticed. */
export async function createNetns(role: string, { prefix = TEST_PREFIX }: { prefix?: string } = {}): Promise<string> {
  const name = `${prefix}${process.pid}-${randomBytes(3).toString('hex')}-${role}`;
  await ip('netns', 'add', name);
  created.add(name);
  await ip('-n', name, 'link', 'set', 'lo', 'up');
  return name;
}

export async function deleteNetns(name: string): Promise<void> {
  removeNetns(name);
}

/** Removes namespaces with this prefix whose creating process is gone; returns their names. */
export function cleanupStaleNamespaces(prefix = TEST_PREFIX): string[] {
  if (!existsSync(NETNS_DIR)) return [];
  const removed: string[] = [];
  for (const name of readdirSync(NETNS_DIR)) {
    if (!name.startsWith(prefix)) continue;
    const pid = /^(\d+)-/.exec(name.slice(prefix.length))?.[1];
    if (pid && !existsSync(`/proc/${pid}`)) {
      removeNetns(name);
      removed.push(name);
    }
  }
  return removed;
}

export interface Pair {
  serverNs: string;
  clientNs: string;
  destroy(): Promise<void>;
}

/**
 * A "server" and a "clients" namespace joined by a veth pair (srv0 ↔ cli0), with the given addresses.
 * Offloads are off by default: HTB measures what it sends, and 64 KB GSO super-packets make short
 * measurements lumpy.
 */
export async function createPair(
  prefix: string,
  { server, clients, disableOffloads = true }: { server: string[]; clients: string[]; disableOffloads?: boolean },
): Promise<Pair> {
  cleanupStaleNamespaces(prefix);
  const serverNs = await createNetns('srv', { prefix });
  const clientNs = await createNetns('cli', { prefix });
  const destroy = async () => {
    removeNetns(serverNs);
    removeNetns(clientNs);
  };
  try {
    await ip('-n', serverNs, 'link', 'add', 'srv0', 'type', 'veth', 'peer', 'name', 'cli0', 'netns', clientNs);
    const add = async (netns: string, device: string, cidr: string) =>
      ip('-n', netns, 'addr', 'add', cidr, 'dev', device, ...(cidr.includes(':') ? ['nodad'] : []));
    for (const cidr of server) await add(serverNs, 'srv0', cidr);
    for (const cidr of clients) await add(clientNs, 'cli0', cidr);
    await ip('-n', serverNs, 'link', 'set', 'srv0', 'up');
    await ip('-n', clientNs, 'link', 'set', 'cli0', 'up');
    if (disableOffloads && hasCommand('ethtool')) {
      await inNetns(serverNs, 'ethtool', '-K', 'srv0', 'tso', 'off', 'gso', 'off', 'gro', 'off');
      await inNetns(clientNs, 'ethtool', '-K', 'cli0', 'tso', 'off', 'gso', 'off', 'gro', 'off');
    }
    return { serverNs, clientNs, destroy };
  } catch (error) {
    await destroy();
    throw error;
  }
}

export interface TopologyOptions {
  clients?: number;
  /** Give every end an IPv6 address as well (default true). */
  ipv6?: boolean;
  /** MTU of both veth ends (default: the kernel's 1500). */
  mtu?: number;
  /** Turn TSO/GSO/GRO off on both ends when ethtool exists (default true): HTB is more precise without 64 KB super-packets. */
  disableOffloads?: boolean;
  /** Namespace name prefix (default `shaperr-t`); the benchmarks use their own. */
  prefix?: string;
}

/**
 * The tests' and benchmarks' topology: a pair (above) with server 10.200.0.1/16 and fd00:5a::1/64, and
 * client N at 10.200.1.N/16 and fd00:5a::1:N/64, all on cli0.
 */
export interface Topology {
  serverNs: string;
  clientNs: string;
  serverDevice: 'srv0';
  serverIfindex: number;
  serverAddress: string;
  serverAddress6: string;
  clientAddresses: string[];
  /** Empty when created with ipv6: false. */
  clientAddresses6: string[];
  /** Whether offloads were really turned off (false when asked not to, or without ethtool). */
  offloadsDisabled: boolean;
  /** Runs a command inside one of the topology's namespaces and returns its stdout. */
  exec(netns: string, command: string, args: string[]): Promise<string>;
  destroy(): Promise<void>;
}

/** Also removes its namespaces on SIGINT, SIGTERM and SIGHUP (see installSignalSafetyNet). */
export async function createTopology({ clients = 2, ipv6 = true, mtu, disableOffloads = true, prefix = TEST_PREFIX }: TopologyOptions = {}): Promise<Topology> {
  installSignalSafetyNet();
  const clientAddresses = Array.from({ length: clients }, (_, i) => `10.200.1.${i + 1}`);
  const clientAddresses6 = ipv6 ? Array.from({ length: clients }, (_, i) => `fd00:5a::1:${i + 1}`) : [];
  const offloadsDisabled = disableOffloads && hasCommand('ethtool');
  const pair = await createPair(prefix, {
    server: ['10.200.0.1/16', ...(ipv6 ? ['fd00:5a::1/64'] : [])],
    clients: [...clientAddresses.map((a) => `${a}/16`), ...clientAddresses6.map((a) => `${a}/64`)],
    disableOffloads: offloadsDisabled,
  });
  try {
    if (mtu !== undefined) {
      await ip('-n', pair.serverNs, 'link', 'set', 'srv0', 'mtu', String(mtu));
      await ip('-n', pair.clientNs, 'link', 'set', 'cli0', 'mtu', String(mtu));
    }
    const [link] = JSON.parse(await ip('-n', pair.serverNs, '-j', 'link', 'show', 'dev', 'srv0')) as { ifindex: number }[];
    if (!link) throw new Error(`srv0 missing in ${pair.serverNs}`);
    return {
      ...pair,
      serverDevice: 'srv0',
      serverIfindex: link.ifindex,
      serverAddress: '10.200.0.1',
      serverAddress6: ipv6 ? 'fd00:5a::1' : '',
      clientAddresses,
      clientAddresses6,
      offloadsDisabled,
      exec: async (netns, command, args) => {
        if (netns !== pair.serverNs && netns !== pair.clientNs) throw new Error(`${netns} is not part of this topology`);
        return inNetns(netns, command, ...args);
      },
    };
  } catch (error) {
    await pair.destroy();
    throw error;
  }
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let safetyNetInstalled = false;

/**
 * Cleanup on 'exit' is skipped by a fatal signal. On a signal: remove our namespaces, step aside and
 * re-raise, so the default action (or another handler, e.g. tap's signal-exit, which stays passive while
 * other listeners exist) ends the process as it would have. The demo handles its signals itself.
 */
function installSignalSafetyNet(): void {
  if (safetyNetInstalled) return;
  safetyNetInstalled = true;
  const onSignal = (signal: NodeJS.Signals) => {
    removeAllNamespaces();
    for (const each of SIGNALS) process.removeListener(each, onSignal);
    process.kill(process.pid, signal);
  };
  for (const signal of SIGNALS) process.on(signal, onSignal);
}
