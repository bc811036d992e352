/**
 * The public shapes of the object layer: what callers write (specs, refs, operations) and what dumps read
 * back. Each is a union over the kind registry, so `kind` selects the exact option and parameter types.
 */
import type { HandleInput } from './handle.js';
import type { ClassKindName, ExtendedStatsOf, FilterKindName, OptionsOf, ParametersOf, QdiscKindName } from './registry.js';
import type { TcStatistics } from './stats.js';

export type { ClassKindName, FilterKindName, QdiscKindName } from './registry.js';

/** A rate estimator (tc's `estimator 1sec 8sec`): classes have live rates in their stats only with one. */
export interface Estimator {
  /** Sampling interval: 250ms … 8s (a power of two times 250 ms). */
  interval: string | number;
  /** Averaging time constant. */
  timeConstant: string | number;
}

/** Filter protocols by name, or an EtherType number. */
export type FilterProtocol = 'ip' | 'ipv6' | 'all' | number;

export type QdiscSpec = {
  [K in QdiscKindName]: {
    kind: K;
    /** Default: root. */
    parent?: HandleInput;
    handle?: HandleInput;
    options?: OptionsOf<'qdisc', K>;
    estimator?: Estimator;
  };
}[QdiscKindName];

export type ClassSpec = {
  [K in ClassKindName]: {
    kind: K;
    parent: HandleInput;
    classid: HandleInput;
    options: OptionsOf<'class', K>;
    estimator?: Estimator;
  };
}[ClassKindName];

export type FilterSpec = {
  [K in FilterKindName]: {
    kind: K;
    parent: HandleInput;
    /** 1…65535; lower runs first. IPv4 and IPv6 filters need different priorities. */
    priority: number;
    protocol: FilterProtocol;
    /** In the kind's own syntax (u32: `"2:7b:1"`, or `"2:"` for a hash table), or the packed number. */
    handle?: string | number;
    options?: OptionsOf<'filter', K>;
  };
}[FilterKindName];

/** What identifies an object for deletion. */
export interface QdiscRef {
  parent?: HandleInput;
  handle?: HandleInput;
}
export interface ClassRef {
  classid: HandleInput;
}
export interface FilterRef {
  /**
   * Needed to name one filter by handle, as tc sends it; u32 when left out. A handle string is parsed in
   * this kind's syntax, so it must be a registered kind; with a numeric handle any kind name will do.
   */
  kind?: FilterKindName | (string & {});
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
        parameters: ParametersOf<'qdisc', K>;
        extendedStatistics?: ExtendedStatsOf<'qdisc', K>;
      };
    }[QdiscKindName]
  | (ReadBackBase & { kind: `other:${string}`; parameters?: undefined; extendedStatistics?: undefined });

export type TcClass<Kinds extends ClassKindName = ClassKindName> = {
  [K in Kinds]: ReadBackBase & {
    kind: K;
    parameters: ParametersOf<'class', K>;
    extendedStatistics?: ExtendedStatsOf<'class', K>;
    /** Handle of the leaf qdisc attached to this class, if any. */
    leaf?: number;
  };
}[Kinds];

/**
 * A filter read back. `filters()` lists one kind at a time, u32 unless asked for another, which is why
 * u32 is the default here (code written when u32 was the only filter kind keeps its exact types).
 */
export type Filter<Kinds extends FilterKindName = 'u32'> = {
  [K in Kinds]: {
    ifindex: number;
    kind: K;
    parent: number;
    priority: number;
    protocol: number;
    handle: number;
    parameters: ParametersOf<'filter', K>;
  };
}[Kinds];

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

/** Where an object lives: the device's index and a name for messages. */
export interface DeviceTarget {
  ifindex: number;
  name: string;
}
