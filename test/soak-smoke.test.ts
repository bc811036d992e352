/**
 * `npm run soak -- --quick` works and reports every row; the counts that must be zero are zero (kill -9
 * in a seek storm, rotations and truncations, fuzzed lines, removals repaired, a notification burst and
 * an overflow, websocket drops and Plex restarts). No time is asserted.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { netnsUnavailable } from '../daemon/support/netns.js';

const root = fileURLToPath(new URL('..', import.meta.url));

t.test('quick soak: every row, and nothing lost, duplicated, orphaned or crashed', { skip: netnsUnavailable(), timeout: 400_000 }, async (t) => {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'benchmarks/soak.ts', '--quick'], { cwd: root, encoding: 'utf8', timeout: 380_000 });
  t.equal(result.status, 0, result.stderr.split('\n').slice(-5).join('\n'));
  const { rows } = JSON.parse(readFileSync(`${root}/benchmarks/results/soak-quick.json`, 'utf8')) as { rows: Array<{ figure: string; value: number }> };
  const value = (pattern: RegExp) => rows.find((row) => pattern.test(row.figure))?.value;
  for (const pattern of [
    /^orphaned kernel objects/,
    /^missing kernel objects/,
    /^sessions wrongly dropped/,
    /^lines lost that were readable/,
    /^lines read twice/,
    /^crashes/,
    /^filter deletions in the burst not repaired/,
    /^notifications the kernel dropped during the burst/,
    /^pipes missing 15 s later/,
    /^sessions lost/,
    /^sessions stuck/,
    /^clients that kept playing but were released/,
  ]) {
    t.equal(value(pattern), 0, `${pattern.source.replace('^', '')}: 0`);
  }
  for (const pattern of [
    /^log events written/,
    /written just before a truncation/,
    /deleted by rotation/,
    /^RSS growth over the lines/,
    /^RSS growth over a second pass/,
    /^JavaScript heap in use/,
    /^notifications the kernel dropped for shaperrd/,
  ]) {
    t.ok(Number.isFinite(value(pattern)), `row ${pattern.source.replace('^', '')}: ${value(pattern)}`);
  }
  const missed = rows.filter((row) => /^not repaired within 5 s/.test(row.figure)).map((row) => row.value);
  t.same(missed, [0, 0, 0], 'event-driven repair: every root deletion, filter deletion and link re-creation repaired');
  t.ok((value(/^overflows shaperrd reported/) ?? 0) >= 1, 'the forced overflow was seen (ENOBUFS)');
  t.match(result.stdout, /\| scenario \| figure \| result \| target \| note \|/, 'markdown table printed');
});
