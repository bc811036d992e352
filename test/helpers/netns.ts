/**
 * Test topologies on top of the shared sandbox: a server namespace and one clients namespace joined by
 * a veth pair (srv0 ↔ cli0). Server 10.200.0.1/16 and fd00:5a::1/64; client N is 10.200.1.N/16 and
 * fd00:5a::1:N/64, all on cli0. Namespaces are named shaperr-t<pid>-<random>-<role> and removed on
 * destroy(), on exit and on SIGINT/SIGTERM/SIGHUP; cleanupStaleNamespaces() removes those of dead runs.
 */
import { existsSync, readdirSync } from 'node:fs';
import {
  cleanupStaleNamespaces as cleanupSandboxNamespaces,
  createNetns as createSandboxNetns,
  createPair,
  hasCommand,
  inNetns,
  ip,
  removeAllNamespaces,
} from '../../daemon/support/netns.js';

export { deleteNetns, inNetns, ip } from '../../daemon/support/netns.js';

const PREFIX = 'shaperr-t';
const NETNS_DIR = '/var/run/netns';

export const createNetns = (role: string): Promise<string> => createSandboxNetns(PREFIX, role);

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

export const ethtoolAvailable = (): boolean => hasCommand('ethtool');

export async function createTopology({ clients = 2, ipv6 = true, mtu, disableOffloads = true, prefix = PREFIX }: TopologyOptions = {}): Promise<Topology> {
  installSignalSafetyNet();
  const clientAddresses = Array.from({ length: clients }, (_, i) => `10.200.1.${i + 1}`);
  const clientAddresses6 = ipv6 ? Array.from({ length: clients }, (_, i) => `fd00:5a::1:${i + 1}`) : [];
  const offloadsDisabled = disableOffloads && ethtoolAvailable();
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

/** Removes namespaces with this prefix left by runs whose process is gone; returns their names. */
export async function cleanupStaleNamespaces(prefix = PREFIX): Promise<string[]> {
  const before = listNamespaces(prefix);
  cleanupSandboxNamespaces(prefix);
  const after = new Set(listNamespaces(prefix));
  return before.filter((name) => !after.has(name));
}

const listNamespaces = (prefix: string): string[] => (existsSync(NETNS_DIR) ? readdirSync(NETNS_DIR).filter((name) => name.startsWith(prefix)) : []);

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let safetyNetInstalled = false;

/**
 * The sandbox already cleans up on 'exit', which a fatal signal skips. On a signal: remove our
 * namespaces, step aside and re-raise, so the default action (or another handler, e.g. tap's
 * signal-exit, which stays passive while other listeners exist) ends the process as it would have.
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

/** Whether this process may create namespaces (root); tests skip with this reason otherwise. */
export const netnsUnavailable = (): string | false => (process.getuid?.() === 0 ? false : 'needs root to create network namespaces');
