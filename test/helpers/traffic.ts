/**
 * Real TCP goodput through the shaped veth: a receiver (listener on the client address, counting payload
 * bytes) in the clients namespace and one sender per stream in the server namespace, both the plain-JS
 * traffic peer run with bare `node` under `ip netns exec`. Counted at the receiver, after a warm-up that
 * excludes TCP ramp-up and the burst an HTB class lets through above its rate.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Topology } from '../../daemon/support/netns.js';

const PEER = fileURLToPath(new URL('../../daemon/demo/traffic-peer.mjs', import.meta.url));
/** Room for starting node in the namespaces and connecting, on top of warm-up + measurement: a deadline, generous for the emulated stock-kernel lane. */
const STARTUP_SECONDS = 30;
/**
 * At a few Mbit/s a shorter window reads TCP's sawtooth and the queue's 64 KB super-packets (262 ms apart at
 * 2 Mbit/s) against its edges: 3 s windows read 1.86–1.98 Mbit/s where 6 s read 1.90–1.96 (a 2 Mbit/s pipe
 * under emulation, 12 of each), and one 3 s window beside another test file read 1.68.
 */
const DEFAULT_WINDOW_SECONDS = 6;

/** The warm-up and measurement window of a spec, defaults filled in. */
const timing = (spec: GoodputSpec): { warmup: number; seconds: number } => ({
  warmup: spec.warmupSeconds ?? 1,
  seconds: spec.seconds ?? DEFAULT_WINDOW_SECONDS,
});

/**
 * The goodput a receiver can count through a class of `rate`: HTB charges each full-size segment's
 * Ethernet, IP and TCP headers (1514 bytes on the wire) against the rate, while the receiver counts only
 * the payload (1448 bytes over IPv4, 1428 over IPv6, with TCP timestamps).
 */
function goodputAt(rateBitsPerSecond: number, family: 4 | 6 = 4): number {
  return (rateBitsPerSecond * (family === 4 ? 1448 : 1428)) / 1514;
}

/** Whether a measured goodput is within ±10 % of what a class of `rate` allows, and the reading in words. */
export function shapedTo(measured: number, rateBitsPerSecond: number, family: 4 | 6 = 4): { within: boolean; reading: string } {
  const want = goodputAt(rateBitsPerSecond, family);
  const mbit = (bits: number) => (bits / 1e6).toFixed(2);
  return {
    within: Math.abs(measured - want) <= 0.1 * want,
    reading: `${(measured / 1e6).toFixed(3)} Mbit/s (want ${mbit(want)} ±10 %: ${rateBitsPerSecond / 1e6} Mbit/s less headers)`,
  };
}

export interface GoodputSpec {
  /** Client address (IPv4 or IPv6) the traffic goes to. */
  to: string;
  port?: number;
  /** Length of the measurement window (default DEFAULT_WINDOW_SECONDS). */
  seconds?: number;
  /** Excluded from the measurement: TCP ramp-up and the class's initial burst (default 1). */
  warmupSeconds?: number;
  /** Parallel TCP connections to the same receiver (default 1). */
  streams?: number;
  /** Namespace of the senders (default: the topology's server namespace). */
  from?: string;
  /** The senders' local port (one stream only): e.g. Plex's 32400. */
  localPort?: number;
}

export interface Goodput {
  to: string;
  bitsPerSecond: number;
  bytes: number;
  seconds: number;
  /** Each connection's goodput over the same window, in order of arrival (several with `streams`). */
  connectionBitsPerSecond: number[];
}

/** All the measurement needs of a topology (the benchmarks build one by hand). */
export type TrafficEnds = Pick<Topology, 'serverNs' | 'clientNs'>;

/** One traffic-peer process inside a namespace. */
class Peer {
  private readonly child: ChildProcess;
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  private readonly closed: Promise<string>;

