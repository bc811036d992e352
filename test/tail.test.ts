/** Tail: every line exactly once, in order, across appends, rotation, truncation, late files and restarts. */
import { appendFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { LogTailer, rotatedPath, type SavedPosition } from '../daemon/sources/tail.js';

function setup(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-tail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, log: join(dir, 'Plex Media Server.log') };
}

/** Collects lines; `until(n)` resolves once n lines arrived (generous timeout, no sleeping-and-hoping). */
function collect(tailer: LogTailer) {
  const lines: string[] = [];
  let last: SavedPosition | undefined;
  const waiters: Array<{ count: number; resolve: () => void }> = [];
  tailer.on('line', (line, position) => {
    lines.push(line);
    last = position;
    for (const waiter of waiters.filter((w) => lines.length >= w.count)) waiter.resolve();
  });
  return {
    lines,
    position: () => last,
    until: (count: number, timeoutMs = 5000) =>
      new Promise<void>((resolve, reject) => {
        if (lines.length >= count) return resolve();
        const timer = setTimeout(() => reject(new Error(`only ${lines.length} of ${count} lines arrived: ${JSON.stringify(lines.slice(-3))}`)), timeoutMs);
        waiters.push({
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      }),
  };
}

const settle = (ms = 150) => new Promise((resolve) => setTimeout(resolve, ms));

/** A started tailer (its position is fixed when this resolves) and what it delivers. */
async function follow(path: string, options: Partial<ConstructorParameters<typeof LogTailer>[0]> = {}) {
  const tailer = new LogTailer({ path, pollIntervalMs: 100, ...options });
  const got = collect(tailer);
  await tailer.start();
  return { tailer, got };
}

t.test('appends: whole lines only, split writes, UTF-8 and CRLF', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, 'old line before start\n');
  const { tailer, got } = await follow(log);
  appendFileSync(log, 'first\nsec');
  await settle();
  appendFileSync(log, 'ond\r\nnaïve café ☕ 日本\n');
  for (let i = 0; i < 500; i++) appendFileSync(log, `line ${i}\n`);
  await got.until(503);
  t.same(got.lines.slice(0, 3), ['first', 'second', 'naïve café ☕ 日本'], 'from the end, split line joined, CRLF stripped, UTF-8 intact');
  t.same(
    got.lines.slice(3),
    Array.from({ length: 500 }, (_, i) => `line ${i}`),
  );
  await tailer.stop();
});

t.test('rotation: old file drained (including a late write), new file from its start', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, '');
  const { tailer, got } = await follow(log);
  for (let i = 0; i < 30; i++) appendFileSync(log, `a${i}\n`);
  renameSync(log, rotatedPath(log));
  appendFileSync(rotatedPath(log), 'late write to the old file\n');
  writeFileSync(log, '');
  for (let i = 0; i < 30; i++) appendFileSync(log, `b${i}\n`);
  await got.until(61);
  await settle(300);
  t.equal(got.lines.length, 61, 'no line duplicated');
  t.same(
    got.lines.filter((l) => l.startsWith('a')),
    Array.from({ length: 30 }, (_, i) => `a${i}`),
  );
  t.ok(got.lines.includes('late write to the old file'));
  t.same(
    got.lines.filter((l) => l.startsWith('b')),
    Array.from({ length: 30 }, (_, i) => `b${i}`),
  );
  await tailer.stop();
});

t.test('truncation starts over at byte 0', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, '');
  const { tailer, got } = await follow(log);
  appendFileSync(log, 'one\ntwo\nthree\n');
  await got.until(3);
  truncateSync(log, 0);
  await settle(300);
  appendFileSync(log, 'after truncation\n');
  await got.until(4);
  t.same(got.lines, ['one', 'two', 'three', 'after truncation']);
  await tailer.stop();
});

t.test('a file and a directory that appear later are followed from their start', async (t) => {
  const { dir } = setup(t);
  const log = join(dir, 'Logs', 'Plex Media Server.log');
  const { tailer, got } = await follow(log);
  await settle(250);
  mkdirSync(join(dir, 'Logs'));
  await settle(250);
  writeFileSync(log, 'hello\n');
  appendFileSync(log, 'world\n');
  await got.until(2);
  t.same(got.lines, ['hello', 'world']);
  await tailer.stop();
});

