/**
 * The stock-kernel lane, from `npm test`: the kernel-touching tests that matter most where sfq exists run
 * inside Debian's own kernel under qemu (see lane.ts), and each must pass there with nothing skipped.
 * Skipped, and counted as skipped, when the lane cannot be had (not root, no qemu, no Debian archive).
 */
import { loadavg } from 'node:os';
import t from 'tap';
import { type LaneReady, prepareLane, runInLane } from './lane.js';

/**
 * What only the stock kernel can show: sfq itself (incl. the Shaper's probe, an sfq leaf under real traffic,
 * fair sharing), the other kinds this host lacks (fq_codel, the matchall filter), the Shaper with sfq leaves
 * where the host has bfifo (its suite, a draining release that 6.1 cannot do in place, and the home-uplink
 * smoke of scenario 7).
 * The daemon's suites (shaperrd, server-ceiling, the repairs, long operations) go through the same Shaper and
 * run on the host's kernel only: under emulation they cost about 400 s more than these together, and CI's
 * whole run must stay under 30 minutes (CI's machine took 1,080 s for the twelve files and was cut off).
 * Two files at a time (the guest has two CPUs), each run as its own program by run-files.mjs: under emulation
 * tap's runner and TypeScript loader cost twice what the tests do.
 */
const INSIDE = [
  'test/sfq.test.ts',
  'test/fq-codel.test.ts',
  'test/matchall.test.ts',
  'test/shaper.test.ts',
  'test/teardown.test.ts',
  'test/home-uplink.test.ts',
];

const hostLoad = () =>
  loadavg()
    .map((load) => load.toFixed(2))
    .join(' ');

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
    // Emulation is CPU-bound: the host's load says whether a slow lane was the lane or the machine.
    t.comment(`host load average before the lane: ${hostLoad()}`);
    const run = await runInLane(lane, ['node', 'test/kernel-lane/run-files.mjs', '300', ...INSIDE], { timeoutMs: 1_080_000 });
    t.comment(`host load average after the lane: ${hostLoad()}`);
    t.comment(`lane: kernel ${lane.kernelVersion}, ${run.seconds.toFixed(0)} s, inner summary ${/^# \{.*\}$/m.exec(run.output)?.[0] ?? '(none)'}`);
    for (const measured of run.output.split('\n').filter((line) => /^\s*ok .*(Mbit\/s|deepest queue)/.test(line))) t.comment(`inside: ${measured.trim()}`);
    for (const file of run.output.split('\n').filter((line) => /^(not )?ok \d+ - test\/.*# time=/.test(line))) t.comment(`inside: ${file}`);
    for (const rerun of run.output.split('\n').filter((line) => /the first run was killed/.test(line))) t.comment(`inside: ${rerun.trim()}`);
    for (const file of INSIDE) {
      const result = new RegExp(`^(not )?ok \\d+ - ${file.replace(/\./g, '\\.')}`, 'm').exec(run.output);
      t.ok(result && !result[1], `${file} passes inside ${lane.kernelVersion}`);
    }
    const failures = run.output.split('\n').filter((line) => /^\s*not ok /.test(line));
    for (const failure of failures) t.comment(`inside: ${failure.trim()}`);
    // The failures are in the assertion's own name: CI's summary lists failing names, not comments.
    t.same(failures, [], `no failing assertion inside${failures.length ? ` (found: ${failures.map((line) => line.trim()).join('; ')})` : ''}`);
    t.same(
      run.output.split('\n').filter((line) => /# SKIP/.test(line)),
      [],
      'nothing skipped inside: the stock kernel has what these tests need',
    );
    t.equal(run.status, 0, 'the inner run exits 0');
    if (run.status !== 0) t.comment(`last lines inside:\n${run.output.split('\n').slice(-15).join('\n')}`);
  },
);
