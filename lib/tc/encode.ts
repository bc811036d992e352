/** Qdisc, class and filter operations → netlink requests, byte for byte as iproute2's tc builds them. */
import { memoize } from '../memo.js';
import type { MessageWriter } from '../wire/attributes.js';
import { attrString } from '../wire/attributes.js';
import type { NetlinkRequest } from '../wire/connection.js';
import { type RequestContext, ShaperrInputError } from '../wire/errors.js';
import { Flags, MessageType, tcmsg } from '../wire/message.js';
import { explainTcRefusal, type TcFamily } from './errors.js';
import { formatHandle, parseHandle, TC_H_ROOT } from './handle.js';
import type { KindContext } from './kind.js';
import { DEFAULT_FILTER_KIND, kindFor, knownKind } from './registry.js';
import { TCA, tcEstimator } from './tca.js';
import type {
  ClassRef,
  ClassSpec,
  DeviceTarget,
  Estimator,
  FilterProtocol,
  FilterRef,
  FilterSpec,
  Operation,
  QdiscRef,
  QdiscSpec,
  WriteMode,
} from './types.js';
import { parseTime } from './units.js';

// iproute2's flags per command (tc_qdisc.c, tc_class.c, tc_filter.c): note class/filter "replace" has no REPLACE flag.
const qdiscModeFlags: Record<WriteMode, number> = { add: Flags.EXCL | Flags.CREATE, replace: Flags.CREATE | Flags.REPLACE, change: 0 };
const classModeFlags: Record<WriteMode, number> = { add: Flags.EXCL | Flags.CREATE, replace: Flags.CREATE, change: 0 };

const protocolNumbers: Record<string, number> = { ip: 0x0800, ipv6: 0x86dd, all: 0x0003 };

export function protocolNumber(protocol: FilterProtocol): number {
  const value = typeof protocol === 'number' ? protocol : protocolNumbers[protocol];
  if (value === undefined || !Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new ShaperrInputError(`invalid filter protocol ${JSON.stringify(protocol)}: expected ip, ipv6, all or an EtherType number`);
  }
  return value;
}

export const swap16 = (value: number): number => ((value & 0xff) << 8) | (value >>> 8);

/** tcm_info of a filter: priority in the upper half, the protocol in network byte order in the lower. */
function filterInfo(priority: number, protocol: FilterProtocol): number {
  if (!Number.isInteger(priority) || priority < 1 || priority > 0xffff) throw new ShaperrInputError(`invalid filter priority ${priority}: expected 1…65535`);
  return ((priority << 16) | swap16(protocolNumber(protocol))) >>> 0;
}

/** A filter handle: a string in the kind's own syntax (so the kind must be one we speak), or the packed number. */
function filterHandle(kindName: string | undefined, handle: string | number | undefined): number {
  if (handle === undefined) return 0;
  return typeof handle === 'number' ? parseHandle(handle) : kindFor('filter', kindName ?? DEFAULT_FILTER_KIND).parseHandle(handle);
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
    throw new ShaperrInputError(
      `invalid estimator ${estimator.interval}/${estimator.timeConstant}: interval must be 250ms…8s and the time constant several intervals`,
    );
  }
  return { interval: interval - 2, ewmaLog };
}

function describe(family: TcFamily, handle: number, kind: string | undefined, device: string): string {
  return `${family} ${formatHandle(handle)}${kind ? ` (${kind})` : ''} on ${device}`;
}

function context(operation: string, object: string, family: TcFamily, kind?: string): RequestContext {
  return { operation, object, explain: explainTcRefusal(family, kind) };
}

/** TCA_KIND payloads: a few kind names, encoded once each. */
const kindPayload = memoize((kind: string) => attrString.encode(kind), 64);

/**
 * A tc request: tcmsg, TCA_KIND, then the rest. A class rather than an object literal with a getter:
 * one shape for every request, built thousands of times per batch.
 */
