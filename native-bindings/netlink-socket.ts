/**
 * The only module that touches native code: libc socket calls through koffi (a prebuilt FFI, no compiler
 * at install). Everything above this file sees a small synchronous socket interface and typed errors.
 *
 * Why synchronous: rtnetlink requests are handled inside the kernel's sendmsg(), so the ACK is already
 * queued when send() returns; a blocking recv() with SO_RCVTIMEO costs ~1 µs and can never hang forever.
 */
import { closeSync, openSync } from 'node:fs';
import koffi from 'koffi';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;
const SO_SNDBUFFORCE = 32;
const SO_RCVTIMEO = 20;
const SOL_NETLINK = 270;
const NETLINK_ADD_MEMBERSHIP = 1;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const NETLINK_GET_STRICT_CHK = 12;
const CLONE_NEWNET = 0x40000000;
const MSG_DONTWAIT = 0x40;

const libc = koffi.load('libc.so.6');
const sys = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, void *addr, uint32_t addrlen)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
  getsockname: libc.func('int getsockname(int fd, void *addr, _Inout_ uint32_t *addrlen)'),
  send: libc.func('intptr_t send(int fd, void *buf, size_t len, int flags)'),
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)'),
  close: libc.func('int close(int fd)'),
  setns: libc.func('int setns(int fd, int nstype)'),
};

const errnoNames = new Map<number, string>(Object.entries(koffi.os.errno as Record<string, number>).map(([name, value]) => [value, name]));

/** The name of an errno value (`17` → `EEXIST`), or `E<number>` when libc has no name for it. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** A failed system call, with the errno and its name. */
export class SyscallError extends Error {
  override readonly name = 'SyscallError';
  constructor(
    readonly syscall: string,
    readonly errno: number,
    detail?: string,
  ) {
    super(`${syscall}() failed: ${errnoName(errno)}${detail ? ` (${detail})` : ''}`);
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

export function check(result: number | bigint, syscall: string, detail?: string): number {
  const value = Number(result);
  if (value < 0) throw new SyscallError(syscall, koffi.errno(), detail);
  return value;
}

/** How long a blocking receive waits unless told otherwise. */
export const DEFAULT_RECEIVE_TIMEOUT_MS = 5000;

export interface NetlinkSocketOptions {
  /** Netlink protocol family; 0 = NETLINK_ROUTE. */
  protocol?: number;
  /** Open the socket inside this network namespace: a name under /var/run/netns or an absolute path. */
  netns?: string;
  /** Kernel receive buffer; batches of hundreds of ACKs overflow the default ~200 KiB. */
  receiveBufferBytes?: number;
  sendBufferBytes?: number;
  /** How long a blocking receive waits before failing with EAGAIN. */
  receiveTimeoutMs?: number;
  /** Multicast groups to join (RTNLGRP_* numbers), for notification sockets. */
  groups?: number[];
}

/** A bound netlink socket. Send and receive are synchronous and throw SyscallError. */
export interface NetlinkSocket {
  readonly fd: number;
  /** The port id the kernel assigned to this socket. */
  readonly portId: number;
  send(datagram: Uint8Array): void;
  /** Blocks up to the receive timeout; returns the datagram length. */
  receive(into: Uint8Array): number;
  /** Returns 0 instead of blocking when nothing is queued. */
  receiveNonBlocking(into: Uint8Array): number;
  /**
   * Calls `listener` from the event loop each time the socket has something to read or an error to report
   * (ENOBUFS after an overflow), for sockets that sit on multicast notifications: the kernel wakes the
   * loop, so waiting costs nothing, and the watch never keeps the process alive. The socket turns
   * non-blocking: the listener reads with receiveNonBlocking() until it returns 0. Stopped by close().
   */
  watchReadable(listener: () => void): void;
  close(): void;
}

function setIntOption(fd: number, level: number, name: number, value: number, label: string): void {
  const data = Buffer.alloc(4);
  data.writeInt32LE(value);
  check(sys.setsockopt(fd, level, name, data, 4), 'setsockopt', label);
}

function setBufferSize(fd: number, forced: number, plain: number, bytes: number, label: string): void {
  // The *FORCE variants exceed net.core.rmem_max but need CAP_NET_ADMIN; fall back silently.
  try {
    setIntOption(fd, SOL_SOCKET, forced, bytes, label);
  } catch {
    setIntOption(fd, SOL_SOCKET, plain, bytes, label);
  }
}

function netnsPath(netns: string): string {
  return netns.startsWith('/') ? netns : `/var/run/netns/${netns}`;
}

/** Runs `create` with the calling thread switched into `netns`, then switches back. */
export function insideNetns<T>(netns: string, create: () => T): T {
  let target: number;
  try {
    target = openSync(netnsPath(netns), 'r');
  } catch (error) {
    throw new Error(`network namespace '${netns}' cannot be opened (${(error as Error).message})`);
  }
  const home = openSync('/proc/thread-self/ns/net', 'r');
  try {
    check(sys.setns(target, CLONE_NEWNET), 'setns', `entering network namespace '${netns}'`);
    try {
      return create();
    } finally {
      check(sys.setns(home, CLONE_NEWNET), 'setns', 'returning to the original network namespace');
    }
  } finally {
    closeSync(target);
    closeSync(home);
  }
}

export function openNetlinkSocket(options: NetlinkSocketOptions = {}): NetlinkSocket {
  const create = (): number => check(sys.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, options.protocol ?? 0), 'socket');
  const fd = options.netns ? insideNetns(options.netns, create) : create();
  try {
    setBufferSize(fd, SO_RCVBUFFORCE, SO_RCVBUF, options.receiveBufferBytes ?? 8 << 20, 'SO_RCVBUF');
    setBufferSize(fd, SO_SNDBUFFORCE, SO_SNDBUF, options.sendBufferBytes ?? 1 << 20, 'SO_SNDBUF');
    const timeoutMs = options.receiveTimeoutMs ?? DEFAULT_RECEIVE_TIMEOUT_MS;
    const timeval = Buffer.alloc(16);
    timeval.writeBigInt64LE(BigInt(Math.floor(timeoutMs / 1000)), 0);
    timeval.writeBigInt64LE(BigInt((timeoutMs % 1000) * 1000), 8);
    check(sys.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval, 16), 'setsockopt', 'SO_RCVTIMEO');
    setIntOption(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1, 'NETLINK_EXT_ACK');
    setIntOption(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1, 'NETLINK_CAP_ACK');
    setIntOption(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1, 'NETLINK_GET_STRICT_CHK');
    const address = Buffer.alloc(12);
    address.writeUInt16LE(AF_NETLINK, 0);
    check(sys.bind(fd, address, 12), 'bind');
    for (const group of options.groups ?? []) setIntOption(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group, `group ${group}`);
    const length = [12];
    check(sys.getsockname(fd, address, length), 'getsockname');
    return makeSocket(fd, address.readUInt32LE(4));
  } catch (error) {
    sys.close(fd);
    throw error;
  }
}

