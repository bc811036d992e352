/**
 * TcMonitor: the kernel's traffic-control and link notifications (what `tc monitor` and `ip monitor link`
 * print), on a second rtnetlink socket subscribed to RTNLGRP_TC and RTNLGRP_LINK, decoded with the same
 * readers as dumps.
 *
 * The event loop is woken by the kernel when a notification is queued (the socket's descriptor is watched
 * like any other, never by a thread or timer) and reads whatever is queued without blocking: an idle
 * monitor costs nothing, and close() stops it at once. When the kernel drops notifications because the
 * receive buffer was full (ENOBUFS; NETLINK_NO_ENOBUFS stays off so that this is reported), the listener
 * is told: whatever it keeps in sync must then be checked in full.
 */
import { openNetlinkSocket, type NetlinkSocket, SyscallError } from '../../native-bindings/netlink-socket.js';
import { attr, attributeSet, attrString } from '../wire/attributes.js';
import { ifinfomsg, MessageType, type ReceivedMessage, splitMessages, tcmsg } from '../wire/message.js';
import { readClass, readFilter, readQdisc } from './decode.js';
import type { KindContext } from './kind.js';
import type { Filter, Qdisc, TcClass } from './types.js';
import { schedulerClock } from './units.js';

const RTNLGRP_LINK = 1;
const RTNLGRP_TC = 4;
const IFLA_IFNAME = 3;
const linkName = attributeSet({ name: attr(IFLA_IFNAME, attrString) });
/** Room for the notifications of a restore of thousands of pipes (a few KiB each) between two reads. */
const DEFAULT_RECEIVE_BUFFER_BYTES = 32 << 20;
const DATAGRAM_BYTES = 64 * 1024;

export type TcNotificationAction = 'new' | 'del';

interface NotificationBase {
  action: TcNotificationAction;
  ifindex: number;
  /** The netlink port of the socket whose request caused the change (0: the kernel itself, e.g. a device going away). */
  portId: number;
}

export type TcNotification =
  | (NotificationBase & { object: 'link'; name?: string })
  | (NotificationBase & { object: 'qdisc'; qdisc: Qdisc })
  /** `tcClass` is undefined for kinds shaperr does not decode. */
  | (NotificationBase & { object: 'class'; handle: number; parent: number; tcClass?: TcClass })
  /** `filter` is set for u32 filters; a deleted priority or chain comes with handle 0. */
  | (NotificationBase & { object: 'filter'; handle: number; parent: number; priority: number; filter?: Filter<'u32'> });

export interface TcMonitorOptions {
  /** Listen inside this network namespace (a name under /var/run/netns, or a path). */
  netns?: string;
  /** Notifications caused by these netlink ports are left out (e.g. a Shaper's own changes). */
  ignorePortIds?: readonly number[];
  /** Every batch of notifications read in one go, in the kernel's order. */
  onNotifications: (notifications: TcNotification[]) => void;
  /** The kernel dropped notifications (receive buffer full): resynchronise with a full check. */
  onOverflow?: () => void;
  /** A listener or the socket failed; the monitor keeps going. Default: process.emitWarning. */
  onError?: (error: Error) => void;
  /** Kernel receive buffer (default 32 MiB; beyond net.core.rmem_max needs CAP_NET_ADMIN). */
  receiveBufferBytes?: number;
}

/** Counters since open. */
export interface TcMonitorStats {
  notifications: number;
  overflows: number;
  /** Times the socket was read (each read takes everything queued): none while nothing happens. */
  reads: number;
}

export class TcMonitor {
  private readonly socket: NetlinkSocket;
  private readonly buffer = new Uint8Array(DATAGRAM_BYTES);
  private readonly ignored: Set<number>;
  private readonly context: KindContext = { clock: schedulerClock() };
  readonly stats: TcMonitorStats = { notifications: 0, overflows: 0, reads: 0 };
  private closed = false;

  private constructor(private readonly options: TcMonitorOptions) {
    this.socket = openNetlinkSocket({
      ...(options.netns ? { netns: options.netns } : {}),
      receiveBufferBytes: options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER_BYTES,
      groups: [RTNLGRP_LINK, RTNLGRP_TC],
    });
    this.ignored = new Set(options.ignorePortIds ?? []);
    // A listener never keeps the process alive on its own (the watch does not).
    this.socket.watchReadable(() => this.drain());
  }

