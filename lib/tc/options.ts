/**
 * Checks for the options a user gives a kind, in the user's terms: the error names the kind, the option
 * and the value. An integer option is checked against the width of the kernel field it is written to
 * (a struct's fieldRange), so the limit is declared once, in the struct, and cannot drift.
 */
import { ShaperrInputError } from '../wire/errors.js';
import { integerRange, type IntegerRange } from '../wire/struct.js';
import { parseSize, parseTime, type SizeInput } from './units.js';

export const U32_RANGE = integerRange('u32');

/** `value` if it is an integer within `range`; otherwise one ShaperrInputError naming `option` (e.g. "TBF mpu"). */
export function integerOption(option: string, value: number, range: IntegerRange): number {
  if (!Number.isInteger(value) || value < range.min || value > range.max) {
    throw new ShaperrInputError(`invalid ${option} ${JSON.stringify(value)}: expected an integer from ${range.min} to ${range.max}`);
  }
  return value;
}

/** A time in microseconds (`5ms`, `1s`, or a number of µs) that must fit `range` (default: 32 bits), refused naming `option`. */
export function timeOption(option: string, value: string | number, range: IntegerRange = U32_RANGE): number {
  let microseconds: number;
  try {
    microseconds = parseTime(value);
  } catch (error) {
    throw error instanceof ShaperrInputError ? new ShaperrInputError(`invalid ${option}: ${error.message}`) : error;
  }
  if (microseconds < range.min || microseconds > range.max)
    throw new ShaperrInputError(`invalid ${option} ${JSON.stringify(value)}: expected ${range.min} to ${range.max} µs`);
  return microseconds;
}

/** A size in bytes (`1500`, `64kb`) that must fit `range` (default: 32 bits), refused naming `option`. */
export function sizeOption(option: string, value: SizeInput, range: IntegerRange = U32_RANGE): number {
  let bytes: number;
  try {
    bytes = parseSize(value);
  } catch (error) {
    throw error instanceof ShaperrInputError ? new ShaperrInputError(`invalid ${option}: ${error.message}`) : error;
  }
  if (bytes < range.min || bytes > range.max)
    throw new ShaperrInputError(`invalid ${option} ${JSON.stringify(value)}: expected ${range.min} to ${range.max} bytes`);
  return bytes;
}
