/**
 * u32: the classifier that steers a client's packets into its class, by IPv4/IPv6 address (any prefix),
 * IP protocol and ports — plus u32 hash tables, so thousands of clients classify in O(1). Encoded as
 * iproute2 6.1's f_u32.c does: a selector (struct tc_u32_sel) followed by its keys, each key a 32-bit
 * mask/value at a byte offset into the IP header (IPv4 ports assume no IP options, as tc's `ip dport`).
 */
import { parseClientAddress } from '../../address.js';
import { memoizeParser } from '../../memo.js';
import { attr, attributeSet, attrU32, type InPlaceCodec } from '../../wire/attributes.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { be16, be32, s16, s32, struct, u16, u8 } from '../../wire/struct.js';
import { formatHandle, type HandleInput, parseHandle } from '../handle.js';
import { defineKind, type FilterKind, writeNestedOptions } from '../kind.js';

const tcU32Sel = struct({ flags: u8, offshift: u8, nkeys: u8, pad: u8, offmask: be16, off: u16, offoff: s16, hoff: s16, hmask: be32 });
const tcU32Key = struct({ mask: be32, value: be32, offset: s32, offmask: s32 });

/** One selector key: `mask`/`value` compared with the 32-bit word at `offset` of the IP header. */
export interface U32Key {
  mask: number;
  value: number;
  offset: number;
}

interface Selector {
  terminal: boolean;
  hashMask: number;
  hashOffset: number;
  keys: U32Key[];
}

const TC_U32_TERMINAL = 1;

const selectorCodec: InPlaceCodec<Selector> = {
  sizeOf: (selector) => tcU32Sel.size + selector.keys.length * tcU32Key.size,
  writeInto(view, offset, selector) {
    tcU32Sel.encodeInto(view, offset, {
      flags: selector.terminal ? TC_U32_TERMINAL : 0,
      nkeys: selector.keys.length,
      hoff: selector.hashOffset,
      hmask: selector.hashMask,
    });
    for (let index = 0; index < selector.keys.length; index++) {
      tcU32Key.encodeInto(view, offset + tcU32Sel.size + index * tcU32Key.size, selector.keys[index]!);
    }
  },
  decode(payload: Uint8Array): Selector {
    const header = tcU32Sel.decode(payload);
    const keys: U32Key[] = [];
    for (let index = 0; index < header.nkeys; index++) {
      const at = tcU32Sel.size + index * tcU32Key.size;
      if (at + tcU32Key.size > payload.byteLength) break;
      const key = tcU32Key.decode(payload.subarray(at, at + tcU32Key.size));
      keys.push({ mask: key.mask, value: key.value, offset: key.offset });
    }
    return { terminal: (header.flags & TC_U32_TERMINAL) !== 0, hashMask: header.hmask, hashOffset: header.hoff, keys };
  },
};

// Table order = tc's write order for the commands tcArguments() produces: the options tc writes while
// parsing (link, classid, divisor — in argument order), then the hash table and the selector at the end.
const u32Attributes = attributeSet({
  link: attr(3, attrU32),
  classid: attr(1, attrU32),
  divisor: attr(4, attrU32),
  hashTable: attr(2, attrU32),
  selector: attr(5, selectorCodec),
});

// ---- u32 handles: 12-bit table id : 8-bit bucket : 12-bit node -----------------------------------------

const HEX = /^[0-9a-f]*$/i;

/** Parses a u32 handle as tc writes it: `800::800`, `2:7b:1`, `2:` (a table), or `0x…`. */
export function parseU32Handle(text: string): number {
  const trimmed = text.trim();
  const fail = (): never => {
    throw new ShaperrInputError(`invalid u32 handle ${JSON.stringify(text)}: expected table:bucket:node in hex, e.g. "2:7b:1" or "800::800"`);
  };
  if (/^0x[0-9a-f]{1,8}$/i.test(trimmed)) return Number.parseInt(trimmed, 16) >>> 0;
  const parts = trimmed.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts.every((part) => HEX.test(part))) fail();
  const [table, bucket, node] = parts.map((part) => (part === '' || part === undefined ? 0 : Number.parseInt(part, 16))) as [
    number,
    number,
    number | undefined,
  ];
  if (table >= 0x1000 || bucket >= 0x100 || (node ?? 0) >= 0x1000) fail();
  return ((table << 20) | (bucket << 12) | (node ?? 0)) >>> 0;
}

export function formatU32Handle(handle: number): string {
  const table = (handle >>> 20).toString(16);
  const bucket = (handle >>> 12) & 0xff;
  const node = handle & 0xfff;
  if (node) return `${table}:${bucket ? bucket.toString(16) : ''}:${node.toString(16)}`;
  return bucket ? `${table}:${bucket.toString(16)}:` : `${table}:`;
}

