/**
 * The typed object layer: qdisc, class and filter specs → netlink requests, dump replies → typed objects,
 * and any spec → the equivalent `tc` command line.
 */
import { attr, attrBytes, attributeSet, attrString, attrU32, type MessageWriter } from '../wire/attributes.js';
import type { NetlinkRequest } from '../wire/connection.js';
import { ShaperrInputError } from '../wire/errors.js';
import { Flags, MessageType, type ReceivedMessage, tcmsg } from '../wire/message.js';
import { s8, struct, u8 } from '../wire/struct.js';
import { formatHandle, type HandleInput, parseHandle, TC_H_ROOT } from './handle.js';
import type { KindContext, TcKind } from './kind.js';
import { bfifo, pfifo } from './kinds/fifo.js';
import { htbClass, htbQdisc } from './kinds/htb.js';
import { sfq } from './kinds/sfq.js';
import { tbf } from './kinds/tbf.js';
import { formatU32Handle, parseU32Handle, u32 } from './kinds/u32.js';
import { readStatistics, type TcStatistics } from './stats.js';
import { parseTime } from './units.js';

export const qdiscKinds = { htb: htbQdisc, sfq, pfifo, bfifo, tbf } as const;
export const classKinds = { htb: htbClass } as const;
export const filterKinds = { u32 } as const;

type AnyKind = TcKind<any, any, any>;
type InputOf<K> = K extends TcKind<infer I, infer _P, infer _E> ? I : never;
type ParametersOf<K> = K extends TcKind<infer _I, infer P, infer _E> ? P : never;
type ExtendedOf<K> = K extends TcKind<infer _I, infer _P, infer E> ? E : never;

export type QdiscKindName = keyof typeof qdiscKinds;
export type ClassKindName = keyof typeof classKinds;
export type FilterKindName = keyof typeof filterKinds;

const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TCA_RATE = 5;

const tcEstimator = struct({ interval: s8, ewmaLog: u8 });
const tcaAttributes = attributeSet({
  kind: attr(TCA_KIND, attrString),
  rate: attr(TCA_RATE, tcEstimator),
  options: attr(TCA_OPTIONS, attrBytes),
  stats2: attr(7, attrBytes),
  chain: attr(11, attrU32),
});

/** A rate estimator (tc's `estimator 1sec 8sec`): classes have live rates in their stats only with one. */
export interface Estimator {
  /** Sampling interval: 250ms … 8s (a power of two times 250 ms). */
  interval: string | number;
  /** Averaging time constant. */
  timeConstant: string | number;
}

/** Filter protocols by name, or an EtherType number. */
export type FilterProtocol = 'ip' | 'ipv6' | 'all' | number;
const protocolNumbers: Record<string, number> = { ip: 0x0800, ipv6: 0x86dd, all: 0x0003 };

export type QdiscSpec = {
  [K in QdiscKindName]: {
    kind: K;
    /** Default: root. */
    parent?: HandleInput;
    handle?: HandleInput;
    options?: InputOf<(typeof qdiscKinds)[K]>;
    estimator?: Estimator;
  };
}[QdiscKindName];

export interface ClassSpec {
  kind: ClassKindName;
  parent: HandleInput;
  classid: HandleInput;
  options: InputOf<(typeof classKinds)['htb']>;
  estimator?: Estimator;
}

export interface FilterSpec {
  kind: FilterKindName;
  parent: HandleInput;
  /** 1…65535; lower runs first. IPv4 and IPv6 filters need different priorities. */
  priority: number;
  protocol: FilterProtocol;
  /** u32 filter handle, e.g. `"2:7b:1"` or `"2:"` (a hash table). */
  handle?: string | number;
  options?: InputOf<(typeof filterKinds)['u32']>;
}

/** What identifies an object for deletion. */
export interface QdiscRef {
  parent?: HandleInput;
  handle?: HandleInput;
}
export interface ClassRef {
  classid: HandleInput;
}
export interface FilterRef {
  kind?: string;
  parent: HandleInput;
  priority: number;
  protocol: FilterProtocol;
  handle?: string | number;
}

