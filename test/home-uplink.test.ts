/**
 * Scenario 7 of the benchmark, short: Plex streams through a home modem with and without shaperr. Asserts
 * on the modem's kernel counters (read over netlink), never on times: with shaperr its queue stays lower
 * and it drops less. The modem's buffer is 100 ms here (the benchmark's is 1 s): unshaped, a deep buffer
 * takes longer than a short run to overflow; a shallow one overflows within seconds.
 */
import t from 'tap';
import { runHomeUplink } from '../benchmarks/home-uplink.js';
import { netnsUnavailable } from '../daemon/support/netns.js';

t.test('home uplink: shaperr keeps the modem queue shorter and drops less than unshaped Plex', { skip: netnsUnavailable() }, async (t) => {
  const run = { seconds: 10, streams: 3, modemBufferSeconds: 0.1 };
  const unshaped = await runHomeUplink({ variant: 'unshaped', ...run });
  const shaped = await runHomeUplink({ variant: 'shaperr', ...run });
  const describe = (r: typeof unshaped) => `peak backlog ${r.modem.peakBacklogBytes} B, ${r.modem.drops} drops, gamer p99 ${r.ping.p99.toFixed(2)} ms`;
  t.comment(`unshaped: ${describe(unshaped)}; shaperr: ${describe(shaped)}`);
  for (const result of [unshaped, shaped]) {
    t.equal(result.streams.length, 3, `${result.variant}: three players ran`);
    t.ok(result.streams.every((stream) => stream.segments > 0), `${result.variant}: every player got segments`);
    t.ok(result.ping.lost < result.seconds * 50, `${result.variant}: the gamer's pings were answered`);
  }
  t.ok(unshaped.modem.drops > 0, `unshaped Plex overflows the modem's buffer (${unshaped.modem.drops} drops)`);
  t.ok(shaped.modem.drops < unshaped.modem.drops, `fewer modem drops with shaperr: ${shaped.modem.drops} < ${unshaped.modem.drops}`);
  t.ok(shaped.modem.peakBacklogBytes < unshaped.modem.peakBacklogBytes, `lower modem peak backlog with shaperr: ${shaped.modem.peakBacklogBytes} < ${unshaped.modem.peakBacklogBytes} bytes`);
});
