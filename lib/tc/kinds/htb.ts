/**
 * HTB (hierarchical token bucket): the root qdisc and its rate/ceil classes, as iproute2 6.1's q_htb.c
 * encodes them. Structs and attributes from include/uapi/linux/pkt_sched.h.
 */
import { memoizeBy } from '../../memo.js';
import { attr, attrBytes, attributeSet, attrU32, attrU64, MessageWriter } from '../../wire/attributes.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { nested, s32, struct, u32 } from '../../wire/struct.js';
import { defineKind, type KindContext, type TcKind, writeNestedOptions } from '../kind.js';
import { TCA } from '../tca.js';
import { integerOption, sizeOption, U32_RANGE } from '../options.js';
import { type BitsPerSecond, formatRate, parseRate, type RateInput, type SchedulerClock, type SizeInput, transmitSize, transmitTicks } from '../units.js';
import {
  burstTicks,
  cellLogOf,
  fromWireRate,
  type RateSpecOptions,
  rateSpecArguments,
  type RateSpecParameters,
  rateTable,
  readRateSpec,
  resolveRateSpec,
  saturate32,
  tcRatespec,
  toWireRate,
} from './ratespec.js';

const tcHtbGlob = struct({ version: u32, rate2quantum: u32, defcls: u32, debug: u32, directPkts: u32 });
const tcHtbOpt = struct({
  rate: nested(tcRatespec),
  ceil: nested(tcRatespec),
  buffer: u32,
  cbuffer: u32,
  quantum: u32,
  level: u32,
  prio: u32,
});
const tcHtbXstats = struct({ lends: u32, borrows: u32, giants: u32, tokens: s32, ctokens: s32 });

// Table order is the order tc writes them: RATE64/CEIL64 before PARMS, then RTAB/CTAB; INIT then DIRECT_QLEN.
const htbClassAttributes = attributeSet({
  rate64: attr(6, attrU64),
  ceil64: attr(7, attrU64),
  parms: attr(1, tcHtbOpt),
  rtab: attr(4, attrBytes),
  ctab: attr(3, attrBytes),
});
const htbQdiscAttributes = attributeSet({
  init: attr(2, tcHtbGlob),
  directQlen: attr(5, attrU32),
});

const HTB_VERSION = 3;
export const DEFAULT_R2Q = 10;
/** tc's assumed packet size for rate tables and the default burst ("eth packet len"). */
export const HTB_DEFAULT_MTU = 1600;
/** The kernel logs "quantum of class … is small/big" outside this range when it derives the quantum. */
const QUANTUM_MIN = 1000;
const QUANTUM_MAX = 200000;

// ---- qdisc -----------------------------------------------------------------------------------------

export interface HtbQdiscOptions {
  /** Minor number of the class unclassified traffic goes to; 0 (default) = sent unshaped ("direct"). */
  defaultClass?: number;
  /** Divisor deriving a class's quantum from its rate (tc default 10). */
  r2q?: number;
  /** Length of the queue for direct (unclassified) packets. */
  directQlen?: number;
}

export interface HtbQdiscParameters extends HtbQdiscOptions {
  defaultClass: number;
  r2q: number;
  /** Read back only: packets that went through the direct queue. */
  directPackets?: number;
}

export const htbQdisc: TcKind<HtbQdiscOptions, HtbQdiscParameters> = {
  name: 'htb',
  resolve(input) {
    const parameters: HtbQdiscParameters = {
      // defcls is 32 bits wide, but holds a class minor number.
      defaultClass: integerOption('HTB default class', input.defaultClass ?? 0, { min: 0, max: 0xffff }),
      r2q: integerOption('HTB r2q', input.r2q ?? DEFAULT_R2Q, tcHtbGlob.fieldRange('rate2quantum')),
    };
    if (input.directQlen !== undefined) parameters.directQlen = integerOption('HTB direct_qlen', input.directQlen, U32_RANGE);
    return parameters;
  },
  write(writer, parameters) {
    writeNestedOptions(writer, () =>
      htbQdiscAttributes.write(writer, {
        init: { version: HTB_VERSION, rate2quantum: parameters.r2q, defcls: parameters.defaultClass },
        directQlen: parameters.directQlen,
      }),
    );
  },
  read(payload) {
    const { init, directQlen } = htbQdiscAttributes.read(payload ?? new Uint8Array());
    const parameters: HtbQdiscParameters = { defaultClass: init?.defcls ?? 0, r2q: init?.rate2quantum ?? DEFAULT_R2Q };
    if (directQlen !== undefined) parameters.directQlen = directQlen;
    if (init) parameters.directPackets = init.directPkts;
    return parameters;
  },
  tcArguments(input) {
    const args: string[] = [];
    if (input.r2q !== undefined) args.push('r2q', String(input.r2q));
    if (input.defaultClass !== undefined) args.push('default', input.defaultClass.toString(16));
    if (input.directQlen !== undefined) args.push('direct_qlen', String(input.directQlen));
    return args;
  },
};