interface ReadBackBase {
  ifindex: number;
  handle: number;
  parent: number;
  statistics?: TcStatistics;
}

export type Qdisc =
  | {
      [K in QdiscKindName]: ReadBackBase & {
        kind: K;
        parameters: ParametersOf<(typeof qdiscKinds)[K]>;
        extendedStatistics?: ExtendedOf<(typeof qdiscKinds)[K]>;
      };
    }[QdiscKindName]
  | (ReadBackBase & { kind: `other:${string}`; parameters?: undefined; extendedStatistics?: undefined });

export interface TcClass extends ReadBackBase {
  kind: ClassKindName;
  parameters: ParametersOf<(typeof classKinds)['htb']>;
  extendedStatistics?: ExtendedOf<(typeof classKinds)['htb']>;
  /** Handle of the leaf qdisc attached to this class, if any. */
  leaf?: number;
}

export interface Filter {
  ifindex: number;
  kind: FilterKindName;
  parent: number;
  priority: number;
  protocol: number;
  handle: number;
  parameters: ParametersOf<(typeof filterKinds)['u32']>;
}

/** add: create, fail if present; replace: create or overwrite; change: modify an existing one. */
export type WriteMode = 'add' | 'replace' | 'change';

/** One operation of a batch. `ifPresent` deletes succeed when the object is already gone. */
export type Operation =
  | { op: WriteMode; qdisc: QdiscSpec }
  | { op: WriteMode; class: ClassSpec }
  | { op: WriteMode; filter: FilterSpec }
  | { op: 'delete'; qdisc: QdiscRef; ifPresent?: boolean }
  | { op: 'delete'; class: ClassRef; ifPresent?: boolean }
  | { op: 'delete'; filter: FilterRef; ifPresent?: boolean };

// iproute2's flags per command (tc_qdisc.c, tc_class.c, tc_filter.c): note class/filter "replace" has no REPLACE flag.
const qdiscModeFlags: Record<WriteMode, number> = { add: Flags.EXCL | Flags.CREATE, replace: Flags.CREATE | Flags.REPLACE, change: 0 };
const classModeFlags: Record<WriteMode, number> = { add: Flags.EXCL | Flags.CREATE, replace: Flags.CREATE, change: 0 };

function lookupKind(registry: Record<string, AnyKind>, kind: string, family: string): AnyKind {
  const found = registry[kind];
  if (!found) throw new ShaperrInputError(`unknown ${family} kind ${JSON.stringify(kind)}: supported are ${Object.keys(registry).join(', ')}`);
  return found;
}

function protocolNumber(protocol: FilterProtocol): number {
  const value = typeof protocol === 'number' ? protocol : protocolNumbers[protocol];
  if (value === undefined || !Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new ShaperrInputError(`invalid filter protocol ${JSON.stringify(protocol)}: expected ip, ipv6, all or an EtherType number`);
  }
  return value;
}

const swap16 = (value: number): number => ((value & 0xff) << 8) | (value >>> 8);

/** tcm_info of a filter: priority in the upper half, the protocol in network byte order in the lower. */
function filterInfo(priority: number, protocol: FilterProtocol): number {
  if (!Number.isInteger(priority) || priority < 1 || priority > 0xffff) throw new ShaperrInputError(`invalid filter priority ${priority}: expected 1…65535`);
  return ((priority << 16) | swap16(protocolNumber(protocol))) >>> 0;
}

function filterHandle(handle: string | number | undefined): number {
  if (handle === undefined) return 0;
  return typeof handle === 'number' ? parseHandle(handle) : parseU32Handle(handle);
}

function estimatorValue(estimator: Estimator): { interval: number; ewmaLog: number } {
  const intervalUs = parseTime(estimator.interval);
  const timeConstantUs = parseTime(estimator.timeConstant);
  let interval = 0;
  while (interval <= 5 && intervalUs > (1 << interval) * 250_000) interval++;
  let ewmaLog = 1;
  while (ewmaLog < 32 && !(intervalUs / -Math.log(1 - 1 / 2 ** ewmaLog) > timeConstantUs)) ewmaLog++;
  ewmaLog--;
  if (interval > 5 || ewmaLog === 0 || ewmaLog >= 31) {
    throw new ShaperrInputError(`invalid estimator ${estimator.interval}/${estimator.timeConstant}: interval must be 250ms…8s and the time constant several intervals`);
  }
  return { interval: interval - 2, ewmaLog };
}

