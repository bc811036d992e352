/** `npm run bench -- --quick` works and produces every row (a smoke check: timing targets are never asserted). */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { netnsUnavailable } from '../daemon/support/netns.js';

const root = fileURLToPath(new URL('..', import.meta.url));
// Scenario 9 (the variable uplink) adds about 90 s to the quick run.
t.setTimeout(290_000);

t.test('quick benchmark run produces every scenario row', { skip: netnsUnavailable() }, async (t) => {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'benchmarks/run.ts', '--quick'], { cwd: root, encoding: 'utf8', timeout: 280_000 });
  t.equal(result.status, 0, result.stderr.split('\n').slice(-5).join('\n'));
  const { machine, rows } = JSON.parse(readFileSync(`${root}/benchmarks/results/latest-quick.json`, 'utf8')) as {
    machine: Record<string, string>;
    rows: Array<{ scenario: string; variant: string; value: number }>;
  };
  t.match(machine, { cpu: String, cores: String, kernel: String, node: String });
  const expected = [
    /^a\. tc process per command/,
    /^b\. tc -batch FILE/,
    /^c\. tc -batch -/,
    /^d\. shaperr, one client at a time/,
    /^e\. shaperr, batched/,
    /^f\. floor/,
    /^g\. floor: C loop, batched/,
    /^one at a time: shaperr's time ÷ the C floor's/,
    /^batched: shaperr throughput ÷ the batched C floor/,
    /^shaperrd: line appended → filter live .*p50/,
    /^shaperrd: line appended → filter live, p99/,
    /^shaperrd: line appended → filter live, p99\.9/,
    /^shaperrd with(out)? --no-opt: line appended → filter live, p99/,
    /^the seed's tail -F \| awk \| sh → tc ×3: line appended → filter live, p50/,
    /^the seed's .* p99/,
    /^shaperrd: notification → listing → filter live, p50/,
    /^shaperrd: notification → listing → filter live, p99/,
    /kernel changes per client/,
    /final state exact/,
    /daemon CPU time/,
    /log lines appended → all classes in the kernel/,
    /shaperrd RSS right after applying/,
    /shaperrd RSS .* later, holding them/,
    /shaperrd CPU while holding them/,
    /one filter \(baseline\)/,
    /one linear u32 chain/,
    /Shaper's u32 hash tables/,
    /mixed log/,
    /non-playback lines only/,
    /one client at 2 Mbit\/s/,
    /two clients under a 4 Mbit\/s server ceiling/,
    /^idle uplink: gamer RTT p99$/,
    /^Plex unshaped: gamer RTT p99$/,
    /^shaperr \(library\): gamer RTT p99$/,
    /^shaperrd from a Plex log: gamer RTT p99$/,
    /modem peak backlog/,
    /modem drops/,
    /stalls/,
    /start-up/,
    /mean goodput/,
    /uplink utilisation while every stream fetches/,
    /^gamer p99 ratio: unshaped ÷ shaperr/,
    /^gamer p99: shaperr − idle/,
    /^idle path to player 2: RTT p99$/,
    /^idle link: gamer RTT p99/,
    /^\(d\) rate: auto, probe signal · steps .*: gamer RTT p99$/,
    /^\(e\) cake-autorate's rules, plex signal · sine .*: modem queue delay p99/,
    /^\(f\) unshaped · LAN bulk TCP upload.*: capacity used/,
    /^\(d\) rate: auto, probe signal · steps .*: reaction time/,
    /^\(e\) cake-autorate's rules, plex signal · .*: kernel requests per minute$/,
    /signal against the modem's queue delay, mean absolute error$/,
    /signal against the modem's queue delay, lag that aligns them best$/,
    /^goal · \(d\) rate: auto, probe signal · /,
    /idle pipes, steady .*: ceiling changes per minute/,
  ];
  for (const pattern of expected)
    t.ok(
      rows.some((row) => pattern.test(row.variant) && Number.isFinite(row.value)),
      `row ${pattern}`,
    );
  t.match(result.stdout, /\| scenario \| variant \| result \|/, 'markdown table printed');
});
