/**
 * The downstream queueing delay, read from Plex's own TCP connections (sock_diag, no probe packets):
 * each connection's smoothed round trip above its own minimum, less what shaperr's own pipe adds, is the
 * queue its packets met beyond the host — the modem's, or the far end's own link.
 *
 * - One dump a tick, filtered in the kernel on Plex's local port: one bytecode condition whatever the
 *   number of players (a filter on the piped peers would need one per peer, and the kernel bounds a
 *   filter's length).
 * - Only fresh samples: a connection counts when it delivered something since the last read (srtt goes
 *   stale between a player's segment requests).
 * - LAN and exempt peers are left out: their traffic never crosses the modem.
 * - A delay seen by one player alone is that player's own link (a phone on a weak cell): the uplink's
 *   delay is the largest that at least two players see. A lone player counts alone, unless a modem-side
 *   signal (the UDP probe) is given: then the smaller of the two.
 */
import { type BitsPerSecond, NetworkSet, type PipeCounters, type SocketDiag } from '../../lib/index.js';
import { ThroughputMeter } from '../support/throughput.js';

/** What shaperr's own pipe holds for a client now (bytes sent, bytes queued, its ceil). */
type PipeReading = Pick<PipeCounters['pipes'][number], 'address' | 'bytes' | 'backlog' | 'ceil'>;

export interface FlowDelayReading {
  /** The uplink's queueing delay in ms (undefined: no fresh sample). */
  delayMs?: number | undefined;
  /** Per player with a fresh sample: the delay its connections see beyond shaperr, ms. */
  byClient: Map<string, number>;
  /** What the players acknowledged since the last read, as wire bits/s. */
  deliveredRate?: BitsPerSecond | undefined;
  /** Plex connections seen (all, fresh or not). */
  connections: number;
}

/** A full-size TCP segment carries 1448 bytes of payload in 1514 on the wire (timestamps on): acked bytes → wire bytes. */
export const WIRE_PER_PAYLOAD = 1514 / 1448;
/** How far back each pipe's own delay is remembered (longer than any round trip worth reading). */
const LOCAL_HISTORY_MS = 3000;
/** A full-size Ethernet frame. */
const FULL_FRAME_BYTES = 1514;
/** The delivered rate is averaged over this long: one tick's acks are too few to measure a link by. */
const DELIVERED_WINDOW_MS = 300;
/** A pipe's own queue is read against at least this share of its ceil (a starved pipe's rate reads ~0). */
const LEAST_DRAIN_SHARE = 0.05;

interface FlowMemory {
  delivered: number;
  bytesAcked: number;
  seenAt: number;
}

/**
 * What shaperr's own pipes add to their clients' round trips: each tick, each pipe's queue ÷ the rate it
 * drains at, remembered for a few seconds so that a round trip is corrected by what its pipe held when its
 * packets went in.
 */
export class PipeDelays {
  /** Per pipe: what it added to round trips lately (oldest first). */
  private readonly pipes = new Map<string, Array<{ at: number; ms: number }>>();
  /** Per pipe: the rate it drains at now, from its byte counter. */
  private readonly pipeRates = new ThroughputMeter();

  /** One tick's reading of the pipes (a released pipe is forgotten). */
  note(at: number, pipes: readonly PipeReading[]): void {
    const present = new Set<string>();
    for (const pipe of pipes) {
      present.add(pipe.address);
      const delays = this.pipes.get(pipe.address) ?? [];
      this.pipes.set(pipe.address, delays);
      const drainRate = Math.max(this.pipeRates.bitsPerSecond(pipe.address, pipe.bytes, at) ?? 0, LEAST_DRAIN_SHARE * pipe.ceil);
      // A busy pipe also holds each packet for its own transmission time at the pipe's rate (the packet in
      // service is not in the backlog): measured, 13 ms of a 0.8 Mbit/s pipe's round trips was that.
      delays.push({ at, ms: pipe.backlog === 0 ? 0 : (((pipe.backlog + FULL_FRAME_BYTES) * 8) / drainRate) * 1000 });
      while (delays.length > 1 && at - delays[0]!.at > LOCAL_HISTORY_MS) delays.shift();
    }
    for (const address of this.pipes.keys()) if (!present.has(address)) this.pipes.delete(address);
    this.pipeRates.keepOnly(present);
  }

