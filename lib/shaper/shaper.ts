/**
 * Shaper: each throttled client gets its own HTB class (with an SFQ leaf) under one server-wide class, and
 * a u32 filter steering its address there. Everything else leaves through HTB's direct path, unshaped.
 *
 *   root qdisc  5a:  htb default 0        unclassified traffic (browsing, other hosts) is not shaped
 *   └─ class    5a:1   server rate/ceil   the ceiling all throttled clients share
 *      ├─ class 5a:10  client rate/ceil   + leaf qdisc 10: sfq (bfifo where the kernel has no sfq)
 *      └─ …
 *   filters on 5a:  prio 1 ip   → hash table 2: keyed on the last byte of the destination → per-client filter
 *                   prio 2 ipv6 → hash table 3: likewise
 *
 * This file keeps the kernel side: the lifecycle (open, set up, adopt, repair, close), each pipe's class,
 * leaf and filter operations, and the reads (state, bytesSent). What each pipe is guaranteed — wanted
 * rates, server limits, reserve, rebalancing — is kept in the allocation books (books.ts).
 */
import { type ClientAddress, NetworkSet, parseClientAddress } from '../address.js';
import { inChunks, type ProgressListener } from '../progress.js';
import { formatHandle, makeHandle } from '../tc/handle.js';
import { HTB_DEFAULT_MTU, type HtbClassOptions } from '../tc/kinds/htb.js';
import { type Filter, type Operation, type QdiscSpec, type TcClass, toTcCommand } from '../tc/objects.js';
import type { TcStatistics } from '../tc/stats.js';
import { TrafficControl } from '../tc/traffic-control.js';
import { type BitsPerSecond, parseRate, type RateInput } from '../tc/units.js';
import { type KernelWarning, NetlinkError, ShaperrInputError } from '../wire/errors.js';
import { drained, removeRootDraining } from './drain.js';
import { HandlePool } from './handle-pool.js';
import {
  clientBucket,
  clientFilterRef,
  clientFilterSpec,
  describeQdisc,
  hashTableSpecs,
  isShaperRoot,
  missingHashTableSpecs,
  readClientFilter,
  SHAPER_LAYOUT,
  SHAPER_ROOT,
  SHAPER_SERVER_CLASS,
} from './layout.js';
import { type PipeParameters, type WantedLimits, wantedRateOf } from './shares.js';
import { AllocationBooks, type BookedClient, type PipeChange, type RebalanceOptions } from './books.js';
import { liveKernel, recordingKernel, type ShaperKernel, type ShaperKernelReader } from './kernel.js';

/** sfq's default queue depth in packets; bfifo leaves hold as many full-size packets' worth of bytes. */
const SFQ_DEFAULT_LIMIT = 127;

export type LeafKind = 'sfq' | 'bfifo' | 'none';

export interface RateLimits {
  rate: RateInput;
  /** Defaults to `rate`. */
  ceil?: RateInput;
}

/** One client's pipe as throttle asks for it. */
export interface ClientLimits extends RateLimits {
  /**
   * Gateway mode: the TCP source port this client's filter matches, when its server is published on
   * another port than ShaperOptions.sourcePort (a Jellyfin behind a proxy on 443 beside Plex on 32400).
   * Omitted: ShaperOptions.sourcePort. Another port than the pipe has rewrites its filter.
   */
  sourcePort?: number;
}

export interface ShaperOptions {
  /** The network device whose egress (upload) is shaped, e.g. `eth0`. */
  device: string;
  /** Work inside this network namespace (name under /var/run/netns, or a path). */
  netns?: string;
  /** The server-wide class all throttled clients share. */
  server: RateLimits;
  /** The default pipe of each throttled client. */
  client: RateLimits;
  /** Queue inside each client pipe: sfq (default) shares it fairly between the client's flows. */
  leaf?: LeafKind;
  /**
   * Gateway mode: client filters also match a TCP source port (the media server's public port, as it
   * leaves a router's WAN interface after NAT), so other traffic to a client's address stays unshaped.
   * This one unless throttle names another for the client (ClientLimits.sourcePort). Without it, filters
   * match the address alone, and pipes adopted with a port get their filter remade without it.
   */
  sourcePort?: number;
  /** Networks never throttled (e.g. the LAN). */
  exempt?: readonly string[];
  /** Replace a root qdisc that shaperr did not create. */
  takeover?: boolean;
  /** Where warnings go (kernel warnings, fallbacks); default: process.emitWarning. */
  onWarning?: (message: string) => void;
  /** Called for every kernel change, with its tc equivalent (for logs and dry runs). */
  onChange?: (change: { command: string }) => void;
  /** Decide and report (onChange) but never touch the kernel; assumes an empty device with MTU 1500. */
  dryRun?: boolean;
}

export interface ClientState {
  address: string;
  family: 4 | 6;
  classid: string;
  /** Guaranteed now: the wanted rate, or less when the server rate is contended. */
  rate: BitsPerSecond;
  /** The most the pipe may take when others leave room. */
  ceil: BitsPerSecond;
  /** The limits asked for this client (bits per second). */
  wanted: WantedLimits;
  /** Why the guarantee is below what the client wants, or below 1 Mbit/s (the server rate is too low for the viewers). */
  shortfall?: string;
  leaf: LeafKind;
  /** Gateway mode: the TCP source port its filter matches. */
  sourcePort?: number;
  since: Date;
  /** Live counters from the kernel (when read with `clients()`). */
  statistics?: TcStatistics;
}