t.test('restart resumes from the saved position: nothing lost or replayed, even across a rotation', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, '');
  let { tailer, got } = await follow(log);
  appendFileSync(log, 'before 1\nbefore 2 — ünïcödé\n');
  await got.until(2);
  const saved = got.position()!;
  await tailer.stop();

  // While "down": more lines, a rotation, and lines in the new file.
  appendFileSync(log, 'down 1 ☕\ndown 2\n');
  renameSync(log, rotatedPath(log));
  writeFileSync(log, 'new file 1\n');
  appendFileSync(log, 'new file 2\n');

  ({ tailer, got } = await follow(log, { from: saved }));
  await got.until(4);
  await settle(300);
  t.same(got.lines, ['down 1 ☕', 'down 2', 'new file 1', 'new file 2']);
  await tailer.stop();
});

t.test('a line over the limit is cut, and the lines after it still arrive', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, '');
  const { tailer, got } = await follow(log, { maxLineBytes: 1 << 20 });
  appendFileSync(log, `${'x'.repeat(3 << 20)}\nafter\n`);
  await got.until(2);
  t.equal(got.lines[0]!.length, 1 << 20, 'cut to 1 MiB');
  t.equal(got.lines[1], 'after');
  t.equal(tailer.truncatedLines, 1);
  t.equal(Number(tailer.position()!.offset), (3 << 20) + 1 + 6, 'offsets still count every byte');
  await tailer.stop();
});

t.test('from start reads the whole file', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, 'a\nb\n');
  const { tailer, got } = await follow(log, { from: 'start' });
  await got.until(2);
  t.same(got.lines, ['a', 'b']);
  await tailer.stop();
});

t.test('two rotations before the tailer looks: the file in between is read too', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, 'a1\n');
  const { tailer, got } = await follow(log, { from: 'start' });
  t.teardown(() => tailer.stop());
  await got.until(1);
  // All in one tick: the tailer cannot wake in between.
  appendFileSync(log, 'a2\n');
  renameSync(log, rotatedPath(log, 1));
  writeFileSync(log, 'b1\nb2\n');
  renameSync(rotatedPath(log, 1), rotatedPath(log, 2));
  renameSync(log, rotatedPath(log, 1));
  writeFileSync(log, 'c1\n');
  await got.until(5);
  await settle();
  t.same(got.lines, ['a1', 'a2', 'b1', 'b2', 'c1'], 'a2, then the whole middle file (now .1), then the new one');
});

t.test('a file truncated and refilled past the offset before the tailer looks is read from its start', async (t) => {
  const { log } = setup(t);
  writeFileSync(log, 'old 1\nold 2\n');
  const { tailer, got } = await follow(log, { from: 'start' });
  t.teardown(() => tailer.stop());
  await got.until(2);
  truncateSync(log, 0); // copytruncate, then more than before is written at once
  appendFileSync(log, 'new line one\nnew line two\n');
  await got.until(4);
  await settle();
  t.same(got.lines, ['old 1', 'old 2', 'new line one', 'new line two'], 'the new content whole, not from the old offset');
});

t.test('a long backlog yields to the event loop between reads: a stop() meanwhile takes effect, start() resumes exactly', async (t) => {
  const { log } = setup(t);
  const total = 100_000; // ~2 MB: some 30 reads
  const expected = Array.from({ length: total }, (_, i) => `backlog line ${i}`);
  writeFileSync(log, expected.map((line) => `${line}\n`).join(''));
  const tailer = new LogTailer({ path: log, from: 'start', pollIntervalMs: 100 });
  const got = collect(tailer);
  let stoppedAfter = 0;
  const turn = () => {
    if (got.lines.length === 0) return void setImmediate(turn); // not opened yet
    stoppedAfter = got.lines.length;
    void tailer.stop();
  };
  setImmediate(turn);
  await tailer.start();
  await tailer.stop();
  t.ok(stoppedAfter > 0 && stoppedAfter < total, `the event loop had a turn after ${stoppedAfter} of ${total} lines`);
  t.equal(got.lines.length, stoppedAfter, 'no line delivered after stop()');
  await tailer.start();
  await got.until(total);
  t.same(got.lines, expected, 'every line exactly once, in order');
  await tailer.stop();
});
