/**
 * The inet_diag messages of NETLINK_SOCK_DIAG (include/uapi/linux/inet_diag.h, sock_diag.h): the dump
 * request for one address family's TCP sockets, and each reply (struct inet_diag_msg and its attributes)
 * decoded into a TcpSocket. Replies are checked as they are read: a short header, an attribute that runs
 * past its message or an error from the kernel is one NetlinkError naming the problem.
 */
import { constants } from 'node:os';
import ipaddr from 'ipaddr.js';
import type { AddressFamily } from '../address.js';
import { attr, attrBytes, attributeSet, attrString, type MessageWriter } from '../wire/attributes.js';
import { NetlinkError, type RequestContext } from '../wire/errors.js';
import { decodeAck, MessageType, type ReceivedMessage } from '../wire/message.js';
import { be16, bytes, nested, struct, u32, u8 } from '../wire/struct.js';
import { decodeTcpInfo, type TcpInfo } from './tcp-info.js';
import { tcpStateName } from './tcp-states.js';

/** The netlink protocol of socket diagnostics. */
export const NETLINK_SOCK_DIAG = 4;
/** The one request type of sock_diag: a dump (or get) of one family's sockets. */
export const SOCK_DIAG_BY_FAMILY = 20;

const AF_INET = 2;
const AF_INET6 = 10;
const IPPROTO_TCP = 6;
const INET_DIAG_INFO = 2;
const INET_DIAG_CONG = 4;
const INET_DIAG_REQ_BYTECODE = 1;
/** idiag_ext asks for extension N with bit N - 1. */
const WANTED_EXTENSIONS = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1));

export const addressFamilyCode: Record<AddressFamily, number> = { 4: AF_INET, 6: AF_INET6 };

/** struct inet_diag_sockid: ports and addresses in network order; an IPv4 address is the first 4 bytes. */
const inetDiagSockid = struct({
  sport: be16,
  dport: be16,
  src: bytes(16),
  dst: bytes(16),
  ifindex: u32,
  cookieLow: u32,
  cookieHigh: u32,
});

/** struct inet_diag_req_v2. */
const inetDiagRequest = struct({ family: u8, protocol: u8, ext: u8, pad: u8, states: u32, id: nested(inetDiagSockid) });

/** struct inet_diag_msg: the fixed part of every reply. */
const inetDiagMessage = struct({
  family: u8,
  state: u8,
  timer: u8,
  retrans: u8,
  id: nested(inetDiagSockid),
  expires: u32,
  rqueue: u32,
  wqueue: u32,
  uid: u32,
  inode: u32,
});

const replyAttributes = attributeSet({ info: attr(INET_DIAG_INFO, attrBytes), congestion: attr(INET_DIAG_CONG, attrString) });

/** Writes the body of a dump request for one family's TCP sockets in `states`, narrowed by a bytecode program. */
export function writeTcpDumpRequest(writer: MessageWriter, family: AddressFamily, states: number, bytecode: Uint8Array | undefined): void {
  writer.struct(inetDiagRequest, { family: addressFamilyCode[family], protocol: IPPROTO_TCP, ext: WANTED_EXTENSIONS, states });
  if (bytecode) writer.attribute(INET_DIAG_REQ_BYTECODE, bytecode);
}

/** One TCP socket as the kernel reports it. */
export interface TcpSocket {
  /**
   * The family of the addresses below: a dual-stack (IPv6) socket talking to an IPv4 peer reports both
   * ends as IPv4 (`::ffff:1.2.3.4` reads `1.2.3.4`), with family 4.
   */
  family: AddressFamily;
  localAddress: string;
  localPort: number;
  peerAddress: string;
  peerPort: number;
  state: string;
  inode: number;
  uid: number;
  /** The kernel's 64-bit socket cookie in hex, as `ss -e` prints it (`sk:…`): stable for the socket's life. */
  cookie: string;
  /** Absent for sockets without a full TCP state (time-wait, new-syn-recv). */
  tcp?: TcpInfo;
  /** The congestion control algorithm (`cubic`, `bbr`). */
  congestion?: string;
}

