/**
 * A request/ACK connection over one netlink socket: sequence numbers, ACK matching, batches sent several
 * messages to a datagram, multi-part dumps, and kernel errors turned into NetlinkError.
 */
import { openNetlinkSocket, type NetlinkSocket, type NetlinkSocketOptions, SyscallError } from '../../native-bindings/netlink-socket.js';
import { setImmediate } from 'node:timers/promises';
import { MessageWriter } from './attributes.js';
import { NetlinkError, type RequestContext } from './errors.js';
import { beginMessage, decodeAck, Flags, MessageType, type ReceivedMessage, splitMessages } from './message.js';

/** One request: header type and flags, a body writer, and what it is about (for errors). */
export interface NetlinkRequest {
  type: number;
  flags: number;
  writeBody(writer: MessageWriter): void;
  context: RequestContext;
}

/** A get or dump request: flags beyond REQUEST and ACK/DUMP are optional. */
export type QueryRequest = Omit<NetlinkRequest, 'flags'> & { flags?: number };

export interface RequestOutcome {
  /** Set when the kernel refused the request. */
  error?: NetlinkError;
  /** Set when a successful ACK carried a kernel warning. */
  warning?: string;
}

/** Keeps datagrams well under the default socket send buffer; an HTB class message is ~2.2 KiB. */
const MAX_DATAGRAM_BYTES = 96 * 1024;
/** A batch adds requests to a datagram while it is shorter than this (room for one more large one). */
export const BATCH_FILL_BYTES = MAX_DATAGRAM_BYTES - 4096;
const RECEIVE_BUFFER_BYTES = 256 * 1024;

function writeRequest(writer: MessageWriter, request: NetlinkRequest, seq: number): void {
  const end = beginMessage(writer, request.type, request.flags | Flags.REQUEST | Flags.ACK, seq);
  request.writeBody(writer);
  end();
}

/** The bytes a request encodes to, with sequence number 0: for golden tests and dry runs. */
export function encodeRequest(request: NetlinkRequest): Uint8Array {
  const writer = new MessageWriter();
  writeRequest(writer, request, 0);
  return writer.toBytes();
}

export class NetlinkConnection {
  private sequence = Math.floor(Math.random() * 0x7fffffff);
  private readonly receiveBuffer = new Uint8Array(RECEIVE_BUFFER_BYTES);
  /** Every batch's datagrams are built here in turn: send() copies them into the kernel, so it is reused. */
  private readonly datagram = new MessageWriter(MAX_DATAGRAM_BYTES);

  private constructor(private readonly socket: NetlinkSocket) {}

  static open(options: NetlinkSocketOptions = {}): NetlinkConnection {
    return new NetlinkConnection(openNetlinkSocket(options));
  }

  /** The port id of the socket: notifications of this connection's own changes carry it. */
  get portId(): number {
    return this.socket.portId;
  }

  private nextSequence(): number {
    this.sequence = (this.sequence + 1) >>> 0 || 1;
    return this.sequence;
  }

  /** Sends one request and waits for its ACK; throws NetlinkError when the kernel refuses it. */
  request(request: NetlinkRequest): RequestOutcome {
    const [outcome] = this.batch([request]);
    if (outcome!.error) throw outcome!.error;
    return outcome!;
  }

  /**
   * Sends many requests, several per datagram, and collects every ACK. The kernel processes each message
   * on its own: one failing does not stop the rest, so each request gets its own outcome.
   */
  batch(requests: readonly NetlinkRequest[]): RequestOutcome[] {
    const outcomes: RequestOutcome[] = new Array(requests.length);
    let index = 0;
    while (index < requests.length) {
      const writer = this.datagram;
      writer.clear();
      const pending = new Map<number, number>();
      while (index < requests.length && (pending.size === 0 || writer.length < BATCH_FILL_BYTES)) {
        const seq = this.nextSequence();
        writeRequest(writer, requests[index]!, seq);
        pending.set(seq, index);
        index++;
      }
      this.sendChunk(writer, pending, requests, outcomes);
    }
    return outcomes;
  }