export interface ThrottleOutcome {
  /**
   * `applied`: new pipe; `changed`: rates updated; `unchanged`: already so; `exempt`: never throttled;
   * `refused` (throttleAll only; throttle throws instead): the address or limits are invalid, see `error`.
   */
  result: 'applied' | 'changed' | 'unchanged' | 'exempt' | 'refused';
  client?: ClientState;
  error?: ShaperrInputError;
}

/** Throttled clients and the server class, with live counters. */
export interface ShaperState {
  clients: ClientState[];
  server?: TcClass;
}

interface AppliedClient extends BookedClient {
  minor: number;
  filterNode: number;
  /** The TCP source port its filter matches too (gateway mode). */
  sourcePort?: number;
  leaf: LeafKind;
  since: Date;
}

/** Guarantees that go down, then new pipes and remade filters (one operation list each), then guarantees that go up. */
interface ChangePlan {
  lower: Operation[];
  pipes: Operation[][];
  raise: Operation[];
}

/** What throttle and throttleAll are asked for one client. */
interface ThrottleEntry {
  address: string;
  limits?: ClientLimits;
}

/** A read-only view of the pipes on a device (inspectShaper): what `shaperr status` and `shaperr tc` read. */
export type ShaperView = Pick<Shaper, 'clients' | 'serverClass' | 'state' | 'bytesSent' | 'isThrottled' | 'tcCommands' | 'leafKind' | 'trafficControl'> & {
  close(): Promise<void>;
};

/** What the pipes and the server class carry now (Shaper.pipeCounters). */
export interface PipeCounters {
  /** Bytes sent through the server class so far. */
  serverBytes: number;
  pipes: Array<{
    address: string;
    /** Bytes sent through the pipe so far. */
    bytes: number;
    /** Bytes queued in it now. */
    backlog: number;
    /** Its ceil now, and the ceil its client wants (bits/s). */
    ceil: BitsPerSecond;
    wantedCeil: BitsPerSecond;
  }>;
}

/** What a Shaper has sent the kernel so far. */
export interface ShaperStats {
  /** Requests that change kernel state (adds, changes, deletes). */
  kernelRequests: number;
  /** Class changes made to other clients' pipes so that the guarantees keep fitting the server rate. */
  rebalanceChanges: number;
}

const ROOT_MAJOR = SHAPER_LAYOUT.rootMajor;
const ROOT_HANDLE = SHAPER_ROOT;
const SERVER_CLASS = SHAPER_SERVER_CLASS;
/** Client minors double as their leaf qdisc's major, so the root's major and 0/1 are never handed out. */
const FIRST_CLIENT_MINOR = 0x10;
const LAST_CLIENT_MINOR = 0xfffe;
const COUNTER_MAX_AGE_MS = 1000;

/** Packets up to the device MTU plus an Ethernet/VLAN header must fit the rate tables (tc assumes 1600). */
const classMtuFor = (deviceMtu: number): number => Math.max(HTB_DEFAULT_MTU, deviceMtu + 18);

/** The one place a Shaper parses the rates it is given; from here on they are bits per second. */
function parseLimits(limits: RateLimits): WantedLimits {
  const rate = parseRate(limits.rate);
  return { rate, ceil: limits.ceil === undefined ? rate : parseRate(limits.ceil) };
}

export class Shaper {
  /** The clients and what their pipes are guaranteed. */
  private readonly books: AllocationBooks<AppliedClient>;
  private readonly minors = new HandlePool(FIRST_CLIENT_MINOR, LAST_CLIENT_MINOR, new Set([ROOT_MAJOR]));
  /** One node pool per u32 hash bucket, keyed `family:bucket`. */
  private readonly filterNodes = new Map<string, HandlePool>();
  private readonly exempt: NetworkSet;
  private readonly defaults: WantedLimits;
  private readonly leaf: LeafKind;
  private readonly warn: (message: string) => void;
  private classMtu = HTB_DEFAULT_MTU;
  private closed = false;
  private longOperation?: Promise<void>;
  /** Released pipes still draining their queue (close waits for them). */
  private readonly draining = new Set<Promise<void>>();
  readonly stats: ShaperStats = { kernelRequests: 0, rebalanceChanges: 0 };

  /** Class counters from one dump, shared by the bytesSent() calls that accept counters this old. */
  private counters = { readAt: -Infinity, byClass: new Map<number, { bytes: number; backlog: number }>() };

  private constructor(
    private readonly kernel: ShaperKernel,
    private readonly options: ShaperOptions,
    leaf: LeafKind,
  ) {
    const server = parseLimits(options.server);
    this.exempt = new NetworkSet(options.exempt ?? []);
    this.defaults = parseLimits(options.client);
    this.leaf = leaf;
    this.warn = options.onWarning ?? ((message) => process.emitWarning(message, 'ShaperrWarning'));
    this.books = new AllocationBooks(server, this.warn);
  }