class TcRequest implements NetlinkRequest {
  constructor(
    readonly type: number,
    readonly flags: number,
    private readonly header: { ifindex: number; handle: number; parent: number; info?: number },
    private readonly kind: string | undefined,
    private readonly writeRest: (writer: MessageWriter) => void,
    private readonly describeRequest: () => RequestContext,
  ) {}

  // Only errors and warnings read it: the description is not built for the requests that succeed.
  get context(): RequestContext {
    return this.describeRequest();
  }

  writeBody(writer: MessageWriter): void {
    writer.struct(tcmsg, this.header);
    if (this.kind) writer.attribute(TCA.KIND, kindPayload(this.kind));
    this.writeRest(writer);
  }
}

export function qdiscRequest(mode: WriteMode, device: DeviceTarget, spec: QdiscSpec, kindContext: KindContext): NetlinkRequest {
  const kind = kindFor('qdisc', spec.kind);
  const parent = spec.parent === undefined ? TC_H_ROOT : parseHandle(spec.parent);
  const handle = spec.handle === undefined ? 0 : parseHandle(spec.handle);
  const parameters = kind.resolve(spec.options ?? {}, kindContext);
  const estimator = spec.estimator && estimatorValue(spec.estimator);
  return new TcRequest(
    MessageType.NEWQDISC,
    qdiscModeFlags[mode],
    { ifindex: device.ifindex, handle, parent },
    kind.name,
    (writer) => {
      if (estimator) writer.attributeStruct(TCA.RATE, tcEstimator, estimator);
      kind.write(writer, parameters, kindContext);
    },
    () => context(`${mode} qdisc`, describe('qdisc', handle || parent, kind.name, device.name), 'qdisc', kind.name),
  );
}

export function deleteQdiscRequest(device: DeviceTarget, ref: QdiscRef): NetlinkRequest {
  const parent = ref.parent === undefined ? TC_H_ROOT : parseHandle(ref.parent);
  const handle = ref.handle === undefined ? 0 : parseHandle(ref.handle);
  return new TcRequest(
    MessageType.DELQDISC,
    0,
    { ifindex: device.ifindex, handle, parent },
    undefined,
    () => {},
    () => context('delete qdisc', describe('qdisc', handle || parent, undefined, device.name), 'qdisc'),
  );
}

export function classRequest(mode: WriteMode, device: DeviceTarget, spec: ClassSpec, kindContext: KindContext): NetlinkRequest {
  const kind = kindFor('class', spec.kind);
  const classid = parseHandle(spec.classid);
  const parent = parseHandle(spec.parent);
  const parameters = kind.resolve(spec.options, kindContext);
  const estimator = spec.estimator && estimatorValue(spec.estimator);
  return new TcRequest(
    MessageType.NEWTCLASS,
    classModeFlags[mode],
    { ifindex: device.ifindex, handle: classid, parent },
    kind.name,
    (writer) => {
      if (estimator) writer.attributeStruct(TCA.RATE, tcEstimator, estimator);
      kind.write(writer, parameters, kindContext);
    },
    () => context(`${mode} class`, describe('class', classid, kind.name, device.name), 'class', kind.name),
  );
}

export function deleteClassRequest(device: DeviceTarget, ref: ClassRef): NetlinkRequest {
  const classid = parseHandle(ref.classid);
  return new TcRequest(
    MessageType.DELTCLASS,
    0,
    { ifindex: device.ifindex, handle: classid, parent: 0 },
    undefined,
    () => {},
    () => context('delete class', describe('class', classid, undefined, device.name), 'class'),
  );
}

function describeFilter(ref: FilterRef, handle: number, device: string): string {
  const kind = knownKind('filter', ref.kind ?? DEFAULT_FILTER_KIND);
  const name = handle ? ` ${kind ? kind.formatHandle(handle) : `0x${handle.toString(16)}`}` : '';
  return `filter${name} (prio ${ref.priority}, ${typeof ref.protocol === 'number' ? `protocol 0x${ref.protocol.toString(16)}` : ref.protocol}) under ${formatHandle(parseHandle(ref.parent))} on ${device}`;
}