  /**
   * What the pipe added when the packets acknowledged now went in (`sentAt`, a round trip ago): right after
   * a cut the pipes fill, and their queue now would be taken off round trips that never met it. The middle
   * of the three readings around then: a busy pipe reads empty now and then, between two packets, and one
   * such reading taken as the pipe's delay showed all of it as the modem's (three benchmark runs: 76 of
   * 13,400 round trips read ≥ 6 ms beyond the host with the modem's queue under 2 ms, 4 with the middle).
   */
  delayAt(address: string, sentAt: number): number {
    const delays = this.pipes.get(address);
    if (!delays?.length) return 0;
    let nearest = 0;
    while (nearest + 1 < delays.length && delays[nearest + 1]!.at <= sentAt) nearest++;
    const around = [delays[Math.max(0, nearest - 1)]!.ms, delays[nearest]!.ms, delays[Math.min(delays.length - 1, nearest + 1)]!.ms];
    return around.sort((a, b) => a - b)[1]!;
  }
}

export class PlexFlowDelay {
  private readonly flows = new Map<string, FlowMemory>();
  private readonly pipeDelays = new PipeDelays();
  private readonly acked: Array<{ at: number; bytes: number }> = [];
  private readonly leftOut: NetworkSet;

  constructor(
    private readonly diag: SocketDiag,
    private readonly options: { plexPort: number; leftOut: readonly string[] },
  ) {
    this.leftOut = new NetworkSet(options.leftOut);
  }

  /** One tick: dumps Plex's connections and returns the delay beyond shaperr. `modemSideMs`: a probe's reading. */
  read(at: number, pipes: readonly PipeReading[], modemSideMs?: number): FlowDelayReading {
    const sockets = this.diag.tcpSockets({ localPort: this.options.plexPort });
    this.pipeDelays.note(at, pipes);
    const byClient = new Map<string, number>();
    let ackedNow = 0;
    const seen = new Set<string>();
    for (const socket of sockets) {
      const tcp = socket.tcp;
      if (!tcp || tcp.delivered === undefined || tcp.minRttUs === undefined || this.leftOut.contains(socket.peerAddress)) continue;
      seen.add(socket.cookie);
      const before = this.flows.get(socket.cookie);
      const bytesAcked = tcp.bytesAcked ?? 0;
      this.flows.set(socket.cookie, { delivered: tcp.delivered, bytesAcked, seenAt: at });
      if (!before || tcp.delivered === before.delivered) continue;
      ackedNow += Math.max(0, bytesAcked - before.bytesAcked);
      const rttMs = tcp.rttUs / 1000;
      const beyond = Math.max(0, rttMs - tcp.minRttUs / 1000 - this.pipeDelays.delayAt(socket.peerAddress, at - rttMs));
      const known = byClient.get(socket.peerAddress);
      // A player's several connections all cross the same queues: the least loaded one tells them best.
      byClient.set(socket.peerAddress, known === undefined ? beyond : Math.min(known, beyond));
    }
    for (const cookie of this.flows.keys()) if (!seen.has(cookie)) this.flows.delete(cookie);
    return {
      delayMs: uplinkDelay([...byClient.values()], modemSideMs),
      byClient,
      deliveredRate: this.deliveredRate(at, ackedNow),
      connections: sockets.length,
    };
  }

  private deliveredRate(at: number, ackedNow: number): BitsPerSecond | undefined {
    this.acked.push({ at, bytes: ackedNow });
    while (this.acked.length > 1 && at - this.acked[0]!.at > DELIVERED_WINDOW_MS) this.acked.shift();
    if (this.acked.length < 2) return undefined;
    const span = at - this.acked[0]!.at;
    // The oldest entry's bytes were acked before the window began.
    const bytes = this.acked.slice(1).reduce((sum, entry) => sum + entry.bytes, 0);
    return span > 0 ? ((bytes * 8 * WIRE_PER_PAYLOAD) / span) * 1000 : undefined;
  }
}

/**
 * The uplink's delay from the players' own: the largest that at least two of them see (one player's own
 * slow link cannot pull it up), a lone player's when it is alone, capped by a modem-side reading if any.
 */
export function uplinkDelay(clientDelays: readonly number[], modemSideMs?: number): number | undefined {
  if (clientDelays.length === 0) return modemSideMs;
  const sorted = [...clientDelays].sort((a, b) => b - a);
  const agreed = sorted.length >= 2 ? sorted[1]! : sorted[0]!;
  return modemSideMs === undefined || sorted.length >= 2 ? agreed : Math.min(agreed, modemSideMs);
}
