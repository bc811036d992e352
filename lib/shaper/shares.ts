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
 * A contended share that must move is set this fraction below its exact value, and kept as long as it lies
 * within KEEP_BELOW of it: one more or one fewer viewer among many rewrites no class, and a rebalance
 * rewrites them all only every few percent of change.
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

export interface ShareRequest {
  wanted: WantedLimits;
  /** What the kernel has now; undefined for a pipe not made yet. */
  pipe?: PipeParameters | undefined;
}

/**
 * The parameters every pipe should have. `available` is the server rate less the guarantees of pipes
 * that are only draining. Guaranteed rates never add up to more than `available`.
 */
export function allocateShares(serverRate: number, available: number, requests: readonly ShareRequest[]): PipeParameters[] {
  let wantedTotal = 0;
  for (const request of requests) wantedTotal += request.wanted.rate;
  const contended = wantedTotal > available;
  // Called on every join and leave with thousands of pipes: a pipe that keeps its parameters keeps its object.
  return requests.map(({ wanted, pipe }) => {
    const rate = contended ? contendedRate((Math.max(0, available) * wanted.rate) / wantedTotal, pipe?.rate) : wanted.rate;
    const ceil = Math.max(rate, Math.min(wanted.ceil, serverRate));
    const quantum = quantumFor(wanted.rate);
    return pipe && pipe.rate === rate && pipe.ceil === ceil && pipe.quantum === quantum ? pipe : { rate, ceil, quantum };
  });
}

function contendedRate(exact: number, current: number | undefined): number {
  if (current !== undefined && current <= exact && current >= exact * (1 - KEEP_BELOW)) return current;
  return Math.min(wholeBytes(exact * (1 - SET_BELOW)), Math.max(SMALLEST_RATE, Math.floor(exact)));
}