export const makeU32Handle = (table: number, bucket: number, node: number): number => ((table << 20) | (bucket << 12) | node) >>> 0;

// ---- options ---------------------------------------------------------------------------------------------

export interface U32Match {
  /** 4 or 6; inferred from the addresses, else 4. Ports and protocol offsets depend on it. */
  family?: 4 | 6;
  /** Source address or network: `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/64`. */
  src?: string;
  dst?: string;
  /** IP protocol (IPv4) / next header (IPv6), e.g. 6 for TCP. */
  protocol?: number;
  sport?: number;
  dport?: number;
}

export interface U32Options {
  match?: U32Match;
  /** Class matching packets go to (tc's flowid/classid). */
  classid?: HandleInput;
  /** The hash table (and bucket) this filter is placed in: tc's `ht`, e.g. `"2:7b:"` or `"800::"`. */
  hashTable?: string | number;
  /** Which header bits pick the bucket when this filter links to a table. */
  hashKey?: { mask: number; at: number };
  /** The table matching packets continue in (`link 2:`). */
  link?: string | number;
  /** Makes this filter a hash table with this many buckets (1…256, a power of two). */
  divisor?: number;
}

export interface U32Parameters extends U32Options {
  match?: U32Match & { family: 4 | 6 };
  classid?: number;
  hashTable?: number;
  link?: number;
  /** Keys no match field explains (read back from filters made by other tools). */
  otherKeys?: U32Key[];
}

const u32Handle = (value: string | number): number => (typeof value === 'number' ? parseHandle(value) : parseU32Handle(value));

/** Offsets into the IP header, per family (tc's `ip …` / `ip6 …` selectors). */
const layout = {
  4: { src: 12, dst: 16, addressWords: 1, protocol: { offset: 8, shift: 16 }, ports: 20 },
  6: { src: 8, dst: 24, addressWords: 4, protocol: { offset: 4, shift: 8 }, ports: 40 },
} as const;

function checkRange(value: number, max: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new ShaperrInputError(`invalid u32 ${what} ${value}: expected 0…${max}`);
  return value;
}

interface Prefix {
  bytes: number[];
  length: number;
  family: 4 | 6;
}

/** A prefix as written in a match, with its canonical text ("10.0.0.7/32"). */
interface ParsedPrefix extends Prefix {
  text: string;
}

/** Filters are built for the same few thousand addresses again and again: each text is parsed once. */
const parsePrefixText = memoizeParser((key: string): ParsedPrefix => {
  const space = key.indexOf(' ');
  const what = key.slice(0, space);
  const text = key.slice(space + 1);
  const [addressText, lengthText, ...rest] = text.split('/');
  const address = parseClientAddress(addressText ?? '');
  const full = address.family === 4 ? 32 : 128;
  const length = lengthText === undefined ? full : Number(lengthText);
  if (rest.length || !/^\d+$/.test(lengthText ?? String(full)) || length > full) {
    throw new ShaperrInputError(`invalid u32 ${what} ${JSON.stringify(text)}: expected an address with an optional /prefix (0…${full})`);
  }
  return { bytes: address.bytes, length, family: address.family, text: `${address.text}/${length}` };
});

const parsePrefix = (text: string, what: 'src' | 'dst'): ParsedPrefix => parsePrefixText(`${what} ${text}`);

const prefixText = (prefix: Prefix): string => {
  const address = prefix.family === 4 ? prefix.bytes.join('.') : parseClientAddress(ipv6Text(prefix.bytes)).text;
  return `${address}/${prefix.length}`;
};

function ipv6Text(bytes: number[]): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}

const word = (bytes: number[], index: number): number =>
  ((bytes[index * 4]! << 24) | (bytes[index * 4 + 1]! << 16) | (bytes[index * 4 + 2]! << 8) | bytes[index * 4 + 3]!) >>> 0;

/** Adds a key the way tc's pack_key does: a key at an offset already used is merged into it. */
function packKey(keys: U32Key[], value: number, mask: number, offset: number): void {
  const masked = (value & mask) >>> 0;
  const existing = keys.find((key) => key.offset === offset);
  if (existing) {
    if (((masked ^ existing.value) & mask & existing.mask) !== 0) throw new ShaperrInputError(`conflicting u32 matches at offset ${offset}`);
    existing.value = (existing.value | masked) >>> 0;
    existing.mask = (existing.mask | mask) >>> 0;
    return;
  }
  if (keys.length >= 128) throw new ShaperrInputError('too many u32 keys (128 at most)');
  keys.push({ value: masked, mask, offset });
}

