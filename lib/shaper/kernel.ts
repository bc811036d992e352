/**
 * The kernel as a Shaper sees it: one device, and only what the Shaper reads and changes there. Three
 * adapters: the live one over TrafficControl, a read-only one for inspection (`inspectShaper`), and a
 * recording one for dry runs, which changes nothing and answers as an empty device would.
 */
import { parseHandle, TC_H_ROOT } from '../tc/handle.js';
import { DEFAULT_R2Q } from '../tc/kinds/htb.js';
import type { QdiscKindName } from '../tc/registry.js';
import type { TrafficControl } from '../tc/traffic-control.js';
import type { Filter, Operation, Qdisc, TcClass } from '../tc/types.js';
import type { NetlinkError } from '../wire/errors.js';

export interface ShaperKernel {
  /** The device's MTU. */
  mtu(): number;
  /** The device's interface index as last looked up (linkReplaced() looks again). */
  ifindex(): number;
  /** Whether the device was re-created since it was first looked up (its index changed). */
  linkReplaced(): boolean;
  rootQdisc(): Qdisc | undefined;
  /** Every qdisc on the device: the root and the leaves. */
  qdiscs(): Qdisc[];
  classes(): TcClass[];
  /** The same, read a few dozen classes per event-loop turn (see TrafficControl.classesInTurns). */
  classesInTurns(): Promise<TcClass[]>;
  /** Filters attached to `parent` (shaperr's root qdisc). */
  filters(parent: number): Filter[];
  /** Bytes queued in one class now (0 when it has none, or is gone). */
  queuedBytes(classid: number): number;
  /** Bytes sent so far and bytes queued now in every class, from one counters-only dump. */
  classCounters(): Map<number, { bytes: number; backlog: number }>;
  hasQdiscKind(kind: QdiscKindName): boolean;
  /** Sends the operations in order; one result per operation. */
  batch(operations: readonly Operation[]): { error?: NetlinkError | undefined }[];
  close(): void;
  /** The netlink port id the changes are sent from: a listener leaves out its notifications (undefined in dry runs). */
  readonly portId: number | undefined;
  /** The connection underneath, for callers reading more than the Shaper does (undefined in dry runs). */
  readonly trafficControl: TrafficControl | undefined;
}

/** The port's reads alone: what a Shaper lets others look at (ShaperWatch compares the kernel with its pipes). */
export type ShaperKernelReader = Omit<ShaperKernel, 'batch' | 'close' | 'trafficControl'>;

/** The live kernel: `device` through an open TrafficControl, which the port closes. */
export function liveKernel(tc: TrafficControl, device: string): ShaperKernel {
  return {
    mtu: () => tc.link(device).mtu,
    ifindex: () => tc.link(device).ifindex,
    linkReplaced: () => tc.link(device).ifindex !== tc.link(device, { refresh: true }).ifindex,
    rootQdisc: () => tc.rootQdisc(device),
    qdiscs: () => tc.qdiscs(device),
    classes: () => tc.classes(device),
    classesInTurns: () => tc.classesInTurns(device),
    filters: (parent) => tc.filters(device, parent),
    queuedBytes: (classid) => tc.getClass(device, classid)?.statistics?.backlog ?? 0,
    classCounters: () => tc.classCounters(device),
    hasQdiscKind: (kind) => tc.hasQdiscKind(kind),
    batch: (operations) => tc.batch(device, operations),
    close: () => tc.close(),
    portId: tc.portId,
    trafficControl: tc,
  };
}

/** The live kernel for reading only: any change is refused before it is sent. */
export function readOnlyKernel(tc: TrafficControl, device: string): ShaperKernel {
  return {
    ...liveKernel(tc, device),
    batch: () => {
      throw new Error('this shaper is a read-only view (inspectShaper)');
    },
  };
}

/** A dry run's device: empty, with an MTU of 1500; every change succeeds and is only remembered for the root. */
export function recordingKernel(): ShaperKernel {
  // The root qdisc made meanwhile, so that isIntact() and teardown see what a real device would have.
  let root: Qdisc | undefined;
  const record = (operation: Operation): void => {
    if (!('qdisc' in operation) || (operation.qdisc.parent !== undefined && parseHandle(operation.qdisc.parent) !== TC_H_ROOT)) return;
    if (operation.op === 'delete') root = undefined;
    else if (operation.qdisc.kind === 'htb') {
      const { defaultClass = 0, r2q = DEFAULT_R2Q } = operation.qdisc.options ?? {};
      root = { kind: 'htb', ifindex: 0, handle: parseHandle(operation.qdisc.handle ?? 0), parent: TC_H_ROOT, parameters: { defaultClass, r2q } };
    }
  };
  return {
    mtu: () => 1500,
    ifindex: () => 0,
    linkReplaced: () => false,
    rootQdisc: () => root,
    qdiscs: () => (root ? [root] : []),
    classes: () => [],
    classesInTurns: async () => [],
    filters: () => [],
    queuedBytes: () => 0,
    classCounters: () => new Map(),
    hasQdiscKind: () => true,
    batch: (operations) =>
      operations.map((operation) => {
        record(operation);
        return {};
      }),
    close: () => {},
    portId: undefined,
    trafficControl: undefined,
  };
}
