/**
 * The active probe: a small UDP datagram to an echo service beyond the modem every tenth of a second,
 * its round trip against the least one seen lately. The only signal in gateway mode (Plex's sockets are
 * on another host), and a modem-side check beside Plex's own round trips. UDP, not ICMP: unprivileged
 * ping is off on many hosts.
 *
 * An answer still missing says at least as much as its age: a probe out for 80 ms on a 20 ms path means
 * a queue of at least 60 ms, before any answer comes back (probes older than the latest answered one
 * count as lost, not as late).
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';
import type { UdpProbeTarget } from '../config.js';
import { monotonicMs } from '../support/clock.js';

const INTERVAL_MS = 100;
/** Older answers are lost (the modem's tail dropped them): no longer read as a delay. */
const GIVE_UP_MS = 2000;
/** The baseline is the least round trip over this long (a route change moves it). */
const BASELINE_WINDOW_MS = 5 * 60_000;
const PAYLOAD_BYTES = 32;

export class UdpProbe {
  private readonly socket: dgram.Socket;
  private timer?: NodeJS.Timeout;
  private sequence = 0;
  private readonly outstanding = new Map<number, number>();
  /** Recent round trips (ms) with when they came, for the baseline. */
  private readonly minima: Array<{ at: number; rtt: number }> = [];
  private latest?: { at: number; rtt: number };
  private sent = 0;
  private answered = 0;

  constructor(private readonly target: UdpProbeTarget) {
    this.socket = dgram.createSocket(isIP(target.host) === 6 ? 'udp6' : 'udp4');
    this.socket.on('message', (message) => this.onAnswer(message));
    // An unreachable echo service (ICMP port unreachable) surfaces as an error per send: counted as unanswered.
    this.socket.on('error', () => {});
  }

  start(): void {
    this.socket.bind(0, () => {
      this.socket.connect(this.target.port, this.target.host, () => {
        this.timer = setInterval(() => this.send(), INTERVAL_MS);
        this.timer.unref();
      });
    });
  }

  stop(): void {
    clearInterval(this.timer);
    this.socket.close();
  }

  get counts(): { sent: number; answered: number } {
    return { sent: this.sent, answered: this.answered };
  }

  /** The queueing delay the probe sees now (ms above its baseline); undefined before its first answer. */
  delayMs(now = monotonicMs()): number | undefined {
    const baseline = this.baseline(now);
    if (baseline === undefined) return undefined;
    let oldest = 0;
    for (const [sequence, sentAt] of this.outstanding) {
      if (now - sentAt > GIVE_UP_MS) this.outstanding.delete(sequence);
      else oldest = Math.max(oldest, now - sentAt);
    }
    const measured = this.latest && now - this.latest.at <= GIVE_UP_MS ? this.latest.rtt : undefined;
    // Nothing answered lately and nothing out: the echo service is gone, which says nothing of the queue.
    if (measured === undefined && oldest === 0) return undefined;
    // A probe overdue by more than its baseline already says the queue grew.
    return Math.max(0, Math.max(measured ?? 0, oldest) - baseline);
  }

  private baseline(now: number): number | undefined {
    while (this.minima.length && now - this.minima[0]!.at > BASELINE_WINDOW_MS) this.minima.shift();
    return this.minima.length ? Math.min(...this.minima.map((entry) => entry.rtt)) : undefined;
  }

  private send(): void {
    const sequence = this.sequence++ >>> 0;
    const packet = Buffer.alloc(PAYLOAD_BYTES);
    packet.writeUInt32BE(sequence, 0);
    packet.writeUInt32BE(process.pid >>> 0, 4);
    this.outstanding.set(sequence, monotonicMs());
    this.sent++;
    this.socket.send(packet);
  }

  private onAnswer(message: Buffer): void {
    if (message.length < 8 || message.readUInt32BE(4) !== process.pid >>> 0) return;
    const sequence = message.readUInt32BE(0);
    const sentAt = this.outstanding.get(sequence);
    if (sentAt === undefined) return;
    // Older probes still out were lost (or come late): their age says nothing about the queue any more.
    for (const older of this.outstanding.keys()) if (older <= sequence) this.outstanding.delete(older);
    const at = monotonicMs();
    const rtt = at - sentAt;
    this.answered++;
    this.latest = { at, rtt };
    // Keep a short list of minima: one entry per second of the window is enough for the least.
    const last = this.minima.at(-1);
    if (last && at - last.at < 1000) last.rtt = Math.min(last.rtt, rtt);
    else this.minima.push({ at, rtt });
  }
}
