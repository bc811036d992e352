/**
 * TrafficControl: create, read, change and delete qdiscs, classes and filters over rtnetlink.
 *
 * Calls are synchronous: the kernel handles a tc request inside sendmsg(), so a request with its ACK takes
 * microseconds and a callback or promise would only add overhead. Every kernel refusal is a NetlinkError;
 * kernel warnings carried by successful ACKs go to `onWarning`.
 */
import { DEFAULT_RECEIVE_TIMEOUT_MS, type NetlinkSocketOptions } from '../../native-bindings/netlink-socket.js';
import { type MessageWriter, attr, attributeSet, attrString, attrU32 } from '../wire/attributes.js';
import { NetlinkConnection, type NetlinkRequest, type QueryRequest, type RequestOutcome } from '../wire/connection.js';
import { type KernelWarning, NetlinkError, ShaperrInputError } from '../wire/errors.js';
import { Flags, ifinfomsg, MessageType, type ReceivedMessage, tcmsg } from '../wire/message.js';
import { formatHandle, type HandleInput, parseHandle, TC_H_ROOT } from './handle.js';
import type { KindContext } from './kind.js';
import { readClass, readClassCounters, readFilter, readQdisc } from './decode.js';
import { filterKindProbe, operationRequest, qdiscKindProbe } from './encode.js';
import { DEFAULT_FILTER_KIND, type FilterKindName } from './registry.js';
import type { ClassRef, ClassSpec, DeviceTarget, Filter, FilterRef, FilterSpec, Operation, Qdisc, QdiscRef, QdiscSpec, TcClass } from './types.js';
import { type SchedulerClock, schedulerClock } from './units.js';

const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const linkAttributes = attributeSet({ name: attr(IFLA_IFNAME, attrString), mtu: attr(IFLA_MTU, attrU32) });

export interface TrafficControlOptions {
  /** Work inside this network namespace (a name under /var/run/netns, or a path). */
  netns?: string;
  /** Kernel warnings on successful requests; default: process.emitWarning. */
  onWarning?: (warning: KernelWarning) => void;
  /** Override the scheduler clock (tests); default: read from /proc/net/psched. */
  clock?: SchedulerClock;
  /** Fail a request that gets no answer within this time (default 5000 ms). */
  timeoutMs?: number;
}

export interface Link {
  ifindex: number;
  name: string;
  mtu: number;
}

/** A device by name or index. */
export type DeviceInput = string | number;

export interface OperationResult {
  ok: boolean;
  error?: NetlinkError;
  warning?: string;
}

const LOOPBACK = { ifindex: 1, name: 'dev lo' };
/** A priority nothing of ours uses, for the filter probe. */
const PROBE_PRIORITY = 0xfff0;

const defaultWarning = (warning: KernelWarning): void => {
  process.emitWarning(`${warning.operation} ${warning.object}: ${warning.message}`, 'ShaperrKernelWarning');
};

/** The replies about one device: a dump answers for every device. */
const onDevice = (messages: readonly ReceivedMessage[], ifindex: number): ReceivedMessage[] =>
  messages.filter((message) => tcmsg.decode(message.body).ifindex === ifindex);