  /**
   * Opens the device and makes sure shaperr's root qdisc and server class exist (creating, adopting or
   * — with `takeover` — replacing what is there). Clients left by an earlier run are adopted.
   */
  static async open(options: ShaperOptions): Promise<Shaper> {
    const onWarning = options.onWarning ?? ((message: string) => process.emitWarning(message, 'ShaperrWarning'));
    const kernel = options.dryRun
      ? recordingKernel()
      : liveKernel(
          TrafficControl.open({
            ...(options.netns ? { netns: options.netns } : {}),
            onWarning: (warning: KernelWarning) => onWarning(`kernel warning on ${warning.operation} ${warning.object}: ${warning.message}`),
          }),
          options.device,
        );
    try {
      const shaper = new Shaper(kernel, options, chooseLeaf(kernel, options.leaf ?? 'sfq', onWarning));
      shaper.books.noteServerCeil();
      shaper.setUp();
      return shaper;
    } catch (error) {
      kernel.close();
      throw error;
    }
  }

  /**
   * A view of the pipes an earlier or running Shaper left on a read-only kernel (inspectShaper builds
   * one): it adopts what is there, repairs nothing, and can only be read.
   */
  static view(kernel: ShaperKernel, options: ShaperOptions, leaf: LeafKind): ShaperView {
    const shaper = new Shaper(kernel, options, leaf);
    shaper.classMtu = classMtuFor(kernel.mtu());
    shaper.adopt();
    return shaper;
  }

  /** The tc commands that would build the current state from an empty device (`shaperr tc`). */
  tcCommands(): string[] {
    this.ensureOpen();
    const operations = [...this.createOperations()];
    for (const client of this.books.clients()) if (client.pipe) operations.push(...this.clientOperations(client, client.pipe));
    return operations.map((operation) => toTcCommand(this.options.device, operation));
  }

  private setUp(): void {
    const { options, kernel } = this;
    this.classMtu = classMtuFor(kernel.mtu());
    const root = kernel.rootQdisc();
    const ours = isShaperRoot(root);
    if (root && !ours) {
      if (!options.takeover) {
        throw new ShaperrInputError(
          `device ${options.device} already has a root qdisc ${describeQdisc(root)} that shaperr did not create; ` +
            'pass takeover: true (config: takeover) to replace it',
        );
      }
      this.warn(`replacing the root qdisc ${describeQdisc(root)} on ${options.device} (takeover)`);
    }
    if (ours) {
      this.applyAll([{ op: 'replace', class: this.serverClassSpec() }]);
      this.repairHashTables(this.kernel.filters(ROOT_HANDLE));
      this.applyAll(this.adopt());
      // The server rate may have changed since the earlier run: the adopted guarantees must fit it.
      const { all, commit } = this.rebalanceOperations();
      this.applyAll(all);
      commit();
    } else {
      this.create();
    }
  }

  /** Root qdisc, server class and the u32 hash tables, on a device that has none of them. */
  private create(): void {
    this.applyAll(this.createOperations());
  }

  private createOperations(): Operation[] {
    const rootSpec: QdiscSpec = { kind: 'htb', handle: ROOT_HANDLE, options: { defaultClass: 0 } };
    return [
      { op: 'replace', qdisc: rootSpec },
      { op: 'add', class: this.serverClassSpec() },
      ...hashTableSpecs(ROOT_HANDLE).map((filter) => ({ op: 'add' as const, filter })),
    ];
  }

  private serverClassSpec({ rate, ceil } = this.books.serverLimits) {
    const options: HtbClassOptions = { rate, ceil, mtu: this.classMtu };
    return { kind: 'htb' as const, parent: ROOT_HANDLE, classid: SERVER_CLASS, options };
  }

  /**
   * Changes the server-wide limits live (schedules, reload), and every pipe's share with them in the same
   * batch: guarantees that go down before the server class, those that go up after it.
   */
  setServerLimits(limits: RateLimits): void {
    this.ensureOpen();
    const server = parseLimits(limits);
    const { lower, raise, forget, commit } = this.rebalanceOperations({ server });
    try {
      this.applyAll([...lower, { op: 'change', class: this.serverClassSpec(server) }, ...raise]);
    } catch (error) {
      // The old limits stay (a repair rebuilds the server class with them).
      forget();
      throw error;
    }
    commit();
  }

  /** The server class's limits (bits/s) as they are now. */
  get serverLimits(): Readonly<WantedLimits> {
    return this.books.serverLimits;
  }

  /**
   * Keeps `rate` (bits per second) of the server rate out of the pipes' guarantees, for streams that use
   * the uplink without a pipe (Plex Relay, or a client behind Docker's proxy): the pipes are rebalanced in
   * one batch. 0 gives it back.
   */
  setReservedRate(rate: BitsPerSecond): void {
    this.ensureOpen();
    if (!this.books.setReservedRate(rate)) return;
    const { all, commit } = this.rebalanceOperations();
    this.applyAll(all);
    commit();
  }

  /** Whether shaperr's root qdisc is still on the device (someone may delete it, or re-create the link). */
  isIntact(): boolean {
    this.ensureOpen();
    try {
      return !this.kernel.linkReplaced() && isShaperRoot(this.kernel.rootQdisc());
    } catch (error) {
      if (error instanceof NetlinkError && error.code === 'ENODEV') return true; // link gone: nothing to repair until it is back
      throw error;
    }
  }