// ---- class -----------------------------------------------------------------------------------------

export interface HtbClassOptions extends RateSpecOptions {
  /** Guaranteed rate. */
  rate: RateInput;
  /** Maximum rate when borrowing from the parent; defaults to `rate`. */
  ceil?: RateInput;
  /** Bytes that may be sent at full speed; default as tc: rate / HZ + mtu. */
  burst?: SizeInput;
  cburst?: SizeInput;
  /** Cell size for the rate table (tc's `burst 1500/8`): a power of two. */
  burstCell?: number;
  cburstCell?: number;
  /**
   * Bytes served per round when borrowing. Default: left to the kernel (rate / r2q) when that lands in
   * 1000…200000, else clamped into that range so the kernel never logs "quantum of class … is big/small"
   * (the tc command printed for it carries the clamped value).
   */
  quantum?: number;
  /** Lower is served first when borrowing (0…7). */
  prio?: number;
}

export interface HtbClassParameters extends Omit<HtbClassOptions, keyof RateSpecOptions>, RateSpecParameters {
  rate: BitsPerSecond;
  ceil: BitsPerSecond;
  burst: number;
  cburst: number;
  quantum: number;
  prio: number;
  /** Read back only: 0 for leaf classes, higher for inner ones. */
  level?: number;
}

export interface HtbClassStats {
  lends: number;
  borrows: number;
  giants: number;
  /** Remaining rate tokens in scheduler ticks (negative: in debt). */
  tokens: number;
  ctokens: number;
}

function defaultQuantum(rate: BitsPerSecond): number {
  const derived = Math.trunc(toWireRate(rate) / DEFAULT_R2Q);
  if (derived < QUANTUM_MIN) return QUANTUM_MIN;
  if (derived > QUANTUM_MAX) return QUANTUM_MAX;
  return 0;
}

/** The attributes inside a class's TCA_OPTIONS, as tc writes them. */
function writeClassOptions(writer: MessageWriter, parameters: HtbClassParameters, clock: SchedulerClock): void {
  const rateBytes = toWireRate(parameters.rate);
  const ceilBytes = toWireRate(parameters.ceil);
  const common = { mpu: parameters.mpu, overhead: parameters.overhead, linklayer: parameters.linklayer, mtu: parameters.mtu ?? HTB_DEFAULT_MTU };
  // Like tc, the tables use the saturated 32-bit rate while the burst times use the full rate.
  const rate = rateTable({ ...common, rate32: saturate32(rateBytes), cellLog: cellLogOf(parameters.burstCell) }, clock);
  const ceil = rateTable({ ...common, rate32: saturate32(ceilBytes), cellLog: cellLogOf(parameters.cburstCell) }, clock);
  htbClassAttributes.write(writer, {
    rate64: rateBytes >= 2 ** 32 ? BigInt(rateBytes) : undefined,
    ceil64: ceilBytes >= 2 ** 32 ? BigInt(ceilBytes) : undefined,
    parms: {
      rate: rate.spec,
      ceil: ceil.spec,
      buffer: transmitTicks(rateBytes, parameters.burst, clock),
      cbuffer: transmitTicks(ceilBytes, parameters.cburst, clock),
      quantum: parameters.quantum,
      prio: parameters.prio,
    },
    rtab: rate.table,
    ctab: ceil.table,
  });
}

/**
 * A class's TCA_OPTIONS payload (~2.1 KiB, mostly the two rate tables) is the same for every client played
 * at the same rates: encoded once per distinct parameter set and copied into each request.
 */
const encodedClassOptions = memoizeBy(
  ({ parameters: p, clock }: { parameters: HtbClassParameters; clock: SchedulerClock }) =>
    `${p.rate},${p.ceil},${p.burst},${p.cburst},${p.quantum},${p.prio},${p.mpu},${p.overhead},${p.linklayer},${p.mtu},${p.burstCell},${p.cburstCell},${clock.ticksPerMicrosecond}`,
  ({ parameters, clock }) => {
    const writer = new MessageWriter(2304);
    writeClassOptions(writer, parameters, clock);
    return writer.toBytes();
  },
  256,
);