function describe(family: string, handle: number, kind: string | undefined, device: string): string {
  return `${family} ${formatHandle(handle)}${kind ? ` (${kind})` : ''} on ${device}`;
}

/** Where an object lives: the device's index and a name for messages. */
export interface DeviceTarget {
  ifindex: number;
  name: string;
}

function tcRequest(
  type: number,
  flags: number,
  header: { ifindex: number; handle: number; parent: number; info?: number },
  kind: string | undefined,
  writeRest: (writer: MessageWriter) => void,
  context: NetlinkRequest['context'],
): NetlinkRequest {
  return {
    type,
    flags,
    context,
    writeBody(writer) {
      writer.struct(tcmsg, header);
      if (kind) writer.attribute(TCA_KIND, attrString.encode(kind));
      writeRest(writer);
    },
  };
}

export function qdiscRequest(mode: WriteMode, device: DeviceTarget, spec: QdiscSpec, context: KindContext): NetlinkRequest {
  const kind = lookupKind(qdiscKinds, spec.kind, 'qdisc');
  const parent = spec.parent === undefined ? TC_H_ROOT : parseHandle(spec.parent);
  const handle = spec.handle === undefined ? 0 : parseHandle(spec.handle);
  const parameters = kind.resolve(spec.options ?? {}, context);
  const estimator = spec.estimator && estimatorValue(spec.estimator);
  return tcRequest(MessageType.NEWQDISC, qdiscModeFlags[mode], { ifindex: device.ifindex, handle, parent }, kind.name, (writer) => {
    if (estimator) writer.attributeStruct(TCA_RATE, tcEstimator, estimator);
    kind.write(writer, parameters, context);
  }, { operation: `${mode} qdisc`, object: describe('qdisc', handle || parent, kind.name, device.name), kind: kind.name, family: 'qdisc' });
}

export function deleteQdiscRequest(device: DeviceTarget, ref: QdiscRef): NetlinkRequest {
  const parent = ref.parent === undefined ? TC_H_ROOT : parseHandle(ref.parent);
  const handle = ref.handle === undefined ? 0 : parseHandle(ref.handle);
  return tcRequest(MessageType.DELQDISC, 0, { ifindex: device.ifindex, handle, parent }, undefined, () => {}, {
    operation: 'delete qdisc',
    object: describe('qdisc', handle || parent, undefined, device.name),
  });
}

export function classRequest(mode: WriteMode, device: DeviceTarget, spec: ClassSpec, context: KindContext): NetlinkRequest {
  const kind = lookupKind(classKinds, spec.kind, 'class');
  const classid = parseHandle(spec.classid);
  const parent = parseHandle(spec.parent);
  const parameters = kind.resolve(spec.options, context);
  const estimator = spec.estimator && estimatorValue(spec.estimator);
  return tcRequest(MessageType.NEWTCLASS, classModeFlags[mode], { ifindex: device.ifindex, handle: classid, parent }, kind.name, (writer) => {
    if (estimator) writer.attributeStruct(TCA_RATE, tcEstimator, estimator);
    kind.write(writer, parameters, context);
  }, { operation: `${mode} class`, object: describe('class', classid, kind.name, device.name), kind: kind.name, family: 'class' });
}

export function deleteClassRequest(device: DeviceTarget, ref: ClassRef): NetlinkRequest {
  const classid = parseHandle(ref.classid);
  return tcRequest(MessageType.DELTCLASS, 0, { ifindex: device.ifindex, handle: classid, parent: 0 }, undefined, () => {}, {
    operation: 'delete class',
    object: describe('class', classid, undefined, device.name),
  });
}

