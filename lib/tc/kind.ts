/**
 * The contract every tc kind file (htb, sfq, fifo, tbf, u32…) fulfils, and the registry entry that says
 * which roles a kind plays. A role is how its options are checked, written into TCA_OPTIONS, read back
 * and spelled on a `tc` command line; kind files describe their kernel structs and attributes
 * declaratively (lib/wire/struct.ts, lib/wire/attributes.ts) and derive all of that from them.
 * Adding a kind: see CONTRIBUTING.md.
 */
import type { MessageWriter } from '../wire/attributes.js';
import { ShaperrInputError } from '../wire/errors.js';
import { TCA } from './tca.js';
import type { SchedulerClock } from './units.js';

/** What a kind may need besides its options. */
export interface KindContext {
  clock: SchedulerClock;
  /** The tcmsg handle of the object being encoded/decoded. */
  handle?: number;
  /** Filters: the EtherType they match (u32 reads IPv6 header offsets for 0x86dd). */
  protocol?: number;
}

/**
 * One role of a kind. `Input` is what callers write (strings like "2mbit" allowed); `Parameters` is the
 * resolved, all-numeric form with defaults filled in, which is what goes on the wire and what a dump
 * reads back. Rates in `Parameters` are bits per second; sizes are bytes.
 */
export interface TcKind<Input, Parameters extends Input = Input & Required<Input>, Extended = never> {
  /** The kernel's name for the kind (TCA_KIND). */
  readonly name: string;
  /** Validates the input and fills in defaults as tc would. Throws ShaperrInputError on bad input. */
  resolve(input: Input, context: KindContext): Parameters;
  /** Writes TCA_OPTIONS for resolved parameters (or nothing, where tc sends nothing). */
  write(writer: MessageWriter, parameters: Parameters, context: KindContext): void;
  /** Reads the parameters back from a dump's TCA_OPTIONS payload (undefined when the kernel sent none). */
  read(payload: Uint8Array | undefined, context: KindContext): Parameters;
  /** Decodes the kind's extended statistics (TCA_STATS_APP), when it has any. */
  readExtendedStats?(payload: Uint8Array): Extended;
  /** The options as tc arguments after the kind name, e.g. `['rate', '2mbit', 'ceil', '2500kbit']`. */
  tcArguments(input: Input): string[];
}

/** A filter kind also has its own handle syntax (u32: `table:bucket:node`; most kinds: a plain number). */
export interface FilterKind<Input, Parameters extends Input = Input & Required<Input>, Extended = never> extends TcKind<Input, Parameters, Extended> {
  parseHandle(text: string): number;
  /** As tc prints it, and parses it back. */
  formatHandle(handle: number): string;
}

/** A role of any option types: what generic code (requests, decoding) handles; the public types stay exact. */
// biome-ignore lint/suspicious/noExplicitAny: a registry holds kinds of every option type; unknown would not accept them
export type AnyTcKind = TcKind<any, any, any>;
// biome-ignore lint/suspicious/noExplicitAny: as above, for filter kinds
export type AnyFilterKind = FilterKind<any, any, any>;

/** One registry entry: the roles a tc kind plays (htb is a qdisc and a class; u32 a filter). */
export interface KindEntry {
  readonly qdisc?: AnyTcKind;
  readonly class?: AnyTcKind;
  readonly filter?: AnyFilterKind;
}
export type Role = keyof KindEntry;

/** Declares a registry entry (kept exact, so specs and read-back are typed per kind). */
export const defineKind = <const Entry extends KindEntry>(entry: Entry): Entry => entry;

/** Handles of filter kinds that take a plain 32-bit number (`handle 5` or `handle 0x5`), printed as tc does. */
export const numericFilterHandle: Pick<AnyFilterKind, 'parseHandle' | 'formatHandle'> = {
  parseHandle(text) {
    const trimmed = text.trim();
    const value = /^0x[0-9a-f]{1,8}$/i.test(trimmed) ? Number.parseInt(trimmed, 16) : /^\d{1,10}$/.test(trimmed) ? Number(trimmed) : Number.NaN;
    if (!(value >= 0 && value <= 0xffffffff))
      throw new ShaperrInputError(`invalid filter handle ${JSON.stringify(text)}: expected a 32-bit number, e.g. "5" or "0x5"`);
    return value;
  },
  formatHandle: (handle) => `0x${handle.toString(16)}`,
};

/** Opens TCA_OPTIONS as a nested attribute, runs `body`, and closes it. */
export function writeNestedOptions(writer: MessageWriter, body: () => void): void {
  const start = writer.beginNested(TCA.OPTIONS);
  body();
  writer.endNested(start);
}
