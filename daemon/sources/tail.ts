/**
 * Tail: follows `Plex Media Server.log` the way Plex writes it — appends, rotation (the file is renamed
 * to `Plex Media Server.1.log`, older ones shift to .2 … .5, and a new one is created), truncation, a
 * file or directory that appears late.
 *
 * Positions are inode + byte offset of the end of the last delivered line, so a restart resumes exactly
 * (also after multi-byte UTF-8, and across rotations that happened while the daemon was down). A watch on
 * the directory wakes the reader within a millisecond; a slow poll covers missed or coalesced events and
 * a directory that does not exist yet.
 */
import { EventEmitter } from 'node:events';
import { type FSWatcher, readSync, statSync, watch } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setImmediate } from 'node:timers/promises';

export interface SavedPosition {
  /** Delivered as a string: inodes can exceed 2^53 and positions are meant to be stored as JSON. */
  inode: string | number | bigint;
  /** Bytes, just after the last delivered line. */
  offset: number;
}

export interface LogTailerOptions {
  path: string;
  /** 'end' (default): only what is written from now on; 'start': the whole file; or a saved position. */
  from?: 'end' | 'start' | SavedPosition;
  /** Safety poll besides the directory watch (default 500 ms). */
  pollIntervalMs?: number;
  /** Longer lines are cut to this many bytes and counted in `truncatedLines` (default 1 MiB). */
  maxLineBytes?: number;
}

interface TailEvents {
  line: [text: string, position: SavedPosition];
  error: [error: Error];
}

interface OpenFile {
  handle: FileHandle;
  inode: string;
  /** Byte offset just after the last complete line. */
  offset: number;
  /** Bytes of the unfinished line after `offset`, all of them (offsets stay exact)… */
  lineBytes: number;
  /** …of which only the first maxLineBytes are kept (memory stays bounded). */
  kept: Buffer[];
  keptBytes: number;
  /** The last bytes read (up to FINGERPRINT_BYTES), to notice a file truncated and refilled past our offset. */
  fingerprint?: Buffer;
}

const CHUNK = 64 * 1024;
const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
/** Enough to span a Plex line and its millisecond timestamp, so a refilled file cannot look the same. */
const FINGERPRINT_BYTES = 1024;
/** Plex keeps `Plex Media Server.1.log` … `.5.log`. */
const ROTATED_GENERATIONS = 5;

/** `Plex Media Server.log` → `Plex Media Server.1.log` (generation 1), where Plex moves it on rotation. */
export const rotatedPath = (path: string, generation = 1): string => (generation === 0 ? path : path.replace(/(\.log)?$/, `.${generation}$1`));

export class LogTailer extends EventEmitter<TailEvents> {
  /** Lines cut at maxLineBytes. */
  truncatedLines = 0;
  private from: 'end' | 'start' | SavedPosition;
  private file?: OpenFile;
  /** After a resume: files written after the saved one, oldest first, to read whole before following. */
  private backlog: OpenFile[] = [];
  private watcher?: FSWatcher;
  private watchedInode?: bigint;
  private poll?: NodeJS.Timeout;
  private running = false;
  private pumping?: Promise<void>;
  private pumpAgain = false;
  private lastProblem?: string;
  private readonly buffer = Buffer.allocUnsafe(CHUNK);
  private readonly fingerprintBuffer = Buffer.allocUnsafe(FINGERPRINT_BYTES);
  private readonly path: string;
  /** Directory entries that concern us: the log and its rotated generations (not the other Plex logs). */
  private readonly namePrefix: string;
  private readonly maxLineBytes: number;
  private readonly pollIntervalMs: number;

  constructor(options: LogTailerOptions) {
    super();
    this.path = options.path;
    this.from = options.from ?? 'end';
    this.namePrefix = `${basename(options.path).replace(/\.log$/, '')}.`;
    this.maxLineBytes = options.maxLineBytes ?? 1 << 20;
    this.pollIntervalMs = options.pollIntervalMs ?? 500;
  }