function describeFilter(ref: FilterRef, handle: number, device: string): string {
  const name = handle ? ` ${formatU32Handle(handle)}` : '';
  return `filter${name} (prio ${ref.priority}, ${typeof ref.protocol === 'number' ? `protocol 0x${ref.protocol.toString(16)}` : ref.protocol}) under ${formatHandle(parseHandle(ref.parent))} on ${device}`;
}

/** `kindName` overrides TCA_KIND (used only by the kernel feature probe). */
export function filterRequest(mode: WriteMode, device: DeviceTarget, spec: FilterSpec, context: KindContext, kindName?: string): NetlinkRequest {
  const kind = lookupKind(filterKinds, spec.kind, 'filter');
  const handle = filterHandle(spec.handle);
  const header = { ifindex: device.ifindex, handle, parent: parseHandle(spec.parent), info: filterInfo(spec.priority, spec.protocol) };
  const parameters = spec.options === undefined ? undefined : kind.resolve(spec.options, { ...context, handle });
  const name = kindName ?? kind.name;
  return tcRequest(MessageType.NEWTFILTER, classModeFlags[mode], header, name, (writer) => {
    if (parameters !== undefined) kind.write(writer, parameters, { ...context, handle });
  }, { operation: `${mode} filter`, object: describeFilter(spec, handle, device.name), kind: name, family: 'filter' });
}

export function deleteFilterRequest(device: DeviceTarget, ref: FilterRef): NetlinkRequest {
  const handle = filterHandle(ref.handle);
  const header = { ifindex: device.ifindex, handle, parent: parseHandle(ref.parent), info: filterInfo(ref.priority, ref.protocol) };
  // The kind is needed to name a single filter by handle, as tc sends it.
  const kind = ref.kind ?? (ref.handle === undefined ? undefined : 'u32');
  return tcRequest(MessageType.DELTFILTER, 0, header, kind, () => {}, { operation: 'delete filter', object: describeFilter(ref, handle, device.name) });
}

// ---- read-back ---------------------------------------------------------------------------------------

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

function withStatistics<T extends object>(target: T, decoded: DecodedTcMessage, kind: AnyKind | undefined): T {
  if (decoded.statistics) Object.assign(target, { statistics: decoded.statistics });
  if (decoded.application && kind?.readExtendedStats) Object.assign(target, { extendedStatistics: kind.readExtendedStats(decoded.application) });
  return target;
}

export function readQdisc(message: ReceivedMessage, context: KindContext): Qdisc {
  const decoded = decodeTcMessage(message);
  const base = { ifindex: decoded.header.ifindex, handle: decoded.header.handle, parent: decoded.header.parent };
  const kind = decoded.kind ? (qdiscKinds as Record<string, AnyKind>)[decoded.kind] : undefined;
  const qdisc = kind
    ? { ...base, kind: decoded.kind, parameters: kind.read(decoded.options, context) }
    : { ...base, kind: `other:${decoded.kind ?? 'unknown'}` };
  return withStatistics(qdisc as Qdisc, decoded, kind);
}

/** Only a class's handle and byte counter: what polling for activity needs, without decoding its options. */
export function readClassBytes(message: ReceivedMessage): { handle: number; bytes: number } {
  const { handle } = tcmsg.decode(message.body);
  const { stats2 } = tcaAttributes.read(message.body.subarray(tcmsg.size));
  return { handle, bytes: stats2 ? readStatistics(stats2).statistics.bytes : 0 };
}

export function readClass(message: ReceivedMessage, context: KindContext): TcClass | undefined {
  const decoded = decodeTcMessage(message);
  if (decoded.kind !== 'htb') return undefined;
  const tcClass: TcClass = {
    ifindex: decoded.header.ifindex,
    handle: decoded.header.handle,
    parent: decoded.header.parent,
    kind: 'htb',
    parameters: htbClass.read(decoded.options, context),
  };
  if (decoded.header.info) tcClass.leaf = decoded.header.info;
  return withStatistics(tcClass, decoded, htbClass);
}