/** A reply that does not parse, as a NetlinkError (EBADMSG) whose hint says what is wrong with it. */
function malformedReply(context: RequestContext, problem: string): NetlinkError {
  return new NetlinkError(constants.errno.EBADMSG, { ...context, explain: () => ({ hint: `malformed reply: ${problem}` }) });
}

const NLA_HEADER = 4;

/** Checks that each attribute's length stays inside `data` (the wire's parser stops quietly at a bad one). */
function checkAttributeLengths(data: Uint8Array, context: RequestContext): void {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let at = 0; at < data.byteLength; at += (view.getUint16(at, true) + 3) & ~3) {
    const left = data.byteLength - at;
    if (left < NLA_HEADER) throw malformedReply(context, `${left} stray bytes after the attributes`);
    const length = view.getUint16(at, true);
    const type = view.getUint16(at + 2, true);
    if (length < NLA_HEADER || length > left)
      throw malformedReply(context, `attribute ${type} of ${length} bytes at offset ${at}, with ${left} bytes left in the message`);
  }
}

/** The text of an address: IPv4, or compressed IPv6 with IPv4-mapped addresses read as IPv4. */
function addressText(family: number, address: Uint8Array): { family: AddressFamily; text: string } {
  if (family === AF_INET) return { family: 4, text: ipaddr.fromByteArray(Array.from(address.subarray(0, 4))).toString() };
  const v6 = ipaddr.fromByteArray(Array.from(address)) as ipaddr.IPv6;
  return v6.isIPv4MappedAddress() ? { family: 4, text: v6.toIPv4Address().toString() } : { family: 6, text: v6.toString() };
}

function readTcpSocket(body: Uint8Array, context: RequestContext): TcpSocket {
  if (body.byteLength < inetDiagMessage.size) throw malformedReply(context, `inet_diag_msg of ${body.byteLength} bytes, expected ${inetDiagMessage.size}`);
  const header = inetDiagMessage.decode(body);
  if (header.family !== AF_INET && header.family !== AF_INET6) throw malformedReply(context, `address family ${header.family}, expected AF_INET or AF_INET6`);
  const attributes = body.subarray(inetDiagMessage.size);
  checkAttributeLengths(attributes, context);
  const { info, congestion } = replyAttributes.read(attributes);
  const local = addressText(header.family, header.id.src);
  const peer = addressText(header.family, header.id.dst);
  const socket: TcpSocket = {
    // A listener's peer is the unspecified address: the local end decides.
    family: local.family,
    localAddress: local.text,
    localPort: header.id.sport,
    peerAddress: peer.text,
    peerPort: header.id.dport,
    state: tcpStateName(header.state),
    inode: header.inode,
    uid: header.uid,
    cookie: ((BigInt(header.id.cookieHigh) << 32n) | BigInt(header.id.cookieLow)).toString(16),
  };
  if (info) {
    const tcp = decodeTcpInfo(info);
    if (!tcp) throw malformedReply(context, `tcp_info of ${info.byteLength} bytes, shorter than any kernel's`);
    socket.tcp = tcp;
  }
  if (congestion !== undefined) socket.congestion = congestion;
  return socket;
}

/**
 * The sockets in a dump's replies, in the kernel's order, up to NLMSG_DONE. An NLMSG_ERROR (or a DONE
 * carrying an error) throws the kernel's NetlinkError; a reply that does not parse throws one with EBADMSG.
 */
export function readTcpSockets(replies: readonly ReceivedMessage[], context: RequestContext): TcpSocket[] {
  const sockets: TcpSocket[] = [];
  for (const reply of replies) {
    if (reply.type === MessageType.ERROR || reply.type === MessageType.DONE) {
      if (reply.body.byteLength < 4)
        throw malformedReply(context, `${reply.type === MessageType.ERROR ? 'NLMSG_ERROR' : 'NLMSG_DONE'} of ${reply.body.byteLength} bytes`);
      const { errno, kernelMessage } = decodeAck(reply);
      if (errno) throw new NetlinkError(errno, context, kernelMessage);
      break;
    }
    if (reply.type !== SOCK_DIAG_BY_FAMILY) throw malformedReply(context, `message type ${reply.type}, expected SOCK_DIAG_BY_FAMILY (${SOCK_DIAG_BY_FAMILY})`);
    sockets.push(readTcpSocket(reply.body, context));
  }
  return sockets;
}