function packPrefix(keys: U32Key[], prefix: Prefix, offset: number): void {
  const words = prefix.family === 4 ? 1 : 4;
  if (prefix.length === 0) {
    // tc keeps a match-all key for an IPv4 /0, but writes no key at all for an IPv6 /0.
    if (prefix.family === 4) packKey(keys, 0, 0, offset);
    return;
  }
  for (let index = 0; index < words && index * 32 < prefix.length; index++) {
    const bits = Math.min(32, prefix.length - index * 32);
    const mask = bits === 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
    packKey(keys, word(prefix.bytes, index), mask, offset + index * 4);
  }
}

function selectorKeys(match: U32Match & { family: 4 | 6 }): U32Key[] {
  const keys: U32Key[] = [];
  const offsets = layout[match.family];
  if (match.src !== undefined) packPrefix(keys, parsePrefix(match.src, 'src'), offsets.src);
  if (match.dst !== undefined) packPrefix(keys, parsePrefix(match.dst, 'dst'), offsets.dst);
  if (match.protocol !== undefined) packKey(keys, match.protocol << offsets.protocol.shift, 0xff << offsets.protocol.shift, offsets.protocol.offset);
  if (match.sport !== undefined) packKey(keys, (match.sport << 16) >>> 0, 0xffff0000, offsets.ports);
  if (match.dport !== undefined) packKey(keys, match.dport, 0x0000ffff, offsets.ports);
  return keys;
}

function resolveMatch(match: U32Match): U32Match & { family: 4 | 6 } {
  const src = match.src === undefined ? undefined : parsePrefix(match.src, 'src');
  const dst = match.dst === undefined ? undefined : parsePrefix(match.dst, 'dst');
  const family = match.family ?? src?.family ?? dst?.family ?? 4;
  if ((src !== undefined && src.family !== family) || (dst !== undefined && dst.family !== family))
    throw new ShaperrInputError('u32 match mixes IPv4 and IPv6');
  const resolved: U32Match & { family: 4 | 6 } = { family };
  if (src !== undefined) resolved.src = src.text;
  if (dst !== undefined) resolved.dst = dst.text;
  if (match.protocol !== undefined) resolved.protocol = checkRange(match.protocol, 0xff, 'protocol');
  if (match.sport !== undefined) resolved.sport = checkRange(match.sport, 0xffff, 'sport');
  if (match.dport !== undefined) resolved.dport = checkRange(match.dport, 0xffff, 'dport');
  return resolved;
}

/** Reads keys back into match fields; keys that fit no field stay raw. */
function readMatch(keys: U32Key[], family: 4 | 6): { match?: U32Match & { family: 4 | 6 }; otherKeys?: U32Key[] } {
  const offsets = layout[family];
  const remaining = keys.map((key) => ({ ...key }));
  const match: U32Match & { family: 4 | 6 } = { family };
  const take = (offset: number, mask: number): number | undefined => {
    const key = remaining.find((candidate) => candidate.offset === offset && (candidate.mask & mask) >>> 0 === mask);
    if (!key) return undefined;
    key.mask = (key.mask & ~mask) >>> 0;
    return (key.value & mask) >>> 0;
  };
  const readPrefix = (offset: number): string | undefined => {
    const bytes: number[] = [];
    let length = 0;
    for (let index = 0; index < offsets.addressWords; index++) {
      const key = remaining.find((candidate) => candidate.offset === offset + index * 4);
      const mask = key?.mask ?? 0;
      const bits = mask === 0 ? 0 : 32 - Math.log2((~mask >>> 0) + 1);
      if (key === undefined || !Number.isInteger(bits) || (index > 0 && length !== index * 32)) {
        if (index === 0) return undefined;
        bytes.push(0, 0, 0, 0);
        continue;
      }
      bytes.push(key.value >>> 24, (key.value >>> 16) & 0xff, (key.value >>> 8) & 0xff, key.value & 0xff);
      length += bits;
      key.mask = 0;
      key.offset = -1; // consumed
    }
    return prefixText({ bytes, length, family });
  };
  const src = readPrefix(offsets.src);
  if (src !== undefined) match.src = src;
  const dst = readPrefix(offsets.dst);
  if (dst !== undefined) match.dst = dst;
  const protocolMask = (0xff << offsets.protocol.shift) >>> 0;
  const protocol = take(offsets.protocol.offset, protocolMask);
  if (protocol !== undefined) match.protocol = protocol >>> offsets.protocol.shift;
  const sport = take(offsets.ports, 0xffff0000);
  if (sport !== undefined) match.sport = sport >>> 16;
  const dport = take(offsets.ports, 0x0000ffff);
  if (dport !== undefined) match.dport = dport;
  const otherKeys = remaining.filter((key) => key.offset >= 0 && key.mask !== 0);
  const result: { match?: U32Match & { family: 4 | 6 }; otherKeys?: U32Key[] } = {};
  if (Object.keys(match).length > 1) result.match = match;
  if (otherKeys.length) result.otherKeys = otherKeys;
  return result;
}

const IPV6_ETHERTYPE = 0x86dd;

