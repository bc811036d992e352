/**
 * Netlink message framing: nlmsghdr, the rtnetlink message types and flags used for traffic control,
 * splitting a received datagram into messages, and decoding NLMSG_ERROR (including extended ACK text).
 */
import { align4, type MessageWriter, parseAttributes } from './attributes.js';
import { s32, struct, u16, u32, u8 } from './struct.js';

export const NLMSG_HEADER_SIZE = 16;

export const MessageType = {
  NOOP: 1,
  ERROR: 2,
  DONE: 3,
  OVERRUN: 4,
  NEWLINK: 16,
  DELLINK: 17,
  GETLINK: 18,
  NEWQDISC: 36,
  DELQDISC: 37,
  GETQDISC: 38,
  NEWTCLASS: 40,
  DELTCLASS: 41,
  GETTCLASS: 42,
  NEWTFILTER: 44,
  DELTFILTER: 45,
  GETTFILTER: 46,
} as const;

export const Flags = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
  ECHO: 0x8,
  ROOT: 0x100,
  MATCH: 0x200,
  DUMP: 0x300,
  REPLACE: 0x100,
  EXCL: 0x200,
  CREATE: 0x400,
  /** On NLMSG_ERROR: the original request was not echoed back (NETLINK_CAP_ACK). */
  CAPPED: 0x100,
  /** On NLMSG_ERROR: extended ACK attributes follow. */
  ACK_TLVS: 0x200,
} as const;

const ExtAckAttribute = { MSG: 1, OFFS: 2 } as const;

export const nlmsghdr = struct({ len: u32, type: u16, flags: u16, seq: u32, pid: u32 });

/** struct tcmsg: the fixed header of every qdisc, class and filter message. */
export const tcmsg = struct({
  family: u8,
  pad1: u8,
  pad2: u16,
  ifindex: s32,
  handle: u32,
  parent: u32,
  /** Filters: priority << 16 | protocol (network byte order). */
  info: u32,
});

/** struct ifinfomsg, for resolving device names and reading the MTU. */
export const ifinfomsg = struct({ family: u8, pad: u8, type: u16, index: s32, flags: u32, change: u32 });

/** Starts a message in `writer`; call the returned function after the body to set nlmsg_len. */
export function beginMessage(writer: MessageWriter, type: number, flags: number, seq: number): () => void {
  const start = writer.reserve(NLMSG_HEADER_SIZE);
  const header = writer.dataView;
  header.setUint16(start + 4, type, true);
  header.setUint16(start + 6, flags, true);
  header.setUint32(start + 8, seq, true);
  return () => writer.dataView.setUint32(start, writer.length - start, true);
}

export interface ReceivedMessage {
  type: number;
  flags: number;
  seq: number;
  /** The sender's port id: 0 from the kernel; on a notification, the port of the socket whose request caused it. */
  pid: number;
  /** The payload after nlmsghdr. */
  body: Uint8Array;
}

/** Splits one received datagram into its netlink messages. */
export function splitMessages(datagram: Uint8Array): ReceivedMessage[] {
  const messages: ReceivedMessage[] = [];
  const view = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  let at = 0;
  while (at + NLMSG_HEADER_SIZE <= datagram.byteLength) {
    const length = view.getUint32(at, true);
    if (length < NLMSG_HEADER_SIZE || at + length > datagram.byteLength) break;
    messages.push({
      type: view.getUint16(at + 4, true),
      flags: view.getUint16(at + 6, true),
      seq: view.getUint32(at + 8, true),
      pid: view.getUint32(at + 12, true),
      body: datagram.subarray(at + NLMSG_HEADER_SIZE, at + length),
    });
    at += align4(length);
  }
  return messages;
}

export interface AckOrError {
  /** 0 for an ACK, otherwise a positive errno. */
  errno: number;
  /** The kernel's extended-ACK text: the reason on error, a warning on success. */
  kernelMessage?: string;
  /** Byte offset into the request of the attribute the kernel blamed. */
  badAttributeOffset?: number;
}

/** Decodes the body of an NLMSG_ERROR message (which is also how the kernel ACKs). */
export function decodeAck(message: ReceivedMessage): AckOrError {
  const view = new DataView(message.body.buffer, message.body.byteOffset, message.body.byteLength);
  const errno = -view.getInt32(0, true);
  const result: AckOrError = { errno };
  if (!(message.flags & Flags.ACK_TLVS)) return result;
  // After the error code comes the original header, plus its payload unless the ACK is capped.
  const echoedLength = message.flags & Flags.CAPPED ? NLMSG_HEADER_SIZE : view.getUint32(4, true);
  const tlvs = parseAttributes(message.body.subarray(4 + align4(echoedLength)));
  const text = tlvs.get(ExtAckAttribute.MSG);
  if (text) {
    const end = text.indexOf(0);
    result.kernelMessage = new TextDecoder().decode(end < 0 ? text : text.subarray(0, end)).trim();
  }
  const offset = tlvs.get(ExtAckAttribute.OFFS);
  if (offset && offset.byteLength >= 4) result.badAttributeOffset = new DataView(offset.buffer, offset.byteOffset).getUint32(0, true);
  return result;
}