  /**
   * Puts the root, the server class and every client's pipe back (after isIntact() said no), a chunk of
   * clients at a time with progress; throttle and release calls made meanwhile wait until it is done.
   */
  async repair(onProgress?: ProgressListener): Promise<void> {
    this.ensureOpen();
    await this.exclusively(async () => {
      this.create();
      const clients = [...this.books.clients()];
      const { parametersOf, commit } = this.rebalanceOperations({ rebuild: true });
      await inChunks(clients, (chunk) => this.applyAll(chunk.flatMap((client) => this.clientOperations(client, parametersOf(client)))), onProgress);
      commit();
    });
  }

  /**
   * Puts the server class back after someone deleted it (the kernel allows that only while no pipe hangs
   * below it): without it every throttle would fail.
   */
  repairServerClass(): void {
    this.ensureOpen();
    this.applyAll([{ op: 'replace', class: this.serverClassSpec() }]);
  }

  /**
   * Puts back the class, leaf and filter of the pipes with these class handles when someone deleted part
   * of them (replace: what is still there is left as it is). Returns how many pipes were re-applied.
   */
  async repairPipes(classids: ReadonlySet<number>): Promise<number> {
    this.ensureOpen();
    await this.waitForLongOperation();
    const damaged = [...this.books.clients()].filter((client) => client.made && client.pipe && classids.has(makeHandle(ROOT_MAJOR, client.minor)));
    this.applyAll(damaged.flatMap((client) => this.clientOperations(client, client.pipe!).map((operation) => ({ ...operation, op: 'replace' }) as Operation)));
    return damaged.length;
  }

  /**
   * Adds back the u32 hash tables and link filters missing from `filters` (a dump of the root's filters):
   * without them no client filter is reached. Returns how many were added; the client filters that went
   * with a table are repairPipes' to put back.
   */
  repairHashTables(filters: readonly Filter[]): number {
    const missing = missingHashTableSpecs(ROOT_HANDLE, filters);
    for (const filter of missing) {
      try {
        this.applyAll([{ op: 'add', filter }]);
      } catch (error) {
        // u32's tables belong to the qdisc: one outlives its deleted priority while another priority is
        // left (unseen in dumps), and is seen again, client filters and all, once its priority is back.
        if (!(error instanceof NetlinkError && error.code === 'EEXIST' && filter.options && 'divisor' in filter.options)) throw error;
      }
    }
    return missing.length;
  }

  /** Runs a long operation that yields to the event loop while no other change may interleave. */
  private async exclusively(run: () => Promise<void>): Promise<void> {
    const running = run().finally(() => (this.longOperation = undefined));
    this.longOperation = running;
    await running;
  }

  /** Lets a long operation (repair) finish before a change; its own failure is its caller's to report. */
  private async waitForLongOperation(): Promise<void> {
    if (this.longOperation) await this.longOperation.catch(() => undefined);
  }

  /**
   * Takes back the clients an earlier run left in the kernel. Returns the fixes the kernel needs (for the
   * caller to apply): missing hash tables, half-made leftovers to remove, filters made for another gateway
   * setting to rewrite. In gateway mode each pipe keeps the source port its filter has (its server's).
   */
  private adopt(): Operation[] {
    const classes = new Map<number, TcClass>();
    for (const tcClass of this.kernel.classes()) {
      if (tcClass.parent === SERVER_CLASS) classes.set(tcClass.handle, tcClass);
    }
    const filters = this.kernel.filters(ROOT_HANDLE);
    const fixes: Operation[] = [];
    for (const filter of filters) {
      const client = readClientFilter(filter);
      if (!client) continue;
      const tcClass = classes.get(client.classid);
      if (!tcClass || this.books.get(client.address.text)) {
        fixes.push({ op: 'delete', filter: clientFilterRef(ROOT_HANDLE, client.address, client.node), ifPresent: true });
        continue;
      }
      classes.delete(client.classid);
      const minor = client.classid & 0xffff;
      // Gateway mode turned on or off since the earlier run: the pipe stays, its filter is made again.
      const sourcePort = this.options.sourcePort === undefined ? undefined : (client.sourcePort ?? this.options.sourcePort);
      const adopted = { address: client.address, minor, filterNode: client.node, ...(sourcePort === undefined ? {} : { sourcePort }) };
      if (client.sourcePort !== sourcePort) fixes.push(...this.refilterOperations(adopted));
      this.minors.claim(minor);
      this.nodePool(client.address).claim(client.node);
      const { rate, ceil, quantum } = tcClass.parameters;
      // The rate may be a contended share; the quantum is the weight the pipe was made with. What the
      // kernel cannot hold (a ceil above the server rate) a caller that knows, such as shaperrd with its
      // state file, passes again with throttleAll.
      const wantedRate = Math.max(rate, wantedRateOf(quantum) ?? rate);
      this.books.add({
        ...adopted,
        wanted: { rate: wantedRate, ceil: Math.max(ceil, wantedRate) },
        pipe: { rate, ceil, quantum },
        made: true,
        leaf: this.leaf,
        since: new Date(),
      });
    }
    // Classes no filter points at belong to no client any more.
    for (const handle of classes.keys()) fixes.push({ op: 'delete', class: { classid: handle }, ifPresent: true });
    return fixes;
  }

