/**
 * How the server rate is shared among client pipes. HTB guarantees every class its own `rate` whatever its
 * parent allows (the parent only bounds what children borrow above their rates), so the server ceiling
 * holds only while the clients' guaranteed rates add up to no more than the server rate.
 *
 * Each pipe is guaranteed min(its wanted rate, its share), the shares weighted by the wanted rates; it
 * may borrow up to min(its wanted ceil, the server rate). What it borrows is split by HTB's deficit round
 * robin, one quantum per turn, so quanta are proportional to the wanted rates too.
 *
 * Measured before choosing this over "tiny guaranteed rates, quanta as weights, never rebalance": with
 * three bulk TCP clients weighted 2:3:4 under a 6 Mbit/s server (GSO on), guaranteed shares came out within
 * 2 % of the 2:3:4 split, quanta alone 9–13 % off (a turn is lost whenever a TCP flow is momentarily
 * not backlogged). See the README's "Sharing the server rate".
 */
import { type BitsPerSecond, wholeBytesPerSecond } from '../tc/units.js';

export interface WantedLimits {
  rate: BitsPerSecond;
  ceil: BitsPerSecond;
}

/** What one client class gets in the kernel: its rates, and its quantum in bytes. */
export interface PipeParameters {
  rate: BitsPerSecond;
  ceil: BitsPerSecond;
  quantum: number;
}

/**
 * When contended, every pipe is guaranteed the same fraction of its wanted rate: the contention factor.
 * One that must move is set this fraction below the exact one (available ÷ wanted total) and kept as long
 * as it lies within KEEP_BELOW of it. So one more or one fewer viewer among many rewrites no other class,
 * and when the factor does move, every contended class moves with it in one batch, once per 2–5 % of change.
 */
const SET_BELOW = 0.02;
const KEEP_BELOW = 0.05;
/**
 * Seconds of the wanted rate served per round-robin turn. HTB serves whole packets, and a qdisc sees GSO
 * super-packets of up to 64 KB: a quantum below that turns the weights into plain round robin. Half a
 * second keeps the weights exact from 1 Mbit/s of wanted rate up.
 */
const QUANTUM_SECONDS = 0.5;
const QUANTUM_MIN = 1600;
const QUANTUM_MAX = 16 << 20;
/** HTB rates are whole bytes per second. */
const SMALLEST_RATE = 8;

const wholeBytes = (bits: number): number => Math.max(SMALLEST_RATE, wholeBytesPerSecond(bits));

export function quantumFor(wantedRate: number): number {
  return Math.min(QUANTUM_MAX, Math.max(QUANTUM_MIN, Math.round((wantedRate / 8) * QUANTUM_SECONDS)));
}

/**
 * The wanted rate a pipe found in the kernel was made for: its quantum is its weight, while its rate may
 * be a contended share. Undefined when the quantum was clamped (or not set by shaperr).
 */
export function wantedRateOf(quantum: number): number | undefined {
  if (quantum <= QUANTUM_MIN || quantum >= QUANTUM_MAX) return undefined;
  return Math.round(quantum / QUANTUM_SECONDS) * 8;
}

/** What an allocation was made for: pipes allocated under the same terms keep their parameters. */
export interface AllocationTerms {
  /** The fraction of its wanted rate every contended pipe is guaranteed; undefined while uncontended. */
  factor: number | undefined;
  serverRate: BitsPerSecond;
}

/**
 * The terms for pipes wanting `wantedTotal` together, when `available` is the server rate less what is
 * kept out of the shares (reserve, draining pipes). The guaranteed rates never add up to more than
 * `available`: each is rounded down to whole bytes.
 */
export function allocationTerms(serverRate: BitsPerSecond, available: BitsPerSecond, wantedTotal: BitsPerSecond, inUse?: AllocationTerms): AllocationTerms {
  if (wantedTotal <= available) return { factor: undefined, serverRate };
  const exact = Math.max(0, available) / wantedTotal;
  const kept = inUse?.factor;
  const factor = kept !== undefined && kept <= exact && kept >= exact * (1 - KEEP_BELOW) ? kept : exact * (1 - SET_BELOW);
  return { factor, serverRate };
}

export const sameTerms = (a: AllocationTerms | undefined, b: AllocationTerms): boolean =>
  a !== undefined && a.factor === b.factor && a.serverRate === b.serverRate;

/** One pipe's parameters under `terms`; `current` itself when they are the same (no allocation on the hot path). */
export function pipeParameters(wanted: WantedLimits, terms: AllocationTerms, current?: PipeParameters): PipeParameters {
  const rate = terms.factor === undefined ? wanted.rate : wholeBytes(wanted.rate * terms.factor);
  const ceil = Math.max(rate, Math.min(wanted.ceil, terms.serverRate));
  const quantum = quantumFor(wanted.rate);
  return current && current.rate === rate && current.ceil === ceil && current.quantum === quantum ? current : { rate, ceil, quantum };
}
