/**
 * A home uplink in throwaway namespaces, for the demo, the benchmark and its CI smoke test:
 *
 *   plex (up0 10.77.1.2) ─┐                                   ┌─ internet (wan1 203.0.113.1: game server,
 *                          ├─ router ── wan0 ═══ the modem ═══ ┤            203.0.113.2: upload sink,
 *   lan  (lan0 10.77.2.2, ─┘   (forwards)  20 Mbit/s, ~1 s     │            203.0.113.10…: remote players)
 *         uploader .2.3)                   drop-tail buffer     │
 *                                                                └─ with `remote`: tun0 ═ delay line ═ tun1 ─
 *                                                                   remote (the players, 20–80 ms away)
 *
 * The modem is what the owner cannot configure: an HTB class at the uplink rate with a ~32 KB burst (a
 * tiny one drains below its rate when a busy machine fires its timer late; a real modem does not) and a
 * bfifo holding about a second of traffic; its rate can move while a run goes on (setModemRate,
 * runModemSchedule). shaperr shapes the plex host's up0; the gamer and the uploaders on the LAN share
 * only the modem with it. Processes are plain JS (uplink-peer.mjs) run with bare `node`.
 *
 * This kernel has no netem, so distance comes from a delay line between two TUN devices
 * (benchmarks/delay-line.c). daemon/ may not import benchmarks/, so the caller hands its starter in.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { TrafficControl } from '../../lib/index.js';
import { monotonicMs } from '../support/clock.js';
import { createNetns, deleteNetns, inNetns, ip } from '../support/netns.js';

/** Plain JS, found next to this file or, from dist/, in the sources. */
const PEER = [new URL('./uplink-peer.mjs', import.meta.url), new URL('../../../daemon/demo/uplink-peer.mjs', import.meta.url)]
  .map((url) => fileURLToPath(url))
  .find((path) => existsSync(path))!;

export const PLEX = { device: 'up0', address: '10.77.1.2', port: 32400 } as const;
export const LAN_GAMER = '10.77.2.2';
export const GAME_SERVER = { address: '203.0.113.1', port: 27015 } as const;
/** A second address of the LAN host the uploaders run on, and where they upload to. */
export const LAN_UPLOADER = '10.77.2.3';
export const UPLOAD_SINK = { address: '203.0.113.2', port: 5201 } as const;
/** An echo on the Plex host for round trips over player N's path listens on this port + N. */
export const PLEX_ECHO_PORT = 32500;
const MODEM = { device: 'wan0', classid: '1:10', leaf: '10:' } as const;
/** A real modem's burst, kept when its rate moves. */
const MODEM_BURST = '32kb';
/** The TUN pair of the delay line: tun0 in the internet namespace, tun1 in the remote one. */
export const DELAY_LINE_DEVICES = { internet: 'tun0', remote: 'tun1' } as const;
/** The slow player's class on tun0 (its egress toward the remote players). */
const SLOW_PLAYER = { root: '1:', classid: '1:20', leaf: '20:' } as const;
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

/** One end of a delay line: a TUN device in a namespace. */
export interface DelayLineEnd {
  netns: string;
  device: string;
}

export interface DelayLineSpec {
  /** Packets read from either device are written to the other. */
  ends: readonly [DelayLineEnd, DelayLineEnd];
  /** One-way delay in ms of every packet to or from each address (its round trip grows by twice that). */
  delaysMs: Readonly<Record<string, number>>;
  /** For packets to and from any other address (default 0). */
  defaultDelayMs?: number;
}

/** Starts a delay line (benchmarks/delay-line.ts's startDelayLine) and resolves once packets flow through it. */
export type DelayLineStarter = (spec: DelayLineSpec) => Promise<{ stop(): Promise<unknown> }>;