  private nodePool(address: ClientAddress): HandlePool {
    const key = `${address.family}:${clientBucket(address)}`;
    let pool = this.filterNodes.get(key);
    if (!pool) {
      pool = new HandlePool(1, 0xfff);
      this.filterNodes.set(key, pool);
    }
    return pool;
  }

  private applyAll(operations: readonly Operation[]): void {
    if (operations.length === 0) return;
    this.stats.kernelRequests += operations.length;
    const results = this.kernel.batch(operations);
    results.forEach((result, index) => {
      if (this.options.onChange) this.options.onChange({ command: toTcCommand(this.options.device, operations[index]!) });
      if (result.error) throw result.error;
    });
  }

  private ensureOpen(): void {
    if (this.closed) throw new Error('the shaper is closed');
  }

  /**
   * Gives `address` its own pipe (idempotent: a second call with the same limits changes nothing; with
   * other limits it changes the class in place). Exempt addresses are never throttled. The pipe is
   * guaranteed its wanted rate while the server rate holds every pipe's; beyond that every pipe's
   * guarantee is its share, and the other pipes' classes are changed in the same batch. In gateway mode
   * `limits.sourcePort` names the port its filter matches; a new one remakes the filter.
   */
  async throttle(addressText: string, limits?: ClientLimits): Promise<ThrottleOutcome> {
    this.ensureOpen();
    await this.waitForLongOperation();
    const [outcome] = this.setWanted([{ address: addressText, ...(limits ? { limits } : {}) }]);
    return outcome!;
  }

  /**
   * Gateway mode: points an existing pipe's filter at another source port, its limits unchanged (the
   * client's stream now comes from another server). Undefined when `address` has no pipe: none is made.
   */
  async setSourcePort(addressText: string, sourcePort: number): Promise<ThrottleOutcome | undefined> {
    this.ensureOpen();
    await this.waitForLongOperation();
    const client = this.clientAt(addressText);
    if (!client) return undefined;
    return this.setWanted([{ address: addressText, limits: { ...client.wanted, sourcePort } }])[0];
  }

  /**
   * Throttles many clients with one rebalance (restoring saved pipes after a restart): shares are worked
   * out once for the whole set, then the pipes are made a chunk at a time with progress.
   */
  async throttleAll(entries: readonly ThrottleEntry[], onProgress?: ProgressListener): Promise<ThrottleOutcome[]> {
    this.ensureOpen();
    await this.waitForLongOperation();
    let outcomes: ThrottleOutcome[] = [];
    await this.exclusively(async () => {
      outcomes = await this.setWanted(entries, async ({ lower, pipes, raise }) => {
        this.applyAll(lower);
        await inChunks(pipes, (chunk) => this.applyAll(chunk.flat()), onProgress);
        this.applyAll(raise);
      });
    });
    return outcomes;
  }

  /**
   * Records what each client wants and brings the kernel there in one batch (or through `apply`). New
   * pipes that fail are undone, so a failed throttle leaves nothing behind.
   */
  private setWanted(entries: readonly ThrottleEntry[]): ThrottleOutcome[];
  private setWanted(entries: readonly ThrottleEntry[], apply: (plan: ChangePlan) => Promise<void>): Promise<ThrottleOutcome[]>;
  private setWanted(entries: readonly ThrottleEntry[], apply?: (plan: ChangePlan) => Promise<void>): ThrottleOutcome[] | Promise<ThrottleOutcome[]> {
    const results: { result: ThrottleOutcome['result']; client?: AppliedClient; error?: ShaperrInputError }[] = [];
    const made: AppliedClient[] = [];
    const previous = new Map<AppliedClient, WantedLimits>();
    /** Pipes whose filter is remade for another source port, and the port they had. */
    const refiltered = new Map<AppliedClient, number | undefined>();
    for (const entry of entries) {
      let address: ClientAddress;
      let wanted: WantedLimits;
      let sourcePort: number | undefined;
      try {
        address = parseClientAddress(entry.address);
        wanted = entry.limits ? parseLimits(entry.limits) : this.defaults;
        if (wanted.ceil < wanted.rate) throw new ShaperrInputError(`invalid limits for ${address.text}: ceil is below rate`);
        sourcePort = this.sourcePortFor(address, entry.limits?.sourcePort);
      } catch (error) {
        // One bad entry of many is reported with its outcome; a single throttle throws it.
        if (!apply || !(error instanceof ShaperrInputError)) throw error;
        results.push({ result: 'refused', error });
        continue;
      }
      if (this.exempt.contains(address)) {
        results.push({ result: 'exempt' });
        continue;
      }
      const existing = this.books.get(address.text);
      if (existing) {
        const sameRates = existing.wanted.rate === wanted.rate && existing.wanted.ceil === wanted.ceil;
        const samePort = existing.sourcePort === sourcePort;
        if (!previous.has(existing)) previous.set(existing, existing.wanted);
        if (!sameRates) this.books.setWanted(existing, wanted);
        if (!samePort) {
          if (!refiltered.has(existing)) refiltered.set(existing, existing.sourcePort);
          existing.sourcePort = sourcePort;
        }
        results.push({ result: sameRates && samePort ? 'unchanged' : 'changed', client: existing });
        continue;
      }
      const nodes = this.nodePool(address);
      const client: AppliedClient = {
        address,
        minor: this.minors.allocate(),
        filterNode: nodes.allocate(),
        ...(sourcePort === undefined ? {} : { sourcePort }),
        wanted,
        made: false,
        leaf: this.leaf,
        since: new Date(),
      };
      this.books.add(client);
      made.push(client);
      results.push({ result: 'applied', client });
    }
    const { lower, raise, parametersOf, forget, commit } = this.rebalanceOperations({ subjects: new Set(previous.keys()) });
    const pipes = [
      ...made.map((client) => this.clientOperations(client, parametersOf(client))),
      ...[...refiltered.keys()].map((client) => this.refilterOperations(client)),
    ];
    const plan: ChangePlan = { lower, pipes, raise };
    const outcomes = () => {
      commit();
      return results.map(({ result, client, error }) => ({ result, ...(client ? { client: this.describe(client) } : {}), ...(error ? { error } : {}) }));
    };
    const undo = (error: unknown): never => {
      for (const [client, wanted] of previous) this.books.setWanted(client, wanted);
      for (const [client, sourcePort] of refiltered) this.restoreFilter(client, sourcePort);
      this.forgetPipes(made);
      forget();
      throw error;
    };
    if (apply) return apply(plan).then(outcomes, undo);
    try {
      this.applyAll([...plan.lower, ...plan.pipes.flat(), ...plan.raise]);
    } catch (error) {
      undo(error);
    }
    return outcomes();
  }

