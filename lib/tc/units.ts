/**
 * Rates, sizes and times written the way `tc` reads them, and the kernel's packet-scheduler clock.
 * Parsing follows iproute2 6.1 (lib/utils_math.c) so that a string means the same thing to us and to tc;
 * garbage that tc's strtod would half-accept ("0x10", "inf", "12 mbit") is refused with a clear error.
 */
import { readFileSync } from 'node:fs';
import { memoizeParser } from '../memo.js';
import { ShaperrInputError } from '../wire/errors.js';

/** A rate: every rate in shaperr's API, options and read-backs is a number of bits per second. */
export type BitsPerSecond = number;
/** A rate as accepted by the API: a tc-style string, or a number of bits per second. */
export type RateInput = string | BitsPerSecond;
/** A size as accepted by the API: a tc-style string, or a number of bytes. */
export type SizeInput = string | number;

// Suffix → multiplier to bits; case-insensitive, as tc's strcasecmp (so "kbps" is kilo*bytes* per second).
const rateSuffixes = new Map<string, number>([
  ['bit', 1],
  ['kibit', 1024],
  ['kbit', 1000],
  ['mibit', 1024 ** 2],
  ['mbit', 1e6],
  ['gibit', 1024 ** 3],
  ['gbit', 1e9],
  ['tibit', 1024 ** 4],
  ['tbit', 1e12],
  ['bps', 8],
  ['kibps', 8 * 1024],
  ['kbps', 8000],
  ['mibps', 8 * 1024 ** 2],
  ['mbps', 8e6],
  ['gibps', 8 * 1024 ** 3],
  ['gbps', 8e9],
  ['tibps', 8 * 1024 ** 4],
  ['tbps', 8e12],
]);

const sizeSuffixes = new Map<string, number>([
  ['', 1],
  ['b', 1],
  ['k', 1024],
  ['kb', 1024],
  ['m', 1024 ** 2],
  ['mb', 1024 ** 2],
  ['g', 1024 ** 3],
  ['gb', 1024 ** 3],
  ['kbit', 1024 / 8],
  ['mbit', (1024 * 1024) / 8],
  ['gbit', (1024 * 1024 * 1024) / 8],
]);

const timeSuffixes = new Map<string, number>([
  ['', 1],
  ['s', 1e6],
  ['sec', 1e6],
  ['secs', 1e6],
  ['ms', 1e3],
  ['msec', 1e3],
  ['msecs', 1e3],
  ['us', 1],
  ['usec', 1],
  ['usecs', 1],
]);

const NUMBER_WITH_SUFFIX = /^((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)([a-z]*)$/i;

function splitNumber(text: string, what: string, example: string): { value: number; suffix: string } {
  const match = NUMBER_WITH_SUFFIX.exec(text.trim());
  if (!match) throw new ShaperrInputError(`invalid ${what} ${JSON.stringify(text)}: expected a number with an optional unit, e.g. ${example}`);
  return { value: Number(match[1]), suffix: match[2]!.toLowerCase() };
}

const U32_MAX = 0xffffffff;

/**
 * Parses a rate into bits per second, rounded down to whole bytes per second (what the kernel holds).
 * Strings as tc (`2mbit`, `2.5mbit`, `500kbps` = bytes); numbers are bit/s.
 */
export function parseRate(input: RateInput): BitsPerSecond {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0) throw new ShaperrInputError(`invalid rate ${input}: expected a non-negative number of bits per second`);
    return checkedRate(input, input);
  }
  return parseRateText(input);
}

/** The same few rate texts ("2mbit") come in every class of a batch: each is parsed once. */
const parseRateText = memoizeParser((input: string): BitsPerSecond => {
  const { value, suffix } = splitNumber(input, 'rate', '2mbit, 2500kbit, 1gbit or 500kbps (bytes)');
  const scale = suffix === '' ? 1 : rateSuffixes.get(suffix);
  if (scale === undefined) {
    throw new ShaperrInputError(
      `invalid rate ${JSON.stringify(input)}: unknown unit '${suffix}' (use bit, kbit, mbit, gbit, tbit, kibit…, or bps, kbps, mbps… for bytes)`,
    );
  }
  return checkedRate(value * scale, input);
});

function checkedRate(bits: number, input: RateInput): BitsPerSecond {
  const whole = wholeBytesPerSecond(bits);
  if (whole < 8) throw new ShaperrInputError(`invalid rate ${JSON.stringify(input)}: must be at least 8 bit/s`);
  if (!Number.isSafeInteger(whole)) throw new ShaperrInputError(`invalid rate ${JSON.stringify(input)}: too large`);
  return whole;
}

/** A rate rounded down to whole bytes per second: the kernel's rate fields count bytes. */
export const wholeBytesPerSecond = (rate: BitsPerSecond): BitsPerSecond => Math.trunc(rate / 8) * 8;

