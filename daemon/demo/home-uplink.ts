/**
 * A home uplink in throwaway namespaces, for the demo, the benchmark and its CI smoke test:
 *
 *   plex (up0 10.77.1.2) ─┐                                   ┌─ internet (wan1 203.0.113.1: game server,
 *                          ├─ router ── wan0 ═══ the modem ═══ ┤            203.0.113.10…: remote players)
 *   lan  (lan0 10.77.2.2) ─┘   (forwards)  20 Mbit/s, ~1 s drop-tail buffer
 *
 * The modem is what the owner cannot configure: an HTB class at the uplink rate with a ~32 KB burst (a
 * tiny one drains below its rate when a busy machine fires its timer late; a real modem does not) and a
 * bfifo holding about a second of traffic. shaperr shapes the plex host's up0; the gamer on the LAN
 * shares only the modem with it. Processes are plain JS (uplink-peer.mjs) run with bare `node`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { TrafficControl } from '../../lib/index.js';
import { createNetns, deleteNetns, inNetns, ip } from '../support/netns.js';

/** Plain JS, found next to this file or, from dist/, in the sources. */
const PEER = [new URL('./uplink-peer.mjs', import.meta.url), new URL('../../../daemon/demo/uplink-peer.mjs', import.meta.url)]
  .map((url) => fileURLToPath(url))
  .find((path) => existsSync(path))!;

export const PLEX = { device: 'up0', address: '10.77.1.2', port: 32400 } as const;
export const LAN_GAMER = '10.77.2.2';
export const GAME_SERVER = { address: '203.0.113.1', port: 27015 } as const;
const MODEM = { device: 'wan0', classid: '1:10', leaf: '10:' } as const;
/** Remote player N is at 203.0.113.(10 + N). */
export const playerAddress = (index: number): string => `203.0.113.${10 + index}`;

export const UPLINK_BITS = 20e6;
/** shaperr's server ceiling: 90 % of the uplink, so Plex alone never builds a queue in the modem. */
export const SERVER_CEILING_BITS = 0.9 * UPLINK_BITS;
/** Each client pipe: its stream's bitrate plus room to refill the player's buffer. */
export const PIPE_HEADROOM = 1.25;
const BITRATES = [3e6, 4e6, 6e6];

/** `count` streams cycling through 3, 4 and 6 Mbit/s, one remote player address each. */
export const streamSpecs = (count: number): StreamSpec[] =>
  Array.from({ length: count }, (_, i) => ({ address: playerAddress(i), bitsPerSecond: BITRATES[i % BITRATES.length]! }));

export const pipeRate = (spec: StreamSpec): number => Math.round(spec.bitsPerSecond * PIPE_HEADROOM);

/**
 * The shaperrd settings of the home: the server ceiling, each player's pipe as a network override, LAN
 * exempt; the caller adds log, stateFile and the rest. `leaf: 'sfq'` falls back to bfifo where the kernel
 * has no sfq (the stock-kernel lane has it).
 */
export const homeShaping = (home: HomeUplink, specs: StreamSpec[], leaf: 'sfq' | 'bfifo' = 'bfifo') => ({
  device: PLEX.device,
  netns: home.plexNs,
  server: { rate: SERVER_CEILING_BITS, ceil: SERVER_CEILING_BITS },
  client: { rate: SERVER_CEILING_BITS },
  leaf,
  exempt: ['127.0.0.0/8', '10.77.0.0/16'],
  overrides: specs.map((spec) => ({ network: `${spec.address}/32`, rate: pipeRate(spec) })),
});

/** The Plex log line of a remote player starting a transcoded stream. */
export function plexStartLine(address: string, session: string): string {
  const now = new Date();
  const stamp = `${now.toLocaleString('en-US', { month: 'short' })} ${String(now.getDate()).padStart(2, '0')}, ${now.getFullYear()} ${now.toTimeString().slice(0, 8)}.${String(now.getMilliseconds()).padStart(3, '0')}`;
  return `${stamp} [140562] DEBUG - Request: [${address}:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?session=${session}&X-Plex-Token=home (3 live) #1 TLS GZIP Signed-in Token (viewer)\n`;
}

export interface HomeUplinkOptions {
  /** Namespace name prefix (names also carry the pid, as every sandbox's do). */
  prefix: string;
  /** Uplink rate in bits/s (default 20 Mbit/s). */
  uplinkBitsPerSecond?: number;
  /** Depth of the modem's drop-tail buffer in seconds of uplink (default 1). */
  modemBufferSeconds?: number;
  /** Remote player addresses to create on the internet host. */
  players: number;
}