export const u32Filter: FilterKind<U32Options, U32Parameters> = {
  name: 'u32',
  parseHandle: parseU32Handle,
  formatHandle: formatU32Handle,
  resolve(input) {
    const parameters: U32Parameters = {};
    if (input.match !== undefined) parameters.match = resolveMatch(input.match);
    if (input.classid !== undefined) parameters.classid = parseHandle(input.classid);
    if (input.hashTable !== undefined) parameters.hashTable = (u32Handle(input.hashTable) & 0xfffff000) >>> 0;
    if (input.link !== undefined) {
      parameters.link = u32Handle(input.link);
      if (parameters.link & 0xfff) throw new ShaperrInputError(`invalid u32 link ${JSON.stringify(input.link)}: a link names a table, not a node`);
    }
    if (input.hashKey !== undefined) {
      const { mask, at } = input.hashKey;
      checkRange(mask, 0xffffffff, 'hashkey mask');
      if (!Number.isInteger(at) || at % 4 !== 0 || at < 0 || at > 0x7fff) throw new ShaperrInputError(`invalid u32 hashkey offset ${at}: a multiple of 4`);
      parameters.hashKey = { mask, at };
    }
    if (input.divisor !== undefined) {
      const divisor = input.divisor;
      if (!Number.isInteger(divisor) || divisor < 1 || divisor > 256 || (divisor & (divisor - 1)) !== 0) {
        throw new ShaperrInputError(`invalid u32 divisor ${divisor}: a power of two from 1 to 256`);
      }
      parameters.divisor = divisor;
    }
    return parameters;
  },
  write(writer, parameters) {
    const hasSelector = parameters.match !== undefined || parameters.hashKey !== undefined;
    // tc sends no options at all for a bare `… u32` (e.g. deleting by handle).
    if (
      !hasSelector &&
      parameters.classid === undefined &&
      parameters.link === undefined &&
      parameters.divisor === undefined &&
      parameters.hashTable === undefined
    )
      return;
    writeNestedOptions(writer, () =>
      u32Attributes.write(writer, {
        link: parameters.link,
        classid: parameters.classid,
        divisor: parameters.divisor,
        hashTable: parameters.hashTable || undefined,
        selector: hasSelector
          ? {
              terminal: parameters.classid !== undefined,
              hashMask: parameters.hashKey?.mask ?? 0,
              hashOffset: parameters.hashKey?.at ?? 0,
              keys: parameters.match ? selectorKeys(parameters.match) : [],
            }
          : undefined,
      }),
    );
  },
  read(payload, context) {
    const values = u32Attributes.read(payload ?? new Uint8Array());
    const parameters: U32Parameters = {};
    if (values.selector) {
      const { match, otherKeys } = readMatch(values.selector.keys, context.protocol === IPV6_ETHERTYPE ? 6 : 4);
      if (match) parameters.match = match;
      if (otherKeys) parameters.otherKeys = otherKeys;
      if (values.selector.hashMask) parameters.hashKey = { mask: values.selector.hashMask, at: values.selector.hashOffset };
    }
    if (values.classid !== undefined) parameters.classid = values.classid;
    if (values.hashTable) parameters.hashTable = values.hashTable;
    if (values.link !== undefined) parameters.link = values.link;
    if (values.divisor !== undefined) parameters.divisor = values.divisor;
    return parameters;
  },
  tcArguments(input) {
    const args: string[] = [];
    const handleText = (value: string | number): string => (typeof value === 'number' ? formatU32Handle(value) : value);
    if (input.hashTable !== undefined) args.push('ht', handleText(input.hashTable));
    if (input.match) {
      const family = input.match.family ?? ([input.match.src, input.match.dst].some((text) => text?.includes(':')) ? 6 : 4);
      const selector = family === 6 ? 'ip6' : 'ip';
      if (input.match.src !== undefined) args.push('match', selector, 'src', input.match.src);
      if (input.match.dst !== undefined) args.push('match', selector, 'dst', input.match.dst);
      if (input.match.protocol !== undefined) args.push('match', selector, 'protocol', String(input.match.protocol), '0xff');
      if (input.match.sport !== undefined) args.push('match', selector, 'sport', String(input.match.sport), '0xffff');
      if (input.match.dport !== undefined) args.push('match', selector, 'dport', String(input.match.dport), '0xffff');
    }
    if (input.hashKey) args.push('hashkey', 'mask', `0x${input.hashKey.mask.toString(16).padStart(8, '0')}`, 'at', String(input.hashKey.at));
    if (input.link !== undefined) args.push('link', handleText(input.link));
    if (input.classid !== undefined) args.push('classid', formatHandle(parseHandle(input.classid)));
    if (input.divisor !== undefined) args.push('divisor', String(input.divisor));
    return args;
  },
};

export const u32 = defineKind({ filter: u32Filter });