  /** Resolves once the starting position is fixed: every line written after that is delivered. */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.poll = setInterval(() => {
      void this.watchDirectory();
      this.wake();
    }, this.pollIntervalMs);
    await Promise.all([this.watchDirectory(), this.run(() => this.begin())]);
  }

  /** Stops following; a later start() continues where this one stopped. */
  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.poll);
    this.unwatch();
    await this.pumping;
    this.from = this.position() ?? this.from;
    for (const file of [this.file, ...this.backlog]) await file?.handle.close();
    this.file = undefined;
    this.backlog = [];
  }

  /** Where the next line starts (undefined before the file was first seen). */
  position(): SavedPosition | undefined {
    return this.file && { inode: this.file.inode, offset: this.file.offset };
  }

  /** Non-fatal problems go to 'error' listeners, each once until the file can be opened again. */
  private report(error: unknown): void {
    const message = `${this.path}: ${error instanceof Error ? error.message : String(error)}`;
    if (message === this.lastProblem) return;
    this.lastProblem = message;
    if (this.listenerCount('error') > 0) this.emit('error', new Error(message, { cause: error }));
  }

  private async begin(): Promise<void> {
    const from = this.from;
    if (typeof from === 'object') await this.resume(from);
    else {
      const file = await this.openCurrent();
      if (file && from === 'end') file.offset = await this.lastLineStart(file);
    }
    await this.pump();
  }

  /**
   * Where the file's unfinished last line starts (its size if it ends with a newline), so a line that is
   * being written while we start is delivered whole. Looks back at most maxLineBytes.
   */
  private async lastLineStart(file: OpenFile): Promise<number> {
    const { size } = await file.handle.stat();
    const floor = Math.max(0, size - this.maxLineBytes);
    for (let end = size; end > floor; ) {
      const start = Math.max(floor, end - CHUNK);
      const { bytesRead } = await file.handle.read(this.buffer, 0, end - start, start);
      const newline = this.buffer.subarray(0, bytesRead).lastIndexOf(NEWLINE);
      if (newline >= 0) return start + newline + 1;
      end = start;
    }
    return floor;
  }

  /**
   * After a restart or several rotations: the rest of the saved file (possibly rotated to .1 … .5), then
   * every newer file. False when the saved file is gone (then the current file is read from its start).
   */
  private async resume(saved: SavedPosition): Promise<boolean> {
    const inode = String(saved.inode);
    const current = await this.openCurrent();
    if (current?.inode === inode) {
      await this.continueAt(current, saved.offset);
      return true;
    }
    const newer = current ? [current] : [];
    for (let generation = 1; generation <= ROTATED_GENERATIONS; generation++) {
      const rotated = await this.openFile(rotatedPath(this.path, generation));
      if (rotated?.inode === inode) {
        this.backlog = newer.reverse();
        this.file = rotated;
        await this.continueAt(rotated, saved.offset);
        return true;
      }
      if (!rotated) continue;
      // Rotated again while we look: a file seen before shows up a generation further on, behind files
      // newer than it that we met in between. Its latest place is its place.
      const seenAt = newer.findIndex((file) => file.inode === rotated.inode);
      if (seenAt < 0) newer.push(rotated);
      else {
        newer.push(...newer.splice(seenAt, 1));
        await rotated.handle.close();
      }
    }
    // The saved file is gone: everything in the current one was written after it.
    for (const file of newer) if (file !== current) await file.handle.close();
    return false;
  }

  private async continueAt(file: OpenFile, offset: number): Promise<void> {
    const { size } = await file.handle.stat();
    file.offset = offset <= size ? offset : 0; // shorter than before: truncated meanwhile
  }

  private async openFile(path: string): Promise<OpenFile | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.report(error);
      return undefined;
    }
    try {
      const { ino } = await handle.stat({ bigint: true });
      this.lastProblem = undefined;
      return { handle, inode: String(ino), offset: 0, lineBytes: 0, kept: [], keptBytes: 0 };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  private async openCurrent(): Promise<OpenFile | undefined> {
    this.file = await this.openFile(this.path);
    return this.file;
  }

  /** (Re)watches the log's directory: once it exists, and again if it was replaced. */
  private async watchDirectory(): Promise<void> {
    const directory = dirname(this.path);
    const inode = await stat(directory, { bigint: true }).then(
      (stats) => stats.ino,
      () => undefined,
    );
    if (!this.running || (this.watcher && inode === this.watchedInode)) return;
    this.unwatch();
    if (inode === undefined) return; // not there yet: the poll looks again
    try {
      this.watcher = watch(directory, { persistent: false }, (_event, name) => {
        if (!name || name.startsWith(this.namePrefix)) this.wake();
      });
      this.watchedInode = inode;
      this.watcher.on('error', () => this.unwatch()); // e.g. the directory was removed: the poll re-watches
    } catch {
      // Removed again between stat and watch: the poll looks again.
    }
  }

  private unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watchedInode = undefined;
  }

  private wake(): void {
    if (!this.running) return;
    if (this.pumping) this.pumpAgain = true;
    else void this.run(() => this.pump());
  }

  /** One task at a time; a wake-up during one schedules one more pump after it. */
  private run(task: () => Promise<void>): Promise<void> {
    this.pumping = task()
      .catch((error: unknown) => this.report(error))
      .finally(() => {
        this.pumping = undefined;
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.wake();
        }
      });
    return this.pumping;
  }

  /** Reads everything available, then moves on to the next file or follows a rotation or truncation. */
  private async pump(): Promise<void> {
    while (this.running) {
      const file = this.file ?? (await this.openCurrent());
      if (!file) return;
      await this.drain(file);
      const next = this.backlog.shift();
      if (next) {
        await this.finish(file);
        this.file = next;
        continue;
      }
      const current = statSync(this.path, { bigint: true, throwIfNoEntry: false });
      if (!current) return; // renamed away and not re-created yet: keep the old file open, it may still grow
      if (String(current.ino) !== file.inode) {
        await this.drain(file); // a last write to the old file after the rename
        // Rotated more than once since we looked: the files in between wait in .1, .2 … Looked up while
        // ours is still open, so its inode number cannot have been reused by a newer file.
        this.file = undefined;
        if (await this.resume({ inode: file.inode, offset: file.offset })) await file.handle.close();
        else await this.finish(file); // gone (rotated past the last generation): its unfinished line is a line too
        continue;
      }
      if (current.size < BigInt(file.offset + file.lineBytes)) {
        this.startOver(file); // truncated
        continue;
      }
      return;
    }
  }

  private startOver(file: OpenFile): void {
    Object.assign(file, { offset: 0, lineBytes: 0, kept: [], keptBytes: 0, fingerprint: undefined });
  }

  /**
   * Whether the bytes before our read position are still the ones we read: a file truncated and written
   * past our offset again before we looked is not shorter, only different.
   */
  private unchanged(file: OpenFile): boolean {
    const expected = file.fingerprint;
    if (!expected) return true;
    const bytesRead = readSync(file.handle.fd, this.fingerprintBuffer, 0, expected.length, file.offset + file.lineBytes - expected.length);
    return bytesRead === expected.length && this.fingerprintBuffer.subarray(0, bytesRead).equals(expected);
  }

  /**
   * Reads are synchronous: the bytes were just written and sit in the page cache (microseconds), while
   * each read through the libuv thread pool costs two thread wake-ups, which a busy machine delays by
   * milliseconds (the daemon's event-to-kernel tail).
   */
  private async drain(file: OpenFile): Promise<void> {
    if (!this.unchanged(file)) this.startOver(file);
    while (this.running) {
      const bytesRead = readSync(file.handle.fd, this.buffer, 0, CHUNK, file.offset + file.lineBytes);
      // Truncated and refilled while we read: these may be new bytes at an old offset. Read again from 0.
      if (bytesRead > 0 && !this.unchanged(file)) {
        this.startOver(file);
        continue;
      }
      if (bytesRead >= FINGERPRINT_BYTES || (bytesRead > 0 && !file.fingerprint)) {
        file.fingerprint = Buffer.from(this.buffer.subarray(bytesRead - Math.min(bytesRead, FINGERPRINT_BYTES), bytesRead));
      } else if (bytesRead > 0) {
        file.fingerprint = Buffer.concat([file.fingerprint!, this.buffer.subarray(0, bytesRead)]).subarray(-FINGERPRINT_BYTES);
      }
      this.consume(file, this.buffer.subarray(0, bytesRead));
      if (bytesRead < CHUNK) return; // at the end for now
      await setImmediate(); // a long backlog: the event loop (status page, stop) gets a turn between chunks
    }
  }

  /** A file we move away from will not get more: its unterminated last line is a line too. */
  private async finish(file: OpenFile): Promise<void> {
    if (file.lineBytes > 0 && this.running) this.deliver(file, Buffer.alloc(0), 0);
    await file.handle.close();
  }

  private consume(file: OpenFile, chunk: Buffer): void {
    let start = 0;
    for (let newline = chunk.indexOf(NEWLINE); newline >= 0 && this.running; newline = chunk.indexOf(NEWLINE, start)) {
      this.deliver(file, chunk.subarray(start, newline), 1);
      start = newline + 1;
    }
    // Stopped by a listener: the rest is read again from `offset` on the next start.
    if (!this.running) return;
    const rest = chunk.subarray(start);
    const room = this.maxLineBytes - file.keptBytes;
    if (room > 0 && rest.length > 0) {
      const kept = Buffer.from(rest.subarray(0, room)); // a copy: the read buffer is reused
      file.kept.push(kept);
      file.keptBytes += kept.length;
    }
    file.lineBytes += rest.length;
  }

  /** Emits the unfinished line completed by `last` (the bytes before its newline). */
  private deliver(file: OpenFile, last: Buffer, newlineBytes: number): void {
    const lineBytes = file.lineBytes + last.length;
    const bytes = file.kept.length === 0 ? last : Buffer.concat([...file.kept, last]);
    let end = Math.min(lineBytes, this.maxLineBytes);
    if (lineBytes > this.maxLineBytes) this.truncatedLines++;
    else if (bytes[end - 1] === CARRIAGE_RETURN) end--;
    file.offset += lineBytes + newlineBytes;
    file.lineBytes = 0;
    file.kept = [];
    file.keptBytes = 0;
    // toString replaces invalid UTF-8 with U+FFFD, never throws.
    this.emit('line', bytes.toString('utf8', 0, end), { inode: file.inode, offset: file.offset });
  }
}

const PLEX_LOG = join('Plex Media Server', 'Logs', 'Plex Media Server.log');
const APPLICATION_SUPPORT = join('Library', 'Application Support');

/** Where Plex Media Server writes its log, per packaging (PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR first). */
export function defaultPlexLogPaths(): string[] {
  const configured = process.env.PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR;
  return [
    ...(configured ? [join(configured, PLEX_LOG)] : []),
    join('/var/lib/plexmediaserver', APPLICATION_SUPPORT, PLEX_LOG), // Debian/Ubuntu and Fedora/RPM packages
    join('/config', APPLICATION_SUPPORT, PLEX_LOG), // Docker: linuxserver/plex, plexinc/pms-docker
    join('/var/snap/plexmediaserver/common', APPLICATION_SUPPORT, PLEX_LOG), // snap
  ];
}

/** The first existing log among the candidates (a one-off lookup at startup). */
export function findPlexLog(candidates = defaultPlexLogPaths()): string | undefined {
  return candidates.find((candidate) => {
    try {
      return statSync(candidate).isFile();
    } catch {
      return false;
    }
  });
}