  /** The source port a client's filter matches: the one asked for, else the shaper's (gateway mode only). */
  private sourcePortFor(address: ClientAddress, asked: number | undefined): number | undefined {
    if (asked === undefined) return this.options.sourcePort;
    if (this.options.sourcePort === undefined)
      throw new ShaperrInputError(`a source port for ${address.text} (${asked}) needs gateway mode: set ShaperOptions.sourcePort, the default port`);
    if (!Number.isInteger(asked) || asked < 1 || asked > 65535)
      throw new ShaperrInputError(`invalid source port for ${address.text}: ${asked} (expected 1-65535)`);
    return asked;
  }

  /**
   * A filter remade for another port that failed: the pipe keeps the port it had, and its filter is put
   * back as it was. Should that fail too, the pipe is left without its filter for ShaperWatch's repair.
   */
  private restoreFilter(client: AppliedClient, sourcePort: number | undefined): void {
    client.sourcePort = sourcePort;
    this.kernel.batch([
      { op: 'delete', filter: clientFilterRef(ROOT_HANDLE, client.address, client.filterNode), ifPresent: true },
      { op: 'add', filter: this.clientFilter(client) },
    ]);
  }

  /** Removes new pipes that could not be made, from the kernel (what did go in) and from the books. */
  private forgetPipes(clients: readonly AppliedClient[]): void {
    if (clients.length === 0) return;
    this.kernel.batch(
      clients.flatMap((client) => [
        { op: 'delete' as const, filter: clientFilterRef(ROOT_HANDLE, client.address, client.filterNode), ifPresent: true },
        { op: 'delete' as const, class: { classid: makeHandle(ROOT_MAJOR, client.minor) }, ifPresent: true },
      ]),
    );
    for (const client of clients) {
      this.books.remove(client);
      this.minors.release(client.minor);
      this.nodePool(client.address).release(client.filterNode);
    }
  }

  /**
   * The books' rebalance as class changes: guarantees that go down first, so the guarantees never add up to
   * more than the server rate even halfway through a batch. Pipes not made yet get theirs from
   * clientOperations (`parametersOf`). `commit` records the result once the kernel has it.
   */
  private rebalanceOperations(options?: RebalanceOptions<AppliedClient>) {
    const rebalance = this.books.rebalance(options);
    const change = ({ client, parameters }: PipeChange<AppliedClient>): Operation => ({ op: 'change', class: this.classSpec(client.minor, parameters) });
    const lower = rebalance.lower.map(change);
    const raise = rebalance.raise.map(change);
    return {
      lower,
      raise,
      all: [...lower, ...raise],
      parametersOf: rebalance.parametersOf,
      forget: rebalance.forget,
      commit: () => {
        rebalance.commit();
        this.stats.rebalanceChanges += rebalance.otherChanges;
      },
    };
  }

  /**
   * Removes the client's pipe (idempotent; resolves once it is gone). Returns whether there was one.
   * Nothing queued in the pipe is dropped: the client's TCP would stall on retransmission timeouts for a
   * second or more if up to a few hundred KB of its flow vanished. The client counts as released at once:
   * a throttle meanwhile gives it a new pipe. The other pipes get the released share back once the class
   * is gone.
   */
  async release(addressText: string): Promise<boolean> {
    this.ensureOpen();
    await this.waitForLongOperation();
    const address = parseClientAddress(addressText);
    const client = this.books.get(address.text);
    if (!client) return false;
    this.books.remove(client);
    const removal = this.removePipe(client);
    this.draining.add(removal);
    try {
      await removal;
    } catch (error) {
      // Still the client's pipe (unless a throttle made a new one meanwhile), for a retry or repair.
      if (!this.books.get(address.text)) this.books.add(client);
      throw error;
    } finally {
      this.draining.delete(removal);
    }
    return true;
  }