  constructor(
    private readonly what: string,
    netns: string,
    args: string[],
  ) {
    this.child = spawn('ip', ['netns', 'exec', netns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (data: Buffer) => (this.stderr += data.toString()));
    this.lines = createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
    this.closed = new Promise((resolve) => {
      this.child.once('error', (error) => resolve(error.message));
      this.child.once('close', (code, signal) => resolve(signal ? `was killed by ${signal}` : `exited with ${code}`));
    });
  }

  async nextLine(): Promise<string> {
    const { value, done } = await this.lines.next();
    if (!done) return value as string;
    throw this.failure(await this.closed);
  }

  /** Rejects when the process ends with an error (a sender's clean exit at its time limit is not one). */
  async failed(): Promise<never> {
    const how = await this.closed;
    if (how === 'exited with 0') return new Promise<never>(() => {});
    throw this.failure(how);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  private failure(how: string): Error {
    // An uncaught exception prints a stack around the message; the peer's own complaints are one line.
    const lines = this.stderr.split('\n').filter((line) => line.trim() !== '');
    const detail = lines.find((line) => /^\w*Error\b/.test(line)) ?? lines.slice(-3).join(' | ');
    return new Error(`${this.what} ${how}${detail ? `: ${detail}` : ''}`);
  }
}

let nextPort = 46000;

async function measureOne(ends: TrafficEnds, spec: GoodputSpec, peers: Peer[], aborted: AbortSignal): Promise<Goodput> {
  const port = spec.port ?? nextPort++;
  const { warmup, seconds } = timing(spec);
  const target = `${spec.to.includes(':') ? `[${spec.to}]` : spec.to}:${port}`;
  const receiver = new Peer(`receiver on ${target}`, ends.clientNs, ['receive', spec.to, String(port), String(warmup), String(seconds)]);
  peers.push(receiver);
  const greeting = await receiver.nextLine();
  if (greeting !== 'listening') throw new Error(`receiver on ${target} said ${JSON.stringify(greeting)} instead of listening`);
  aborted.throwIfAborted();
  // Senders outlast the receiver's window (which starts at the first byte) by a second of slack.
  const senders = Array.from({ length: spec.streams ?? 1 }, (_, i) => {
    const args = ['send', spec.to, String(port), String(warmup + seconds + 1), ...(spec.localPort ? ['0', String(spec.localPort)] : [])];
    const sender = new Peer(`sender #${i + 1} to ${target}`, spec.from ?? ends.serverNs, args);
    peers.push(sender);
    return sender;
  });
  const report = await Promise.race([receiver.nextLine(), ...senders.map((sender) => sender.failed())]);
  const { bytes, seconds: measured, connections } = JSON.parse(report) as { bytes: number; seconds: number; connections: number[] };
  return {
    to: spec.to,
    bytes,
    seconds: measured,
    bitsPerSecond: (bytes * 8) / measured,
    connectionBitsPerSecond: connections.map((each) => (each * 8) / measured),
  };
}

/** Measures several flows over the same period (isolation, fair sharing), one result per spec, in order. */
export async function measureGoodputConcurrently(ends: TrafficEnds, specs: GoodputSpec[]): Promise<Goodput[]> {
  if (specs.length === 0) return [];
  const peers: Peer[] = [];
  const abort = new AbortController();
  const limit = Math.max(...specs.map(timing).map(({ warmup, seconds }) => warmup + seconds)) + STARTUP_SECONDS;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`goodput to ${specs.map((s) => s.to).join(', ')} not measured within ${limit} s`)), limit * 1000);
  });
  try {
    return await Promise.race([Promise.all(specs.map((spec) => measureOne(ends, spec, peers, abort.signal))), timedOut]);
  } finally {
    clearTimeout(timer);
    // Stops flows still starting up after another one failed, and every process still running.
    abort.abort();
    for (const peer of peers) peer.kill();
  }
}

export async function measureGoodput(ends: TrafficEnds, spec: GoodputSpec): Promise<Goodput> {
  const [result] = await measureGoodputConcurrently(ends, [spec]);
  return result!;
}

/** Small-packet round trips server → `to` and back for `seconds` (per-packet cost, not bandwidth). */
export async function measureRoundTrips(ends: TrafficEnds, to: string, seconds: number): Promise<{ roundTrips: number; microsecondsPerRoundTrip: number }> {
  const port = nextPort++;
  const echo = new Peer(`echo on ${to}:${port}`, ends.clientNs, ['echo', to, String(port)]);
  try {
    const greeting = await echo.nextLine();
    if (greeting !== 'listening') throw new Error(`echo on ${to}:${port} said ${JSON.stringify(greeting)} instead of listening`);
    const client = new Peer(`pingpong to ${to}:${port}`, ends.serverNs, ['pingpong', to, String(port), String(seconds)]);
    try {
      const { roundTrips, seconds: measured } = JSON.parse(await client.nextLine()) as { roundTrips: number; seconds: number };
      return { roundTrips, microsecondsPerRoundTrip: (measured * 1e6) / roundTrips };
    } finally {
      client.kill();
    }
  } finally {
    echo.kill();
  }
}

/** One long-running TCP stream server → `to`, whose goodput can be read over any stretch while it runs. */
export interface Stream {
  /** Goodput over the next `seconds`, from the sink's own timestamped byte counts. */
  bitsPerSecondOver(seconds: number): Promise<number>;
  stop(): void;
}

export async function startStream(ends: TrafficEnds, to: string, totalSeconds: number): Promise<Stream> {
  const port = nextPort++;
  const sink = new Peer(`sink on ${to}:${port}`, ends.clientNs, ['sink', to, String(port)]);
  const greeting = await sink.nextLine();
  if (greeting !== 'listening') throw new Error(`sink on ${to}:${port} said ${JSON.stringify(greeting)} instead of listening`);
  const sender = new Peer(`sender to ${to}:${port}`, ends.serverNs, ['send', to, String(port), String(totalSeconds)]);
  let latest = { bytes: 0, at: 0 };
  let failure: Error | undefined;
  let settle = (): void => {};
  const started = new Promise<void>((resolve) => (settle = resolve));
  const fail = (error: Error) => {
    failure = error;
    settle();
  };
  void (async () => {
    for (;;) {
      const count = /^bytes (\d+) at ([\d.]+)/.exec(await sink.nextLine());
      if (count) latest = { bytes: Number(count[1]), at: Number(count[2]) };
      if (latest.bytes > 0) settle();
    }
  })().catch(fail);
  sender.failed().catch(fail);
  // Rates are taken from a stream that already flows: starting node can take seconds on a slow (emulated) machine.
  const timer = setTimeout(settle, STARTUP_SECONDS * 1000);
  await started;
  clearTimeout(timer);
  if (failure || latest.bytes === 0) {
    sender.kill();
    sink.kill();
    throw failure ?? new Error(`no data reached ${to}:${port} within ${STARTUP_SECONDS} s`);
  }
  return {
    async bitsPerSecondOver(seconds) {
      const from = latest;
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      if (failure) throw failure;
      return ((latest.bytes - from.bytes) * 8 * 1000) / (latest.at - from.at);
    },
    stop() {
      sender.kill();
      sink.kill();
    },
  };
}