export interface RemotePlayersOptions {
  /** One-way delay in ms between the internet and the players: one for all, or one per player. */
  oneWayDelayMs: number | readonly number[];
  startDelayLine: DelayLineStarter;
  /** One player behind a slow downlink of its own: its packets queue in a class at this rate on tun0. */
  slowPlayer?: SlowPlayerOptions;
}

export interface SlowPlayerOptions {
  index: number;
  bitsPerSecond: number;
  /** Its downlink's buffer in seconds of its rate (default 0.25). */
  bufferSeconds?: number;
}

export interface HomeUplinkOptions {
  /** Namespace name prefix (names also carry the pid, as every sandbox's do). */
  prefix: string;
  /** Uplink rate in bits/s (default 20 Mbit/s). */
  uplinkBitsPerSecond?: number;
  /** Depth of the modem's drop-tail buffer in seconds of uplink (default 1). */
  modemBufferSeconds?: number;
  /** Remote player addresses to create on the internet host (with `remote`, in the remote namespace). */
  players: number;
  /** Put the players far away, in a namespace of their own behind a delay line (default: on wan1, no delay). */
  remote?: RemotePlayersOptions;
  /**
   * net.ipv4.tcp_congestion_control of the plex namespace, e.g. 'cubic' (default: what a new namespace
   * gets, the host's). Added to the host's allowed list while the home exists if it is not there.
   */
  plexCongestionControl?: string;
  /** The same for the LAN's machines (the uploaders): Linux, Windows and macOS default to cubic. */
  lanCongestionControl?: string;
}

export interface HomeUplink {
  plexNs: string;
  lanNs: string;
  routerNs: string;
  internetNs: string;
  /** The remote namespace, with `remote`. */
  remoteNs?: string;
  /** Where the player addresses live: remoteNs with `remote`, else internetNs. */
  playersNs: string;
  /** One-way delay added on each player's path, ms (0 without `remote`). */
  playerDelaysMs: number[];
  /** The slow player's pipe, with `remote.slowPlayer`: a class on `device` in the internet namespace. */
  slowPlayer?: { address: string; bitsPerSecond: number; bufferBytes: number; device: string; classid: string };
  /** The uplink rate as created; setModemRate moves the modem's, which readModem reports. */
  uplinkBitsPerSecond: number;
  modemBufferBytes: number;
  /** Whether net.ipv4.tcp_tso_rtt_log exists in this kernel (and was set to 0 in the plex netns). */
  tsoRttLogSet: boolean;
  /** The TCP congestion control of the plex and lan namespaces, read back. */
  plexCongestionControl: string;
  lanCongestionControl: string;
  destroy(): Promise<void>;
}

const CONGESTION_CONTROL = '/proc/sys/net/ipv4/tcp_congestion_control';
const AVAILABLE_CONGESTION_CONTROL = '/proc/sys/net/ipv4/tcp_available_congestion_control';
const ALLOWED_CONGESTION_CONTROL = '/proc/sys/net/ipv4/tcp_allowed_congestion_control';
const words = (path: string): string[] => readFileSync(path, 'utf8').trim().split(/\s+/);

/**
 * A namespace other than the host's may pick only the algorithms net.ipv4.tcp_allowed_congestion_control
 * lists (a host-wide list; a host that defaults to bbr lists "reno bbr", so not cubic). The ones asked for
 * and missing from it are added to it; the function returned puts the list back unless it changed since.
 * Widening it changes no socket: it only lets namespaces and unprivileged programs choose them too.
 */
function allowCongestionControl(algorithms: readonly string[]): () => void {
  const available = words(AVAILABLE_CONGESTION_CONTROL);
  const absent = algorithms.find((algorithm) => !available.includes(algorithm));
  if (absent !== undefined)
    throw new Error(`TCP congestion control ${JSON.stringify(absent)} is not available in this kernel (available: ${available.join(' ')})`);
  const before = words(ALLOWED_CONGESTION_CONTROL);
  const missing = algorithms.filter((algorithm) => !before.includes(algorithm));
  if (missing.length === 0) return () => {};
  const widened = [...before, ...missing].join(' ');
  writeFileSync(ALLOWED_CONGESTION_CONTROL, widened);
  return () => {
    if (words(ALLOWED_CONGESTION_CONTROL).join(' ') === widened) writeFileSync(ALLOWED_CONGESTION_CONTROL, before.join(' '));
  };
}

