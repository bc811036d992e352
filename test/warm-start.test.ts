/**
 * Warm start without the kernel: which lines a cold start reads back (the last idleSeconds by the log's
 * own local-time stamps, across DST changes, into the rotated `.1` file, bounded in bytes) and which
 * clients the replay finds still playing.
 */
import { appendFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import t from 'tap';
import { Policy } from '../daemon/sessions/policy.js';
import { elapsedBetween, readRecentLog, rebuildSessions } from '../daemon/sessions/warm-start.js';
import { logDir, plexLineAt } from './helpers/daemon.js';

// Every stamp below is New York local time, as a Plex server there writes it.
process.env.TZ = 'America/New_York';
const MINUTE = 60_000;
const wall = (month: number, day: number, hours: number, minutes: number) => Date.UTC(2026, month, day, hours, minutes);
const startPath = (session: string) => `/video/:/transcode/universal/start.m3u8?session=${session}`;
const timeline = (session: string, state: string) => `/:/timeline?state=${state}&X-Plex-Session-Identifier=${session}`;
const policy = new Policy({
  client: { rate: 2_000_000 },
  server: { rate: 20_000_000 },
  exempt: [],
  remoteOnly: false,
  localNetworks: [],
  overrides: [],
  schedules: [],
});
const rebuild = (lines: string[], idleSeconds: number) => rebuildSessions(lines, { policy, trustedProxies: [], graceMs: 5000, idleMs: idleSeconds * 1000 });
const addresses = (clients: Array<{ address: string }>) => clients.map((client) => client.address).sort();

t.test('elapsed time between two stamps follows the real clock across DST changes', async (t) => {
  t.equal(elapsedBetween(wall(5, 1, 12, 0), wall(5, 1, 12, 30)), 30 * MINUTE, 'an ordinary half hour');
  // 2026-03-08 02:00 EST → 03:00 EDT: 01:50 to 03:05 on the wall is 15 minutes.
  t.equal(elapsedBetween(wall(2, 8, 1, 50), wall(2, 8, 3, 5)), 15 * MINUTE, 'spring forward: 01:50 → 03:05 is 15 min, not 75');
  // 2026-11-01 02:00 EDT → 01:00 EST: the wall shows 01:00-01:59 twice.
  t.equal(elapsedBetween(wall(10, 1, 1, 55), wall(10, 1, 1, 5)), 10 * MINUTE, 'fall back: 01:55 (EDT) → 01:05 (EST) is 10 min, not -50');
  t.equal(elapsedBetween(wall(10, 1, 1, 50), wall(10, 1, 2, 10)), 20 * MINUTE, 'leaving the repeated hour: 01:50 (EST) → 02:10 is 20 min, not 80');
  t.equal(elapsedBetween(wall(5, 1, 12, 0) + 5, wall(5, 1, 12, 0)), 0, 'lines a few ms out of order count as simultaneous');
});

t.test('a cold start reads back the last idleSeconds and finds who is still playing', async (t) => {
  const { log } = logDir(t, 'shaperr-warm');
  const end = new Date(2026, 5, 1, 20, 0, 0);
  const before = (seconds: number) => new Date(end.getTime() - seconds * 1000);
  writeFileSync(
    log.replace(/\.log$/, '.1.log'),
    [
      plexLineAt(before(400), '198.51.100.30', startPath('c')), // played 400 s ago, silent since: gone
      plexLineAt(before(200), '198.51.100.40', startPath('e')),
      plexLineAt(before(30), '198.51.100.20', startPath('d')), // only in the rotated file
    ].join(''),
  );
  writeFileSync(
    log,
    [
      plexLineAt(before(100), '198.51.100.40', timeline('e', 'playing')), // started before the window, still reporting
      plexLineAt(before(20), '198.51.100.50', startPath('b')),
      plexLineAt(before(10), '198.51.100.50', timeline('b', 'stopped')),
      plexLineAt(before(5), '198.51.100.10', startPath('a')),
      plexLineAt(end, '198.51.100.99', '/library/sections/1/all'),
    ].join(''),
  );
  appendFileSync(log, 'Jun 01, 2026 20:00:00.500 [1] DEBUG - a line still being writ'); // no newline yet

  const recent = await readRecentLog(log, 120_000);
  t.equal(recent.lines.length, 6, `${recent.lines.length} lines within 120 s of the last one (of 8 complete lines)`);
  t.ok(recent.rotatedFileRead, 'the window reached into the rotated .1 file');
  t.same(
    recent.position,
    { inode: String(statSync(log, { bigint: true }).ino), offset: statSync(log).size - 'Jun 01, 2026 20:00:00.500 [1] DEBUG - a line still being writ'.length },
    'following continues at the unfinished line',
  );
  t.same(
    addresses(await rebuild(recent.lines, 120)),
    ['198.51.100.10', '198.51.100.20', '198.51.100.40'],
    'playing: a, d (rotated file), e (timeline inside the window); not b (stopped) nor c (silent)',
  );
});

t.test('the window is measured in real time across a DST change', async (t) => {
  const { log } = logDir(t, 'shaperr-warm-dst');
  // 2026-11-01, New York: 00:58 EDT is 67 min before 01:05 EST; 01:55 EDT is 10 min before it.
  const at = (hours: number, minutes: number, secondPass = false) => new Date(Date.UTC(2026, 10, 1, hours + (secondPass ? 5 : 4), minutes));
  writeFileSync(
    log,
    [
      plexLineAt(at(0, 58), '198.51.100.1', startPath('f')),
      plexLineAt(at(1, 55), '198.51.100.2', startPath('g')),
      plexLineAt(at(1, 5, true), '198.51.100.99', '/library/sections/1/all'),
    ].join(''),
  );
  t.match(readFileSync(log, 'utf8'), /Nov 01, 2026 00:58.*\nNov 01, 2026 01:55.*\nNov 01, 2026 01:05/, 'the wall clock goes back on the third line');
  const recent = await readRecentLog(log, 15 * MINUTE);
  t.same(
    addresses(await rebuild(recent.lines, 900)),
    ['198.51.100.2'],
    'with a 15 min window: g (10 min ago) plays, f (67 min ago, 7 min by the wall) does not',
  );
});

t.test('reading back is bounded in bytes', async (t) => {
  const { log } = logDir(t, 'shaperr-warm-bound');
  const end = new Date(2026, 5, 1, 20, 0, 0);
  const line = plexLineAt(end, '198.51.100.1', '/library/sections/1/all');
  writeFileSync(log, line.repeat(Math.ceil((4 << 20) / line.length))); // 4 MiB, all inside the window
  const recent = await readRecentLog(log, 120_000, 1 << 20);
  t.ok(recent.bytesRead <= 1 << 20, `read ${recent.bytesRead} bytes of a 4 MiB log (bound 1 MiB)`);
  t.ok(recent.lines.length > 0 && recent.lines.every((text) => text === line.trimEnd()), `${recent.lines.length} whole lines, none cut`);
});