  /**
   * An empty pipe is deleted at once. A pipe with a queue loses its filter first (the client's new
   * packets bypass it), may borrow up to the server rate so the queue drains in a moment (its guarantee
   * still counts against the server rate), and is deleted once empty. The filter must go before the class
   * in any case: the kernel refuses to delete a class a filter still points at.
   */
  private async removePipe(client: AppliedClient): Promise<void> {
    const classid = makeHandle(ROOT_MAJOR, client.minor);
    const deleteFilter: Operation = { op: 'delete', filter: clientFilterRef(ROOT_HANDLE, client.address, client.filterNode), ifPresent: true };
    const deleteClass: Operation = { op: 'delete', class: { classid }, ifPresent: true };
    const pipe = client.pipe ?? { rate: client.wanted.rate, ceil: client.wanted.ceil, quantum: 0 };
    if (this.kernel.queuedBytes(classid) > 0) {
      this.books.startDraining(client, pipe.rate);
      try {
        this.applyAll([deleteFilter, { op: 'change', class: this.drainingClassSpec(client.minor, pipe) }]);
        await drained(() => this.kernel.queuedBytes(classid));
      } finally {
        this.books.endDraining(client);
      }
      this.applyAll([deleteClass]);
    } else {
      this.applyAll([deleteFilter, deleteClass]);
    }
    this.minors.release(client.minor);
    this.nodePool(client.address).release(client.filterNode);
    // The released guarantee goes back to the pipes still contended (not in the middle of a repair or restore).
    await this.waitForLongOperation();
    const { all, commit } = this.rebalanceOperations();
    this.applyAll(all);
    commit();
  }

  /** Class, leaf and filter of one client, in the order the kernel needs them. */
  private clientOperations(client: AppliedClient, pipe: PipeParameters): Operation[] {
    const operations: Operation[] = [{ op: 'add', class: this.classSpec(client.minor, pipe) }];
    const leafSpec = this.leafSpec(client.minor);
    if (leafSpec) operations.push({ op: 'add', qdisc: leafSpec });
    operations.push({ op: 'add', filter: this.clientFilter(client) });
    return operations;
  }

  private clientFilter(client: Pick<AppliedClient, 'address' | 'minor' | 'filterNode' | 'sourcePort'>) {
    return clientFilterSpec(ROOT_HANDLE, client.address, makeHandle(ROOT_MAJOR, client.minor), client.filterNode, client.sourcePort);
  }

  /** A pipe's filter made again with what it should match now (the kernel keeps a u32 filter's matches on replace). */
  private refilterOperations(client: Pick<AppliedClient, 'address' | 'minor' | 'filterNode' | 'sourcePort'>): Operation[] {
    return [
      { op: 'delete', filter: clientFilterRef(ROOT_HANDLE, client.address, client.filterNode) },
      { op: 'add', filter: this.clientFilter(client) },
    ];
  }

  private classSpec(minor: number, { rate, ceil, quantum }: PipeParameters) {
    const options: HtbClassOptions = { rate, ceil, quantum, mtu: this.classMtu };
    return { kind: 'htb' as const, parent: SERVER_CLASS, classid: makeHandle(ROOT_MAJOR, minor), options };
  }

  /** A pipe whose queue drains before it goes: its guarantee stays, it may borrow up to the server rate. */
  private drainingClassSpec(minor: number, pipe: PipeParameters) {
    return this.classSpec(minor, { ...pipe, ceil: Math.max(pipe.rate, this.books.serverLimits.rate) });
  }

  private leafSpec(minor: number): QdiscSpec | undefined {
    const placement = { parent: makeHandle(ROOT_MAJOR, minor), handle: makeHandle(minor, 0) };
    switch (this.leaf) {
      case 'sfq':
        return { kind: 'sfq', ...placement, options: { perturb: 10 } };
      case 'bfifo':
        // Bounded in bytes, not packets: a qdisc sees GSO super-packets of up to 64 KB, so 127 of them
        // (or the device's txqueuelen) would queue seconds at 4 Mbit, and TCP would stall on RTO for as
        // long when the pipe is removed and its queue dropped.
        return { kind: 'bfifo', ...placement, options: { limit: SFQ_DEFAULT_LIMIT * this.classMtu } };
      case 'none':
        return undefined;
    }
  }

  private describe(client: AppliedClient, statistics?: TcStatistics): ClientState {
    const pipe = client.pipe ?? { rate: client.wanted.rate, ceil: client.wanted.ceil };
    const state: ClientState = {
      address: client.address.text,
      family: client.address.family,
      classid: formatHandle(makeHandle(ROOT_MAJOR, client.minor)),
      rate: pipe.rate,
      ceil: pipe.ceil,
      wanted: { ...client.wanted },
      leaf: client.leaf,
      ...(client.sourcePort === undefined ? {} : { sourcePort: client.sourcePort }),
      since: client.since,
    };
    const shortfall = this.books.shortfallOf(client);
    if (shortfall) state.shortfall = shortfall;
    if (statistics) state.statistics = statistics;
    return state;
  }

  /** Throttled clients with live counters read from the kernel now. */
  clients(): ClientState[] {
    return this.state().clients;
  }

  /** The server-wide class with live counters. */
  serverClass(): TcClass | undefined {
    return this.state().server;
  }