export const htbClass: TcKind<HtbClassOptions, HtbClassParameters, HtbClassStats> = {
  name: 'htb',
  resolve(input, context) {
    const rate = parseRate(input.rate);
    const ceil = input.ceil === undefined ? rate : parseRate(input.ceil);
    if (ceil < rate) throw new ShaperrInputError(`invalid HTB class: ceil ${formatRate(ceil)} is below rate ${formatRate(rate)}`);
    const rateSpec = resolveRateSpec('HTB', input);
    const mtu = rateSpec.mtu ?? HTB_DEFAULT_MTU;
    // tc: rate / get_hz() + mtu, in integer arithmetic (HZ is 1e9 with high-resolution timers, so ≈ mtu).
    const defaultBurst = (bits: BitsPerSecond): number => Math.floor(toWireRate(bits) / context.clock.hz) + mtu;
    const burst = input.burst === undefined ? defaultBurst(rate) : sizeOption('HTB burst', input.burst);
    const cburst = input.cburst === undefined ? defaultBurst(ceil) : sizeOption('HTB cburst', input.cburst);
    burstTicks('HTB burst', toWireRate(rate), burst, context.clock);
    burstTicks('HTB cburst', toWireRate(ceil), cburst, context.clock);
    const parameters: HtbClassParameters = {
      rate,
      ceil,
      burst,
      cburst,
      quantum: input.quantum === undefined ? defaultQuantum(rate) : integerOption('HTB quantum', input.quantum, tcHtbOpt.fieldRange('quantum')),
      // prio is 32 bits wide, but the kernel has eight priorities.
      prio: integerOption('HTB prio', input.prio ?? 0, { min: 0, max: 7 }),
      ...rateSpec,
    };
    if (input.burstCell !== undefined) parameters.burstCell = 2 ** cellLogOf(input.burstCell);
    if (input.cburstCell !== undefined) parameters.cburstCell = 2 ** cellLogOf(input.cburstCell);
    return parameters;
  },
  write(writer: MessageWriter, parameters, context: KindContext) {
    writer.attribute(TCA.OPTIONS, encodedClassOptions({ parameters, clock: context.clock }));
  },
  read(payload, context) {
    const { parms, rate64, ceil64 } = htbClassAttributes.read(payload ?? new Uint8Array());
    if (!parms) throw new Error('HTB class options without TCA_HTB_PARMS');
    const rateBytes = rate64 !== undefined ? Number(rate64) : parms.rate.rate;
    const ceilBytes = ceil64 !== undefined ? Number(ceil64) : parms.ceil.rate;
    return {
      rate: fromWireRate(rateBytes),
      ceil: fromWireRate(ceilBytes),
      burst: transmitSize(rateBytes, parms.buffer, context.clock),
      cburst: transmitSize(ceilBytes, parms.cbuffer, context.clock),
      quantum: parms.quantum,
      prio: parms.prio,
      ...readRateSpec(parms.rate),
      level: parms.level,
    };
  },
  readExtendedStats: (payload) => tcHtbXstats.decode(payload),
  tcArguments(input) {
    const args: string[] = [];
    const rate = (value: RateInput): string => (typeof value === 'number' ? formatRate(parseRate(value)) : value);
    const size = (value: SizeInput, cell: number | undefined): string => `${value}${cell === undefined ? '' : `/${cell}`}`;
    if (input.prio !== undefined) args.push('prio', String(input.prio));
    args.push(...rateSpecArguments(input));
    // A clamped default quantum is printed too, so the command replays without the kernel's warning.
    const quantum = input.quantum ?? (defaultQuantum(parseRate(input.rate)) || undefined);
    if (quantum !== undefined) args.push('quantum', String(quantum));
    args.push('rate', rate(input.rate));
    if (input.ceil !== undefined) args.push('ceil', rate(input.ceil));
    if (input.burst !== undefined) args.push('burst', size(input.burst, input.burstCell));
    if (input.cburst !== undefined) args.push('cburst', size(input.cburst, input.cburstCell));
    return args;
  },
};

export const htb = defineKind({ qdisc: htbQdisc, class: htbClass });
