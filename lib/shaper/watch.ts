/**
 * ShaperWatch: repairs a Shaper's kernel objects as soon as the kernel says someone removed them, instead
 * of polling. It listens to the tc and link notifications (TcMonitor), leaving out the Shaper's own
 * changes (its netlink port id), and
 *   - shaperr's root qdisc deleted, or the device re-created (a new ifindex) → the whole tree is put back;
 *   - one client's class, leaf or filter deleted → that pipe alone is put back;
 *   - a u32 hash table or its link filter deleted → they are added back, then the pipes that lost their filter;
 *   - the server class deleted (possible while no pipe hangs below it) → it is put back;
 *   - another tool's root qdisc in place of shaperr's → reported once, left alone (unless `takeover`);
 *   - notifications lost (receive buffer overflow) → a full check: root, then every pipe against a dump.
 * check() runs the same full check (a slow safety poll). Repairs run one at a time; what arrives
 * meanwhile is merged into the next one.
 */
import type { ProgressListener } from '../progress.js';
import { makeHandle, parseHandle, TC_H_ROOT } from '../tc/handle.js';
import { TcMonitor, type TcNotification } from '../tc/monitor.js';
import type { Filter } from '../tc/objects.js';
import { NetlinkError } from '../wire/errors.js';
import { describeQdisc, isShaperRoot, missingHashTableSpecs, readClientFilter, SHAPER_LAYOUT } from './layout.js';
import type { Shaper } from './shaper.js';

const ROOT_HANDLE = makeHandle(SHAPER_LAYOUT.rootMajor, 0);
const SERVER_CLASS = makeHandle(SHAPER_LAYOUT.rootMajor, SHAPER_LAYOUT.serverMinor);

export interface RepairReport {
  /** What was noticed: `root deleted`, `device re-created`, `pipe damaged`, `notifications lost`, `check`… */
  reason: string;
  /** `tree`: root, server class and every pipe; `pipes`: the damaged pipes only. */
  scope: 'tree' | 'pipes';
  pipes: number;
  /** u32 hash tables and link filters put back (someone deleted them; their client filters went with them). */
  hashTables?: number;
  /** The server class was put back (someone deleted it while no pipe hung below it). */
  serverClass?: true;
  /** From reading the notification (or starting the check) to the kernel having everything back. */
  ms: number;
}

export interface ShaperWatchOptions {
  device: string;
  netns?: string;
  /** Replace another tool's root qdisc (as Shaper's `takeover`); without it, such a root is left alone. */
  takeover?: boolean;
  /** A repair is starting (e.g. to log it); the tree repair reports progress through `onProgress`. */
  onRepairStart?: (reason: string, scope: RepairReport['scope']) => ProgressListener | undefined;
  onRepaired?: (report: RepairReport) => void;
  /** Another tool's root qdisc sits where shaperr's was: told once until shaperr's root is back. */
  onForeignRoot?: (description: string) => void;
  /** Notifications were lost; a full check follows. */
  onOverflow?: () => void;
  /** A repair or the listener failed; the next notification or check tries again. */
  onError?: (error: Error) => void;
  /** Kernel receive buffer of the listening socket (tests make it tiny to force an overflow). */
  receiveBufferBytes?: number;
}

interface Pending {
  /** Why a full check is due, if it is. */
  full?: string;
  startedAt: number;
  pipes: Set<number>;
}

export class ShaperWatch {
  private readonly monitor: TcMonitor;
  private pending?: Pending;
  private running?: Promise<void>;
  private toldForeign = false;
  private closed = false;
  private takeover: boolean;

  private constructor(
    private readonly shaper: Shaper,
    private readonly options: ShaperWatchOptions,
  ) {
    this.takeover = options.takeover ?? false;
    const portId = this.kernel.portId;
    if (portId === undefined) throw new Error('a dry-run shaper has no kernel objects to watch');
    this.monitor = TcMonitor.open({
      ...(options.netns ? { netns: options.netns } : {}),
      ignorePortIds: [portId],
      onNotifications: (notifications) => this.onNotifications(notifications),
      onOverflow: () => {
        options.onOverflow?.();
        this.schedule({ full: 'notifications lost (receive buffer overflow)' });
      },
      onError: (error) => this.report(error),
      ...(options.receiveBufferBytes ? { receiveBufferBytes: options.receiveBufferBytes } : {}),
    });
  }

