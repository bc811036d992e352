/**
 * `shaperrd --demo`: the whole product, for real, in a sandbox. Two throwaway namespaces joined by a veth;
 * shaperrd runs on the "server" side against a Plex log this demo writes (real line formats: browsing,
 * decision, start, timeline, ping, a seek storm, stop) for one remote client, and the Plex test server's
 * API (websocket notifications, /status/sessions) for another; TCP streams run to a LAN client (exempt)
 * and both remote ones the whole time, and a table shows each client's state, configured rate, measured
 * throughput and kernel changes, second by second. Next to it, a home uplink (home-uplink-demo.ts):
 * three remote viewers and a LAN gamer behind a 20 Mbit/s modem, unshaped first, then with shaperr's
 * automatic ceiling while the modem drops to 10 Mbit/s and back, then the old fixed ceiling in the same
 * drop; the gamer's ping, the ceiling and the modem's queue in the table. Everything it made is removed
 * at the end, on Ctrl-C and on a crash.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { describeRate } from '../../lib/index.js';
import { validateConfig } from '../config.js';
import type { Decision } from '../sessions/sessions.js';
import { Shaperrd } from '../shaperrd.js';
import { describeHomeUplink, type HomeUplinkDemo, type HomeUplinkDemoSummary, prepareHomeUplinkDemo } from './home-uplink-demo.js';
import { PlexTestServer } from './plex-test-server.js';
import { createPair, liveNamespaces, removeAllNamespaces } from '../support/netns.js';

const configuredRate = (client: { address: string }): number => (client.address === APP.address ? APP_USER.rateBits : CLIENT_RATE_BITS);

/** Plain JS, run by bare `node` inside a namespace; found next to this file or, from dist/, in the sources. */
const PEER = [new URL('./traffic-peer.mjs', import.meta.url), new URL('../../../daemon/demo/traffic-peer.mjs', import.meta.url)]
  .map((url) => fileURLToPath(url))
  .find((path) => existsSync(path))!;
const LAN = { name: 'LAN TV', address: '192.168.50.10', session: 'lan-tv-1' };
const REMOTE = { name: 'remote phone', address: '203.0.113.7', session: 'remote-1' };
/** Heard through the Plex API, not the log; its user has an override, so its pipe differs. */
const APP = { name: 'remote app', address: '203.0.113.8', session: '' };
const CLIENTS = [LAN, REMOTE, APP];
const CLIENT_RATE_BITS = 4e6;
const APP_USER = { name: 'sam', rateBits: 3e6 };
const LAN_STREAM_BITS = 200e6;
const REMOTE_STREAM_BITS = 100e6;
const GRACE_SECONDS = 2;
const PORTS = { [LAN.address]: 47001, [REMOTE.address]: 47002, [APP.address]: 47003 } as Record<string, number>;

export interface DemoOptions {
  durationSeconds: number;
  /** Redraw the table in place (a terminal) or print plain lines. */
  tty: boolean;
  write: (text: string) => void;
}

export interface DemoSummary {
  durationSeconds: number;
  eventsRead: number;
  kernelOperations: number;
  remote: RemoteSummary;
  /** The client shaperrd heard of through the Plex API. */
  plexApp: RemoteSummary;
  lan: { throttled: boolean; minimumBitsPerSecond: number };
  seekStorm: { events: number; kernelChanges: number };
  homeUplink: HomeUplinkDemoSummary;
  leftoverNamespaces: string[];
}

interface RemoteSummary {
  configuredBitsPerSecond: number;
  measuredWhilePlayingBitsPerSecond: number;
  measuredAfterReleaseBitsPerSecond: number;
  withinTenPercent: boolean;
}

type Phase = 'browsing' | 'playing' | 'grace' | 'released';