  /** Subscribes; notifications start arriving from now on. */
  static open(options: TcMonitorOptions): TcMonitor {
    return new TcMonitor(options);
  }

  /** This monitor's own port id. */
  get portId(): number {
    return this.socket.portId;
  }

  /** Reads everything queued now and hands it on (done when the kernel wakes the loop; callers may too, e.g. before a check). */
  drain(): void {
    if (this.closed) return;
    this.stats.reads++;
    const notifications: TcNotification[] = [];
    let overflowed = false;
    try {
      for (;;) {
        let length: number;
        try {
          length = this.socket.receiveNonBlocking(this.buffer);
        } catch (error) {
          if (!(error instanceof SyscallError && error.code === 'ENOBUFS')) throw error;
          overflowed = true;
          continue; // the error is reported once; what is queued after it is still good
        }
        if (length === 0) break;
        for (const message of splitMessages(this.buffer.subarray(0, length))) {
          if (this.ignored.has(message.pid)) continue;
          const notification = this.decode(message);
          if (notification) notifications.push(notification);
        }
      }
    } catch (error) {
      this.report(error);
    }
    this.stats.notifications += notifications.length;
    if (notifications.length) this.deliver(() => this.options.onNotifications(notifications));
    if (overflowed) {
      this.stats.overflows++;
      this.deliver(() => this.options.onOverflow?.());
    }
  }

  private deliver(call: () => void): void {
    try {
      call();
    } catch (error) {
      this.report(error);
    }
  }

  private report(error: unknown): void {
    const failure = error instanceof Error ? error : new Error(String(error));
    if (this.options.onError) this.options.onError(failure);
    else process.emitWarning(`tc monitor: ${failure.message}`, 'ShaperrWarning');
  }

  private decode(message: ReceivedMessage): TcNotification | undefined {
    const portId = message.pid;
    switch (message.type) {
      case MessageType.NEWLINK:
      case MessageType.DELLINK: {
        const { index } = ifinfomsg.decode(message.body);
        const { name } = linkName.read(message.body.subarray(ifinfomsg.size));
        const action = message.type === MessageType.NEWLINK ? 'new' : 'del';
        return name === undefined ? { object: 'link', action, ifindex: index, portId } : { object: 'link', action, ifindex: index, portId, name };
      }
      case MessageType.NEWQDISC:
      case MessageType.DELQDISC: {
        const header = tcmsg.decode(message.body);
        const qdisc =
          this.tolerant(() => readQdisc(message, this.context)) ??
          ({ ifindex: header.ifindex, handle: header.handle, parent: header.parent, kind: 'other:unknown' } as Qdisc);
        return { object: 'qdisc', action: message.type === MessageType.NEWQDISC ? 'new' : 'del', ifindex: qdisc.ifindex, portId, qdisc };
      }
      case MessageType.NEWTCLASS:
      case MessageType.DELTCLASS: {
        const { ifindex, handle, parent } = tcmsg.decode(message.body);
        const action = message.type === MessageType.NEWTCLASS ? 'new' : 'del';
        const tcClass = this.tolerant(() => readClass(message, this.context));
        return tcClass ? { object: 'class', action, ifindex, handle, parent, portId, tcClass } : { object: 'class', action, ifindex, handle, parent, portId };
      }
      case MessageType.NEWTFILTER:
      case MessageType.DELTFILTER: {
        const { ifindex, handle, parent, info } = tcmsg.decode(message.body);
        const action: TcNotificationAction = message.type === MessageType.NEWTFILTER ? 'new' : 'del';
        const base = { object: 'filter' as const, action, ifindex, handle, parent, priority: info >>> 16, portId };
        const filter = handle === 0 ? undefined : this.tolerant(() => readFilter(message, this.context, 'u32'));
        return filter ? { ...base, filter } : base;
      }
      default:
        return undefined;
    }
  }

  /** Options a reader cannot make sense of (another tool's, a newer kernel's) leave the header only. */
  private tolerant<T>(read: () => T): T | undefined {
    try {
      return read();
    } catch {
      return undefined;
    }
  }

  /** Stops listening at once (nothing blocks: reads happen only when something is queued). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
  }
}