  /** Clients and the server class with live counters, from one dump of the device's classes. */
  state(): ShaperState {
    this.ensureOpen();
    return this.stateFrom(this.kernel.classes());
  }

  /**
   * The same as state(), the dump read a few dozen classes per event-loop turn: a daemon's events are not
   * held up while thousands of classes are decoded (what a status page asks for every second).
   */
  async readState(): Promise<ShaperState> {
    this.ensureOpen();
    const classes = await this.kernel.classesInTurns();
    this.ensureOpen();
    return this.stateFrom(classes);
  }

  private stateFrom(classes: readonly TcClass[]): ShaperState {
    const byHandle = new Map(classes.map((tcClass) => [tcClass.handle, tcClass]));
    const clients = [...this.books.clients()].map((client) => this.describe(client, byHandle.get(makeHandle(ROOT_MAJOR, client.minor))?.statistics));
    const server = byHandle.get(SERVER_CLASS);
    return server ? { clients, server } : { clients };
  }

  /**
   * Bytes sent through a client's class so far (undefined when not throttled). Reads all class counters
   * in one dump at most once per `maxAgeMs` (default 1 s), however many clients ask.
   */
  bytesSent(addressText: string, { maxAgeMs = COUNTER_MAX_AGE_MS } = {}): number | undefined {
    const client = this.clientAt(addressText);
    if (!client) return undefined;
    const now = performance.now();
    if (now - this.counters.readAt > maxAgeMs) {
      this.counters = { readAt: now, byClass: this.kernel.classCounters() };
    }
    return this.counters.byClass.get(makeHandle(ROOT_MAJOR, client.minor))?.bytes;
  }

  /**
   * Each pipe's bytes sent and bytes queued now, with its ceil and wanted ceil, and the server class's
   * bytes: one counters-only dump, read fresh (the automatic ceiling reads it ten times a second).
   */
  pipeCounters(): PipeCounters {
    this.ensureOpen();
    const byClass = this.kernel.classCounters();
    this.counters = { readAt: performance.now(), byClass };
    const pipes: PipeCounters['pipes'] = [];
    for (const client of this.books.clients()) {
      const counters = byClass.get(makeHandle(ROOT_MAJOR, client.minor));
      if (!counters || !client.pipe) continue;
      pipes.push({ address: client.address.text, bytes: counters.bytes, backlog: counters.backlog, ceil: client.pipe.ceil, wantedCeil: client.wanted.ceil });
    }
    return { serverBytes: byClass.get(SERVER_CLASS)?.bytes ?? 0, pipes };
  }

  /** A throttled client's pipe; canonical text (what shaperrd passes, per client several times a second) is found without parsing. */
  private clientAt(addressText: string): AppliedClient | undefined {
    return this.books.get(addressText) ?? this.books.get(parseClientAddress(addressText).text);
  }

  /** Whether an address is currently throttled. */
  isThrottled(addressText: string): boolean {
    return this.clientAt(addressText) !== undefined;
  }

  /** The underlying tc client, for reading state (e.g. `filters()`, `qdiscs()`); undefined in dry runs. */
  get trafficControl(): TrafficControl | undefined {
    return this.kernel.trafficControl;
  }

  /** The kernel as this shaper sees it, for reading only (ShaperWatch compares it with the pipes). */
  get kernelReader(): ShaperKernelReader {
    return this.kernel;
  }

  /** The leaf kind in use (after any fallback). */
  get leafKind(): LeafKind {
    return this.leaf;
  }

  /** Removes everything shaperr made, dropping nothing queued; busy pipes may borrow up to the server rate meanwhile, guarantees unchanged. */
  private async teardown(): Promise<void> {
    const clients = [...this.books.clients()];
    await removeRootDraining(this.kernel, (operations) => this.applyAll(operations), {
      open: (busy) => {
        const busyHandles = new Set(busy.map((tcClass) => tcClass.handle));
        return clients
          .filter((client) => client.pipe && busyHandles.has(makeHandle(ROOT_MAJOR, client.minor)))
          .map((client): Operation => ({ op: 'change', class: this.drainingClassSpec(client.minor, client.pipe!) }));
      },
      unsteer: () =>
        clients.map((client): Operation => ({ op: 'delete', filter: clientFilterRef(ROOT_HANDLE, client.address, client.filterNode), ifPresent: true })),
    });
  }

  /** Closes the netlink socket; with `teardown`, first removes everything shaperr created on the device (dropping nothing queued). */
  async close({ teardown = false }: { teardown?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled(this.draining);
    try {
      if (teardown) await this.teardown();
    } catch (error) {
      if (!(error instanceof NetlinkError && error.code === 'EINVAL')) throw error;
    } finally {
      this.closed = true;
      this.kernel.close();
    }
  }
}

/** Uses the wished leaf kind if the kernel has it, else bfifo, saying so once. */
function chooseLeaf(kernel: ShaperKernel, wished: LeafKind, warn: (message: string) => void): LeafKind {
  if (wished === 'none' || wished === 'bfifo' || kernel.hasQdiscKind(wished)) return wished;
  warn(`the kernel has no '${wished}' qdisc (module sch_${wished} not available): client pipes use bfifo leaves instead`);
  return 'bfifo';
}
