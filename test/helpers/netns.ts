/**
 * Throwaway network namespaces for tests: a "server" namespace and a "clients" namespace joined by a veth
 * pair (srv0 ↔ cli0), every client address on cli0. Names carry the creating pid, so namespaces left by a
 * killed run can be told apart and removed; everything this process created is removed on exit.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PREFIX = 'shaperr-t';
const created = new Set<string>();

export async function ip(...args: string[]): Promise<string> {
  const { stdout } = await run('ip', args);
  return stdout;
}

/** Runs a command inside a namespace and returns its stdout. */
export async function inNetns(netns: string, command: string, ...args: string[]): Promise<string> {
  const { stdout } = await run('ip', ['netns', 'exec', netns, command, ...args], { maxBuffer: 64 << 20 });
  return stdout;
}

function removeNetns(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
  created.delete(name);
}

process.on('exit', () => {
  for (const name of [...created]) removeNetns(name);
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const name of [...created]) removeNetns(name);
    process.exit(130);
  });
}

/** Removes namespaces of earlier runs whose creating process is gone. */
export function cleanupStaleNamespaces(): void {
  if (!existsSync('/var/run/netns')) return;
  for (const name of readdirSync('/var/run/netns')) {
    const pid = /^shaperr-t(\d+)-/.exec(name)?.[1];
    if (pid && !existsSync(`/proc/${pid}`)) removeNetns(name);
  }
}

export async function createNetns(role: string): Promise<string> {
  const name = `${PREFIX}${process.pid}-${randomBytes(3).toString('hex')}-${role}`;
  await ip('netns', 'add', name);
  created.add(name);
  await ip('-n', name, 'link', 'set', 'lo', 'up');
  return name;
}

export async function deleteNetns(name: string): Promise<void> {
  removeNetns(name);
}

export interface Topology {
  serverNs: string;
  clientNs: string;
  serverDevice: 'srv0';
  serverAddress: string;
  serverAddress6: string;
  clientAddresses: string[];
  clientAddresses6: string[];
  destroy(): Promise<void>;
}

export const hasEthtool = (): boolean => {
  try {
    execFileSync('ethtool', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/**
 * Two namespaces joined by a veth. Offloads are off by default: HTB measures what it sends, and 64 KB
 * GSO super-packets make short measurements lumpy.
 */
export async function createTopology({ clients = 2, disableOffloads = true } = {}): Promise<Topology> {
  cleanupStaleNamespaces();
  const serverNs = await createNetns('srv');
  const clientNs = await createNetns('cli');
  try {
    await ip('-n', serverNs, 'link', 'add', 'srv0', 'type', 'veth', 'peer', 'name', 'cli0', 'netns', clientNs);
    await ip('-n', serverNs, 'addr', 'add', '10.200.0.1/16', 'dev', 'srv0');
    await ip('-n', serverNs, 'addr', 'add', 'fd00:5a::1/64', 'dev', 'srv0', 'nodad');
    const clientAddresses: string[] = [];
    const clientAddresses6: string[] = [];
    for (let n = 1; n <= clients; n++) {
      clientAddresses.push(`10.200.1.${n}`);
      clientAddresses6.push(`fd00:5a::1:${n}`);
      await ip('-n', clientNs, 'addr', 'add', `10.200.1.${n}/16`, 'dev', 'cli0');
      await ip('-n', clientNs, 'addr', 'add', `fd00:5a::1:${n}/64`, 'dev', 'cli0', 'nodad');
    }
    await ip('-n', serverNs, 'link', 'set', 'srv0', 'up');
    await ip('-n', clientNs, 'link', 'set', 'cli0', 'up');
    if (disableOffloads && hasEthtool()) {
      await inNetns(serverNs, 'ethtool', '-K', 'srv0', 'tso', 'off', 'gso', 'off', 'gro', 'off');
      await inNetns(clientNs, 'ethtool', '-K', 'cli0', 'tso', 'off', 'gso', 'off', 'gro', 'off');
    }
    return {
      serverNs,
      clientNs,
      serverDevice: 'srv0',
      serverAddress: '10.200.0.1',
      serverAddress6: 'fd00:5a::1',
      clientAddresses,
      clientAddresses6,
      destroy: async () => {
        removeNetns(serverNs);
        removeNetns(clientNs);
      },
    };
  } catch (error) {
    removeNetns(serverNs);
    removeNetns(clientNs);
    throw error;
  }
}

/** Whether this process may create namespaces (root); tests skip with this reason otherwise. */
export const netnsUnavailable = (): string | false => (process.getuid?.() === 0 ? false : 'needs root to create network namespaces');
