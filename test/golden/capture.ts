/**
 * The reference side of the golden tests: what iproute2's `tc` actually sends. Runs tc under strace in a
 * throwaway netns and takes the hex dump of every netlink request it writes (the request is sent even
 * when the kernel then refuses it, e.g. sfq on a kernel without sch_sfq).
 */
import { spawnSync } from 'node:child_process';
import { createNetns, deleteNetns, ip } from '../../daemon/support/netns.js';

const TC_REQUEST_TYPES = new Set([36, 37, 38, 40, 41, 42, 44, 45, 46]);
export const GOLDEN_DEVICE = 'gold0';

export function toolsAvailable(): string | false {
  if (process.getuid?.() !== 0) return 'needs root to create a network namespace';
  for (const tool of ['tc', 'strace']) {
    if (spawnSync(tool, ['-V'], { stdio: 'ignore' }).error) return `${tool} is not installed`;
  }
  return false;
}

export function tcVersion(): string {
  const out = spawnSync('tc', ['-V'], { encoding: 'utf8' }).stdout;
  return /iproute2-([\d.]+)/.exec(out)?.[1] ?? out.trim();
}

/** A netns with a veth whose first end is gold0 (no qdisc configured); returns gold0's ifindex. */
export async function withGoldenNetns<T>(fn: (context: { netns: string; ifindex: number }) => Promise<T>): Promise<T> {
  const netns = await createNetns('gold');
  try {
    await ip('-n', netns, 'link', 'add', GOLDEN_DEVICE, 'type', 'veth', 'peer', 'name', 'gold1');
    await ip('-n', netns, 'link', 'set', GOLDEN_DEVICE, 'up');
    const ifindex = Number(/^(\d+):/.exec(await ip('-n', netns, '-o', 'link', 'show', GOLDEN_DEVICE))?.[1]);
    return await fn({ netns, ifindex });
  } finally {
    await deleteNetns(netns);
  }
}

/** Splits strace's `-e write=all` hex dumps into the datagrams sent, one per sendmsg. */
export function parseStraceDumps(output: string): Buffer[] {
  const datagrams: Buffer[] = [];
  for (const block of output.split(/^(?=\S.*\bsendmsg\()/m)) {
    if (!/\bsendmsg\(/.test(block)) continue;
    const hex = [...block.matchAll(/^ \| [0-9a-f]{5} {2}((?:[0-9a-f]{2} {1,2}){1,16})/gm)].map((match) => match[1]!.replace(/ /g, '')).join('');
    if (hex) datagrams.push(Buffer.from(hex, 'hex'));
  }
  return datagrams;
}

function splitNetlink(datagram: Buffer): Buffer[] {
  const messages: Buffer[] = [];
  for (let at = 0; at + 16 <= datagram.length; ) {
    const length = datagram.readUInt32LE(at);
    if (length < 16) break;
    messages.push(datagram.subarray(at, at + length));
    at += (length + 3) & ~3;
  }
  return messages;
}

export interface Capture {
  requests: Buffer[];
  exitCode: number;
  stderr: string;
}

export function captureTcRequests(netns: string, tcArgs: string[]): Capture {
  const result = spawnSync('ip', ['netns', 'exec', netns, 'strace', '-f', '-qq', '-e', 'trace=sendmsg', '-e', 'write=all', '-s', '65536', 'tc', ...tcArgs], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const requests = parseStraceDumps(result.stderr)
    .flatMap(splitNetlink)
    .filter((message) => TC_REQUEST_TYPES.has(message.readUInt16LE(4)));
  const tcStderr = result.stderr
    .split('\n')
    .filter((line) => !/^\s*\|/.test(line) && !/sendmsg\(|^ \* \d+ bytes|^\+\+\+/.test(line))
    .join('\n')
    .trim();
  return { requests, exitCode: result.status ?? -1, stderr: tcStderr };
}

/** A request with nlmsg_seq and nlmsg_pid zeroed: the only bytes allowed to differ. */
export function zeroSeqAndPid(message: Uint8Array): Buffer {
  const copy = Buffer.from(message);
  copy.fill(0, 8, 16);
  return copy;
}