/** Sets a namespace's TCP congestion control (allowed beforehand) and checks that the kernel took it. */
async function setCongestionControl(netns: string, algorithm: string): Promise<void> {
  await inNetns(netns, 'sysctl', '-qw', `net.ipv4.tcp_congestion_control=${algorithm}`).catch((error: Error) => {
    throw new Error(`could not set TCP congestion control ${JSON.stringify(algorithm)} in ${netns}: ${error.message.trim()}`);
  });
  const took = await congestionControl(netns);
  if (took !== algorithm) throw new Error(`TCP congestion control in ${netns} is ${took} after setting ${algorithm}`);
}

const congestionControl = async (netns: string): Promise<string> => (await inNetns(netns, 'cat', CONGESTION_CONTROL)).trim();

/** Each player's one-way delay, checked: one per player, each a number of ms in 0…10000. */
function playerDelays(players: number, oneWayDelayMs: number | readonly number[]): number[] {
  const delays = typeof oneWayDelayMs === 'number' ? Array.from({ length: players }, () => oneWayDelayMs) : [...oneWayDelayMs];
  if (delays.length !== players) throw new Error(`remote.oneWayDelayMs has ${delays.length} delays for ${players} players`);
  const bad = delays.find((ms) => !Number.isFinite(ms) || ms < 0 || ms > 10_000);
  if (bad !== undefined) throw new Error(`remote.oneWayDelayMs: ${bad} is not a delay in ms between 0 and 10000`);
  return delays;
}