/** What koffi's typings say its poll callback gets. */
type PollCallback = (events: { readable: boolean }) => void;

/** koffi's typings leave out the first argument its poll callback gets: libuv's status (negative: an error on the descriptor). */
function asPollCallback(callback: (status: number) => void): PollCallback {
  return callback as unknown as PollCallback;
}

function makeSocket(fd: number, portId: number): NetlinkSocket {
  let open = true;
  let readable: ReturnType<typeof koffi.node.poll> | undefined;
  const ensureOpen = (): void => {
    if (!open) throw new Error('netlink socket is closed');
  };
  return {
    fd,
    portId,
    send(datagram) {
      ensureOpen();
      check(sys.send(fd, datagram, datagram.byteLength, 0), 'send');
    },
    receive(into) {
      ensureOpen();
      return check(sys.recv(fd, into, into.byteLength, 0), 'recv');
    },
    receiveNonBlocking(into) {
      ensureOpen();
      const result = Number(sys.recv(fd, into, into.byteLength, MSG_DONTWAIT));
      if (result >= 0) return result;
      const errno = koffi.errno();
      if (errno === koffi.os.errno.EAGAIN) return 0;
      throw new SyscallError('recv', errno);
    },
    watchReadable(listener) {
      ensureOpen();
      if (readable) throw new Error('netlink socket is already watched');
      // libuv's poll handle (epoll) on the loop itself: no thread blocks, no timer ticks while idle.
      const onPoll = asPollCallback((status) => {
        // A socket error (ENOBUFS) stops the handle; the listener's read clears the error, then it watches again.
        listener();
        if (status < 0 && open) handle.start({ readable: true }, onPoll);
      });
      const handle = koffi.node.poll(fd, { readable: true }, onPoll);
      handle.unref();
      readable = handle;
    },
    close() {
      if (!open) return;
      open = false;
      // The poll handle lets go of the descriptor before it is closed (a reused number is not watched).
      readable?.close();
      sys.close(fd);
    },
  };
}