/** Real Plex Media Server line formats (2021+ servers). */
function plexLine(address: string, path: string, user: string, network: string): string {
  const now = new Date();
  const month = now.toLocaleString('en-US', { month: 'short' });
  const stamp = `${month} ${String(now.getDate()).padStart(2, '0')}, ${now.getFullYear()} ${now.toTimeString().slice(0, 8)}.${String(now.getMilliseconds()).padStart(3, '0')}`;
  return `${stamp} [140562] DEBUG - Request: [${address}:${40000 + Math.floor(Math.random() * 20000)} (${network})] GET ${path} (4 live) #${Math.floor(Math.random() * 0xfffff).toString(16)} TLS GZIP Signed-in Token (${user}) / Accept => application/json\n`;
}

const lines = {
  browse: (c: typeof LAN, network: string) =>
    plexLine(c.address, '/library/sections/2/all?type=1&sort=titleSort', 'remi', network) +
    plexLine(c.address, '/library/metadata/40859/thumb/1690000000?X-Plex-Token=demo-token', 'remi', network),
  play: (c: typeof LAN, network: string, session = c.session) =>
    plexLine(
      c.address,
      `/video/:/transcode/universal/decision?hasMDE=1&path=%2Flibrary%2Fmetadata%2F40859&directPlay=0&directStream=1&session=${session}&X-Plex-Token=demo-token`,
      'remi',
      network,
    ) + plexLine(c.address, `/video/:/transcode/universal/start.m3u8?session=${session}&X-Plex-Token=demo-token`, 'remi', network),
  playing: (c: typeof LAN, network: string, session = c.session) =>
    plexLine(c.address, `/:/timeline?ratingKey=40859&state=playing&time=60000&X-Plex-Session-Identifier=${session}`, 'remi', network) +
    plexLine(c.address, `/video/:/transcode/universal/ping?session=${session}`, 'remi', network),
  stop: (c: typeof LAN, network: string, session = c.session) =>
    plexLine(c.address, `/:/timeline?ratingKey=40859&state=stopped&time=61000&X-Plex-Session-Identifier=${session}`, 'remi', network) +
    plexLine(c.address, `/video/:/transcode/universal/stop?session=${session}`, 'remi', network),
};

function peer(netns: string, args: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', netns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
}

/** A sink's running byte count, stamped in ms on the sink's clock. */
interface ByteCount {
  bytes: number;
  at: number;
}

const bitsPerSecondBetween = (from: ByteCount | undefined, to: ByteCount | undefined): number =>
  from && to && to.at > from.at ? ((to.bytes - from.bytes) * 8 * 1000) / (to.at - from.at) : 0;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const mbit = (bits: number) => `${(bits / 1e6).toFixed(2).padStart(8)} Mbit/s`;

