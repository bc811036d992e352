/**
 * How the benchmarks see a change reach the kernel: as a listener does, on a socket joined to the tc
 * notification group (what `tc monitor` reads), blocked in recv until the kernel reports it. Asking
 * instead (a GET or a dump after every event-loop turn) keeps one of a small machine's cores busy and
 * takes the RTNL lock that the process under test needs for its own change.
 */
import { openNetlinkSocket, type NetlinkSocket, SyscallError } from '../native-bindings/netlink-socket.js';
import { readFilter } from '../lib/tc/decode.js';
import { schedulerClock } from '../lib/tc/units.js';
import { MessageType, splitMessages } from '../lib/wire/message.js';

const RTNLGRP_TC = 4;
/** recv wakes up this often to check the deadline. */
const RECEIVE_SLICE_MS = 100;

export class FilterArrivals {
  private readonly socket: NetlinkSocket;
  private readonly buffer = new Uint8Array(64 * 1024);
  private readonly context = { clock: schedulerClock() };

  /** Listens from now on: only changes made after this are seen. */
  constructor(netns: string) {
    this.socket = openNetlinkSocket({ netns, groups: [RTNLGRP_TC], receiveTimeoutMs: RECEIVE_SLICE_MS });
  }

  /**
   * Blocks (the whole thread: the caller has nothing else to do meanwhile) until the kernel reports a new
   * u32 filter steering to `classid`; returns process.hrtime.bigint() of that moment. Throws after
   * `timeoutMs`, or when the kernel dropped notifications (then the moment is unknown).
   */
  waitForFilter(classid: number, timeoutMs: number): bigint {
    const deadline = process.hrtime.bigint() + BigInt(timeoutMs) * 1_000_000n;
    for (;;) {
      let length: number;
      try {
        length = this.socket.receive(this.buffer);
      } catch (error) {
        // The receive timeout ran out (EAGAIN, which libc also names EWOULDBLOCK).
        if (!(error instanceof SyscallError && (error.code === 'EAGAIN' || error.code === 'EWOULDBLOCK'))) throw error;
        if (process.hrtime.bigint() > deadline) throw new Error(`no filter to class ${classid.toString(16)} within ${timeoutMs} ms`);
        continue;
      }
      const at = process.hrtime.bigint();
      for (const message of splitMessages(this.buffer.subarray(0, length))) {
        if (message.type === MessageType.NEWTFILTER && this.steersTo(message, classid)) return at;
      }
    }
  }

  private steersTo(message: Parameters<typeof readFilter>[0], classid: number): boolean {
    try {
      return readFilter(message, this.context, 'u32')?.parameters.classid === classid;
    } catch {
      return false; // a filter of a shape shaperr does not decode: not the one awaited
    }
  }

  close(): void {
    this.socket.close();
  }
}