export function readFilter(message: ReceivedMessage, context: KindContext): Filter | undefined {
  const decoded = decodeTcMessage(message);
  if (decoded.kind !== 'u32') return undefined;
  const { info, handle } = decoded.header;
  return {
    ifindex: decoded.header.ifindex,
    kind: 'u32',
    parent: decoded.header.parent,
    priority: info >>> 16,
    protocol: swap16(info & 0xffff),
    handle,
    parameters: u32.read(decoded.options, { ...context, handle, protocol: swap16(info & 0xffff) }),
  };
}

// ---- tc command lines --------------------------------------------------------------------------------

const modeWord: Record<WriteMode | 'delete', string> = { add: 'add', replace: 'replace', change: 'change', delete: 'del' };

function protocolName(protocol: FilterProtocol): string {
  return typeof protocol === 'number' ? `0x${protocol.toString(16)}` : protocol;
}

const placement = (parent: number): string[] => (parent === TC_H_ROOT ? ['root'] : ['parent', formatHandle(parent)]);

/** The equivalent `tc` command line for a qdisc operation (for dry runs, logs and docs). */
export function qdiscCommand(mode: WriteMode | 'delete', device: string, spec: QdiscSpec | QdiscRef): string {
  const parent = spec.parent === undefined ? TC_H_ROOT : parseHandle(spec.parent);
  const words = ['tc', 'qdisc', modeWord[mode], 'dev', device, ...placement(parent)];
  if (spec.handle !== undefined) words.push('handle', formatHandle(parseHandle(spec.handle)));
  if ('kind' in spec) {
    if (spec.estimator) words.push('estimator', String(spec.estimator.interval), String(spec.estimator.timeConstant));
    words.push(spec.kind, ...lookupKind(qdiscKinds, spec.kind, 'qdisc').tcArguments(spec.options ?? {}));
  }
  return words.join(' ');
}

export function classCommand(mode: WriteMode | 'delete', device: string, spec: ClassSpec | ClassRef): string {
  const words = ['tc', 'class', modeWord[mode], 'dev', device];
  if ('kind' in spec) words.push(...placement(parseHandle(spec.parent)));
  words.push('classid', formatHandle(parseHandle(spec.classid)));
  if ('kind' in spec) {
    if (spec.estimator) words.push('estimator', String(spec.estimator.interval), String(spec.estimator.timeConstant));
    words.push(spec.kind, ...htbClass.tcArguments(spec.options));
  }
  return words.join(' ');
}

export function filterCommand(mode: WriteMode | 'delete', device: string, spec: FilterSpec | FilterRef): string {
  const words = ['tc', 'filter', modeWord[mode], 'dev', device, ...placement(parseHandle(spec.parent)), 'protocol', protocolName(spec.protocol), 'prio', String(spec.priority)];
  if (spec.handle !== undefined) words.push('handle', typeof spec.handle === 'number' ? formatU32Handle(spec.handle) : spec.handle);
  const kind = spec.kind ?? (spec.handle === undefined ? undefined : 'u32');
  if (kind) words.push(kind);
  if ('options' in spec && spec.options !== undefined) words.push(...u32.tcArguments(spec.options));
  return words.join(' ');
}

/** The netlink request for an operation. */
export function operationRequest(device: DeviceTarget, operation: Operation, context: KindContext): NetlinkRequest {
  if (operation.op === 'delete') {
    if ('qdisc' in operation) return deleteQdiscRequest(device, operation.qdisc);
    if ('class' in operation) return deleteClassRequest(device, operation.class);
    return deleteFilterRequest(device, operation.filter);
  }
  if ('qdisc' in operation) return qdiscRequest(operation.op, device, operation.qdisc, context);
  if ('class' in operation) return classRequest(operation.op, device, operation.class, context);
  return filterRequest(operation.op, device, operation.filter, context);
}

/** The `tc` command line equivalent to an operation: for dry runs, logs and docs. */
export function toTcCommand(device: string, operation: Operation): string {
  if ('qdisc' in operation) return qdiscCommand(operation.op, device, operation.qdisc);
  if ('class' in operation) return classCommand(operation.op, device, operation.class);
  return filterCommand(operation.op, device, operation.filter);
}
