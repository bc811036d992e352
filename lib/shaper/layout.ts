/**
 * Where the Shaper puts things in the kernel: handles, priorities and u32 hash tables. One place, so the
 * Shaper that writes them and the Shaper that adopts them after a restart agree.
 *
 * Classification is O(1) in the number of clients: per family, one link filter hashes the destination's
 * last byte into a 256-bucket table, and each bucket holds only the few clients whose address ends there.
 * That bucket rule is decided here only (clientBucket and bucketHashKey).
 */
import type { ClientAddress } from '../address.js';
import { parseClientAddress } from '../address.js';
import { makeU32Handle } from '../tc/kinds/u32.js';
import { formatHandle, makeHandle } from '../tc/handle.js';
import type { Filter, FilterRef, FilterSpec, Qdisc } from '../tc/objects.js';

export const SHAPER_LAYOUT = {
  /** Root qdisc major: unusual on purpose, so a foreign `1:` HTB is never mistaken for ours. */
  rootMajor: 0x5a,
  serverMinor: 1,
} as const;

/** shaperr's root qdisc (`5a:`) and the server class under it (`5a:1`). */
export const SHAPER_ROOT = makeHandle(SHAPER_LAYOUT.rootMajor, 0);
export const SHAPER_SERVER_CLASS = makeHandle(SHAPER_LAYOUT.rootMajor, SHAPER_LAYOUT.serverMinor);

/** Whether a root qdisc is the one shaperr creates (an HTB with our unusual major). */
export function isShaperRoot(qdisc: Qdisc | undefined): boolean {
  return qdisc?.kind === 'htb' && qdisc.handle === SHAPER_ROOT;
}

/** A qdisc as people write it: `tbf 1:`, `fq_codel 8001:` (for messages about foreign qdiscs). */
export function describeQdisc(qdisc: Qdisc): string {
  return `${qdisc.kind.replace(/^other:/, '')} ${formatHandle(qdisc.handle)}`;
}

/** The bucket of a client's filter in its family's table: the last byte of its address. */
export function clientBucket(address: ClientAddress): number {
  return address.bytes[address.bytes.length - 1]!;
}

/** The bucket shaperr's tables put an address in (`hashkey mask 0x000000ff at 16|36`). */
export function hashBucketForAddress(address: string): number {
  return clientBucket(parseClientAddress(address));
}

/**
 * The link filter's `hashkey` matching clientBucket: the low byte of the 32-bit word holding the last
 * destination byte (IPv4 destination at offset 16, the last word of the IPv6 one at 36).
 */
export const bucketHashKey = (family: 4 | 6): { mask: number; at: number } => ({ mask: 0xff, at: family === 4 ? 16 : 36 });

interface FamilyLayout {
  protocol: 'ip' | 'ipv6';
  priority: number;
  /** u32 table id of the 256-bucket client table. */
  table: number;
}

// IPv4 and IPv6 filters need different priorities (one u32 instance per protocol and priority).
const families: Record<4 | 6, FamilyLayout> = {
  4: { protocol: 'ip', priority: 1, table: 0x2 },
  6: { protocol: 'ipv6', priority: 2, table: 0x3 },
};

/**
 * The per-family hash table and the link filter that hashes into it (created once, in this order). The
 * link filter goes into the priority's root table, whose id the kernel picks (800:, 801:…): no `ht`.
 */
export function hashTableSpecs(root: number): FilterSpec[] {
  return ([4, 6] as const).flatMap((family) => [tableSpec(root, family), linkSpec(root, family)]);
}

function tableSpec(root: number, family: 4 | 6): FilterSpec {
  const { protocol, priority, table } = families[family];
  return { kind: 'u32', parent: root, priority, protocol, handle: makeU32Handle(table, 0, 0), options: { divisor: 256 } };
}

function linkSpec(root: number, family: 4 | 6): FilterSpec {
  const { protocol, priority, table } = families[family];
  return {
    kind: 'u32',
    parent: root,
    priority,
    protocol,
    options: { match: { family, dst: family === 4 ? '0.0.0.0/0' : '::/0' }, hashKey: bucketHashKey(family), link: makeU32Handle(table, 0, 0) },
  };
}

/**
 * The hash tables and link filters missing from a dump of the root's filters (someone deleted them: the
 * kernel refuses to delete a table a link filter still points at, so the link goes first), in the order
 * they are added back. Client filters go with their table; a dump without them shows their pipes damaged.
 */
export function missingHashTableSpecs(root: number, filters: readonly Filter[]): FilterSpec[] {
  return ([4, 6] as const).flatMap((family) => {
    const { priority, table } = families[family];
    const handle = makeU32Handle(table, 0, 0);
    const ours = filters.filter((filter) => filter.priority === priority);
    const missing: FilterSpec[] = [];
    if (!ours.some((filter) => filter.handle === handle && filter.parameters.divisor !== undefined)) missing.push(tableSpec(root, family));
    if (!ours.some((filter) => filter.parameters.link === handle)) missing.push(linkSpec(root, family));
    return missing;
  });
}

function clientHandle(address: ClientAddress, node: number): number {
  return makeU32Handle(families[address.family].table, clientBucket(address), node);
}

/** IP protocol number of TCP, which Plex streams over. */
const TCP = 6;

/**
 * The filter steering `address` into class `classid`, as node `node` of its bucket. With `sourcePort`
 * (gateway mode) only TCP from that port matches: the client's media server's public port, so other hosts
 * behind the same router talking to the same address stay unshaped.
 */
export function clientFilterSpec(root: number, address: ClientAddress, classid: number, node: number, sourcePort?: number): FilterSpec {
  const { protocol, priority } = families[address.family];
  const handle = clientHandle(address, node);
  const match = { family: address.family, dst: address.text, ...(sourcePort === undefined ? {} : { protocol: TCP, sport: sourcePort }) };
  return {
    kind: 'u32',
    parent: root,
    priority,
    protocol,
    handle,
    options: { hashTable: handle & 0xfffff000, match, classid },
  };
}

export function clientFilterRef(root: number, address: ClientAddress, node: number): FilterRef {
  const { protocol, priority } = families[address.family];
  return { kind: 'u32', parent: root, priority, protocol, handle: clientHandle(address, node) };
}

/**
 * Recognises one of our client filters in a dump: a single-address dst match in a client table, with the
 * source port it also matches (gateway mode), if any.
 */
export function readClientFilter(filter: Filter): { address: ClientAddress; classid: number; node: number; sourcePort?: number } | undefined {
  const match = filter.parameters.match;
  const family = match?.family;
  if (!family || !match.dst || filter.parameters.classid === undefined) return undefined;
  const layout = families[family];
  if (filter.priority !== layout.priority || filter.handle >>> 20 !== layout.table) return undefined;
  const [text, length] = match.dst.split('/');
  if (Number(length) !== (family === 4 ? 32 : 128)) return undefined;
  const client = { address: parseClientAddress(text!), classid: filter.parameters.classid, node: filter.handle & 0xfff };
  return match.sport === undefined ? client : { ...client, sourcePort: match.sport };
}
