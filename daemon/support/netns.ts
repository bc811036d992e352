/**
 * Throwaway network namespaces (for the demo and the tests): created with `ip netns add`, named with the
 * creating pid so leftovers of a killed run can be told apart, and removed on exit — also on SIGINT,
 * SIGTERM or a crash. Nothing here touches the host's own interfaces.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
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

export function removeAllNamespaces(): void {
  for (const name of [...created]) removeNetns(name);
}

process.on('exit', removeAllNamespaces);

/** Removes namespaces with this prefix whose creating process is gone. */
export function cleanupStaleNamespaces(prefix: string): void {
  if (!existsSync('/var/run/netns')) return;
  for (const name of readdirSync('/var/run/netns')) {
    if (!name.startsWith(prefix)) continue;
    const pid = /^(\d+)-/.exec(name.slice(prefix.length))?.[1];
    if (pid && !existsSync(`/proc/${pid}`)) removeNetns(name);
  }
}

export async function createNetns(prefix: string, role: string): Promise<string> {
  const name = `${prefix}${process.pid}-${randomBytes(3).toString('hex')}-${role}`;
  await ip('netns', 'add', name);
  created.add(name);
  await ip('-n', name, 'link', 'set', 'lo', 'up');
  return name;
}

export async function deleteNetns(name: string): Promise<void> {
  removeNetns(name);
}

/** Namespaces created by this process that still exist. */
export function liveNamespaces(): string[] {
  return [...created];
}

export const hasCommand = (command: string, versionFlag = '--version'): boolean => {
  try {
    execFileSync(command, [versionFlag], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

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
  const serverNs = await createNetns(prefix, 'srv');
  const clientNs = await createNetns(prefix, 'cli');
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
