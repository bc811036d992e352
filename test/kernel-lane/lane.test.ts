/**
 * The stock-kernel lane, from `npm test`: the kernel-touching tests that matter most where sfq exists run
 * inside Debian's own kernel under qemu (see lane.ts), and each must pass there with nothing skipped.
 * Skipped, and counted as skipped, when the lane cannot be had (not root, no qemu, no Debian archive).
 */
import t from 'tap';
import { type LaneReady, prepareLane, runInLane } from './lane.js';

/**
 * sfq itself (incl. the Shaper's probe, an sfq leaf under real traffic, fair sharing), the other kinds
 * this host lacks (fq_codel, the matchall filter), the tc layer with sfq present, and the Shaper and
 * shaperrd integration suites with sfq leaves where the host has bfifo, and the home-uplink smoke (scenario 7)
 * with sfq leaves.
 * Two files at a time (the guest has two CPUs), each run as its own program by run-files.mjs: under emulation
 * tap's runner and TypeScript loader cost twice what the tests do.
 */
const INSIDE = [
  'test/sfq.test.ts',
  'test/fq-codel.test.ts',
  'test/matchall.test.ts',
  'test/traffic-control.test.ts',
  'test/shaper.test.ts',
  'test/server-ceiling.test.ts', // not server-ceiling-many: 200 joins of kernel bookkeeping cost minutes under emulation
  'test/shaperrd.test.ts',
  'test/long-operations.test.ts',
  'test/home-uplink.test.ts',
  'test/teardown.test.ts',
  'test/hash-table-repair.test.ts',
  'test/monitor-wakeup.test.ts',
];

t.setTimeout(1_200_000);
const comments: string[] = [];
const lane: LaneReady =
  process.getuid?.() === 0
    ? await prepareLane({ log: (line) => comments.push(line) })
    : { ok: false, reason: 'needs root (qemu here, and the tests inside make network namespaces)' };

t.test(
  "kernel tests pass inside Debian's stock kernel, with real sfq",
  { skip: lane.ok ? false : `stock-kernel lane unavailable: ${lane.reason}` },
  async (t) => {
    if (!lane.ok) return;
    for (const comment of comments) t.comment(comment);
    const run = await runInLane(lane, ['node', 'test/kernel-lane/run-files.mjs', '300', ...INSIDE], { timeoutMs: 1_080_000 });
    t.comment(`lane: kernel ${lane.kernelVersion}, ${run.seconds.toFixed(0)} s, inner summary ${/^# \{.*\}$/m.exec(run.output)?.[0] ?? '(none)'}`);
    for (const measured of run.output.split('\n').filter((line) => /^\s*ok .*(Mbit\/s|deepest queue)/.test(line))) t.comment(`inside: ${measured.trim()}`);
    for (const rerun of run.output.split('\n').filter((line) => /the first run was killed/.test(line))) t.comment(`inside: ${rerun.trim()}`);
    for (const file of INSIDE) {
      const result = new RegExp(`^(not )?ok \\d+ - ${file.replace(/\./g, '\\.')}`, 'm').exec(run.output);
      t.ok(result && !result[1], `${file} passes inside ${lane.kernelVersion}`);
    }
    const failures = run.output.split('\n').filter((line) => /^\s*not ok /.test(line));
    for (const failure of failures) t.comment(`inside: ${failure.trim()}`);
    t.same(failures, [], 'no failing assertion inside');
    t.same(
      run.output.split('\n').filter((line) => /# SKIP/.test(line)),
      [],
      'nothing skipped inside: the stock kernel has what these tests need',
    );
    t.equal(run.status, 0, 'the inner run exits 0');
    if (run.status !== 0) t.comment(`last lines inside:\n${run.output.split('\n').slice(-15).join('\n')}`);
  },
);
