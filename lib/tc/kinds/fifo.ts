/**
 * pfifo and bfifo: the plain leaves, and what an SFQ leaf falls back to on kernels without sch_sfq.
 * tc sends struct tc_fifo_qopt as a raw TCA_OPTIONS, only when a limit is given.
 */
import { struct, u32 } from '../../wire/struct.js';
import { defineKind, type TcKind } from '../kind.js';
import { sizeOption } from '../options.js';
import { TCA } from '../tca.js';
import type { SizeInput } from '../units.js';

const tcFifoQopt = struct({ limit: u32 });

export interface FifoOptions {
  /** pfifo: packets; bfifo: bytes (tc-style sizes like `64kb` allowed). */
  limit?: SizeInput;
}
export interface FifoParameters extends FifoOptions {
  limit?: number;
}

function fifoKind(name: 'pfifo' | 'bfifo'): TcKind<FifoOptions, FifoParameters> {
  return {
    name,
    resolve: (input) => (input.limit === undefined ? {} : { limit: sizeOption(`${name} limit`, input.limit, tcFifoQopt.fieldRange('limit')) }),
    write(writer, parameters) {
      if (parameters.limit !== undefined) writer.attributeStruct(TCA.OPTIONS, tcFifoQopt, { limit: parameters.limit });
    },
    read: (payload) => (payload ? { limit: tcFifoQopt.decode(payload).limit } : {}),
    tcArguments: (input) => (input.limit === undefined ? [] : ['limit', String(input.limit)]),
  };
}

export const pfifoQdisc = fifoKind('pfifo');
export const bfifoQdisc = fifoKind('bfifo');

export const pfifo = defineKind({ qdisc: pfifoQdisc });
export const bfifo = defineKind({ qdisc: bfifoQdisc });