export class TrafficControl {
  private readonly links = new Map<string, Link>();
  private readonly kindSupport = new Map<string, boolean>();
  private readonly onWarning: (warning: KernelWarning) => void;
  private readonly context: KindContext;
  /** The second socket classesInTurns reads on (opened at its first use), and the read under way. */
  private reader?: NetlinkConnection;
  private reading: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly connection: NetlinkConnection,
    private readonly socketOptions: NetlinkSocketOptions,
    options: TrafficControlOptions,
  ) {
    this.onWarning = options.onWarning ?? defaultWarning;
    this.context = { clock: options.clock ?? schedulerClock() };
  }

  static open(options: TrafficControlOptions = {}): TrafficControl {
    const socketOptions = { ...(options.netns ? { netns: options.netns } : {}), receiveTimeoutMs: options.timeoutMs ?? DEFAULT_RECEIVE_TIMEOUT_MS };
    return new TrafficControl(NetlinkConnection.open(socketOptions), socketOptions, options);
  }

  /**
   * Batches of several datagrams send from a second thread once it is up (the first such batch starts
   * it): whether it is, and how many batches went through it.
   */
  get background(): { ready: boolean; batches: number } {
    return this.connection.background;
  }

  /** The netlink port id of this connection: kernel notifications of its own changes carry it (see TcMonitor). */
  get portId(): number {
    return this.connection.portId;
  }

  /** The scheduler clock and handle context the kinds encode with. */
  get kindContext(): KindContext {
    return this.context;
  }

  // ---- devices ------------------------------------------------------------------------------------

  /** Looks a device up by name or index (cached by name; `refresh` to re-read, e.g. after an MTU change). */
  link(device: DeviceInput, { refresh = false } = {}): Link {
    const key = String(device);
    const cached = this.links.get(key);
    if (cached && !refresh) return cached;
    const byName = typeof device === 'string';
    if (byName && (device.length === 0 || device.length > 15)) throw new ShaperrInputError(`invalid device name ${JSON.stringify(device)}: 1…15 characters`);
    const [reply] = this.connection.query(
      {
        type: MessageType.GETLINK,
        writeBody(writer) {
          writer.struct(ifinfomsg, { index: byName ? 0 : device });
          if (byName) writer.attribute(IFLA_IFNAME, attrString.encode(device));
        },
        context: { operation: 'look up', object: `device ${key}` },
      },
      { dump: false },
    );
    if (!reply) throw new NetlinkError(19, { operation: 'look up', object: `device ${key}` });
    const values = linkAttributes.read(reply.body.subarray(ifinfomsg.size));
    const link = { ifindex: ifinfomsg.decode(reply.body).index, name: values.name ?? key, mtu: values.mtu ?? 1500 };
    this.links.set(key, link);
    return link;
  }

  private target(device: DeviceInput): DeviceTarget {
    const { ifindex, name } = this.link(device);
    return { ifindex, name: `dev ${name}` };
  }

  // ---- writes -------------------------------------------------------------------------------------

  private settle(request: NetlinkRequest, outcome: RequestOutcome, ifPresent: boolean): OperationResult {
    if (outcome.warning) this.onWarning({ operation: request.context.operation, object: request.context.object, message: outcome.warning });
    if (!outcome.error) return outcome.warning ? { ok: true, warning: outcome.warning } : { ok: true };
    if (ifPresent && outcome.error.code === 'ENOENT') return { ok: true };
    return { ok: false, error: outcome.error };
  }

  /** Runs one operation; throws NetlinkError when the kernel refuses it. */
  apply(device: DeviceInput, operation: Operation): OperationResult {
    const [result] = this.batch(device, [operation]);
    if (result!.error) throw result!.error;
    return result!;
  }

  /**
   * Sends many operations together (several per datagram). Each gets its own result: a failure does not
   * stop the others, and nothing is thrown for kernel refusals.
   */
  batch(device: DeviceInput, operations: readonly Operation[]): OperationResult[] {
    if (operations.length === 0) return [];
    const target = this.target(device); // once: a device name per request was a visible cost of large batches
    const requests = operations.map((operation) => operationRequest(target, operation, this.context));
    const outcomes = this.connection.batch(requests);
    return outcomes.map((outcome, index) => {
      const operation = operations[index]!;
      return this.settle(requests[index]!, outcome, operation.op === 'delete' && operation.ifPresent === true);
    });
  }

  addQdisc(device: DeviceInput, spec: QdiscSpec): OperationResult {
    return this.apply(device, { op: 'add', qdisc: spec });
  }
  replaceQdisc(device: DeviceInput, spec: QdiscSpec): OperationResult {
    return this.apply(device, { op: 'replace', qdisc: spec });
  }
  changeQdisc(device: DeviceInput, spec: QdiscSpec): OperationResult {
    return this.apply(device, { op: 'change', qdisc: spec });
  }
  deleteQdisc(device: DeviceInput, ref: QdiscRef = {}, { ifPresent = false } = {}): OperationResult {
    return this.apply(device, { op: 'delete', qdisc: ref, ifPresent });
  }

  addClass(device: DeviceInput, spec: ClassSpec): OperationResult {
    return this.apply(device, { op: 'add', class: spec });
  }
  replaceClass(device: DeviceInput, spec: ClassSpec): OperationResult {
    return this.apply(device, { op: 'replace', class: spec });
  }
  changeClass(device: DeviceInput, spec: ClassSpec): OperationResult {
    return this.apply(device, { op: 'change', class: spec });
  }
  deleteClass(device: DeviceInput, ref: ClassRef, { ifPresent = false } = {}): OperationResult {
    return this.apply(device, { op: 'delete', class: ref, ifPresent });
  }

  addFilter(device: DeviceInput, spec: FilterSpec): OperationResult {
    return this.apply(device, { op: 'add', filter: spec });
  }
  replaceFilter(device: DeviceInput, spec: FilterSpec): OperationResult {
    return this.apply(device, { op: 'replace', filter: spec });
  }
  changeFilter(device: DeviceInput, spec: FilterSpec): OperationResult {
    return this.apply(device, { op: 'change', filter: spec });
  }
  deleteFilter(device: DeviceInput, ref: FilterRef, { ifPresent = false } = {}): OperationResult {
    return this.apply(device, { op: 'delete', filter: ref, ifPresent });
  }

  // ---- reads --------------------------------------------------------------------------------------

  private dumpRequest(type: number, device: DeviceInput, parent: number, what: string): { request: QueryRequest; ifindex: number } {
    const { ifindex, name } = this.link(device);
    const request = {
      type,
      writeBody: (writer: MessageWriter) => writer.struct(tcmsg, { ifindex, parent }),
      context: { operation: 'list', object: `${what} on dev ${name}` },
    };
    return { request, ifindex };
  }

  private dump(type: number, device: DeviceInput, parent: number, what: string) {
    const { request, ifindex } = this.dumpRequest(type, device, parent, what);
    return onDevice(this.connection.query(request, { dump: true }), ifindex);
  }

  /** The classes of a kind we speak among dump replies. */
  private readClasses(messages: readonly ReceivedMessage[]): TcClass[] {
    return messages.flatMap((message) => readClass(message, this.context) ?? []);
  }

  /** Qdiscs of a device, with statistics. */
  qdiscs(device: DeviceInput): Qdisc[] {
    return this.dump(MessageType.GETQDISC, device, 0, 'qdiscs').map((message) => readQdisc(message, this.context));
  }

  /**
   * The device's configured root qdisc (not the kernel's default, which has handle 0). A dump, decoded
   * only for the root: cheap to poll however many leaves hang below it. (A GET would be cheaper still, but
   * the kernel answers it by notifying every `tc monitor` too.)
   */
  rootQdisc(device: DeviceInput): Qdisc | undefined {
    const root = this.dump(MessageType.GETQDISC, device, 0, 'qdiscs').find((message) => {
      const { parent, handle } = tcmsg.decode(message.body);
      return parent === TC_H_ROOT && handle !== 0;
    });
    return root && readQdisc(root, this.context);
  }

  /** HTB classes of a device, with statistics. */
  classes(device: DeviceInput): TcClass[] {
    return this.readClasses(this.dump(MessageType.GETTCLASS, device, 0, 'classes'));
  }

  /**
   * The same as classes(), read and decoded one datagram (a few dozen classes) per event-loop turn: with
   * thousands of classes a whole dump holds a process for tens of milliseconds, which a daemon's events
   * should not wait for. Reads on a second socket of its own, so changes made meanwhile are not held up;
   * calls made while one runs wait for it.
   */
  classesInTurns(device: DeviceInput): Promise<TcClass[]> {
    const { request, ifindex } = this.dumpRequest(MessageType.GETTCLASS, device, 0, 'classes');
    const read = async () => {
      this.reader ??= NetlinkConnection.open(this.socketOptions);
      const classes: TcClass[] = [];
      await this.reader.dumpInTurns(request, (replies) => {
        classes.push(...this.readClasses(onDevice(replies, ifindex)));
      });
      return classes;
    };
    const reading = this.reading.then(read, read);
    this.reading = reading.catch(() => undefined);
    return reading;
  }

  /** Bytes sent through each class of a device, by class handle: one dump, counters only (cheap to poll). */
  classBytes(device: DeviceInput): Map<number, number> {
    return new Map([...this.classCounters(device)].map(([handle, { bytes }]) => [handle, bytes]));
  }

  /** Bytes sent and bytes queued now in each class of a device, by class handle: one dump, counters only. */
  classCounters(device: DeviceInput): Map<number, { bytes: number; backlog: number }> {
    return new Map(
      this.dump(MessageType.GETTCLASS, device, 0, 'classes').map((message) => {
        const { handle, bytes, backlog } = readClassCounters(message);
        return [handle, { bytes, backlog }];
      }),
    );
  }

  /**
   * One class with its statistics, or undefined when there is none: a GET, not a dump, so it costs the
   * same however many classes the device has. The kernel reports every such GET to `tc monitor`
   * listeners as if the class were new: fine now and then, not for a daemon's steady loop.
   */
  getClass(device: DeviceInput, classid: HandleInput): TcClass | undefined {
    try {
      // ECHO: without it the kernel sends a class GET's answer only to `tc monitor` listeners (6.1 and 6.18 alike).
      const [reply] = this.connection.query({ ...this.classGet(device, classid), flags: Flags.ECHO }, { dump: false });
      return reply && readClass(reply, this.context);
    } catch (error) {
      if (error instanceof NetlinkError && error.code === 'ENOENT') return undefined;
      throw error;
    }
  }

  /** Whether a class exists: the same GET as getClass, answered by an ACK or ENOENT alone (nothing to decode). */
  hasClass(device: DeviceInput, classid: HandleInput): boolean {
    const [outcome] = this.connection.batch([{ ...this.classGet(device, classid), flags: 0 }]);
    if (outcome!.error?.code === 'ENOENT') return false;
    if (outcome!.error) throw outcome!.error;
    return true;
  }

  private classGet(device: DeviceInput, classid: HandleInput): Omit<NetlinkRequest, 'flags'> {
    const { ifindex, name } = this.link(device);
    const handle = parseHandle(classid);
    return {
      type: MessageType.GETTCLASS,
      writeBody: (writer) => writer.struct(tcmsg, { ifindex, handle }),
      context: { operation: 'get', object: `class ${formatHandle(handle)} on dev ${name}` },
    };
  }

  /** Filters of one kind (default u32) attached under `parent` (e.g. the root qdisc `1:`). */
  filters<K extends FilterKindName = typeof DEFAULT_FILTER_KIND>(device: DeviceInput, parent: HandleInput, kind: K = DEFAULT_FILTER_KIND as K): Filter<K>[] {
    return this.dump(MessageType.GETTFILTER, device, parseHandle(parent), 'filters').flatMap((message) => readFilter(message, this.context, kind) ?? []);
  }

  // ---- kernel features ----------------------------------------------------------------------------

  /**
   * Whether the kernel has a qdisc kind (loading its module if it can). Asks to create one as root of
   * `lo` with an empty size table (TCA_STAB): the kernel looks the kind up first and answers "kind is
   * unknown" when it has none; a known kind fails later on the missing size-table base, before anything
   * is attached. Nothing is ever created. Cached.
   */
  hasQdiscKind(kind: string): boolean {
    const key = `qdisc:${kind}`;
    const cached = this.kindSupport.get(key);
    if (cached !== undefined) return cached;
    const [outcome] = this.connection.batch([qdiscKindProbe(LOOPBACK, kind)]);
    return this.remember(key, outcome!);
  }

  /**
   * Whether the kernel has a filter kind. Needs a classful qdisc to try it on (e.g. shaperr's own root):
   * creates a filter of that kind with a handle but no options, which a known kind refuses after being
   * looked up ("handle requires options"); should a kind accept it, the filter is deleted at once. Cached.
   */
  hasFilterKind(kind: string, device: DeviceInput, parent: HandleInput): boolean {
    const key = `filter:${kind}`;
    const cached = this.kindSupport.get(key);
    if (cached !== undefined) return cached;
    const probe = { kind, parent, priority: PROBE_PRIORITY, protocol: 'all' as const, handle: 1 };
    const [outcome] = this.connection.batch([filterKindProbe(this.target(device), kind, parseHandle(parent), PROBE_PRIORITY)]);
    if (!outcome!.error) this.deleteFilter(device, probe, { ifPresent: true });
    return this.remember(key, outcome!);
  }

  private remember(key: string, outcome: RequestOutcome): boolean {
    const supported = !outcome.error?.unknownKind;
    this.kindSupport.set(key, supported);
    return supported;
  }

  /** Which of the qdisc kinds shaperr can use this kernel has. */
  supportedQdiscKinds(kinds: readonly string[] = ['htb', 'sfq', 'fq_codel', 'pfifo', 'bfifo', 'tbf']): Set<string> {
    return new Set(kinds.filter((kind) => this.hasQdiscKind(kind)));
  }

  close(): void {
    this.connection.close();
    this.reader?.close();
  }
}
