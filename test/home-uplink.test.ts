/**
 * Scenario 7 of the benchmark, short: Plex streams through a home modem with and without shaperr. Asserts
 * on the modem's kernel counters (read over netlink), never on times: with shaperr its queue stays lower
 * and it drops less. The modem's buffer is 100 ms here (the benchmark's is 1 s): unshaped, a deep buffer
 * takes longer than a short run to overflow; a shallow one overflows within seconds.
 * The pipes ask for sfq leaves: real sfq in the stock-kernel lane (test/kernel-lane), the bfifo fallback
 * on a kernel without it.
 */
import t from 'tap';
import { type HomeUplinkResult, runHomeUplinkVariants } from '../benchmarks/home-uplink.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { netnsUnavailable } from '../daemon/support/netns.js';

function kernelHasSfq(): boolean {
  const tc = TrafficControl.open();
  try {
    return tc.hasQdiscKind('sfq');
  } finally {
    tc.close();
  }
}

t.test('home uplink: shaperr keeps the modem queue shorter and drops less than unshaped Plex', { skip: netnsUnavailable() }, async (t) => {
  // One home for both variants: under emulation (the stock-kernel lane) building it costs more than the traffic.
  const [unshaped, shaped] = (await runHomeUplinkVariants({
    variants: ['unshaped', 'shaperr'],
    seconds: 10,
    streams: 3,
    modemBufferSeconds: 0.1,
    leaf: 'sfq',
  })) as [HomeUplinkResult, HomeUplinkResult];
  const describe = (r: HomeUplinkResult) =>
    `peak backlog ${r.modem.peakBacklogBytes} B, ${r.modem.drops} drops, gamer p50/p99 ${r.ping.p50.toFixed(2)}/${r.ping.p99.toFixed(2)} ms, ` +
    `uplink ${(r.modem.utilisation * 100).toFixed(0)} %, goodput ${r.streams.map((s) => (s.goodputBitsPerSecond / 1e6).toFixed(2)).join('/')} Mbit/s, ${r.streams.reduce((n, s) => n + s.stalls, 0)} stalls`;
  const expectedLeaf = kernelHasSfq() ? 'sfq' : 'bfifo';
  t.same(
    shaped.pipeLeaves,
    [expectedLeaf],
    `every pipe has a ${expectedLeaf} leaf in the kernel${expectedLeaf === 'bfifo' ? ' (no sfq here: the fallback)' : ''}`,
  );
  t.same(unshaped.pipeLeaves, [], 'unshaped: no pipes');
  for (const result of [unshaped, shaped]) {
    t.equal(result.streams.length, 3, `${result.variant}: three players ran`);
    // The figures in an assertion line: the stock-kernel lane echoes `ok` lines that carry Mbit/s.
    t.ok(
      result.streams.every((stream) => stream.segments > 0),
      `${result.variant}: every player got segments (${describe(result)})`,
    );
    t.ok(result.ping.lost < result.seconds * 50, `${result.variant}: the gamer's pings were answered`);
  }
  t.ok(unshaped.modem.drops > 0, `unshaped Plex overflows the modem's buffer (${unshaped.modem.drops} drops)`);
  t.ok(shaped.modem.drops < unshaped.modem.drops, `fewer modem drops with shaperr: ${shaped.modem.drops} < ${unshaped.modem.drops}`);
  t.ok(
    shaped.modem.peakBacklogBytes < unshaped.modem.peakBacklogBytes,
    `lower modem peak backlog with shaperr: ${shaped.modem.peakBacklogBytes} < ${unshaped.modem.peakBacklogBytes} bytes`,
  );
});
