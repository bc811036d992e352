/**
 * The contract every tc kind file (htb, sfq, fifo, tbf, u32…) fulfils: how its options are written into
 * TCA_OPTIONS, read back, and spelled on a `tc` command line. Kind files describe their kernel structs
 * and attributes declaratively (lib/wire/struct.ts, lib/wire/attributes.ts) and derive all three from that.
 */
import type { MessageWriter } from '../wire/attributes.js';
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
 * One kind. `Input` is what callers write (strings like "2mbit" allowed); `Parameters` is the resolved,
 * all-numeric form with defaults filled in, which is what goes on the wire and what a dump reads back.
 * Rates in `Parameters` are bits per second; sizes are bytes.
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

/** TCA_OPTIONS, the attribute every kind nests its options in. */
export const TCA_OPTIONS = 2;

/** Opens TCA_OPTIONS as a nested attribute, runs `body`, and closes it. */
export function writeNestedOptions(writer: MessageWriter, body: () => void): void {
  const start = writer.beginNested(TCA_OPTIONS);
  body();
  writer.endNested(start);
}
