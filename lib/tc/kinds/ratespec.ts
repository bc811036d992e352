/**
 * What HTB and TBF share: struct tc_ratespec, the rate-spec options users give for it (mtu, mpu,
 * overhead, linklayer: declared, checked and spelled for tc here only), the burst-to-ticks conversion,
 * and the 256-entry rate tables iproute2 sends (tc_core.c). Modern kernels ignore the table contents
 * (they compute transmit times from the 64-bit rate), but they still require the attribute, and byte
 * equality with tc needs the same values.
 */
import { memoizeBy } from '../../memo.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { s16, struct, u16, u32, u8 } from '../../wire/struct.js';
import { integerOption, sizeOption } from '../options.js';
import { type BitsPerSecond, describeRate, type SchedulerClock, type SizeInput, transmitTicks, transmitTicksFit } from '../units.js';

/**
 * The kernel's rate fields count bytes per second while every rate in shaperr is bits per second: the
 * kinds' encoders and decoders convert here, and nowhere else. (parseRate keeps rates to whole bytes.)
 */
export const toWireRate = (rate: BitsPerSecond): number => rate / 8;
export const fromWireRate = (bytesPerSecond: number): BitsPerSecond => bytesPerSecond * 8;

export const tcRatespec = struct({ cellLog: u8, linklayer: u8, overhead: u16, cellAlign: s16, mpu: u16, rate: u32 });
export type Ratespec = ReturnType<typeof tcRatespec.decode>;

export type LinkLayer = 'ethernet' | 'atm';
const linkLayerCodes: Record<LinkLayer, number> = { ethernet: 1, atm: 2 };
const ATM_CELL_PAYLOAD = 48;
const ATM_CELL_SIZE = 53;

export function parseLinkLayer(name: string): LinkLayer {
  const normalised = name.toLowerCase();
  if (normalised === 'ethernet') return 'ethernet';
  if (normalised === 'atm' || normalised === 'adsl') return 'atm';
  throw new ShaperrInputError(`invalid linklayer ${JSON.stringify(name)}: expected ethernet, atm or adsl`);
}

export function linkLayerName(code: number): LinkLayer {
  return code === linkLayerCodes.atm ? 'atm' : 'ethernet';
}

/** The rate-spec options, as HTB classes and TBF take them. */
export interface RateSpecOptions {
  /** Largest packet the rate table covers (HTB default 1600; TBF: also the peak bucket, default none). */
  mtu?: SizeInput;
  /** Smallest size a packet is accounted as (bytes, 0…65535). */
  mpu?: number;
  /** Bytes added to every packet's size for accounting (0…65535). */
  overhead?: number;
  linklayer?: LinkLayer | 'adsl';
}

export interface RateSpecParameters {
  /** Only when given: it shapes the rate table but is not carried on the wire, so HTB cannot read it back. */
  mtu?: number;
  mpu: number;
  overhead: number;
  linklayer: LinkLayer;
}

/** Checks the rate-spec options against the fields they travel in; `kind` names them in errors ("TBF"). */
export function resolveRateSpec(kind: string, input: RateSpecOptions): RateSpecParameters {
  const parameters: RateSpecParameters = {
    mpu: integerOption(`${kind} mpu`, input.mpu ?? 0, tcRatespec.fieldRange('mpu')),
    overhead: integerOption(`${kind} overhead`, input.overhead ?? 0, tcRatespec.fieldRange('overhead')),
    linklayer: input.linklayer === undefined ? 'ethernet' : parseLinkLayer(input.linklayer),
  };
  if (input.mtu !== undefined) parameters.mtu = sizeOption(`${kind} mtu`, input.mtu);
  return parameters;
}

/** The rate-spec options as tc arguments, in the order both q_htb.c and q_tbf.c document them. */
export function rateSpecArguments(input: RateSpecOptions): string[] {
  const args: string[] = [];
  if (input.mtu !== undefined) args.push('mtu', String(input.mtu));
  if (input.mpu !== undefined) args.push('mpu', String(input.mpu));
  if (input.overhead !== undefined) args.push('overhead', String(input.overhead));
  if (input.linklayer !== undefined) args.push('linklayer', input.linklayer);
  return args;
}

