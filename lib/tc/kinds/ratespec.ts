/**
 * struct tc_ratespec and the 256-entry rate tables iproute2 sends with HTB and TBF (tc_core.c). Modern
 * kernels ignore the table contents (they compute transmit times from the 64-bit rate), but they still
 * require the attribute, and byte equality with tc needs the same values.
 */
import { ShaperrInputError } from '../../wire/errors.js';
import { s16, struct, u16, u32, u8 } from '../../wire/struct.js';
import { memoize } from '../../memo.js';
import { type SchedulerClock, transmitTicks } from '../units.js';

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
  return cachedRateTable([input.rate32, input.mpu, input.overhead, input.linklayer, input.cellLog, input.mtu, clock.ticksPerMicrosecond].join(","));
}

const cachedRateTable = memoize((key: string) => {
  const [rate32, mpu, overhead, linklayer, cellLog, mtu, ticksPerMicrosecond] = key.split(',');
  const input = { rate32: Number(rate32), mpu: Number(mpu), overhead: Number(overhead), linklayer: linklayer as LinkLayer, cellLog: Number(cellLog), mtu: Number(mtu) };
  return computeRateTable(input, { ticksPerMicrosecond: Number(ticksPerMicrosecond), hz: 0 });
}, 256);

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
