/**
 * SocketDiag: the kernel's own view of TCP connections (what `ss -tin` shows) over NETLINK_SOCK_DIAG —
 * addresses, state, and tcp_info's round trips, delivery rate and limits — for telling when a link's
 * queue fills. Narrowed in the kernel by a bytecode filter (local port, peer addresses), so a busy
 * server's other sockets are neither sent nor decoded.
 *
 * Synchronous, like TrafficControl: the kernel fills each dump datagram inside recv(). No capability is
 * needed (an unprivileged process sees every socket of its namespace, tcp_info included); a namespace
 * other than the caller's needs the right to enter it.
 */
import { DEFAULT_RECEIVE_TIMEOUT_MS } from '../../native-bindings/netlink-socket.js';
import { type AddressFamily, type ClientAddress, parseClientAddress } from '../address.js';
import { NetlinkConnection } from '../wire/connection.js';
import { ShaperrInputError } from '../wire/errors.js';
import { compileFilter } from './bytecode.js';
import { NETLINK_SOCK_DIAG, readTcpSockets, SOCK_DIAG_BY_FAMILY, type TcpSocket, writeTcpDumpRequest } from './inet-diag.js';
import { stateMask, TCP_STATES, type TcpStateName } from './tcp-states.js';

export interface SocketDiagOptions {
  /** Read the sockets of this network namespace (a name under /var/run/netns, or a path). */
  netns?: string;
  /** Fail a dump that gets no answer within this time (default 5000 ms). */
  timeoutMs?: number;
}

export interface TcpSocketQuery {
  /** The kernel's IPv4 or IPv6 socket table (default both: two dumps). A dual-stack socket is in the IPv6 one. */
  family?: AddressFamily;
  /** Only sockets bound to this local port (Plex: 32400). */
  localPort?: number;
  /**
   * Only sockets whose peer is one of these addresses (IPv4 or IPv6; an IPv4 address also finds the
   * IPv4-mapped peer of a dual-stack socket). An empty list finds nothing. At most 3,276 IPv4 or 2,047
   * IPv6 addresses (see bytecode.ts).
   */
  peers?: readonly string[];
  /** Default: established sockets only. */
  states?: readonly TcpStateName[];
}

const FAMILIES: readonly AddressFamily[] = [4, 6];

function checkedQuery(query: TcpSocketQuery): { families: readonly AddressFamily[]; localPort?: number; peers?: ClientAddress[]; states: number } {
  const { family, localPort, peers, states = ['established'] } = query;
  if (family !== undefined && !FAMILIES.includes(family)) throw new ShaperrInputError(`invalid address family ${JSON.stringify(family)}: 4 or 6`);
  if (localPort !== undefined && !(Number.isInteger(localPort) && localPort >= 1 && localPort <= 0xffff))
    throw new ShaperrInputError(`invalid local port ${JSON.stringify(localPort)}: an integer from 1 to 65535`);
  for (const state of states)
    if (!TCP_STATES.includes(state)) throw new ShaperrInputError(`unknown TCP state ${JSON.stringify(state)}: one of ${TCP_STATES.join(', ')}`);
  const unique = peers && [...new Map(peers.map((text) => parseClientAddress(text)).map((peer) => [peer.text, peer])).values()];
  return { families: family ? [family] : FAMILIES, localPort, peers: unique, states: stateMask(states) };
}

export class SocketDiag {
  private constructor(private readonly connection: NetlinkConnection) {}

  static open(options: SocketDiagOptions = {}): SocketDiag {
    const { netns, timeoutMs = DEFAULT_RECEIVE_TIMEOUT_MS } = options;
    return new SocketDiag(NetlinkConnection.open({ protocol: NETLINK_SOCK_DIAG, ...(netns ? { netns } : {}), receiveTimeoutMs: timeoutMs }));
  }

  /**
   * TCP sockets matching `query` (default: every established one), IPv4 table first. Throws
   * ShaperrInputError for a bad query and NetlinkError when the kernel refuses or sends what does not parse.
   */
  tcpSockets(query: TcpSocketQuery = {}): TcpSocket[] {
    const { families, localPort, peers, states } = checkedQuery(query);
    if (states === 0) return [];
    // Every program is built before the first dump, so a filter too long fails before anything is read.
    const dumps = families.flatMap((family) => {
      // The IPv4 table holds IPv4 peers only; the IPv6 one holds both (dual-stack sockets).
      const wanted = family === 4 ? peers?.filter((peer) => peer.family === 4) : peers;
      return wanted?.length === 0 ? [] : [{ family, bytecode: compileFilter({ localPort, peers: wanted }) }];
    });
    return dumps.flatMap(({ family, bytecode }) => {
      const context = { operation: 'list', object: `TCP sockets (IPv${family})` };
      const replies = this.connection.query(
        { type: SOCK_DIAG_BY_FAMILY, writeBody: (writer) => writeTcpDumpRequest(writer, family, states, bytecode), context },
        { dump: true },
      );
      return readTcpSockets(replies, context);
    });
  }

  close(): void {
    this.connection.close();
  }
}
