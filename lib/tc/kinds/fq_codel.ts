/**
 * fq_codel (fair queueing with CoDel): per-flow queues, each kept short by CoDel's sojourn-time target.
 * Encoded as iproute2 6.1's q_fq_codel.c: nested TCA_OPTIONS (empty when no option is given: the kernel
 * keeps its defaults) holding only the options given; a dump carries all of them. Times are microseconds.
 */
import { attr, attributeSet, attrU32 } from '../../wire/attributes.js';
import { struct, u32 } from '../../wire/struct.js';
import { defineKind, type TcKind, writeNestedOptions } from '../kind.js';
import { integerOption, sizeOption, timeOption, U32_RANGE } from '../options.js';
import type { SizeInput } from '../units.js';

// In tc's write order.
const fqCodelAttributes = attributeSet({
  limit: attr(2, attrU32),
  flows: attr(5, attrU32),
  quantum: attr(6, attrU32),
  interval: attr(3, attrU32),
  target: attr(1, attrU32),
  ecn: attr(4, attrU32),
  ceThreshold: attr(7, attrU32),
  memoryLimit: attr(9, attrU32),
  dropBatch: attr(8, attrU32),
});

/** struct tc_fq_codel_xstats: a type word, then the qdisc's counters (type 0) or a class's (type 1). */
const tcFqCodelXstats = struct({
  type: u32,
  maxPacket: u32,
  dropOverlimit: u32,
  ecnMark: u32,
  newFlowCount: u32,
  newFlowsLen: u32,
  oldFlowsLen: u32,
  ceMark: u32,
  memoryUsage: u32,
  dropOvermemory: u32,
});
const TCA_FQ_CODEL_XSTATS_QDISC = 0;

export interface FqCodelOptions {
  /** Packets queued in total (kernel default 10240). */
  limit?: number;
  /** Number of flow queues (default 1024); fixed once the qdisc exists. */
  flows?: number;
  /** Bytes a flow may dequeue per round (default: the device MTU + header). */
  quantum?: number;
  /** Acceptable queueing delay (`5ms`, or µs; default 5 ms). */
  target?: string | number;
  /** CoDel's sliding window (`100ms`, or µs; default 100 ms). */
  interval?: string | number;
  /** Mark ECN-capable packets instead of dropping them (kernel default: on). */
  ecn?: boolean;
  /** Mark packets queued longer than this with CE (`1ms`, or µs); off by default. */
  ceThreshold?: string | number;
  /** Bytes all queues may hold (`32mb`, default 32 MB). */
  memoryLimit?: SizeInput;
  /** Packets dropped at once when over the limit (default 64). */
  dropBatch?: number;
}

/** Times in µs; the kernel keeps them in 1.024 µs units, so they read back truncated to those (4 ms → 3999). */
export interface FqCodelParameters extends FqCodelOptions {
  /** µs */
  target?: number;
  /** µs */
  interval?: number;
  /** µs */
  ceThreshold?: number;
  memoryLimit?: number;
}

export interface FqCodelStats {
  /** Largest packet seen, in bytes. */
  maxPacket: number;
  /** Packets dropped because the qdisc was over its limit. */
  dropOverlimit: number;
  ecnMark: number;
  newFlowCount: number;
  newFlowsLen: number;
  oldFlowsLen: number;
  ceMark: number;
  /** Bytes held by the queues now. */
  memoryUsage: number;
  dropOvermemory: number;
}

const positive = { min: 1, max: U32_RANGE.max };
const time = (value: string | number): string => (typeof value === 'number' ? `${value}us` : value);

export const fqCodelQdisc: TcKind<FqCodelOptions, FqCodelParameters, FqCodelStats | undefined> = {
  name: 'fq_codel',
  resolve(input) {
    const parameters: FqCodelParameters = {};
    if (input.limit !== undefined) parameters.limit = integerOption('FQ_CODEL limit', input.limit, positive);
    if (input.flows !== undefined) parameters.flows = integerOption('FQ_CODEL flows', input.flows, positive);
    if (input.quantum !== undefined) parameters.quantum = integerOption('FQ_CODEL quantum', input.quantum, positive);
    if (input.target !== undefined) parameters.target = timeOption('FQ_CODEL target', input.target, positive);
    if (input.interval !== undefined) parameters.interval = timeOption('FQ_CODEL interval', input.interval, positive);
    if (input.ecn !== undefined) parameters.ecn = input.ecn;
    // 2^32 - 1 µs is the kernel's "no threshold" (CODEL_DISABLED_THRESHOLD) and what tc leaves out.
    if (input.ceThreshold !== undefined) parameters.ceThreshold = timeOption('FQ_CODEL ce_threshold', input.ceThreshold, { min: 0, max: U32_RANGE.max - 1 });
    if (input.memoryLimit !== undefined) parameters.memoryLimit = sizeOption('FQ_CODEL memory_limit', input.memoryLimit, { min: 1, max: U32_RANGE.max - 1 });
    if (input.dropBatch !== undefined) parameters.dropBatch = integerOption('FQ_CODEL drop_batch', input.dropBatch, positive);
    return parameters;
  },
  write(writer, parameters) {
    writeNestedOptions(writer, () =>
      fqCodelAttributes.write(writer, { ...parameters, ecn: parameters.ecn === undefined ? undefined : Number(parameters.ecn) }),
    );
  },
  read(payload) {
    const { ecn, ...values } = fqCodelAttributes.read(payload ?? new Uint8Array());
    return ecn === undefined ? values : { ...values, ecn: ecn !== 0 };
  },
  readExtendedStats(payload) {
    const { type, ...stats } = tcFqCodelXstats.decode(payload);
    return type === TCA_FQ_CODEL_XSTATS_QDISC ? stats : undefined;
  },
  tcArguments(input) {
    const args: string[] = [];
    if (input.limit !== undefined) args.push('limit', String(input.limit));
    if (input.flows !== undefined) args.push('flows', String(input.flows));
    if (input.quantum !== undefined) args.push('quantum', String(input.quantum));
    if (input.target !== undefined) args.push('target', time(input.target));
    if (input.interval !== undefined) args.push('interval', time(input.interval));
    if (input.ecn !== undefined) args.push(input.ecn ? 'ecn' : 'noecn');
    if (input.ceThreshold !== undefined) args.push('ce_threshold', time(input.ceThreshold));
    if (input.memoryLimit !== undefined) args.push('memory_limit', String(input.memoryLimit));
    if (input.dropBatch !== undefined) args.push('drop_batch', String(input.dropBatch));
    return args;
  },
};

export const fq_codel = defineKind({ qdisc: fqCodelQdisc });
