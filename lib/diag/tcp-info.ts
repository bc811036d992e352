/**
 * struct tcp_info (include/uapi/linux/tcp.h), read from a sock_diag reply's INET_DIAG_INFO attribute.
 *
 * The struct has only ever grown at its end, and the kernel sends its own sizeof. So it is declared as
 * the base every kernel sends followed by the parts later kernels appended, each a struct of its own: a
 * part the reply holds whole is decoded, and the fields of one it does not hold are undefined, never
 * zero or bytes of something else. Rates leave here in bits per second.
 */
import { fromWireRate } from '../tc/kinds/ratespec.js';
import type { BitsPerSecond } from '../tc/units.js';
import { type StructCodec, struct, u16, u32, u64, u8 } from '../wire/struct.js';
import { tcpStateName } from './tcp-states.js';

/** The 104 bytes every kernel sends. Times are in µs unless a name says ms. */
const base = struct({
  state: u8,
  caState: u8,
  retransmits: u8,
  probes: u8,
  backoff: u8,
  options: u8,
  /** snd_wscale in the low 4 bits, rcv_wscale in the high 4. */
  windowScales: u8,
  /** Bit 0: delivery_rate_app_limited (once deliveryRate exists); bits 1-2: fastopen_client_fail. */
  flags: u8,
  rto: u32,
  ato: u32,
  sndMss: u32,
  rcvMss: u32,
  unacked: u32,
  sacked: u32,
  lost: u32,
  retrans: u32,
  fackets: u32,
  lastDataSentMs: u32,
  lastAckSentMs: u32,
  lastDataRecvMs: u32,
  lastAckRecvMs: u32,
  pmtu: u32,
  rcvSsthresh: u32,
  rtt: u32,
  rttvar: u32,
  sndSsthresh: u32,
  sndCwnd: u32,
  advmss: u32,
  reordering: u32,
  rcvRtt: u32,
  rcvSpace: u32,
  totalRetrans: u32,
});

/** What later kernels appended, in order (rates in bytes/s, times in µs). */
const appended = [
  struct({ pacingRate: u64, maxPacingRate: u64 }), // 3.15
  struct({ bytesAcked: u64, bytesReceived: u64 }), // 4.1
  struct({ segsOut: u32, segsIn: u32 }), // 4.2
  struct({ notsentBytes: u32, minRtt: u32, dataSegsIn: u32, dataSegsOut: u32 }), // 4.6
  struct({ deliveryRate: u64 }), // 4.9, with the app-limited bit
  struct({ busyTime: u64, rwndLimited: u64, sndbufLimited: u64 }), // 4.10
  struct({ delivered: u32, deliveredCe: u32 }), // 4.18
  struct({ bytesSent: u64, bytesRetrans: u64, dsackDups: u32, reordSeen: u32 }), // 4.19
  struct({ rcvOoopack: u32, sndWnd: u32 }), // 5.4
  struct({ rcvWnd: u32, rehash: u32 }), // 6.2
  struct({ totalRto: u16, totalRtoRecoveries: u16, totalRtoTimeMs: u32 }), // 6.7: 248 bytes (6.18 sends 280: AccECN counters, not read)
] as const;

type PartValue<P> = P extends StructCodec<infer T> ? T : never;
type UnionToIntersection<U> = (U extends unknown ? (part: U) => void : never) extends (part: infer I) => void ? I : never;
/** The kernel's fields as declared: the base always, an appended part's fields when the reply held it. */
type TcpInfoFields = PartValue<typeof base> & Partial<UnionToIntersection<PartValue<(typeof appended)[number]>>>;

/** The declared fields a reply of this length holds; undefined when it is shorter than the base. */
function decodeTcpInfoFields(payload: Uint8Array): TcpInfoFields | undefined {
  if (payload.byteLength < base.size) return undefined;
  const fields: TcpInfoFields = base.decode(payload);
  let at = base.size;
  for (const part of appended) {
    if (at + part.size > payload.byteLength) break;
    Object.assign(fields, part.decode(payload.subarray(at, at + part.size)));
    at += part.size;
  }
  return fields;
}

/** The round trips, delivery and limits of one TCP connection, as shaperr uses them. */
export interface TcpInfo {
  state: string;
  /** Smoothed round-trip time. */
  rttUs: number;
  rttVarUs: number;
  /** The lowest round trip seen lately (the kernel's windowed minimum); undefined before the first sample. */
  minRttUs?: number;
  /** The most recent delivery rate sample. */
  deliveryRate?: BitsPerSecond;
  /** Whether that sample was limited by the application (too little to send) rather than by the path. */
  appLimited?: boolean;
  /** Segments delivered (acknowledged), retransmissions included. */
  delivered?: number;
  bytesAcked?: number;
  bytesSent?: number;
  /** Consecutive retransmission timeouts of the segment now outstanding. */
  retransmits: number;
  totalRetrans: number;
  /** Segments now considered lost. */
  lost: number;
  /** Congestion window, in segments. */
  sndCwnd: number;
  /** The rate TCP paces at; undefined when it has none (unlimited). */
  pacingRate?: BitsPerSecond;
  /** Bytes written by the application and not yet sent. */
  notsentBytes?: number;
  lastDataSentMs: number;
  lastAckRecvMs: number;
  /** Time spent with data to send, and how much of it the peer's window or our send buffer held it back. */
  busyTimeUs?: number;
  rwndLimitedUs?: number;
  sndbufLimitedUs?: number;
}

/** tcpi_min_rtt before any sample, and tcpi_pacing_rate without a limit. */
const NO_MIN_RTT = 0xffffffff;
const NO_PACING_LIMIT = 2n ** 64n - 1n;

const wholeNumber = (value: bigint | undefined): number | undefined => (value === undefined ? undefined : Number(value));
const bitsPerSecond = (bytesPerSecond: bigint | undefined): BitsPerSecond | undefined =>
  bytesPerSecond === undefined ? undefined : fromWireRate(Number(bytesPerSecond));

/** INET_DIAG_INFO's payload as TcpInfo; undefined when it is shorter than any kernel's struct. */
export function decodeTcpInfo(payload: Uint8Array): TcpInfo | undefined {
  const fields = decodeTcpInfoFields(payload);
  if (!fields) return undefined;
  return {
    state: tcpStateName(fields.state),
    rttUs: fields.rtt,
    rttVarUs: fields.rttvar,
    minRttUs: fields.minRtt === NO_MIN_RTT ? undefined : fields.minRtt,
    deliveryRate: bitsPerSecond(fields.deliveryRate),
    appLimited: fields.deliveryRate === undefined ? undefined : (fields.flags & 1) === 1,
    delivered: fields.delivered,
    bytesAcked: wholeNumber(fields.bytesAcked),
    bytesSent: wholeNumber(fields.bytesSent),
    retransmits: fields.retransmits,
    totalRetrans: fields.totalRetrans,
    lost: fields.lost,
    sndCwnd: fields.sndCwnd,
    pacingRate: fields.pacingRate === NO_PACING_LIMIT ? undefined : bitsPerSecond(fields.pacingRate),
    notsentBytes: fields.notsentBytes,
    lastDataSentMs: fields.lastDataSentMs,
    lastAckRecvMs: fields.lastAckRecvMs,
    busyTimeUs: wholeNumber(fields.busyTime),
    rwndLimitedUs: wholeNumber(fields.rwndLimited),
    sndbufLimitedUs: wholeNumber(fields.sndbufLimited),
  };
}