export interface HomeUplink {
  plexNs: string;
  lanNs: string;
  routerNs: string;
  internetNs: string;
  uplinkBitsPerSecond: number;
  modemBufferBytes: number;
  /** Whether net.ipv4.tcp_tso_rtt_log exists in this kernel (and was set to 0 in the plex netns). */
  tsoRttLogSet: boolean;
  destroy(): Promise<void>;
}

export async function createHomeUplink({ prefix, uplinkBitsPerSecond = 20e6, modemBufferSeconds = 1, players }: HomeUplinkOptions): Promise<HomeUplink> {
  const made: string[] = [];
  const destroy = async () => {
    for (const name of made) await deleteNetns(name);
  };
  try {
    const namespace = async (role: string) => {
      const name = await createNetns(role, { prefix });
      made.push(name);
      return name;
    };
    const [plexNs, lanNs, routerNs, internetNs] = [await namespace('plex'), await namespace('lan'), await namespace('router'), await namespace('internet')];
    const link = async (a: string, aDevice: string, aCidr: string, b: string, bDevice: string, bCidrs: string[]) => {
      await ip('-n', a, 'link', 'add', aDevice, 'type', 'veth', 'peer', 'name', bDevice, 'netns', b);
      await ip('-n', a, 'addr', 'add', aCidr, 'dev', aDevice);
      for (const cidr of bCidrs) await ip('-n', b, 'addr', 'add', cidr, 'dev', bDevice);
      await ip('-n', a, 'link', 'set', aDevice, 'up');
      await ip('-n', b, 'link', 'set', bDevice, 'up');
    };
    await link(plexNs, PLEX.device, `${PLEX.address}/24`, routerNs, 'pl0', ['10.77.1.1/24']);
    await link(lanNs, 'lan0', `${LAN_GAMER}/24`, routerNs, 'ln0', ['10.77.2.1/24']);
    await link(routerNs, MODEM.device, '203.0.113.254/24', internetNs, 'wan1', [
      `${GAME_SERVER.address}/24`,
      ...Array.from({ length: players }, (_, i) => `${playerAddress(i)}/24`),
    ]);
    await ip('-n', plexNs, 'route', 'add', 'default', 'via', '10.77.1.1');
    await ip('-n', lanNs, 'route', 'add', 'default', 'via', '10.77.2.1');
    await ip('-n', internetNs, 'route', 'add', '10.77.0.0/16', 'via', '203.0.113.254');
    await inNetns(routerNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
    // Veth round trips are microseconds, so TCP would add its LAN bonus (up to 64 KB) to every TSO
    // packet, which remote clients tens of ms away never get: off.
    const tsoRttLogSet = await inNetns(plexNs, 'sysctl', '-qw', 'net.ipv4.tcp_tso_rtt_log=0').then(
      () => true,
      () => false,
    );
    // Not enough on its own: TSO packets are also sized from the pacing rate (cwnd ÷ srtt), and with a
    // µs srtt a new flow's packets were still 64 KB lumps at the modem (26 ms of the uplink each). One
    // segment per GSO packet on up0: the Plex host sends full-size frames, as its pacing does toward
    // real remote clients.
    await ip('-n', plexNs, 'link', 'set', PLEX.device, 'gso_max_segs', '1');
    const modemBufferBytes = Math.round((uplinkBitsPerSecond / 8) * modemBufferSeconds);
    const tc = TrafficControl.open({ netns: routerNs });
    try {
      tc.addQdisc(MODEM.device, { kind: 'htb', handle: '1:', options: { defaultClass: 0x10 } });
      tc.addClass(MODEM.device, { kind: 'htb', parent: '1:', classid: MODEM.classid, options: { rate: uplinkBitsPerSecond, burst: '32kb', cburst: '32kb' } });
      tc.addQdisc(MODEM.device, { kind: 'bfifo', parent: MODEM.classid, handle: MODEM.leaf, options: { limit: modemBufferBytes } });
    } finally {
      tc.close();
    }
    return { plexNs, lanNs, routerNs, internetNs, uplinkBitsPerSecond, modemBufferBytes, tsoRttLogSet, destroy };
  } catch (error) {
    await destroy();
    throw error;
  }
}

// ---- the modem's counters ------------------------------------------------------------------------------

export interface ModemReading {
  /** Bytes the uplink carried (the modem class's counter). */
  bytes: number;
  /** Bytes queued in the modem's buffer now. */
  backlog: number;
  drops: number;
}

export interface ModemReport {
  /** Largest backlog seen by the poll, bytes. */
  peakBacklog: number;
  drops: number;
  bytes: number;
  /** One reading per poll, for utilisation over any stretch. */
  samples: Array<{ at: number } & ModemReading>;
}

/**
 * Polls the modem's counters over netlink (its class's bytes, its buffer's backlog and drops) every
 * `intervalMs` until stopped: the peak backlog is the largest queue the uplink built. A failed read
 * stops the polling and is thrown by stop(); a second stop() returns the same report.
 */
export function watchModem(home: HomeUplink, intervalMs = 20): { stop(): ModemReport } {
  const tc = TrafficControl.open({ netns: home.routerNs });
  const read = (): ModemReading => {
    const buffer = tc.qdiscs(MODEM.device).find((qdisc) => qdisc.kind === 'bfifo')?.statistics;
    const modemClass = tc.getClass(MODEM.device, MODEM.classid)?.statistics;
    if (!buffer || !modemClass) throw new Error('the modem lost its class or buffer');
    return { bytes: modemClass.bytes, backlog: buffer.backlog, drops: buffer.drops };
  };
  const first = { at: monotonicMs(), ...read() };
  const samples = [first];
  let peakBacklog = first.backlog;
  let failure: unknown;
  const timer = setInterval(() => {
    try {
      const sample = { at: monotonicMs(), ...read() };
      samples.push(sample);
      peakBacklog = Math.max(peakBacklog, sample.backlog);
    } catch (error) {
      failure = error;
      clearInterval(timer);
    }
  }, intervalMs);
  let report: ModemReport | undefined;
  return {
    stop() {
      if (report) return report;
      clearInterval(timer);
      try {
        if (failure) throw failure;
        const last = { at: monotonicMs(), ...read() };
        samples.push(last);
        report = { peakBacklog: Math.max(peakBacklog, last.backlog), drops: last.drops - first.drops, bytes: last.bytes - first.bytes, samples };
        return report;
      } finally {
        tc.close();
      }
    },
  };
}

/** The clock the peers print (CLOCK_MONOTONIC, shared by every process), in ms. */
export const monotonicMs = (): number => Number(process.hrtime.bigint()) / 1e6;

// ---- processes -----------------------------------------------------------------------------------------

/** One uplink-peer process inside a namespace, its stdout as lines. */
class Peer {
  readonly child: ChildProcess;
  private stderr = '';
  readonly exited: Promise<string>;

  constructor(
    readonly what: string,
    netns: string,
    args: string[],
    onLine: (line: string) => void,
    { latencySensitive = false } = {},
  ) {
    // The gamer and the game server stand for machines of their own: on a 2-core box shared with the Plex
    // host, the router and the players, a higher priority keeps their wake-ups from waiting for a core.
    const nice = latencySensitive ? ['nice', '-n', '-10'] : [];
    this.child = spawn('ip', ['netns', 'exec', netns, ...nice, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (data: Buffer) => (this.stderr += data.toString()));
    createInterface({ input: this.child.stdout! }).on('line', onLine);
    this.exited = new Promise((resolve) => {
      this.child.once('error', (error) => resolve(error.message));
      this.child.once('close', (code, signal) => resolve(signal ? `was killed by ${signal}` : `exited with ${code}`));
    });
  }

  /** Rejects when the process ends with an error. */
  async failure(): Promise<never> {
    const how = await this.exited;
    if (how === 'exited with 0') return new Promise<never>(() => {});
    throw new Error(`${this.what} ${how}${this.stderr.trim() ? `: ${this.stderr.trim().split('\n').slice(-2).join(' | ')}` : ''}`);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** Starts a listening peer and waits for its "listening". */
async function listener(what: string, netns: string, args: string[], options: { latencySensitive?: boolean } = {}): Promise<Peer> {
  let ready = (): void => {};
  const listening = new Promise<void>((resolve) => (ready = resolve));
  const peer = new Peer(what, netns, args, (line) => line === 'listening' && ready(), options);
  await Promise.race([listening, peer.failure()]).catch((error: unknown) => {
    peer.kill();
    throw error;
  });
  return peer;
}

/** The Plex host's segment server and the game server: both wait for clients until stopped. */
export async function startServers(home: HomeUplink): Promise<{ stop(): void }> {
  const segments = await listener('segment server', home.plexNs, ['segments', PLEX.address, String(PLEX.port)]);
  const game = await listener('game server', home.internetNs, ['udp-echo', GAME_SERVER.address, String(GAME_SERVER.port)], { latencySensitive: true }).catch(
    (error: unknown) => {
      segments.kill();
      throw error;
    },
  );
  return {
    stop() {
      segments.kill();
      game.kill();
    },
  };
}

export interface StreamSpec {
  address: string;
  bitsPerSecond: number;
}

export interface StreamResult extends StreamSpec {
  segments: number;
  /** Segments that arrived after the buffer had run dry. */
  lateSegments: number;
  /** Times the buffer ran dry while playing (including one still under way at the end). */
  stalls: number;
  stalledSeconds: number;
  /** Request of the first segment → playback (null: never started). */
  startupSeconds: number | null;
  bytes: number;
  goodputBitsPerSecond: number;
}

export interface PlayersStatus {
  at: number;
  streams: Array<{ buffer: number; stalls: number; fetching: boolean }>;
}

export interface Players {
  /** Segment fetches as [requested, done] in monotonic ms, per stream. */
  fetches: Array<Array<[number, number]>>;
  latest?: PlayersStatus;
  /** Resolves when the players end (after `seconds`, or `stop()`) with each stream's result. */
  done: Promise<StreamResult[]>;
  stop(): void;
}

/** Remote players pulling segments from the Plex host through the uplink, for `seconds`. */
export function startPlayers(home: HomeUplink, streams: StreamSpec[], seconds: number): Players {
  let summary: StreamResult[] | undefined;
  const players: Players = {
    fetches: streams.map(() => []),
    done: Promise.resolve([]),
    stop: () => peer.child.kill('SIGTERM'),
  };
  const peer = new Peer('players', home.internetNs, ['players', PLEX.address, String(PLEX.port), String(seconds), JSON.stringify(streams)], (line) => {
    const [kind, ...fields] = line.split(' ');
    if (kind === 'segment') players.fetches[Number(fields[0])]!.push([Number(fields[1]), Number(fields[2])]);
    else if (kind === 'status') players.latest = { at: Number(fields[0]), streams: JSON.parse(fields.slice(1).join(' ')) };
    else if (kind === 'summary') summary = (JSON.parse(fields.join(' ')) as { streams: StreamResult[] }).streams;
  });
  players.done = Promise.race([
    peer.exited.then((how) => {
      if (!summary) throw new Error(`players ${how} without a summary`);
      return summary;
    }),
    peer.failure(),
  ]);
  return players;
}

export interface Gamer {
  /** Round trips in ms with when each ping was sent (monotonic ms), in the order the answers came. */
  samples: Array<{ sentAt: number; rtt: number }>;
  done: Promise<{ sent: number; answered: number; rtts: number[] }>;
  stop(): void;
}

/** The LAN gamer: `perSecond` small datagrams to the game server for `seconds`, each round trip timed. */
export function startGamer(home: HomeUplink, seconds: number, perSecond = 50): Gamer {
  const samples: Gamer['samples'] = [];
  let counts: { sent: number; answered: number } | undefined;
  const peer = new Peer(
    'gamer',
    home.lanNs,
    ['gamer', LAN_GAMER, GAME_SERVER.address, String(GAME_SERVER.port), String(seconds), String(perSecond)],
    (line) => {
      const [kind, a, b, c] = line.split(' ');
      if (kind === 'rtt') samples.push({ rtt: Number(b), sentAt: Number(c) });
      else if (kind === 'done') counts = { sent: Number(a), answered: Number(b) };
    },
    { latencySensitive: true },
  );
  const done = Promise.race([
    peer.exited.then((how) => {
      if (!counts) throw new Error(`gamer ${how} before it finished`);
      return { ...counts, rtts: samples.map((sample) => sample.rtt) };
    }),
    peer.failure(),
  ]);
  return { samples, done, stop: () => peer.kill() };
}

// ---- figures -------------------------------------------------------------------------------------------

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

export interface PingFigures {
  p50: number;
  p99: number;
  p999: number;
  max: number;
  /** Mean difference between consecutive round trips (as RTP's interarrival jitter, unsmoothed). */
  jitter: number;
  lost: number;
}

export function pingFigures(rtts: readonly number[], sent = rtts.length): PingFigures {
  let jitter = 0;
  for (let i = 1; i < rtts.length; i++) jitter += Math.abs(rtts[i]! - rtts[i - 1]!);
  return {
    p50: percentile(rtts, 50),
    p99: percentile(rtts, 99),
    p999: percentile(rtts, 99.9),
    max: Math.max(0, ...rtts),
    jitter: rtts.length > 1 ? jitter / (rtts.length - 1) : 0,
    lost: sent - rtts.length,
  };
}

/**
 * The share of the uplink used while every stream was fetching at once (the catching-up the uplink must
 * serve), from the modem's byte counter: 0 when they never all fetched together.
 */
export function utilisationWhileAllFetch(home: HomeUplink, modem: ModemReport, fetches: Array<Array<[number, number]>>): number {
  const fetching = (stream: Array<[number, number]>, from: number, to: number) => stream.some(([start, end]) => start <= from && end >= to);
  let bytes = 0;
  let ms = 0;
  for (let i = 1; i < modem.samples.length; i++) {
    const [before, after] = [modem.samples[i - 1]!, modem.samples[i]!];
    if (!fetches.every((stream) => fetching(stream, before.at, after.at))) continue;
    bytes += after.bytes - before.bytes;
    ms += after.at - before.at;
  }
  return ms ? (bytes * 8) / (ms / 1000) / home.uplinkBitsPerSecond : 0;
}
