/** tc handles: `major:minor` in hex, packed as major << 16 | minor (e.g. "1:10" ⇄ 0x0001000a). */
import { memoizeParser } from '../memo.js';
import { ShaperrInputError } from '../wire/errors.js';

export const TC_H_ROOT = 0xffffffff;
export const TC_H_UNSPEC = 0;
export const TC_H_INGRESS = 0xfffffff1;
export const TC_H_CLSACT = TC_H_INGRESS;

/** A handle as accepted by the API: `"1:10"`, `"1:"`, `"root"`, or the packed number. */
export type HandleInput = string | number;

const HEX_PART = /^[0-9a-f]{0,4}$/i;

export function parseHandle(input: HandleInput): number {
  if (typeof input === 'number') {
    if (!Number.isInteger(input) || input < 0 || input > 0xffffffff) throw new ShaperrInputError(`invalid handle ${input}: expected a 32-bit unsigned integer`);
    return input;
  }
  return parseHandleText(input);
}

/** The same few handle texts ("1:", "1:1") come in every request of a batch: each is parsed once. */
const parseHandleText = memoizeParser((input: string): number => {
  const text = input.trim().toLowerCase();
  if (text === 'root') return TC_H_ROOT;
  if (text === 'none' || text === 'unspec') return TC_H_UNSPEC;
  if (text === 'ingress' || text === 'clsact') return TC_H_INGRESS;
  const colon = text.indexOf(':');
  const major = colon < 0 ? text : text.slice(0, colon);
  const minor = colon < 0 ? '' : text.slice(colon + 1);
  if (colon < 0 || !HEX_PART.test(major) || !HEX_PART.test(minor) || (major === '' && minor === '')) {
    throw new ShaperrInputError(`invalid handle ${JSON.stringify(input)}: expected major:minor in hex, e.g. "1:" or "1:10"`);
  }
  return ((Number.parseInt(major || '0', 16) << 16) | Number.parseInt(minor || '0', 16)) >>> 0;
});

export const handleMajor = (handle: number): number => handle >>> 16;
export const handleMinor = (handle: number): number => handle & 0xffff;
export const makeHandle = (major: number, minor: number): number => ((major << 16) | minor) >>> 0;

/** Formats a handle the way tc prints it: `1:a`, `1:` (minor 0), `root`. */
export function formatHandle(handle: number): string {
  if (handle === TC_H_ROOT) return 'root';
  if (handle === TC_H_UNSPEC) return 'none';
  if (handle === TC_H_INGRESS) return 'ingress';
  const minor = handleMinor(handle);
  return `${handleMajor(handle).toString(16)}:${minor ? minor.toString(16) : ''}`;
}