/** The rate-spec options a dump carries (the mtu only shaped the table). */
export const readRateSpec = (spec: Ratespec): RateSpecParameters => ({ mpu: spec.mpu, overhead: spec.overhead, linklayer: linkLayerName(spec.linklayer) });

/**
 * A burst in scheduler ticks, as the kernel's 32-bit buffer fields hold it. tc wraps a longer burst
 * around 32 bits and the kernel then gets a tiny one; we refuse it, naming the option (`HTB burst`).
 */
export function burstTicks(option: string, rateBytes: number, size: number, clock: SchedulerClock): number {
  if (!transmitTicksFit(rateBytes, size, clock)) {
    const longest = Math.floor(2 ** 32 / clock.ticksPerMicrosecond / 1e6);
    throw new ShaperrInputError(
      `invalid ${option} ${size} bytes: at ${describeRate(fromWireRate(rateBytes))} it lasts ${Math.round(size / rateBytes)} s, and the kernel holds at most ${longest} s; give a smaller burst or a higher rate`,
    );
  }
  return transmitTicks(rateBytes, size, clock);
}

/** Rates of 2^32 bytes/s and above travel in a separate 64-bit attribute; the 32-bit field saturates. */
export const saturate32 = (rate: number): number => (rate >= 2 ** 32 ? 0xffffffff : rate);

/** Cell size as a power of two, as tc's `burst 1500/8` syntax; -1 means "derive from the MTU". */
export function cellLogOf(cellSize: number | undefined): number {
  if (cellSize === undefined) return -1;
  const log = Math.log2(cellSize);
  if (!Number.isInteger(log) || log < 0 || log > 31) throw new ShaperrInputError(`invalid cell size ${cellSize}: must be a power of two`);
  return log;
}

export interface RateTableInput {
  /** Bytes per second (as the 32-bit field carries it: saturated). */
  rate32: number;
  mpu: number;
  overhead: number;
  linklayer: LinkLayer;
  /** -1: the smallest cell log for which mtu / cell fits in 256 entries. */
  cellLog: number;
  mtu: number;
}

function adjustSize(size: number, mpu: number, linklayer: LinkLayer): number {
  const atLeastMpu = Math.max(size, mpu);
  return linklayer === 'atm' ? Math.ceil(atLeastMpu / ATM_CELL_PAYLOAD) * ATM_CELL_SIZE : atLeastMpu;
}

/** The ratespec struct value and its 1 KiB transmit-time table (tc_calc_rtable); memoised, tables repeat. */
export function rateTable(input: RateTableInput, clock: SchedulerClock): { spec: Ratespec; table: Uint8Array } {
  return cachedRateTable({ input, clock });
}

const cachedRateTable = memoizeBy(
  ({ input, clock }: { input: RateTableInput; clock: SchedulerClock }) =>
    `${input.rate32},${input.mpu},${input.overhead},${input.linklayer},${input.cellLog},${input.mtu},${clock.ticksPerMicrosecond}`,
  ({ input, clock }) => computeRateTable(input, clock),
  256,
);

function computeRateTable(input: RateTableInput, clock: SchedulerClock): { spec: Ratespec; table: Uint8Array } {
  const mtu = input.mtu === 0 ? 2047 : input.mtu;
  let cellLog = input.cellLog;
  if (cellLog < 0) {
    cellLog = 0;
    while (mtu >> cellLog > 255) cellLog++;
  }
  const table = new Uint8Array(1024);
  const view = new DataView(table.buffer);
  for (let i = 0; i < 256; i++) {
    view.setUint32(i * 4, transmitTicks(input.rate32, adjustSize((i + 1) << cellLog, input.mpu, input.linklayer), clock), true);
  }
  return {
    spec: {
      cellLog,
      linklayer: linkLayerCodes[input.linklayer],
      overhead: input.overhead,
      cellAlign: -1,
      mpu: input.mpu,
      rate: input.rate32,
    },
    table,
  };
}