export async function runDemo(options: DemoOptions): Promise<DemoSummary> {
  const { durationSeconds: duration, write } = options;
  if (process.getuid?.() !== 0) throw new Error('the demo needs root: it creates network namespaces and shapes a veth inside them (try: sudo npm start)');
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-demo-'));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  const children: ChildProcess[] = [];
  let daemon: Shaperrd | undefined;
  let home: HomeUplinkDemo | undefined;
  let plex: PlexTestServer | undefined;
  const interrupted = () => {
    for (const child of children) child.kill('SIGKILL');
    home?.kill();
    removeAllNamespaces();
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    const pair = await createPair('shaperr-demo', {
      server: ['192.168.50.1/24', '203.0.113.1/24'],
      clients: CLIENTS.map((client) => `${client.address}/24`),
    });
    // The home next to it: its own namespaces, modem, viewers, gamer and (from a fifth of the run on) shaperrd.
    home = await prepareHomeUplinkDemo({ durationSeconds: duration, dir });
    const token = randomBytes(16).toString('hex');
    plex = await PlexTestServer.start({ token, friendlyName: 'demo Plex' });
    const config = validateConfig({
      device: 'srv0',
      netns: pair.serverNs,
      server: { rate: '40mbit' },
      client: { rate: CLIENT_RATE_BITS },
      overrides: [{ user: APP_USER.name, rate: APP_USER.rateBits }],
      exempt: ['127.0.0.0/8', '192.168.50.0/24'],
      source: 'both',
      plex: { url: plex.url, token, pollSeconds: 5 },
      log,
      stateFile: join(dir, 'state.json'),
      graceSeconds: GRACE_SECONDS,
      idleSeconds: 600,
    });
    const operations: Record<string, number> = Object.fromEntries(CLIENTS.map((client) => [client.address, 0]));
    const decisions: Array<{ at: number; decision: Decision }> = [];
    const started = performance.now();
    const elapsed = () => (performance.now() - started) / 1000;
    daemon = new Shaperrd({
      config,
      logger: pino({ level: 'info' }, pino.destination(join(dir, 'shaperrd.log'))),
      onDecision: (decision) => {
        decisions.push({ at: elapsed(), decision });
        if (['throttle', 'release', 'change'].includes(decision.action)) operations[decision.address] = (operations[decision.address] ?? 0) + 1;
      },
    });
    await daemon.start();

    // A sink per client, a sender per client: traffic runs the whole time. Each sink reports its byte
    // count with its own timestamp, so a late read (this process also runs the daemon) skews no rate.
    const received: Record<string, ByteCount> = {};
    for (const client of CLIENTS) {
      const sink = peer(pair.clientNs, ['sink', client.address, String(PORTS[client.address])]);
      children.push(sink);
      await new Promise<void>((resolve, reject) => {
        sink.stdout!.on('data', (data: Buffer) => {
          for (const line of data.toString().split('\n')) {
            if (line === 'listening') resolve();
            const count = /^bytes (\d+) at ([\d.]+)/.exec(line);
            if (count) received[client.address] = { bytes: Number(count[1]), at: Number(count[2]) };
          }
        });
        sink.once('exit', () => reject(new Error(`traffic sink for ${client.address} exited`)));
      });
      // Both streams are paced (LAN TV 200 Mbit/s, the remote phone 100 Mbit/s when not throttled): flat out
      // over a veth they would take both cores of a small machine, starving the remote stream's sender and
      // the home uplink's gamer, and skewing what the demo measures.
      const pace = [String(client === LAN ? LAN_STREAM_BITS : REMOTE_STREAM_BITS)];
      children.push(peer(pair.serverNs, ['send', client.address, String(PORTS[client.address]), String(duration + 5), ...pace]));
    }

    // The home's clock starts with the table's, its idle link measured beside the streams above.
    home.start();

    // The script, as fractions of the duration.
    const at = { lanPlay: 0.1, remotePlay: 0.2, appPlay: 0.25, stormFrom: 0.45, stormTo: 0.52, remoteStop: 0.7, appStop: 0.75 };
    const phase: Record<string, Phase> = Object.fromEntries(CLIENTS.map((client) => [client.address, 'browsing' as Phase]));
    let appSession: string | undefined;
    const history: Array<{ second: number; rates: Record<string, number>; phases: Record<string, Phase> }> = [];
    let stormEvents = 0;
    let stormSession = 0;
    let lastCounts = { ...received };
    const steps = Math.round(duration * 4);
    const header = `${'client'.padEnd(28)}${'state'.padEnd(11)}${'configured'.padEnd(16)}${'measured'.padEnd(18)}kernel ops`;
    let drawn = 0;
    for (let step = 1; step <= steps; step++) {
      await sleep(Math.max(0, started + step * 250 - performance.now()));
      const t = step / steps;
      const remoteSession = () => (stormSession ? `${REMOTE.session}-seek-${stormSession}` : REMOTE.session);
      if (step % 2 === 0) appendFileSync(log, lines.browse(LAN, 'Subnet') + lines.browse(REMOTE, 'WAN'));
      if (t >= at.lanPlay && phase[LAN.address] === 'browsing') {
        appendFileSync(log, lines.play(LAN, 'Subnet'));
        phase[LAN.address] = 'playing';
      }
      if (t >= at.remotePlay && phase[REMOTE.address] === 'browsing') {
        appendFileSync(log, lines.play(REMOTE, 'WAN'));
        phase[REMOTE.address] = 'playing';
      }
      if (t >= at.stormFrom && t < at.stormTo && phase[REMOTE.address] === 'playing') {
        // Someone drags the timeline: Plex logs stop/start pairs many times a second.
        let storm = '';
        for (let i = 0; i < 25; i++) {
          storm += lines.stop(REMOTE, 'WAN', remoteSession());
          stormSession++;
          storm += lines.play(REMOTE, 'WAN', remoteSession());
          stormEvents += 8;
        }
        appendFileSync(log, storm);
      }
      if (t >= at.remoteStop && phase[REMOTE.address] === 'playing') {
        appendFileSync(log, lines.stop(REMOTE, 'WAN', remoteSession()));
        phase[REMOTE.address] = 'grace';
      }
      if (t >= at.appPlay && phase[APP.address] === 'browsing') {
        appSession = plex.play({
          user: { title: APP_USER.name },
          player: { address: APP.address, product: 'Plex for Android' },
          session: { location: 'wan', bandwidth: 2400 },
        }).sessionKey;
        phase[APP.address] = 'playing';
      }
      if (t >= at.appStop && phase[APP.address] === 'playing') {
        plex.setState(appSession!, 'stopped');
        phase[APP.address] = 'grace';
      }
      if (step % 40 === 0 && phase[APP.address] === 'playing') plex.notify(appSession!); // PMS: about every 10 s
      for (const client of [REMOTE, APP]) {
        if (phase[client.address] === 'grace' && !daemon.sessions().some((s) => s.address === client.address)) phase[client.address] = 'released';
      }
      if (step % 4 === 0 && phase[LAN.address] === 'playing') appendFileSync(log, lines.playing(LAN, 'Subnet'));
      if (step % 4 === 0 && phase[REMOTE.address] === 'playing') appendFileSync(log, lines.playing(REMOTE, 'WAN', remoteSession()));
      if (step % 4 !== 0) continue;

      // Once a second: throughput from the sinks' byte counters, and the table.
      const rates = Object.fromEntries(CLIENTS.map((c) => [c.address, bitsPerSecondBetween(lastCounts[c.address], received[c.address])]));
      lastCounts = { ...received };
      history.push({ second: step / 4, rates, phases: { ...phase } });
      const rows = CLIENTS.map((c) => {
        const throttled = daemon!.sessions().find((s) => s.address === c.address)?.throttled ?? false;
        const configured = c === LAN ? 'never (LAN)' : throttled ? describeRate(configuredRate(c)) : 'full speed';
        return `${`${c.name} ${c.address}`.padEnd(28)}${phase[c.address]!.padEnd(11)}${configured.padEnd(16)}${mbit(rates[c.address]!).padEnd(18)}${operations[c.address]}`;
      });
      rows.push(...home.lines());
      const stamp = (line: string) => `[${String(step / 4).padStart(3)}s] ${line}`;
      // The ceiling's changes stay on screen: in a terminal they scroll above the table redrawn below them.
      const events = home.takeEvents();
      const block = [`shaperr demo — ${step / 4}/${duration} s, ${daemon.counters.events} playback events read`, header, ...rows];
      if (options.tty) {
        write(`${drawn ? `\x1b[${drawn}A` : ''}${[...events.map(stamp), ...block].map((line) => `\x1b[2K${line}`).join('\n')}\n`);
        drawn = block.length;
      } else {
        write(`${[...events, ...rows].map(stamp).join('\n')}\n`);
      }
    }

    // Summary from what was measured.
    const stormStart = duration * at.stormFrom;
    const stormEnd = duration * at.stormTo + 1;
    // Through the seek storm too: riding it without a kernel change means the rate never wavers.
    const average = (values: number[]) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0);
    const remoteSummary = (client: typeof REMOTE, playFrom: number, stopAt: number): RemoteSummary => {
      const playing = history.filter((h) => h.phases[client.address] === 'playing' && h.second > duration * playFrom + 2);
      const released = history.filter((h) => h.phases[client.address] === 'released' && h.second > duration * stopAt + GRACE_SECONDS + 1);
      const measured = average(playing.map((h) => h.rates[client.address]!));
      const configured = configuredRate(client);
      return {
        configuredBitsPerSecond: configured,
        measuredWhilePlayingBitsPerSecond: Math.round(measured),
        measuredAfterReleaseBitsPerSecond: Math.round(average(released.map((h) => h.rates[client.address]!))),
        withinTenPercent: Math.abs(measured - configured) <= 0.1 * configured,
      };
    };
    const stormChanges = decisions.filter(
      ({ at: when, decision }) =>
        decision.address === REMOTE.address && when >= stormStart && when <= stormEnd && ['throttle', 'release', 'change'].includes(decision.action),
    ).length;
    const eventsRead = daemon.counters.events;
    await daemon.stop();
    daemon = undefined;
    const homeUplink = await home.finish();
    home = undefined;
    await plex.close();
    plex = undefined;
    for (const child of children) child.kill('SIGKILL');
    await pair.destroy();
    const summary: DemoSummary = {
      durationSeconds: duration,
      eventsRead,
      kernelOperations: Object.values(operations).reduce((a, b) => a + b, 0),
      remote: remoteSummary(REMOTE, at.remotePlay, at.remoteStop),
      plexApp: remoteSummary(APP, at.appPlay, at.appStop),
      lan: {
        throttled: decisions.some(({ decision }) => decision.address === LAN.address && decision.action === 'throttle'),
        minimumBitsPerSecond: Math.round(Math.min(...history.filter((h) => h.second > 1).map((h) => h.rates[LAN.address]!))),
      },
      seekStorm: { events: stormEvents, kernelChanges: stormChanges },
      homeUplink,
      leftoverNamespaces: liveNamespaces(),
    };
    return summary;
  } finally {
    process.removeListener('SIGINT', interrupted);
    process.removeListener('SIGTERM', interrupted);
    await daemon?.stop().catch(() => undefined);
    home?.kill();
    await plex?.close();
    for (const child of children) child.kill('SIGKILL');
    removeAllNamespaces();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function describeSummary(summary: DemoSummary): string {
  const { remote, plexApp, lan, seekStorm } = summary;
  return [
    '',
    `Summary (${summary.durationSeconds} s): ${summary.eventsRead} playback events read, ${summary.kernelOperations} kernel operations.`,
    `  remote client: configured ${mbit(remote.configuredBitsPerSecond).trim()}, measured ${mbit(remote.measuredWhilePlayingBitsPerSecond).trim()} while playing (${remote.withinTenPercent ? 'within' : 'NOT within'} ±10 %), ${mbit(remote.measuredAfterReleaseBitsPerSecond).trim()} after release`,
    `  remote app (Plex API, user ${APP_USER.name}'s override): configured ${mbit(plexApp.configuredBitsPerSecond).trim()}, measured ${mbit(plexApp.measuredWhilePlayingBitsPerSecond).trim()} while playing (${plexApp.withinTenPercent ? 'within' : 'NOT within'} ±10 %), ${mbit(plexApp.measuredAfterReleaseBitsPerSecond).trim()} after release`,
    `  seek storm: ${seekStorm.events} log events → ${seekStorm.kernelChanges} kernel changes`,
    `  LAN client: ${lan.throttled ? 'was throttled (unexpected)' : 'never throttled'}, lowest ${mbit(lan.minimumBitsPerSecond).trim()}`,
    ...describeHomeUplink(summary.homeUplink),
    `  sandbox: ${summary.leftoverNamespaces.length ? `LEFT BEHIND ${summary.leftoverNamespaces.join(', ')}` : 'all namespaces removed'}`,
    '',
  ].join('\n');
}
