/**
 * The Plex log as an event source: the tail follows the file, the parser turns its playback request lines
 * into events. Its read position is what a restart resumes from (saved in the state file).
 */
import { MAX_LINE, type ParserStats, PlexLogParser } from './parse.js';
import type { PlaybackSource, SourceContext, SourceStatus } from './source.js';
import { LogTailer, type SavedPosition } from './tail.js';

export interface LogSourceOptions extends SourceContext {
  path: string;
  /** Reverse proxies whose X-Forwarded-For names the real client. */
  trustedProxies: readonly string[];
}

export class LogSource implements PlaybackSource {
  readonly name = 'log';
  private readonly parser: PlexLogParser;
  private readonly tailer: LogTailer;
  private running = false;
  private lastError?: string;

  constructor(private readonly options: LogSourceOptions) {
    this.parser = new PlexLogParser({ trustedProxies: options.trustedProxies });
    // Cut at 4 bytes per character of the parser's limit, a line is still too long for it (UTF-8 has at most
    // 4 bytes per UTF-16 unit): a 1 MB garbage line then costs 256 KB, not 3 MB.
    this.tailer = new LogTailer({ path: options.path, from: options.resumeAt ?? 'end', maxLineBytes: 4 * (MAX_LINE + 1) });
    this.tailer.on('line', (line: string) => {
      const event = this.parser.parse(line);
      if (event) options.onEvent(event);
    });
    this.tailer.on('error', (error: Error) => {
      this.lastError = error.message;
      options.logger.warn({ err: error.message }, 'log tail problem');
    });
  }

  async start(): Promise<void> {
    this.running = true;
    await this.tailer.start();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.tailer.stop();
  }

  position(): SavedPosition | undefined {
    return this.tailer.position();
  }

  get parserStats(): ParserStats {
    return this.parser.stats;
  }

  status(): SourceStatus {
    const status: SourceStatus = {
      source: this.name,
      target: this.options.path,
      state: this.running ? 'following' : 'stopped',
      sessions: 0,
      skipped: [],
      counters: { ...this.parser.stats, truncatedLines: this.tailer.truncatedLines },
    };
    if (this.lastError) status.lastError = this.lastError;
    return status;
  }

  /** The log names every stream it sees with its client's address: none is left without a pipe. */
  reservedBandwidth(): number {
    return 0;
  }
}