export function filterRequest(mode: WriteMode, device: DeviceTarget, spec: FilterSpec, kindContext: KindContext): NetlinkRequest {
  const kind = kindFor('filter', spec.kind);
  const handle = filterHandle(kind.name, spec.handle);
  const header = { ifindex: device.ifindex, handle, parent: parseHandle(spec.parent), info: filterInfo(spec.priority, spec.protocol) };
  // Every field of KindContext written out: spreading it here stood out in a profile of building a batch.
  const optionsContext: KindContext = { clock: kindContext.clock, handle, protocol: protocolNumber(spec.protocol) };
  const parameters = spec.options === undefined ? undefined : kind.resolve(spec.options, optionsContext);
  return new TcRequest(
    MessageType.NEWTFILTER,
    classModeFlags[mode],
    header,
    kind.name,
    (writer) => {
      if (parameters !== undefined) kind.write(writer, parameters, optionsContext);
    },
    () => context(`${mode} filter`, describeFilter(spec, handle, device.name), 'filter', kind.name),
  );
}

export function deleteFilterRequest(device: DeviceTarget, ref: FilterRef): NetlinkRequest {
  const kindName = ref.kind ?? (ref.handle === undefined ? undefined : DEFAULT_FILTER_KIND);
  const handle = filterHandle(kindName, ref.handle);
  const header = { ifindex: device.ifindex, handle, parent: parseHandle(ref.parent), info: filterInfo(ref.priority, ref.protocol) };
  // The kind is needed to name a single filter by handle, as tc sends it.
  return new TcRequest(
    MessageType.DELTFILTER,
    0,
    header,
    kindName,
    () => {},
    () => context('delete filter', describeFilter(ref, handle, device.name), 'filter', kindName),
  );
}

/**
 * Asks to create a qdisc of `kind` as root of `device` with an empty size table (TCA_STAB): the kernel
 * looks the kind up first and answers "kind is unknown" when it has none; a known kind fails later on the
 * missing size-table base, before anything is attached.
 */
export function qdiscKindProbe(device: DeviceTarget, kind: string): NetlinkRequest {
  return new TcRequest(
    MessageType.NEWQDISC,
    Flags.CREATE | Flags.EXCL,
    { ifindex: device.ifindex, handle: 0, parent: TC_H_ROOT },
    kind,
    (writer) => {
      writer.endNested(writer.beginNested(TCA.STAB));
    },
    () => context('probe', `qdisc:${kind}`, 'qdisc', kind),
  );
}

/** Asks to create a filter of `kind` with a handle and no options, which a known kind refuses after being looked up. */
export function filterKindProbe(device: DeviceTarget, kind: string, parent: number, priority: number): NetlinkRequest {
  const header = { ifindex: device.ifindex, handle: 1, parent, info: filterInfo(priority, 'all') };
  return new TcRequest(
    MessageType.NEWTFILTER,
    classModeFlags.add,
    header,
    kind,
    () => {},
    () => context('probe', `filter:${kind}`, 'filter', kind),
  );
}

/** The netlink request for an operation. */
export function operationRequest(device: DeviceTarget, operation: Operation, kindContext: KindContext): NetlinkRequest {
  if (operation.op === 'delete') {
    if ('qdisc' in operation) return deleteQdiscRequest(device, operation.qdisc);
    if ('class' in operation) return deleteClassRequest(device, operation.class);
    return deleteFilterRequest(device, operation.filter);
  }
  if ('qdisc' in operation) return qdiscRequest(operation.op, device, operation.qdisc, kindContext);
  if ('class' in operation) return classRequest(operation.op, device, operation.class, kindContext);
  return filterRequest(operation.op, device, operation.filter, kindContext);
}