  /** Starts listening for the shaper's device (a dry-run shaper has nothing to watch). */
  static open(shaper: Shaper, options: ShaperWatchOptions): ShaperWatch {
    return new ShaperWatch(shaper, options);
  }

  private get kernel() {
    return this.shaper.kernelReader;
  }

  /** The listener's counters (notifications read, overflows). */
  get stats() {
    return this.monitor.stats;
  }

  /**
   * Changes whether another tool's root qdisc is replaced (a config reload), then runs a full check at
   * once: a deleted root is put back, and with takeover turned on a root left alone until now is taken
   * over without waiting for the safety poll. Resolves once it is done, with the other tool's root qdisc
   * still in shaperr's place (described, e.g. `tbf 9:`), if there is one.
   */
  async setTakeover(takeover: boolean): Promise<string | undefined> {
    const turnedOn = takeover && !this.takeover;
    this.takeover = takeover;
    await this.check(turnedOn ? 'takeover turned on' : 'configuration reload');
    return this.foreignRoot();
  }

  /** Another tool's root qdisc where shaperr's should be (described, e.g. `tbf 9:`), if there is one. */
  foreignRoot(): string | undefined {
    return this.shaper.isIntact() ? undefined : this.otherRoot();
  }

  /** The device's root qdisc when it is not shaperr's (described); undefined when it is, or there is none. */
  private otherRoot(): string | undefined {
    const root = this.kernel.rootQdisc();
    return root && !isShaperRoot(root) ? describeQdisc(root) : undefined;
  }

  /** A full check now (the safety poll); resolves once it and any repair it started are done. */
  async check(reason = 'check'): Promise<void> {
    this.schedule({ full: reason });
    await this.settled();
  }

  /** Resolves once no repair is running or due. */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private onNotifications(notifications: readonly TcNotification[]): void {
    const device = this.options.device;
    const ifindex = this.kernel.ifindex();
    const pipes = new Set<number>();
    let full: string | undefined;
    for (const notification of notifications) {
      if (notification.object === 'link') {
        if (notification.action === 'new' && notification.name === device && notification.ifindex !== ifindex) full = 'device re-created';
        continue;
      }
      if (notification.ifindex !== ifindex) continue;
      switch (notification.object) {
        case 'qdisc': {
          const { qdisc } = notification;
          if (qdisc.parent === TC_H_ROOT) full = notification.action === 'del' && qdisc.handle === ROOT_HANDLE ? 'root deleted' : 'root replaced';
          else if (notification.action === 'del' && qdisc.parent >>> 16 === SHAPER_LAYOUT.rootMajor) pipes.add(qdisc.parent);
          break;
        }
        case 'class':
          if (notification.action !== 'del') break;
          if (notification.handle === SERVER_CLASS) full ??= 'server class deleted';
          else if (notification.parent === SERVER_CLASS) pipes.add(notification.handle);
          break;
        case 'filter': {
          if (notification.action !== 'del' || notification.parent !== ROOT_HANDLE) break;
          const client = notification.filter && readClientFilter(notification.filter);
          if (client) pipes.add(client.classid);
          else full ??= 'filters deleted';
          break;
        }
      }
    }
    if (full || pipes.size) this.schedule(full ? { full, pipes } : { pipes });
  }

  private schedule({ full, pipes }: { full?: string; pipes?: ReadonlySet<number> }): void {
    if (this.closed) return;
    this.pending ??= { startedAt: performance.now(), pipes: new Set() };
    const pending = this.pending;
    if (full) pending.full ??= full;
    for (const classid of pipes ?? []) pending.pipes.add(classid);
    this.running ??= this.run().finally(() => (this.running = undefined));
  }

  private async run(): Promise<void> {
    while (this.pending && !this.closed) {
      const work = this.pending;
      this.pending = undefined;
      try {
        if (work.full) await this.fullCheck(work.full, work.startedAt);
        else await this.repairPipes('pipe damaged', work.pipes, work.startedAt);
      } catch (error) {
        this.report(error);
      }
    }
  }

