/**
 * Tail: follows `Plex Media Server.log` the way Plex writes it — appends, rotation (the file is renamed
 * to `Plex Media Server.1.log` and a new one created), truncation, a file or directory that appears late.
 *
 * Positions are inode + byte offset of the end of the last delivered line, so a restart resumes exactly
 * (also inside multi-byte UTF-8, and across a rotation that happened while the daemon was down). A
 * directory watch wakes the reader within milliseconds; a slow poll covers missed or coalesced events.
 */
import { EventEmitter } from 'node:events';
import { type FSWatcher, watch } from 'node:fs';
import { type FileHandle, open, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface SavedPosition {
  /** As a string: inodes can exceed 2^53. */
  inode: string | number | bigint;
  offset: number;
}

export interface LogTailerOptions {
  path: string;
  /** 'end' (default): only what is written from now on; 'start': the whole file; or a saved position. */
  from?: 'end' | 'start' | SavedPosition;
  /** Safety poll besides the directory watch. */
  pollIntervalMs?: number;
  /** Longer lines are cut to this size (and counted), so memory stays bounded. */
  maxLineBytes?: number;
}

interface OpenFile {
  handle: FileHandle;
  inode: bigint;
  /** Byte offset just after the last complete line delivered. */
  offset: number;
  /** Bytes read past `offset` that do not end in a newline yet. */
  partial: Buffer[];
  partialBytes: number;
  /** True while skipping the rest of an over-long line. */
  skipping: boolean;
}

const CHUNK = 64 * 1024;
const NEWLINE = 0x0a;

/** `Plex Media Server.log` → `Plex Media Server.1.log`, where Plex puts it on rotation. */
export const rotatedPath = (path: string): string => path.replace(/(\.log)?$/, '.1$1');

export declare interface LogTailer {
  on(event: 'line', listener: (line: string, position: SavedPosition) => void): this;
  on(event: 'error', listener: (error: Error) => void): this;
}

export class LogTailer extends EventEmitter {
  private file?: OpenFile;
  private watcher?: FSWatcher;
  private poll?: NodeJS.Timeout;
  private running = false;
  private pumping?: Promise<void>;
  private pumpAgain = false;
  private readonly buffer = Buffer.allocUnsafe(CHUNK);
  private readonly maxLineBytes: number;
  /** Lines cut at maxLineBytes. */
  truncatedLines = 0;

  constructor(private readonly options: LogTailerOptions) {
    super();
    this.maxLineBytes = options.maxLineBytes ?? 1 << 20;
  }

  /** Resolves once the starting position is fixed: lines written after that are delivered. */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.poll = setInterval(() => this.wake(), this.options.pollIntervalMs ?? 500);
    this.run(() => this.begin());
    await this.pumping;
  }

  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.poll);
    this.watcher?.close();
    this.watcher = undefined;
    await this.pumping;
    await this.file?.handle.close();
    this.file = undefined;
  }

  /** Where the next line starts (undefined before the file was first seen). */
  position(): SavedPosition | undefined {
    return this.file && { inode: this.file.inode.toString(), offset: this.file.offset };
  }

  private report(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    if (this.listenerCount('error') > 0) this.emit('error', new Error(`${this.options.path}: ${message}`));
  }

  private async begin(): Promise<void> {
    const from = this.options.from ?? 'end';
    if (typeof from === 'object') await this.resume(from);
    else {
      const opened = await this.openCurrent();
      if (opened && from === 'end') {
        opened.offset = (await opened.handle.stat()).size;
        // A partial last line at the end belongs to the past too: skip to its newline.
        opened.skipping = opened.offset > 0 && !(await this.endsWithNewline(opened));
      }
    }
    this.ensureWatch();
    await this.pump();
  }

  private async endsWithNewline(file: OpenFile): Promise<boolean> {
    const { bytesRead } = await file.handle.read(this.buffer, 0, 1, file.offset - 1);
    return bytesRead === 1 && this.buffer[0] === NEWLINE;
  }

  /** After a restart: continue the saved inode (possibly rotated away to .1.log), then the current file. */
  private async resume(saved: SavedPosition): Promise<void> {
    const inode = BigInt(saved.inode);
    for (const candidate of [this.options.path, rotatedPath(this.options.path)]) {
      const opened = await this.openFile(candidate);
      if (!opened) continue;
      if (opened.inode !== inode) {
        await opened.handle.close();
        continue;
      }
      const size = (await opened.handle.stat()).size;
      opened.offset = saved.offset <= size ? saved.offset : 0; // shorter than before: truncated meanwhile
      this.file = opened;
      return;
    }
    // The saved file is gone: everything in the current one was written after it.
    await this.openCurrent();
  }

  private async openFile(path: string): Promise<OpenFile | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.report(error);
      return undefined;
    }
    const { ino } = await handle.stat({ bigint: true });
    return { handle, inode: ino, offset: 0, partial: [], partialBytes: 0, skipping: false };
  }

  private async openCurrent(): Promise<OpenFile | undefined> {
    this.file = await this.openFile(this.options.path);
    return this.file;
  }

  /** Watches the log's directory (or, until it exists, relies on the poll). */
  private ensureWatch(): void {
    if (this.watcher || !this.running) return;
    try {
      const name = basename(this.options.path);
      this.watcher = watch(dirname(this.options.path), { persistent: false }, (_event, changed) => {
        if (!changed || changed === name || changed === basename(rotatedPath(this.options.path))) this.wake();
      });
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = undefined; // e.g. the directory was removed: the poll takes over and re-watches
      });
    } catch {
      // Directory missing: retried on every poll.
    }
  }

  private wake(): void {
    if (!this.running) return;
    this.ensureWatch();
    if (this.pumping) this.pumpAgain = true;
    else this.run(() => this.pump());
  }

  /** One read at a time; a wake-up during a read schedules one more read after it. */
  private run(task: () => Promise<void>): void {
    this.pumping = task()
      .catch((error: unknown) => this.report(error))
      .finally(() => {
        this.pumping = undefined;
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.wake();
        }
      });
  }

  /** Reads everything available, then follows a rotation or truncation if there was one. */
  private async pump(): Promise<void> {
    for (;;) {
      if (!this.running) return;
      if (!this.file && !(await this.openCurrent())) return;
      const file = this.file!;
      await this.drain(file);
      let current;
      try {
        current = await stat(this.options.path, { bigint: true });
      } catch {
        return; // renamed away and not re-created yet: keep the old file open, it may still grow
      }
      if (current.ino !== file.inode) {
        await this.drain(file); // a last write to the old file after the rename
        await file.handle.close();
        this.file = undefined;
        continue; // open the new file from its start
      }
      if (current.size < BigInt(file.offset + file.partialBytes)) {
        file.offset = 0; // truncated: start over
        file.partial = [];
        file.partialBytes = 0;
        file.skipping = false;
        continue;
      }
      return;
    }
  }

  private async drain(file: OpenFile): Promise<void> {
    for (;;) {
      const { bytesRead } = await file.handle.read(this.buffer, 0, CHUNK, file.offset + file.partialBytes);
      if (bytesRead === 0) return;
      this.consume(file, this.buffer.subarray(0, bytesRead));
    }
  }

  private consume(file: OpenFile, chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(NEWLINE, start);
      if (newline < 0) break;
      const piece = chunk.subarray(start, newline);
      const lineBytes = file.partialBytes + piece.length;
      const skipped = file.skipping;
      const line = skipped ? undefined : this.lineText(file.partial, piece);
      file.offset += lineBytes + 1;
      file.partial = [];
      file.partialBytes = 0;
      file.skipping = false;
      start = newline + 1;
      if (line !== undefined) this.emit('line', line, { inode: file.inode.toString(), offset: file.offset });
    }
    const rest = chunk.subarray(start);
    if (rest.length === 0) return;
    if (!file.skipping && file.partialBytes + rest.length > this.maxLineBytes) {
      // Keep the first maxLineBytes of an over-long line (delivered when its newline comes).
      const room = Math.max(0, this.maxLineBytes - file.partialBytes);
      file.partial.push(Buffer.from(rest.subarray(0, room)));
      this.truncatedLines++;
      file.skipping = true;
      this.emit('line', this.lineText(file.partial, Buffer.alloc(0)), { inode: file.inode.toString(), offset: file.offset });
      file.partial = [];
    }
    // Bytes are counted either way, so offsets stay exact; only kept bytes use memory.
    if (!file.skipping) file.partial.push(Buffer.from(rest));
    file.partialBytes += rest.length;
  }

  private lineText(parts: Buffer[], last: Buffer): string {
    const bytes = parts.length ? Buffer.concat([...parts, last]) : last;
    const end = bytes.length && bytes[bytes.length - 1] === 0x0d ? bytes.length - 1 : bytes.length;
    return bytes.toString('utf8', 0, Math.min(end, this.maxLineBytes));
  }
}

const PLEX_LOG = join('Library', 'Application Support', 'Plex Media Server', 'Logs', 'Plex Media Server.log');

/** Where Plex Media Server writes its log, per packaging. */
export function defaultPlexLogPaths(): string[] {
  return [
    join('/var/lib/plexmediaserver', PLEX_LOG), // Debian/Ubuntu and RPM packages
    join('/config', PLEX_LOG), // Docker: linuxserver/plex, plexinc/pms-docker
    join('/var/snap/plexmediaserver/common', PLEX_LOG), // snap
    join('/usr/local/plexdata/Plex Media Server/Logs/Plex Media Server.log'), // FreeBSD/TrueNAS-style installs
  ];
}

/** The first existing log among the candidates. */
export async function findPlexLog(candidates = defaultPlexLogPaths()): Promise<string | undefined> {
  for (const candidate of candidates) {
    try {
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}
