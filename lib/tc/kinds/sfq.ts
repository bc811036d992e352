/**
 * SFQ (stochastic fairness queueing): the per-client leaf, so one client's flows share its pipe fairly.
 * tc sends the whole struct tc_sfq_qopt_v1 as a raw (not nested) TCA_OPTIONS, and only when an option is
 * given; the kernel fills in its defaults otherwise. The RED variant (redflowlimit…) is not offered.
 */
import type { MessageWriter } from '../../wire/attributes.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { bytes, nested, s32, struct, u32, u8 } from '../../wire/struct.js';
import { defineKind, type TcKind } from '../kind.js';
import { integerOption, sizeOption } from '../options.js';
import { TCA } from '../tca.js';
import type { SizeInput } from '../units.js';

const tcSfqQopt = struct({ quantum: u32, perturbPeriod: s32, limit: u32, divisor: u32, flows: u32 });
const tcSfqQoptV1 = struct({
  v0: nested(tcSfqQopt),
  depth: u32,
  headdrop: u32,
  redLimit: u32,
  qthMin: u32,
  qthMax: u32,
  wlog: u8,
  plog: u8,
  scellLog: u8,
  flags: u8,
  maxP: u32,
  redStats: bytes(24),
});
const tcSfqXstats = struct({ allot: s32 });

export interface SfqOptions {
  /** Seconds between hash perturbations (0: never). */
  perturb?: number;
  /** Bytes a flow may dequeue per round (default: the device MTU). */
  quantum?: SizeInput;
  /** Packets queued in total. */
  limit?: number;
  /** Hash table size (power of two). */
  divisor?: number;
  /** Maximum number of flows. */
  flows?: number;
  /** Packets queued per flow. */
  depth?: number;
  /** Drop from the head instead of the tail when full. */
  headdrop?: boolean;
}

export interface SfqParameters extends SfqOptions {
  quantum?: number;
}

export interface SfqStats {
  /** Class statistics only: the flow's remaining allotment. */
  allot: number;
}

const optionNames = ['perturb', 'quantum', 'limit', 'divisor', 'flows', 'depth'] as const;

/** Where each counting option is written, so it is checked against that field's width. */
const optionFields = { perturb: 'perturbPeriod', limit: 'limit', divisor: 'divisor', flows: 'flows' } as const;

export const sfqQdisc: TcKind<SfqOptions, SfqParameters, SfqStats> = {
  name: 'sfq',
  resolve(input) {
    const { quantum, ...counts } = input;
    const parameters: SfqParameters = counts;
    for (const option of ['perturb', 'limit', 'divisor', 'flows'] as const) {
      const value = input[option];
      if (value !== undefined) integerOption(`SFQ ${option}`, value, tcSfqQopt.fieldRange(optionFields[option]));
    }
    if (input.limit !== undefined && input.limit < 2) throw new ShaperrInputError(`invalid SFQ limit ${input.limit}: at least 2 packets`);
    if (input.depth !== undefined) integerOption('SFQ depth', input.depth, tcSfqQoptV1.fieldRange('depth'));
    if (quantum !== undefined) parameters.quantum = sizeOption('SFQ quantum', quantum, tcSfqQopt.fieldRange('quantum'));
    return parameters;
  },
  write(writer: MessageWriter, parameters) {
    if (!optionNames.some((name) => parameters[name] !== undefined) && !parameters.headdrop) return;
    writer.attributeStruct(TCA.OPTIONS, tcSfqQoptV1, {
      v0: {
        quantum: parameters.quantum ?? 0,
        perturbPeriod: parameters.perturb ?? 0,
        limit: parameters.limit ?? 0,
        divisor: parameters.divisor ?? 0,
        flows: parameters.flows ?? 0,
      },
      depth: parameters.depth ?? 0,
      headdrop: parameters.headdrop ? 1 : 0,
    });
  },
  read(payload) {
    if (!payload) return {};
    const options = tcSfqQoptV1.decode(payload);
    const parameters: SfqParameters = {
      perturb: options.v0.perturbPeriod,
      quantum: options.v0.quantum,
      limit: options.v0.limit,
      divisor: options.v0.divisor,
      flows: options.v0.flows,
    };
    // Kernels before v1 of the struct send only the first five fields.
    if (payload.byteLength >= tcSfqQoptV1.size) {
      parameters.depth = options.depth;
      parameters.headdrop = options.headdrop !== 0;
    }
    return parameters;
  },
  readExtendedStats: (payload) => tcSfqXstats.decode(payload),
  tcArguments(input) {
    const args: string[] = [];
    for (const name of optionNames) if (input[name] !== undefined) args.push(name, String(input[name]));
    if (input.headdrop) args.push('headdrop');
    return args;
  },
};

export const sfq = defineKind({ qdisc: sfqQdisc });
