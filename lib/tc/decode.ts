/** Dump replies → typed qdiscs, classes and filters, each decoded by its registered kind. */
import type { ReceivedMessage } from '../wire/message.js';
import { tcmsg } from '../wire/message.js';
import { swap16 } from './encode.js';
import type { AnyTcKind, KindContext } from './kind.js';
import { type FilterKindName, knownKind } from './registry.js';
import { readStatistics, type TcStatistics } from './stats.js';
import { tcaAttributes } from './tca.js';
import type { Filter, Qdisc, TcClass } from './types.js';

interface DecodedTcMessage {
  header: ReturnType<typeof tcmsg.decode>;
  kind: string | undefined;
  options: Uint8Array | undefined;
  statistics?: TcStatistics;
  application?: Uint8Array;
}

function decodeTcMessage(message: ReceivedMessage): DecodedTcMessage {
  const header = tcmsg.decode(message.body);
  const values = tcaAttributes.read(message.body.subarray(tcmsg.size));
  const decoded: DecodedTcMessage = { header, kind: values.kind, options: values.options };
  if (values.stats2) Object.assign(decoded, readStatistics(values.stats2));
  return decoded;
}

function withStatistics<T extends object>(target: T, decoded: DecodedTcMessage, kind: AnyTcKind | undefined): T {
  if (decoded.statistics) Object.assign(target, { statistics: decoded.statistics });
  if (decoded.application && kind?.readExtendedStats) Object.assign(target, { extendedStatistics: kind.readExtendedStats(decoded.application) });
  return target;
}

export function readQdisc(message: ReceivedMessage, context: KindContext): Qdisc {
  const decoded = decodeTcMessage(message);
  const base = { ifindex: decoded.header.ifindex, handle: decoded.header.handle, parent: decoded.header.parent };
  const kind = knownKind('qdisc', decoded.kind);
  const qdisc = kind
    ? { ...base, kind: decoded.kind, parameters: kind.read(decoded.options, context) }
    : { ...base, kind: `other:${decoded.kind ?? 'unknown'}` };
  return withStatistics(qdisc as Qdisc, decoded, kind);
}

/** Only a class's handle and byte counter: what polling for activity needs, without decoding its options. */
export function readClassCounters(message: ReceivedMessage): { handle: number; bytes: number; backlog: number } {
  const { handle } = tcmsg.decode(message.body);
  const { stats2 } = tcaAttributes.read(message.body.subarray(tcmsg.size));
  if (!stats2) return { handle, bytes: 0, backlog: 0 };
  const { bytes, backlog } = readStatistics(stats2).statistics;
  return { handle, bytes, backlog };
}

/** A class of a kind we speak; undefined for others. */
export function readClass(message: ReceivedMessage, context: KindContext): TcClass | undefined {
  const decoded = decodeTcMessage(message);
  const kind = knownKind('class', decoded.kind);
  if (!kind) return undefined;
  const tcClass = {
    ifindex: decoded.header.ifindex,
    handle: decoded.header.handle,
    parent: decoded.header.parent,
    kind: decoded.kind,
    parameters: kind.read(decoded.options, context),
  } as TcClass;
  if (decoded.header.info) tcClass.leaf = decoded.header.info;
  return withStatistics(tcClass, decoded, kind);
}

/** A filter of kind `wanted`; undefined for filters of other kinds. */
export function readFilter<K extends FilterKindName>(message: ReceivedMessage, context: KindContext, wanted: K): Filter<K> | undefined {
  const decoded = decodeTcMessage(message);
  if (decoded.kind !== wanted) return undefined;
  const kind = knownKind('filter', wanted)!;
  const { info, handle } = decoded.header;
  const protocol = swap16(info & 0xffff);
  return {
    ifindex: decoded.header.ifindex,
    kind: wanted,
    parent: decoded.header.parent,
    priority: info >>> 16,
    protocol,
    handle,
    parameters: kind.read(decoded.options, { ...context, handle, protocol }),
  } as Filter<K>;
}