  /**
   * Root first (missing: the whole tree; another tool's: left alone), then the hash tables and every pipe
   * against a dump.
   */
  private async fullCheck(reason: string, startedAt: number): Promise<void> {
    const { shaper, options } = this;
    if (!shaper.isIntact()) {
      const foreign = this.otherRoot();
      if (foreign && !this.takeover) {
        if (!this.toldForeign) options.onForeignRoot?.(foreign);
        this.toldForeign = true;
        return;
      }
      this.toldForeign = false;
      const onProgress = options.onRepairStart?.(reason, 'tree');
      await shaper.repair(onProgress ?? undefined);
      options.onRepaired?.({ reason, scope: 'tree', pipes: shaper.clients().length, ms: performance.now() - startedAt });
      return;
    }
    this.toldForeign = false;
    const kernel = this.readPipes();
    if (!kernel) return; // the device is gone: nothing to put back until it returns
    if (kernel.serverClass && missingHashTableSpecs(ROOT_HANDLE, kernel.filters).length === 0) return this.repairPipes(reason, kernel.damaged, startedAt);
    options.onRepairStart?.(reason, 'pipes');
    // The server class first: the pipes hang below it.
    if (!kernel.serverClass) shaper.repairServerClass();
    const hashTables = shaper.repairHashTables(kernel.filters);
    const pipes = await shaper.repairPipes(kernel.damaged);
    options.onRepaired?.({
      reason,
      scope: 'pipes',
      pipes,
      hashTables,
      ...(kernel.serverClass ? {} : { serverClass: true }),
      ms: performance.now() - startedAt,
    });
  }

  /**
   * The root's filters now, whether the server class is there, and the class handles of the pipes missing
   * their class, leaf or filter in the kernel (undefined: the device is gone).
   */
  private readPipes(): { filters: Filter[]; damaged: Set<number>; serverClass: boolean } | undefined {
    const { kernel, shaper } = this;
    try {
      const filters = kernel.filters(ROOT_HANDLE);
      const deviceClasses = kernel.classes();
      const serverClass = deviceClasses.some((tcClass) => tcClass.handle === SERVER_CLASS);
      const classes = new Set(deviceClasses.filter((tcClass) => tcClass.parent === SERVER_CLASS).map((tcClass) => tcClass.handle));
      const steered = new Set(filters.flatMap((filter) => readClientFilter(filter)?.classid ?? []));
      const leaf = shaper.leafKind;
      // A deleted leaf is replaced by the kernel's default qdisc: only a leaf of our kind counts.
      const leaves =
        leaf === 'none'
          ? undefined
          : new Set(
              kernel
                .qdiscs()
                .filter((qdisc) => qdisc.kind === leaf)
                .map((qdisc) => qdisc.parent),
            );
      const damaged = new Set<number>();
      for (const client of shaper.clients()) {
        const classid = parseHandle(client.classid);
        if (!classes.has(classid) || !steered.has(classid) || (leaves && !leaves.has(classid))) damaged.add(classid);
      }
      return { filters, damaged, serverClass };
    } catch (error) {
      if (error instanceof NetlinkError && error.code === 'ENODEV') return undefined;
      throw error;
    }
  }

  private async repairPipes(reason: string, classids: ReadonlySet<number>, startedAt: number): Promise<void> {
    if (classids.size === 0) return;
    this.options.onRepairStart?.(reason, 'pipes');
    const pipes = await this.shaper.repairPipes(classids);
    if (pipes) this.options.onRepaired?.({ reason, scope: 'pipes', pipes, ms: performance.now() - startedAt });
  }

  private report(error: unknown): void {
    const failure = error instanceof Error ? error : new Error(String(error));
    if (this.options.onError) this.options.onError(failure);
    else process.emitWarning(`shaperr watch: ${failure.message}`, 'ShaperrWarning');
  }

  /** Stops listening at once; resolves after a repair under way has finished. */
  async close(): Promise<void> {
    this.closed = true;
    this.monitor.close();
    await this.settled();
  }
}
