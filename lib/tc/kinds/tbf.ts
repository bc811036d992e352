/** TBF (token bucket filter): a single-rate shaper, as iproute2 6.1's q_tbf.c encodes it. */
import { attr, attrBytes, attributeSet, attrU32, attrU64 } from '../../wire/attributes.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { nested, struct, u32 } from '../../wire/struct.js';
import { defineKind, type TcKind, writeNestedOptions } from '../kind.js';
import { sizeOption, timeOption, U32_RANGE } from '../options.js';
import { type BitsPerSecond, formatRate, parseRate, type RateInput, type SizeInput, transmitSize, transmitTicks } from '../units.js';
import {
  burstTicks,
  fromWireRate,
  type RateSpecOptions,
  rateSpecArguments,
  type RateSpecParameters,
  rateTable,
  readRateSpec,
  resolveRateSpec,
  saturate32,
  tcRatespec,
  toWireRate,
} from './ratespec.js';

const tcTbfQopt = struct({ rate: nested(tcRatespec), peakrate: nested(tcRatespec), limit: u32, buffer: u32, mtu: u32 });

// In tc's write order.
const tbfAttributes = attributeSet({
  parms: attr(1, tcTbfQopt),
  burst: attr(6, attrU32),
  rate64: attr(4, attrU64),
  rtab: attr(2, attrBytes),
  prate64: attr(5, attrU64),
  pburst: attr(7, attrU32),
  ptab: attr(3, attrBytes),
});

export interface TbfOptions extends RateSpecOptions {
  rate: RateInput;
  /** Bucket size in bytes. */
  burst: SizeInput;
  /** Queue limit in bytes; give this or `latency`. */
  limit?: SizeInput;
  /** Longest time a packet may wait; converted to a byte limit as tc does. */
  latency?: string | number;
  /** Second bucket: peak rate, with `mtu` as its size. */
  peakrate?: RateInput;
}

export interface TbfParameters extends Omit<TbfOptions, keyof RateSpecOptions>, RateSpecParameters {
  rate: BitsPerSecond;
  burst: number;
  limit: number;
  peakrate?: BitsPerSecond;
}

export const tbfQdisc: TcKind<TbfOptions, TbfParameters> = {
  name: 'tbf',
  resolve(input, context) {
    if ((input.limit === undefined) === (input.latency === undefined)) {
      throw new ShaperrInputError('invalid TBF options: give exactly one of limit or latency');
    }
    if (input.peakrate !== undefined && input.mtu === undefined) throw new ShaperrInputError('invalid TBF options: peakrate needs mtu');
    const rate = parseRate(input.rate);
    const rateBytes = toWireRate(rate);
    const burst = sizeOption('TBF burst', input.burst);
    if (burst === 0) throw new ShaperrInputError('invalid TBF burst 0: must be positive');
    const peakrate = input.peakrate === undefined ? undefined : parseRate(input.peakrate);
    const peakBytes = peakrate === undefined ? undefined : toWireRate(peakrate);
    const rateSpec = resolveRateSpec('TBF', input);
    const mtu = rateSpec.mtu;
    // tc computes both times from the saturated 32-bit rates.
    burstTicks('TBF burst', saturate32(rateBytes), burst, context.clock);
    if (peakBytes !== undefined) burstTicks('TBF mtu', saturate32(peakBytes), mtu!, context.clock);
    let limit: number;
    if (input.limit !== undefined) {
      limit = sizeOption('TBF limit', input.limit);
    } else {
      const latency = timeOption('TBF latency', input.latency!);
      limit = (rateBytes * latency) / 1e6 + burst;
      if (peakBytes !== undefined) limit = Math.min(limit, (peakBytes * latency) / 1e6 + mtu!);
      limit = Math.trunc(limit);
      if (limit > U32_RANGE.max)
        throw new ShaperrInputError(`invalid TBF latency ${JSON.stringify(input.latency)}: at this rate its byte limit ${limit} exceeds 32 bits`);
    }
    const parameters: TbfParameters = { rate, burst, limit, ...rateSpec };
    if (peakrate !== undefined) parameters.peakrate = peakrate;
    return parameters;
  },
  write(writer, parameters, context) {
    const rateBytes = toWireRate(parameters.rate);
    const peakBytes = parameters.peakrate === undefined ? 0 : toWireRate(parameters.peakrate);
    const common = { mpu: parameters.mpu, overhead: parameters.overhead, linklayer: parameters.linklayer, mtu: parameters.mtu ?? 0, cellLog: -1 };
    const rate = rateTable({ ...common, rate32: saturate32(rateBytes) }, context.clock);
    const peak = peakBytes ? rateTable({ ...common, rate32: saturate32(peakBytes) }, context.clock) : undefined;
    writeNestedOptions(writer, () =>
      tbfAttributes.write(writer, {
        parms: {
          rate: rate.spec,
          peakrate: peak?.spec,
          limit: parameters.limit,
          buffer: transmitTicks(saturate32(rateBytes), parameters.burst, context.clock),
          mtu: peak ? transmitTicks(saturate32(peakBytes), parameters.mtu!, context.clock) : 0,
        },
        burst: parameters.burst,
        rate64: rateBytes >= 2 ** 32 ? BigInt(rateBytes) : undefined,
        rtab: rate.table,
        prate64: peakBytes >= 2 ** 32 ? BigInt(peakBytes) : undefined,
        pburst: peak ? parameters.mtu : undefined,
        ptab: peak?.table,
      }),
    );
  },
  read(payload, context) {
    const values = tbfAttributes.read(payload ?? new Uint8Array());
    if (!values.parms) throw new Error('TBF options without TCA_TBF_PARMS');
    const rateBytes = values.rate64 !== undefined ? Number(values.rate64) : values.parms.rate.rate;
    const parameters: TbfParameters = {
      rate: fromWireRate(rateBytes),
      burst: values.burst ?? transmitSize(rateBytes, values.parms.buffer, context.clock),
      limit: values.parms.limit,
      ...readRateSpec(values.parms.rate),
    };
    const peakBytes = values.prate64 !== undefined ? Number(values.prate64) : values.parms.peakrate.rate;
    if (peakBytes) {
      parameters.peakrate = fromWireRate(peakBytes);
      parameters.mtu = values.pburst ?? transmitSize(peakBytes, values.parms.mtu, context.clock);
    }
    return parameters;
  },
  tcArguments(input) {
    const rate = (value: RateInput): string => (typeof value === 'number' ? formatRate(parseRate(value)) : value);
    const args = ['rate', rate(input.rate), 'burst', String(input.burst)];
    if (input.limit !== undefined) args.push('limit', String(input.limit));
    if (input.latency !== undefined) args.push('latency', typeof input.latency === 'number' ? `${input.latency}us` : input.latency);
    if (input.peakrate !== undefined) args.push('peakrate', rate(input.peakrate));
    args.push(...rateSpecArguments(input));
    return args;
  },
};

export const tbf = defineKind({ qdisc: tbfQdisc });
