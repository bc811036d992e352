/**
 * Warm start: with no saved log position, shaperrd reads back the recent part of the Plex log — the last
 * idleSeconds of it by the log's own timestamps, into the rotated `.1` file when the current one is
 * younger, at most WARM_START_MAX_BYTES — and replays it through a session tracker that touches no
 * kernel, so clients already playing are throttled before the log is followed instead of at their next
 * line (up to ~10 s later, or never for a quiet player).
 *
 * Plex writes local time without a zone. Elapsed time between two lines is the wall-clock difference,
 * corrected where a DST change moved the clock: forward (the instants are closer than the wall clock
 * says) or back (the wall clock repeats an hour).
 */
import { type FileHandle, open } from 'node:fs/promises';
import { type SavedPosition, rotatedPath } from '../sources/tail.js';
import { localTime, PlexLogParser, plexWallClock } from '../sources/parse.js';
import type { Policy } from './policy.js';
import { type SavedClient, SessionTracker } from './sessions.js';

/** Upper bound on what a warm start reads (both files together). */
export const WARM_START_MAX_BYTES = 16 << 20;
const CHUNK = 256 * 1024;
const NEWLINE = 0x0a;
const HOUR = 3600_000;

/** Milliseconds that really passed between two wall-clock readings (Date.UTC of the fields), older first. */
export function elapsedBetween(olderWallClock: number, newerWallClock: number): number {
  const wall = newerWallClock - olderWallClock;
  const older = localTime(olderWallClock).getTime();
  const instants = localTime(newerWallClock).getTime() - older;
  // Forward jump (spring): instants are closer than the wall says. Leaving a repeated hour: the readings
  // resolve to its first pass, so the instants look an hour further apart than the wall says.
  if (wall >= 0) return Math.max(0, Math.min(wall, instants));
  // The wall clock went back: a DST change repeating an hour (its size is the offset change around
  // here), or lines a few ms out of order.
  const shift = Math.abs(new Date(older - 3 * HOUR).getTimezoneOffset() - new Date(older + 3 * HOUR).getTimezoneOffset()) * 60_000;
  return Math.max(0, wall + shift);
}

export interface RecentLog {
  /** Oldest first; the last idleSeconds before the newest timestamped line. */
  lines: string[];
  /** Where following the log continues: just after the last complete line of the current file. */
  position?: SavedPosition;
  bytesRead: number;
  /** Whether the window reached into the rotated `.1` file. */
  rotatedFileRead: boolean;
}

interface Segment {
  path: string;
  /** Read up to here (the current file: its last complete line). */
  end?: number;
}

/** Lines of the files, newest first, reading backwards in chunks; stops when `budget` bytes are read. */
async function* linesBackward(segments: Segment[], budget: { bytes: number; read: number; files: number }): AsyncGenerator<string> {
  for (const segment of segments) {
    let handle: FileHandle;
    try {
      handle = await open(segment.path, 'r');
    } catch {
      return; // no rotated file: the window ends here
    }
    budget.files++;
    try {
      let position = segment.end ?? (await handle.stat()).size;
      let carry = Buffer.alloc(0);
      while (position > 0) {
        if (budget.read >= budget.bytes) return; // the unfinished first line is cut: not a line
        const length = Math.min(CHUNK, position, budget.bytes - budget.read);
        position -= length;
        const chunk = Buffer.allocUnsafe(length);
        const { bytesRead } = await handle.read(chunk, 0, length, position);
        budget.read += bytesRead;
        const data = Buffer.concat([chunk.subarray(0, bytesRead), carry]);
        let end = data.length;
        for (let newline = data.lastIndexOf(NEWLINE, end - 1); newline >= 0; newline = data.lastIndexOf(NEWLINE, end - 1)) {
          if (newline + 1 < end) yield data.toString('utf8', newline + 1, end).replace(/\r$/, '');
          end = newline;
          if (newline === 0) break;
        }
        carry = data.subarray(0, end);
      }
      if (carry.length > 0) yield carry.toString('utf8').replace(/\r$/, '');
    } finally {
      await handle.close();
    }
  }
}

/** Where the current file's last complete line ends, and its inode (undefined: no file, or no line). */
async function endOfLastLine(path: string): Promise<SavedPosition | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const { ino, size } = await handle.stat({ bigint: true });
    const buffer = Buffer.allocUnsafe(CHUNK);
    for (let end = Number(size); end > 0 && Number(size) - end < WARM_START_MAX_BYTES; ) {
      const start = Math.max(0, end - CHUNK);
      const { bytesRead } = await handle.read(buffer, 0, end - start, start);
      const newline = buffer.subarray(0, bytesRead).lastIndexOf(NEWLINE);
      if (newline >= 0) return { inode: String(ino), offset: start + newline + 1 };
      end = start;
    }
    return undefined;
  } finally {
    await handle.close();
  }
}

/** The last `windowMs` of the log by its own timestamps (newest line = the end of the window). */
export async function readRecentLog(path: string, windowMs: number, maxBytes = WARM_START_MAX_BYTES): Promise<RecentLog> {
  const position = await endOfLastLine(path);
  const segments: Segment[] = [...(position ? [{ path, end: position.offset }] : []), { path: rotatedPath(path, 1) }];
  const budget = { bytes: maxBytes, read: 0, files: 0 };
  const newestFirst: string[] = [];
  let newer: number | undefined;
  let elapsed = 0;
  for await (const line of linesBackward(segments, budget)) {
    const wallClock = plexWallClock(line);
    if (wallClock !== undefined) {
      if (newer !== undefined) elapsed += elapsedBetween(wallClock, newer);
      if (elapsed > windowMs) break;
      newer = wallClock;
    }
    newestFirst.push(line); // a line without a timestamp belongs with the newer ones
  }
  return { lines: newestFirst.reverse(), ...(position ? { position } : {}), bytesRead: budget.read, rotatedFileRead: budget.files > (position ? 1 : 0) };
}

export interface RebuildOptions {
  policy: Policy;
  trustedProxies: readonly string[];
  graceMs: number;
  idleMs: number;
}

/**
 * Replays lines through a session tracker whose clock is the log's own (DST-corrected) and whose shaper
 * only records: the clients with a live session at the end, as a restart would restore them.
 */
export async function rebuildSessions(lines: readonly string[], options: RebuildOptions): Promise<SavedClient[]> {
  const parser = new PlexLogParser({ trustedProxies: options.trustedProxies });
  let clock = 0;
  const tracker = new SessionTracker({
    graceMs: options.graceMs,
    idleMs: options.idleMs,
    policy: options.policy,
    shaper: { throttle: async () => undefined, release: async () => undefined },
    now: () => clock,
  });
  let previous: number | undefined;
  for (const line of lines) {
    const wallClock = plexWallClock(line);
    if (wallClock !== undefined) {
      if (previous !== undefined) clock += elapsedBetween(previous, wallClock);
      previous = wallClock;
    }
    const event = parser.parse(line);
    if (event) tracker.handle(event);
  }
  await tracker.settled();
  tracker.sweep(); // sessions idle for longer than idleSeconds at the log's last line are gone
  await tracker.settled();
  return tracker.snapshot().filter((client) => client.sessions.length > 0);
}