  private sendChunk(writer: MessageWriter, pending: Map<number, number>, requests: readonly NetlinkRequest[], outcomes: RequestOutcome[]): void {
    try {
      this.socket.send(writer.bytesAt(0, writer.length));
      while (pending.size > 0) {
        for (const message of this.receiveMessages()) {
          const at = pending.get(message.seq);
          if (at === undefined || message.type !== MessageType.ERROR) continue; // stale reply of an earlier timeout
          pending.delete(message.seq);
          const ack = decodeAck(message);
          outcomes[at] = ack.errno
            ? { error: new NetlinkError(ack.errno, requests[at]!.context, ack.kernelMessage) }
            : ack.kernelMessage
              ? { warning: ack.kernelMessage }
              : {};
        }
      }
    } catch (error) {
      // The socket failed (timeout, ENOBUFS): whatever did not get an answer gets this error.
      const errno = error instanceof SyscallError ? error.errno : 0;
      for (const at of pending.values()) outcomes[at] = { error: new NetlinkError(errno, requests[at]!.context) };
      if (!(error instanceof SyscallError)) throw error;
    }
  }

  private receiveMessages(): ReceivedMessage[] {
    const length = this.socket.receive(this.receiveBuffer);
    return splitMessages(this.receiveBuffer.subarray(0, length));
  }

  /**
   * Sends a get (`dump: false`: one reply, then the ACK) or a dump (multi-part replies ending in
   * NLMSG_DONE) and returns the replies; bodies are copies, safe to keep.
   */
  query(request: QueryRequest, { dump }: { dump: boolean }): ReceivedMessage[] {
    const replies: ReceivedMessage[] = [];
    for (const datagram of this.replyDatagrams(request, dump)) for (const message of datagram) replies.push({ ...message, body: message.body.slice() });
    return replies;
  }

  /**
   * A dump read one datagram per event-loop turn (a few dozen objects each), so that a large one does not
   * hold up the process: `onReplies` gets each datagram's replies (bodies valid only during the call).
   * The connection must not be used for anything else meanwhile.
   */
  async dumpInTurns(request: QueryRequest, onReplies: (replies: readonly ReceivedMessage[]) => void): Promise<void> {
    for (const datagram of this.replyDatagrams(request, true)) {
      onReplies(datagram);
      await setImmediate();
    }
  }

  /** Sends the request, then yields the replies to it datagram by datagram until the ACK or NLMSG_DONE. */
  private *replyDatagrams(request: QueryRequest, dump: boolean): Generator<ReceivedMessage[]> {
    const writer = new MessageWriter(256);
    const seq = this.nextSequence();
    const flags = (request.flags ?? 0) | (dump ? Flags.DUMP : Flags.ACK);
    const end = beginMessage(writer, request.type, flags | Flags.REQUEST, seq);
    request.writeBody(writer);
    end();
    try {
      this.socket.send(writer.bytesAt(0, writer.length));
      for (;;) {
        const replies: ReceivedMessage[] = [];
        for (const message of this.receiveMessages()) {
          if (message.seq !== seq) continue;
          if (message.type === MessageType.DONE || message.type === MessageType.ERROR) {
            // NLMSG_DONE carries the dump's final status the same way an ACK carries an errno.
            const ack = decodeAck(message);
            if (ack.errno) throw new NetlinkError(ack.errno, request.context, ack.kernelMessage);
            if (replies.length) yield replies;
            return;
          }
          replies.push(message);
        }
        if (replies.length) yield replies;
      }
    } catch (error) {
      if (error instanceof SyscallError) throw new NetlinkError(error.errno, request.context);
      throw error;
    }
  }

  close(): void {
    this.socket.close();
  }
}