export async function createHomeUplink({
  prefix,
  uplinkBitsPerSecond = 20e6,
  modemBufferSeconds = 1,
  players,
  remote,
  plexCongestionControl,
  lanCongestionControl,
}: HomeUplinkOptions): Promise<HomeUplink> {
  const playerDelaysMs = remote ? playerDelays(players, remote.oneWayDelayMs) : Array.from({ length: players }, () => 0);
  const slow = remote?.slowPlayer;
  if (slow && !(Number.isInteger(slow.index) && slow.index >= 0 && slow.index < players))
    throw new Error(`remote.slowPlayer.index ${slow.index} is not one of the ${players} players`);
  const made: string[] = [];
  let delayLine: { stop(): Promise<unknown> } | undefined;
  let restoreAllowed = (): void => {};
  const destroy = async () => {
    try {
      // First: a delay line whose namespaces vanish under it ends with an error.
      await delayLine?.stop();
    } finally {
      for (const name of made) await deleteNetns(name);
      restoreAllowed();
    }
  };
  try {
    const namespace = async (role: string) => {
      const name = await createNetns(role, { prefix });
      made.push(name);
      return name;
    };
    const [plexNs, lanNs, routerNs, internetNs] = [await namespace('plex'), await namespace('lan'), await namespace('router'), await namespace('internet')];
    const remoteNs = remote ? await namespace('remote') : undefined;
    const link = async (a: string, aDevice: string, aCidr: string, b: string, bDevice: string, bCidrs: string[]) => {
      await ip('-n', a, 'link', 'add', aDevice, 'type', 'veth', 'peer', 'name', bDevice, 'netns', b);
      await ip('-n', a, 'addr', 'add', aCidr, 'dev', aDevice);
      for (const cidr of bCidrs) await ip('-n', b, 'addr', 'add', cidr, 'dev', bDevice);
      await ip('-n', a, 'link', 'set', aDevice, 'up');
      await ip('-n', b, 'link', 'set', bDevice, 'up');
    };
    const addresses = Array.from({ length: players }, (_, i) => playerAddress(i));
    await link(plexNs, PLEX.device, `${PLEX.address}/24`, routerNs, 'pl0', ['10.77.1.1/24']);
    await link(lanNs, 'lan0', `${LAN_GAMER}/24`, routerNs, 'ln0', ['10.77.2.1/24']);
    await ip('-n', lanNs, 'addr', 'add', `${LAN_UPLOADER}/24`, 'dev', 'lan0');
    await link(routerNs, MODEM.device, '203.0.113.254/24', internetNs, 'wan1', [
      `${GAME_SERVER.address}/24`,
      `${UPLOAD_SINK.address}/24`,
      ...(remote ? [] : addresses.map((address) => `${address}/24`)),
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
    const congestion = [
      [plexNs, plexCongestionControl],
      [lanNs, lanCongestionControl],
    ].filter((pair): pair is [string, string] => pair[1] !== undefined);
    restoreAllowed = allowCongestionControl(congestion.map(([, algorithm]) => algorithm));
    for (const [netns, algorithm] of congestion) await setCongestionControl(netns, algorithm);
    const modemBufferBytes = Math.round((uplinkBitsPerSecond / 8) * modemBufferSeconds);
    const tc = TrafficControl.open({ netns: routerNs });
    try {
      tc.addQdisc(MODEM.device, { kind: 'htb', handle: '1:', options: { defaultClass: 0x10 } });
      tc.addClass(MODEM.device, { kind: 'htb', parent: '1:', classid: MODEM.classid, options: modemClassOptions(uplinkBitsPerSecond) });
      tc.addQdisc(MODEM.device, { kind: 'bfifo', parent: MODEM.classid, handle: MODEM.leaf, options: { limit: modemBufferBytes } });
    } finally {
      tc.close();
    }
    if (remoteNs) await linkRemote({ routerNs, internetNs, remoteNs, addresses });
    const slowPlayer =
      slow && remoteNs ? await addSlowPlayer(internetNs, playerAddress(slow.index), slow.bitsPerSecond, slow.bufferSeconds ?? 0.25) : undefined;
    if (remote && remoteNs) {
      delayLine = await remote.startDelayLine({
        ends: [
          { netns: internetNs, device: DELAY_LINE_DEVICES.internet },
          { netns: remoteNs, device: DELAY_LINE_DEVICES.remote },
        ],
        delaysMs: Object.fromEntries(addresses.map((address, i) => [address, playerDelaysMs[i]!])),
      });
    }
    return {
      plexNs,
      lanNs,
      routerNs,
      internetNs,
      ...(remoteNs ? { remoteNs } : {}),
      playersNs: remoteNs ?? internetNs,
      playerDelaysMs,
      ...(slowPlayer ? { slowPlayer } : {}),
      uplinkBitsPerSecond,
      modemBufferBytes,
      tsoRttLogSet,
      plexCongestionControl: await congestionControl(plexNs),
      lanCongestionControl: await congestionControl(lanNs),
      destroy,
    };
  } catch (error) {
    await destroy();
    throw error;
  }
}

/**
 * The remote players' side: their addresses on tun1 in the remote namespace, and routes to them through
 * the internet namespace (which forwards between wan1 and tun0). The router reaches them via the
 * internet host (/32 routes over its connected 203.0.113.0/24), so nobody needs ARP for them.
 */
async function linkRemote({ routerNs, internetNs, remoteNs, addresses }: { routerNs: string; internetNs: string; remoteNs: string; addresses: string[] }) {
  for (const [netns, device] of [
    [internetNs, DELAY_LINE_DEVICES.internet],
    [remoteNs, DELAY_LINE_DEVICES.remote],
  ] as const) {
    // Persistent devices: configured now, the delay line attaches to them (routes need them up).
    await ip('-n', netns, 'tuntap', 'add', 'dev', device, 'mode', 'tun');
    await ip('-n', netns, 'link', 'set', device, 'up');
  }
  for (const address of addresses) {
    await ip('-n', remoteNs, 'addr', 'add', `${address}/32`, 'dev', DELAY_LINE_DEVICES.remote);
    await ip('-n', internetNs, 'route', 'add', `${address}/32`, 'dev', DELAY_LINE_DEVICES.internet);
    await ip('-n', routerNs, 'route', 'add', `${address}/32`, 'via', GAME_SERVER.address);
  }
  await ip('-n', remoteNs, 'route', 'add', 'default', 'dev', DELAY_LINE_DEVICES.remote);
  await inNetns(internetNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
}

/**
 * The slow player's downlink: on tun0's egress (toward the players) an HTB root whose one class, at the
 * player's rate with a bfifo of `bufferSeconds`, takes the packets to that address; every other packet
 * leaves unclassified, at once. The slow player's queue builds here, past the modem.
 */
async function addSlowPlayer(
  internetNs: string,
  address: string,
  bitsPerSecond: number,
  bufferSeconds: number,
): Promise<NonNullable<HomeUplink['slowPlayer']>> {
  const device = DELAY_LINE_DEVICES.internet;
  const bufferBytes = Math.round((bitsPerSecond / 8) * bufferSeconds);
  const tc = TrafficControl.open({ netns: internetNs });
  try {
    tc.addQdisc(device, { kind: 'htb', handle: SLOW_PLAYER.root, options: {} });
    tc.addClass(device, { kind: 'htb', parent: SLOW_PLAYER.root, classid: SLOW_PLAYER.classid, options: { rate: bitsPerSecond } });
    tc.addQdisc(device, { kind: 'bfifo', parent: SLOW_PLAYER.classid, handle: SLOW_PLAYER.leaf, options: { limit: bufferBytes } });
    tc.addFilter(device, {
      kind: 'u32',
      parent: SLOW_PLAYER.root,
      priority: 1,
      protocol: 'ip',
      options: { match: { dst: `${address}/32` }, classid: SLOW_PLAYER.classid },
    });
  } finally {
    tc.close();
  }
  return { address, bitsPerSecond, bufferBytes, device, classid: SLOW_PLAYER.classid };
}

// ---- the modem's counters ------------------------------------------------------------------------------

export interface ModemReading {
  /** Bytes the uplink carried (the modem class's counter). */
  bytes: number;
  /** Bytes queued in the modem's buffer now. */
  backlog: number;
  drops: number;
  /** The modem's rate now: the delay its queue adds is backlog × 8 ÷ this. */
  bitsPerSecond: number;
}

export interface ModemReport {
  /** Largest backlog seen by the poll, bytes. */
  peakBacklog: number;
  drops: number;
  bytes: number;
  /** One reading per poll, for utilisation over any stretch. */
  samples: Array<{ at: number } & ModemReading>;
}

const modemClassOptions = (bitsPerSecond: number) => ({ rate: bitsPerSecond, burst: MODEM_BURST, cburst: MODEM_BURST });

/** The modem's counters and rate over an open connection to the router's namespace. */
function readModemWith(tc: TrafficControl): ModemReading {
  const buffer = tc.qdiscs(MODEM.device).find((qdisc) => qdisc.kind === 'bfifo')?.statistics;
  const modemClass = tc.getClass(MODEM.device, MODEM.classid);
  if (!buffer || modemClass?.kind !== 'htb' || !modemClass.statistics) throw new Error('the modem lost its class or buffer');
  return { bytes: modemClass.statistics.bytes, backlog: buffer.backlog, drops: buffer.drops, bitsPerSecond: modemClass.parameters.rate };
}

/** The modem now, read over netlink. */
export function readModem(home: HomeUplink): ModemReading {
  return withRouter(home, readModemWith);
}

/** Changes the modem's rate in place (its class; the burst stays 32 KB, the buffer as created). */
export function setModemRate(home: HomeUplink, bitsPerSecond: number): void {
  withRouter(home, (tc) => changeModemRate(tc, bitsPerSecond));
}

function changeModemRate(tc: TrafficControl, bitsPerSecond: number): void {
  // The kernel keeps whole bytes per second and refuses 0.
  if (!(Number.isFinite(bitsPerSecond) && bitsPerSecond >= 8)) throw new Error(`the modem's rate must be at least 8 bits/s, not ${bitsPerSecond}`);
  tc.changeClass(MODEM.device, { kind: 'htb', parent: '1:', classid: MODEM.classid, options: modemClassOptions(bitsPerSecond) });
}

function withRouter<T>(home: HomeUplink, use: (tc: TrafficControl) => T): T {
  const tc = TrafficControl.open({ netns: home.routerNs });
  try {
    return use(tc);
  } finally {
    tc.close();
  }
}

/** The modem's rate in bits/s over time: ms since the schedule started → rate. */
export type RateSchedule = (elapsedMs: number) => number;

/** Steps: each rate holds from its `atMs` on (the first one from the start). */
export function stepSchedule(steps: ReadonlyArray<{ atMs: number; bitsPerSecond: number }>): RateSchedule {
  if (steps.length === 0 || steps[0]!.atMs !== 0) throw new Error('a step schedule starts with a step at 0 ms');
  if (steps.some((step, i) => i > 0 && step.atMs <= steps[i - 1]!.atMs)) throw new Error('the steps of a schedule must come in order of their times');
  return (elapsedMs) => steps.filter((step) => step.atMs <= elapsedMs).at(-1)!.bitsPerSecond;
}

/** A sine between two rates, starting at the high one. */
export function sineSchedule({
  lowBitsPerSecond,
  highBitsPerSecond,
  periodMs,
}: {
  lowBitsPerSecond: number;
  highBitsPerSecond: number;
  periodMs: number;
}): RateSchedule {
  if (!(lowBitsPerSecond > 0 && highBitsPerSecond >= lowBitsPerSecond && periodMs > 0))
    throw new Error('a sine schedule needs 0 < low ≤ high and a positive period');
  const middle = (lowBitsPerSecond + highBitsPerSecond) / 2;
  const amplitude = (highBitsPerSecond - lowBitsPerSecond) / 2;
  return (elapsedMs) => middle + amplitude * Math.cos((2 * Math.PI * elapsedMs) / periodMs);
}

export interface ModemSchedule {
  /** Each rate the modem was set to (bits/s, in whole bytes/s) and when (monotonic ms). */
  changes: Array<{ at: number; bitsPerSecond: number }>;
  /** Ends the schedule (the modem keeps its last rate); throws the error that stopped it, if any. */
  stop(): void;
}

/**
 * Moves the modem's rate along `schedule` until stopped: the rate is worked out every `intervalMs` (so a
 * step lands up to one interval late) and the class changed when it differs from the last one set. A
 * failed change stops the schedule and is thrown by stop().
 */
export function runModemSchedule(home: HomeUplink, schedule: RateSchedule, { intervalMs = 100 } = {}): ModemSchedule {
  const tc = TrafficControl.open({ netns: home.routerNs });
  const began = monotonicMs();
  const changes: ModemSchedule['changes'] = [];
  let failure: unknown;
  const update = () => {
    // Whole bytes per second: what the kernel keeps, so that `changes` reads as readModem does.
    const bitsPerSecond = Math.round(schedule(monotonicMs() - began) / 8) * 8;
    if (bitsPerSecond === changes.at(-1)?.bitsPerSecond) return;
    changeModemRate(tc, bitsPerSecond);
    changes.push({ at: monotonicMs(), bitsPerSecond });
  };
  const timer = setInterval(() => {
    try {
      update();
    } catch (error) {
      failure = error;
      clearInterval(timer);
    }
  }, intervalMs);
  try {
    update();
  } catch (error) {
    clearInterval(timer);
    tc.close();
    throw error;
  }
  let stopped = false;
  return {
    changes,
    stop() {
      if (!stopped) {
        stopped = true;
        clearInterval(timer);
        tc.close();
      }
      if (failure) throw failure;
    },
  };
}

/**
 * Polls the modem's counters over netlink (its class's bytes, its buffer's backlog and drops) every
 * `intervalMs` until stopped: the peak backlog is the largest queue the uplink built. A failed read
 * stops the polling and is thrown by stop(); a second stop() returns the same report.
 */
export function watchModem(home: HomeUplink, intervalMs = 20): { stop(): ModemReport } {
  const tc = TrafficControl.open({ netns: home.routerNs });
  const read = () => ({ at: monotonicMs(), ...readModemWith(tc) });
  const first = read();
  const samples = [first];
  let peakBacklog = first.backlog;
  let failure: unknown;
  const timer = setInterval(() => {
    try {
      const sample = read();
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
        const last = read();
        samples.push(last);
        report = { peakBacklog: Math.max(peakBacklog, last.backlog), drops: last.drops - first.drops, bytes: last.bytes - first.bytes, samples };
        return report;
      } finally {
        tc.close();
      }
    },
  };
}

/** The clock the peers print. */
export { monotonicMs };

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

  /** Rejects when the process ends with an error (with `anyExit`, when it ends at all). */
  async failure({ anyExit = false } = {}): Promise<never> {
    const how = await this.exited;
    if (how === 'exited with 0' && !anyExit) return new Promise<never>(() => {});
    throw new Error(`${this.what} ${how}${this.stderr.trim() ? `: ${this.stderr.trim().split('\n').slice(-2).join(' | ')}` : ''}`);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

interface ReadyOptions {
  /** The line the peer prints once it serves (default "listening"). */
  readyLine?: string;
  /** Every other line. */
  onLine?: (line: string) => void;
  latencySensitive?: boolean;
}

/** Starts a peer and waits for its ready line. */
async function listener(
  what: string,
  netns: string,
  args: string[],
  { readyLine = 'listening', onLine = () => {}, latencySensitive }: ReadyOptions = {},
): Promise<Peer> {
  let ready = (): void => {};
  const listening = new Promise<void>((resolve) => (ready = resolve));
  const peer = new Peer(what, netns, args, (line) => (line === readyLine ? ready() : onLine(line)), { latencySensitive });
  // A socket that cannot bind may end the process quietly, with 0.
  await Promise.race([listening, peer.failure({ anyExit: true })]).catch((error: unknown) => {
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
  const peer = new Peer('players', home.playersNs, ['players', PLEX.address, String(PLEX.port), String(seconds), JSON.stringify(streams)], (line) => {
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
  return startPinger({ what: 'gamer', netns: home.lanNs, from: LAN_GAMER, to: GAME_SERVER, seconds, perSecond });
}

interface PingerSpec {
  what: string;
  netns: string;
  from: string;
  /** A UDP echo. */
  to: { address: string; port: number };
  seconds: number;
  perSecond: number;
}

/** Datagrams from an address to an echo, each round trip timed; latency-sensitive, as the gamer's. */
function startPinger({ what, netns, from, to, seconds, perSecond }: PingerSpec): Gamer {
  const samples: Gamer['samples'] = [];
  let counts: { sent: number; answered: number } | undefined;
  const peer = new Peer(
    what,
    netns,
    ['gamer', from, to.address, String(to.port), String(seconds), String(perSecond)],
    (line) => {
      const [kind, a, b, c] = line.split(' ');
      if (kind === 'rtt') samples.push({ rtt: Number(b), sentAt: Number(c) });
      else if (kind === 'done') counts = { sent: Number(a), answered: Number(b) };
    },
    { latencySensitive: true },
  );
  const done = Promise.race([
    peer.exited.then((how) => {
      if (!counts) throw new Error(`${what} ${how} before it finished`);
      return { ...counts, rtts: samples.map((sample) => sample.rtt) };
    }),
    peer.failure(),
  ]);
  return { samples, done, stop: () => peer.kill() };
}

/**
 * Round trips over a remote player's path: `perSecond` datagrams for `seconds` from the player's address
 * to an echo on the Plex host, through the modem and (with `remote`) the delay line both ways.
 */
export async function pingPlayerPath(
  home: HomeUplink,
  playerIndex: number,
  seconds: number,
  perSecond = 50,
): Promise<{ sent: number; answered: number; rtts: number[] }> {
  // A port per player, so that several players' paths can be measured at once.
  const port = PLEX_ECHO_PORT + playerIndex;
  const echo = await listener('Plex echo', home.plexNs, ['udp-echo', PLEX.address, String(port)], { latencySensitive: true });
  try {
    const pinger = startPinger({
      what: `pings from player ${playerIndex}`,
      netns: home.playersNs,
      from: playerAddress(playerIndex),
      to: { address: PLEX.address, port },
      seconds,
      perSecond,
    });
    return await Promise.race([pinger.done, echo.failure()]);
  } finally {
    echo.kill();
  }
}

/** The sink the LAN uploaders send to, TCP and UDP on one port: it reads and discards. */
export async function startUploadSink(home: HomeUplink): Promise<{ stop(): void }> {
  const sink = await listener('upload sink', home.internetNs, ['sink', UPLOAD_SINK.address, String(UPLOAD_SINK.port)]);
  return { stop: () => sink.kill() };
}

/** A LAN uploader: paced at `bitsPerSecond` (UDP, or TCP like a capped backup), or bulk TCP as fast as it goes. */
export type UploaderSpec = { protocol: 'udp'; bitsPerSecond: number } | { protocol: 'tcp'; bitsPerSecond?: number };

export interface Uploader {
  /** Payload bytes handed to the kernel so far, every 200 ms (at: monotonic ms). */
  reports: Array<{ at: number; bytes: number }>;
  /** Ends it; resolves with its payload bytes sent and how long it ran. */
  stop(): Promise<{ bytes: number; seconds: number }>;
}

/**
 * Starts an uploader on the LAN (from LAN_UPLOADER, through the modem, to the upload sink, which must be
 * running) once it is connected. Any number may run at once, each started and stopped while a run goes on.
 */
export async function startUploader(home: HomeUplink, spec: UploaderSpec): Promise<Uploader> {
  const rate = spec.bitsPerSecond ?? 0;
  if (!Number.isFinite(rate) || rate < 0 || (spec.protocol === 'udp' && rate === 0))
    throw new Error(`an uploader's rate must be a positive number of bits/s${spec.protocol === 'tcp' ? ' (none: bulk)' : ''}, not ${spec.bitsPerSecond}`);
  const what = `${spec.protocol.toUpperCase()} uploader${rate ? ` at ${rate / 1e6} Mbit/s` : ' (bulk)'}`;
  const reports: Uploader['reports'] = [];
  let total: { bytes: number; seconds: number } | undefined;
  const peer = await listener(what, home.lanNs, ['upload', LAN_UPLOADER, UPLOAD_SINK.address, String(UPLOAD_SINK.port), spec.protocol, String(rate)], {
    readyLine: 'started',
    onLine: (line) => {
      const [kind, a, b] = line.split(' ');
      if (kind === 'sent') reports.push({ at: Number(a), bytes: Number(b) });
      else if (kind === 'done') total = { bytes: Number(a), seconds: Number(b) };
    },
  });
  return {
    reports,
    async stop() {
      peer.child.kill('SIGTERM');
      const how = await peer.exited;
      if (!total) throw new Error(`${what} ${how} without its total`);
      return total;
    },
  };
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