/** Parses a size into bytes: `1500`, `10kb`, `1mb` (binary multiples, as tc). */
export function parseSize(input: SizeInput): number {
  let bytes: number;
  if (typeof input === 'number') {
    bytes = input;
  } else {
    const { value, suffix } = splitNumber(input, 'size', '1500, 10kb or 1mb');
    const scale = sizeSuffixes.get(suffix);
    if (scale === undefined) throw new ShaperrInputError(`invalid size ${JSON.stringify(input)}: unknown unit '${suffix}' (use b, kb, mb, gb)`);
    bytes = value * scale;
  }
  if (!Number.isFinite(bytes) || bytes < 0 || Math.trunc(bytes) > U32_MAX) {
    throw new ShaperrInputError(`invalid size ${JSON.stringify(input)}: must be between 0 and ${U32_MAX} bytes`);
  }
  return Math.trunc(bytes);
}

/** Parses a time into microseconds: `50ms`, `1s`, `200us`; a bare number is microseconds, as tc. */
export function parseTime(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0) throw new ShaperrInputError(`invalid time ${input}: expected microseconds >= 0`);
    return Math.trunc(input);
  }
  const { value, suffix } = splitNumber(input, 'time', '50ms, 1s or 200us');
  const scale = timeSuffixes.get(suffix);
  if (scale === undefined) throw new ShaperrInputError(`invalid time ${JSON.stringify(input)}: unknown unit '${suffix}' (use s, ms, us)`);
  return Math.trunc(value * scale);
}

/** A rate written so that tc reads back exactly the same value. */
export function formatRate(bits: BitsPerSecond): string {
  for (const [unit, scale] of [
    ['gbit', 1e9],
    ['mbit', 1e6],
    ['kbit', 1e3],
  ] as const) {
    if (bits % scale === 0) return `${bits / scale}${unit}`;
  }
  return `${bits}bit`;
}

/** A rate for people: `2.5 Mbit/s`. */
export function describeRate(bits: BitsPerSecond): string {
  for (const [unit, scale] of [
    ['Gbit/s', 1e9],
    ['Mbit/s', 1e6],
    ['kbit/s', 1e3],
  ] as const) {
    if (bits >= scale) return `${Number((bits / scale).toFixed(2))} ${unit}`;
  }
  return `${bits} bit/s`;
}

/**
 * The kernel packet scheduler's clock, from /proc/net/psched, with tc's compatibility rule for
 * nanosecond clocks. Ticks are what HTB/TBF burst fields are expressed in.
 */
export interface SchedulerClock {
  /** Ticks per microsecond (tc's tick_in_usec; 15.625 with the usual 64 ns tick). */
  readonly ticksPerMicrosecond: number;
  /** tc's get_hz(): the divisor for the default HTB burst. */
  readonly hz: number;
}

const DEFAULT_HZ = 100;

export function parsePsched(text: string): SchedulerClock {
  const fields = text
    .trim()
    .split(/\s+/)
    .map((field) => Number.parseInt(field, 16));
  if (fields.length < 4 || fields.some((field) => !Number.isFinite(field))) {
    throw new Error(`unexpected /proc/net/psched contents: ${JSON.stringify(text)}`);
  }
  const [nsPerMicrosecond, nsPerTick, clockResolution, timerHz] = fields as [number, number, number, number];
  // Kernels with a nanosecond clock resolution field advertise a multiplier meant for old binaries.
  const numerator = clockResolution === 1e9 ? nsPerTick : nsPerMicrosecond;
  return {
    ticksPerMicrosecond: (numerator / nsPerTick) * (clockResolution / 1e6),
    hz: clockResolution === 1e6 ? timerHz : DEFAULT_HZ,
  };
}

let cachedClock: SchedulerClock | undefined;
export function schedulerClock(): SchedulerClock {
  cachedClock ??= parsePsched(readFileSync('/proc/net/psched', 'utf8'));
  return cachedClock;
}

/**
 * A double stored in an `unsigned int` as tc's rate-table loop does it (iproute2 6.1 on x86-64): truncated,
 * and 0 when it does not fit in 32 bits (the golden vectors show it).
 */
const tableU32 = (value: number): number => (value >= 2 ** 32 ? 0 : Math.trunc(value));

/**
 * Time in scheduler ticks to send `size` bytes at `rate` bytes/s (tc_calc_xmittime, iproute2 6.1 rounding).
 * Past 32 bits it becomes 0 as in tc's rate tables, which kernels ignore; a burst is checked first
 * (ratespec.ts burstTicks) and refused, since tc would send the kernel a wrapped one.
 */
export function transmitTicks(rate: number, size: number, clock: SchedulerClock): number {
  const microseconds = tableU32(1e6 * (size / rate));
  return tableU32(microseconds * clock.ticksPerMicrosecond);
}

/** Whether `transmitTicks(rate, size)` stays within 32 bits, where tc neither wraps nor loses time. */
export function transmitTicksFit(rate: number, size: number, clock: SchedulerClock): boolean {
  const microseconds = 1e6 * (size / rate);
  return microseconds < 2 ** 32 && Math.trunc(microseconds) * clock.ticksPerMicrosecond < 2 ** 32;
}

/** Bytes sent at `rate` during `ticks` (tc_calc_xmitsize): the inverse, for reading bursts back. */
export function transmitSize(rate: number, ticks: number, clock: SchedulerClock): number {
  const microseconds = Math.trunc(ticks / clock.ticksPerMicrosecond);
  return Math.trunc((rate * microseconds) / 1e6);
}
