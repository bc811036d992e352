/**
 * The variable-uplink testbed (daemon/demo/home-uplink.ts with `remote`): players 20 and 50 ms away
 * behind the C delay line, one of them behind a 3 Mbit/s downlink of its own, Plex on cubic, a modem
 * whose rate moves, and LAN uploaders. Real kernel, real TCP and UDP, in throwaway namespaces; the only
 * times asserted are the delay line's round trips, against bounds no path without the delay can meet.
 */
import { readFileSync } from 'node:fs';
import t from 'tap';
import { delayLineBinary, parseStatsLine, startDelayLine } from '../benchmarks/delay-line.js';
import {
  createHomeUplink,
  DELAY_LINE_DEVICES,
  type HomeUplink,
  pingFigures,
  pingPlayerPath,
  playerAddress,
  readModem,
  runModemSchedule,
  setModemRate,
  sineSchedule,
  startPlayers,
  startServers,
  startUploader,
  startUploadSink,
  stepSchedule,
  type Uploader,
} from '../daemon/demo/home-uplink.js';
import { createNetns, deleteNetns, inNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { until } from './helpers/daemon.js';

const DELAYS_MS = [20, 50, 20];
const SLOW = { index: 2, bitsPerSecond: 3e6 };
const skip = netnsUnavailable();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** An uploader's payload rate over its reports from `fromMs` after its first report to `toMs`. */
function uploadRate(uploader: Uploader, fromMs: number, toMs: number): number {
  const first = uploader.reports[0]!.at;
  const at = (ms: number) => uploader.reports.find((report) => report.at - first >= ms)!;
  const [start, end] = [at(fromMs), at(toMs)];
  return ((end.bytes - start.bytes) * 8) / ((end.at - start.at) / 1000);
}

t.test('the delay line refuses bad arguments in one line, before it says ready', { skip }, async (t) => {
  t.match(delayLineBinary(), /delay-line-[0-9a-f]{16}$/, 'compiled with cc into the cache');
  const a = await createNetns('dl-a');
  const b = await createNetns('dl-b');
  t.teardown(async () => {
    await deleteNetns(a);
    await deleteNetns(b);
  });
  const ends = [
    { netns: a, device: 'dla0' },
    { netns: b, device: 'dlb0' },
  ] as const;
  await t.rejects(startDelayLine({ ends, delaysMs: { 'not-an-address': 20 } }), /exited with 64: delay-line: "not-an-address" is not an IPv4 or IPv6 address/);
  await t.rejects(startDelayLine({ ends, delaysMs: { '10.0.0.1': -3 } }), /"-3" is not a delay in ms/);
  await t.rejects(
    startDelayLine({ ends: [ends[0], { netns: `${b}-gone`, device: 'x' }], delaysMs: {} }),
    /exited with 1: delay-line: opening namespace .*-gone/,
  );
  const line = await startDelayLine({ ends, delaysMs: {} });
  // Whatever the devices sent when they came up (IPv6 solicitations) went through.
  t.match(await line.stop(), { forwarded: Number, droppedFull: 0, writeErrors: 0 }, 'started, stopped, its counters read back');
  t.throws(() => parseStatsLine('stats forwarded=x'), /malformed stats line/, 'a malformed stats line is one error');
});

t.test("cubic is allowed for the home's lifetime and the host's list put back after", { skip }, async (t) => {
  const allowed = () => readFileSync('/proc/sys/net/ipv4/tcp_allowed_congestion_control', 'utf8').trim();
  const before = allowed();
  const home = await createHomeUplink({ prefix: 'shaperr-t', players: 0, plexCongestionControl: 'cubic' });
  try {
    t.match(allowed(), /\bcubic\b/, `allowed while the home exists: ${allowed()}`);
  } finally {
    await home.destroy();
  }
  t.equal(allowed(), before, 'the list as it was');
  await t.rejects(createHomeUplink({ prefix: 'shaperr-t', players: 0, plexCongestionControl: 'no-such' }), /"no-such" is not available in this kernel/);
});

t.test('variable-uplink testbed', { skip }, async (t) => {
  let delayLine: Awaited<ReturnType<typeof startDelayLine>> | undefined;
  const home: HomeUplink = await createHomeUplink({
    prefix: 'shaperr-t',
    players: DELAYS_MS.length,
    plexCongestionControl: 'cubic',
    lanCongestionControl: 'cubic',
    remote: {
      oneWayDelayMs: DELAYS_MS,
      slowPlayer: SLOW,
      startDelayLine: async (spec) => (delayLine = await startDelayLine(spec)),
    },
  });
  t.teardown(() => home.destroy());

  await t.test('Plex and the LAN run cubic and the players live behind the delay line', async (t) => {
    t.equal(home.plexCongestionControl, 'cubic');
    t.equal(home.lanCongestionControl, 'cubic');
    t.equal((await inNetns(home.plexNs, 'sysctl', '-n', 'net.ipv4.tcp_congestion_control')).trim(), 'cubic', 'read back from the plex namespace');
    t.equal(home.playersNs, home.remoteNs);
    const [tun1] = JSON.parse(await ip('-n', home.remoteNs!, '-j', '-4', 'addr', 'show', 'dev', DELAY_LINE_DEVICES.remote)) as Array<{
      addr_info: Array<{ local: string }>;
    }>;
    t.same(tun1!.addr_info.map((info) => info.local).sort(), DELAYS_MS.map((_, i) => playerAddress(i)).sort(), 'every player address on tun1');
  });

  await t.test('the delay line gives each player its round trip', async (t) => {
    // Players 0 (20 ms) and 1 (50 ms) at once: their round trips must not overlap.
    const pings = await Promise.all([0, 1].map((index) => pingPlayerPath(home, index, 3)));
    for (const [index, result] of pings.entries()) {
      const oneWay = DELAYS_MS[index]!;
      const figures = pingFigures(result.rtts, result.sent);
      t.comment(
        `idle path, player ${index} (${oneWay} ms one way): RTT p50 ${figures.p50.toFixed(2)} ms, p99 ${figures.p99.toFixed(2)} ms, max ${figures.max.toFixed(2)} ms over ${result.rtts.length} pings (${figures.lost} lost)`,
      );
      t.ok(result.rtts.length >= result.sent * 0.9, `player ${index}: ${result.rtts.length} of ${result.sent} pings answered`);
      t.ok(
        figures.p50 > 1.8 * oneWay && figures.p50 < 3 * oneWay,
        `player ${index}: RTT p50 ${figures.p50.toFixed(2)} ms within (${1.8 * oneWay}, ${3 * oneWay})`,
      );
    }
    const stats = await delayLine!.stats();
    t.comment(
      `delay line: ${stats.forwarded} packets forwarded, late by ${stats.lateMeanUs.toFixed(0)} µs on average, ${stats.lateMaxUs.toFixed(0)} µs at most`,
    );
    t.equal(stats.droppedFull, 0, 'the delay line dropped nothing');
  });

  await t.test('setModemRate changes the class in place; readModem reports it', async (t) => {
    const tc = TrafficControl.open({ netns: home.routerNs });
    t.teardown(() => tc.close());
    const before = tc.getClass('wan0', '1:10');
    // The kernel keeps the burst as a time at the rate: read back, it is 32 KiB give or take its rounding.
    const about32KiB = (bytes = 0) => Math.abs(bytes - 32 * 1024) <= 16;
    t.equal(before?.parameters.rate, 20e6);
    t.ok(about32KiB(before?.parameters.burst), `burst ${before?.parameters.burst} B`);
    setModemRate(home, 10e6);
    const after = tc.getClass('wan0', '1:10');
    t.match(after?.parameters, { rate: 10e6, ceil: 10e6 }, 'rate and ceil 10 Mbit/s, read back over netlink');
    t.ok(
      about32KiB(after?.parameters.burst) && about32KiB(after?.parameters.cburst),
      `burst and cburst still 32 KiB (${after?.parameters.burst}, ${after?.parameters.cburst} B)`,
    );
    t.equal(after?.handle, before?.handle, 'the same class');
    t.equal(readModem(home).bitsPerSecond, 10e6);
    t.equal(tc.qdiscs('wan0').find((qdisc) => qdisc.kind === 'bfifo')?.parameters?.limit, home.modemBufferBytes, 'the buffer stays as created');
    t.throws(() => setModemRate(home, 0), /the modem's rate must be at least 8 bits\/s, not 0/, 'a rate of 0 is refused in one line');
    setModemRate(home, 20e6);
    t.equal(readModem(home).bitsPerSecond, 20e6);
  });

  await t.test('a schedule moves the modem: steps, then a sine', async (t) => {
    const steps = runModemSchedule(
      home,
      stepSchedule([
        { atMs: 0, bitsPerSecond: 20e6 },
        { atMs: 300, bitsPerSecond: 10e6 },
        { atMs: 600, bitsPerSecond: 20e6 },
      ]),
    );
    await until(() => steps.changes.length === 3, 10_000);
    steps.stop();
    t.same(
      steps.changes.map((change) => change.bitsPerSecond),
      [20e6, 10e6, 20e6],
      'set 20, 10, 20 Mbit/s',
    );
    t.equal(readModem(home).bitsPerSecond, 20e6, 'the last step holds');
    const sine = runModemSchedule(home, sineSchedule({ lowBitsPerSecond: 10e6, highBitsPerSecond: 20e6, periodMs: 1000 }));
    await until(() => sine.changes.some((change) => change.bitsPerSecond < 11e6), 10_000);
    sine.stop();
    const rates = sine.changes.map((change) => change.bitsPerSecond);
    t.equal(rates[0], 20e6, 'the sine starts high');
    t.ok(
      rates.every((rate) => rate >= 10e6 && rate <= 20e6),
      `every rate between 10 and 20 Mbit/s (${rates.map((rate) => (rate / 1e6).toFixed(1)).join(', ')})`,
    );
    t.equal(readModem(home).bitsPerSecond, rates.at(-1), 'the modem holds the last rate set');
    t.throws(() => stepSchedule([{ atMs: 5, bitsPerSecond: 1e6 }]), /starts with a step at 0 ms/);
    setModemRate(home, 20e6);
  });

  const sink = await startUploadSink(home);
  t.teardown(() => sink.stop());

  await t.test('paced uploaders hold their caps while the slow player queues in its own class', async (t) => {
    const servers = await startServers(home);
    t.teardown(() => servers.stop());
    const internet = TrafficControl.open({ netns: home.internetNs });
    t.teardown(() => internet.close());
    const slow = home.slowPlayer!;
    t.match(internet.getClass(slow.device, slow.classid)?.parameters, { rate: SLOW.bitsPerSecond }, `the slow player's class: 3 Mbit/s on ${slow.device}`);
    const filters = internet.filters(slow.device, '1:');
    t.ok(
      filters.some((filter) => filter.parameters.match?.dst === `${playerAddress(SLOW.index)}/32` && filter.parameters.classid === 0x10020),
      'its address is steered into it',
    );
    // A 4 Mbit/s stream to a 3 Mbit/s player: its segments pile up in its downlink's buffer.
    const players = startPlayers(home, [{ address: playerAddress(SLOW.index), bitsPerSecond: 4e6 }], 8);
    const udp = await startUploader(home, { protocol: 'udp', bitsPerSecond: 4e6 });
    const tcp = await startUploader(home, { protocol: 'tcp', bitsPerSecond: 3e6 });
    let peakSlowBacklog = 0;
    const poll = setInterval(() => {
      peakSlowBacklog = Math.max(peakSlowBacklog, internet.getClass(slow.device, slow.classid)?.statistics?.backlog ?? 0);
    }, 50);
    t.teardown(() => clearInterval(poll));
    await until(() => udp.reports.length > 0 && tcp.reports.length > 0 && tcp.reports.at(-1)!.at - tcp.reports[0]!.at >= 7000, 30_000);
    clearInterval(poll);
    for (const [uploader, cap] of [
      [udp, 4e6],
      [tcp, 3e6],
    ] as const) {
      const rate = uploadRate(uploader, 1000, 7000);
      t.ok(
        Math.abs(rate / cap - 1) <= 0.15,
        `${uploader === udp ? 'UDP' : 'TCP'} uploader capped at ${cap / 1e6} Mbit/s sent ${(rate / 1e6).toFixed(2)} Mbit/s over 6 s`,
      );
    }
    const [udpTotal, tcpTotal] = await Promise.all([udp.stop(), tcp.stop()]);
    t.ok(udpTotal.bytes > 0 && tcpTotal.bytes > 0, 'both report their bytes at the end');
    const [stream] = await players.done;
    t.ok(stream!.segments > 0, `the slow player got ${stream!.segments} segments`);
    t.ok(peakSlowBacklog > 0, `its queue built in its own class (peak ${peakSlowBacklog} B)`);
  });

  await t.test("a bulk TCP uploader fills the modem's queue", async (t) => {
    const idle = readModem(home);
    const bulk = await startUploader(home, { protocol: 'tcp' });
    let peak = idle;
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const reading = readModem(home);
      if (reading.backlog > peak.backlog) peak = reading;
      await sleep(20);
    }
    const total = await bulk.stop();
    const queueDelayMs = (peak.backlog * 8 * 1000) / peak.bitsPerSecond;
    t.comment(
      `bulk upload: ${((total.bytes * 8) / total.seconds / 1e6).toFixed(1)} Mbit/s handed to the kernel; modem backlog ${idle.backlog} B idle, peak ${peak.backlog} B = ${queueDelayMs.toFixed(0)} ms at ${peak.bitsPerSecond / 1e6} Mbit/s`,
    );
    t.ok(peak.backlog > idle.backlog + 64 * 1024, `the modem's backlog grew: ${idle.backlog} → ${peak.backlog} bytes`);
    t.ok(total.bytes > 0, `the uploader reports ${total.bytes} bytes sent`);
  });

  await t.test('the delay line stops cleanly with its counters', async (t) => {
    const stats = await delayLine!.stats();
    t.comment(`delay line over the whole run: late by ${stats.lateMeanUs.toFixed(0)} µs on average, ${stats.lateMaxUs.toFixed(0)} µs at most`);
    t.ok(stats.forwarded > 1000, `${stats.forwarded} packets forwarded`);
    t.equal(stats.writeErrors, 0, 'no write errors');
  });
});
