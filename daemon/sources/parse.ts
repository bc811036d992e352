/**
 * Parse: Plex Media Server log lines → typed playback events. Pure and synchronous; never throws.
 *
 * Only `Request:` lines of playback endpoints matter. Everything else (library browsing, thumbnails,
 * websockets, other log lines, garbage) is rejected with two indexOf checks before any regex runs.
 * Query strings are read for identity, state and the bitrate cap but never copied into events: tokens
 * cannot leak.
 */
import { NetworkSet, parseClientAddress } from '../../lib/index.js';
import type { PlaybackEvent, PlaybackKind } from './source.js';

export interface ParserOptions {
  /** Reverse proxies whose X-Forwarded-For / X-Real-IP header names the real client. */
  trustedProxies?: readonly string[];
}

export interface ParserStats {
  lines: number;
  playback: number;
  /** Lines that are not playback (the vast majority). */
  ignored: number;
  /** Request lines of a playback endpoint that could not be understood. */
  malformed: number;
}

type Classifier = (query: URLSearchParams) => PlaybackKind | undefined;

const timelineStates: Record<string, PlaybackKind> = { playing: 'progress', buffering: 'progress', paused: 'pause', stopped: 'stop' };

/** Playback endpoints, first match wins. Anything not listed is not playback. */
const playbackRules: Array<{ pattern: RegExp; kind: Classifier }> = [
  { pattern: /^\/(?:video|music)\/:\/transcode\/universal\/(?:decision|start(?:\.m3u8|\.mpd)?)$/, kind: () => 'start' },
  { pattern: /^\/(?:video|music)\/:\/transcode\/universal\/(?:ping|session\/[^/]+\/.+)$/, kind: () => 'progress' },
  { pattern: /^\/(?:video|music)\/:\/transcode\/universal\/stop$/, kind: () => 'stop' },
  { pattern: /^\/:\/timeline$/, kind: (query) => timelineStates[query.get('state') ?? ''] },
  // Direct play streams the media file itself; its indexes, subtitles and art are not playback.
  { pattern: /^\/library\/parts\/\d+\/\d+\/file(?:\.[\w]+)?$/, kind: () => 'start' },
];

/** Cheap pre-filter: a line must contain one of these before any regex work. */
const PLAYBACK_MARKERS = ['/transcode/universal/', '/:/timeline', '/library/parts/'];

const months: Record<string, number> = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };
const TIMESTAMP = /^([A-Z][a-z]{2}) (\d{1,2}), (\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?/;
// [address:port (label (nested))] METHOD /path?query
const REQUEST = /Request: \[(\[[^\]]+\]:\d+|[^\]\s(]+)(?: \(((?:[^()\]]|\([^()]*\))*)\))?\] [A-Z]+ (\/\S*)/;
const USER = /Signed-in(?: Token)? \(([^)]*)\)/;
const HEADER = / \/ ([A-Za-z][\w-]*) => (.*?)(?= \/ [A-Za-z][\w-]* => |$)/g;
/** Longer lines are not Plex request lines: ignored unread (the tailer keeps no more than this of one). */
export const MAX_LINE = 64 * 1024;

/**
 * A line's timestamp as Plex writes it (local time, no zone), as milliseconds of a clock without time
 * zone (Date.UTC of the fields): differences of these are what the wall clock showed, DST jumps included.
 */
export function plexWallClock(line: string): number | undefined {
  const match = TIMESTAMP.exec(line);
  const month = match ? months[match[1]!] : undefined;
  if (!match || month === undefined) return undefined;
  const [, , day, year, hours, minutes, seconds, millis] = match;
  return Date.UTC(Number(year), month, Number(day), Number(hours), Number(minutes), Number(seconds), Number((millis ?? '0').padEnd(3, '0')));
}

/** The instant a wall-clock reading names in this process's time zone (the earlier one when a DST change repeats it). */
export function localTime(wallClock: number): Date {
  const at = new Date(wallClock);
  return new Date(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate(), at.getUTCHours(), at.getUTCMinutes(), at.getUTCSeconds(), at.getUTCMilliseconds());
}

function splitAddress(text: string): { host: string; port: number } | undefined {
  // [v6]:port, v4:port, or an IPv6 address printed without brackets with the port after the last colon.
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) return { host: bracketed[1]!, port: Number(bracketed[2]) };
  const colon = text.lastIndexOf(':');
  if (colon < 0) return undefined;
  const port = Number(text.slice(colon + 1));
  if (!Number.isInteger(port) || port > 65535 || text.slice(colon + 1) === '') return undefined;
  return { host: text.slice(0, colon), port };
}

function normalise(host: string): string | undefined {
  try {
    return parseClientAddress(host).text;
  } catch {
    return undefined;
  }
}

export class PlexLogParser {
  readonly stats: ParserStats = { lines: 0, playback: 0, ignored: 0, malformed: 0 };
  private readonly proxies: NetworkSet;

  constructor(options: ParserOptions = {}) {
    this.proxies = new NetworkSet(options.trustedProxies ?? []);
  }

  /** One event for a playback request line, undefined for anything else. Never throws. */
  parse(line: string): PlaybackEvent | undefined {
    this.stats.lines++;
    if (line.length > MAX_LINE || line.indexOf(' Request: [') < 0 || !PLAYBACK_MARKERS.some((marker) => line.includes(marker))) {
      this.stats.ignored++;
      return undefined;
    }
    try {
      const event = this.parseRequest(line);
      if (event === null) {
        this.stats.ignored++;
        return undefined;
      }
      if (!event) {
        this.stats.malformed++;
        return undefined;
      }
      this.stats.playback++;
      return event;
    } catch {
      this.stats.malformed++;
      return undefined;
    }
  }

  /** null: a well-formed request that is not playback; undefined: malformed. */
  private parseRequest(line: string): PlaybackEvent | null | undefined {
    const request = REQUEST.exec(line);
    if (!request) return undefined;
    const target = request[3]!;
    const queryAt = target.indexOf('?');
    const path = queryAt < 0 ? target : target.slice(0, queryAt);
    const rule = playbackRules.find((candidate) => candidate.pattern.test(path));
    if (!rule) return null;
    const query = new URLSearchParams(queryAt < 0 ? '' : target.slice(queryAt + 1));
    const kind = rule.kind(query);
    if (!kind) return null;

    const where = splitAddress(request[1]!);
    const peer = where && normalise(where.host);
    const wallClock = plexWallClock(line);
    const timestamp = wallClock === undefined ? undefined : localTime(wallClock);
    if (!where || !peer || !timestamp) return undefined;
    const rest = line.slice(request.index + request[0].length);
    const headers = this.headers(rest);
    const address = this.clientBehindProxy(peer, headers) ?? peer;

    const session = query.get('X-Plex-Session-Identifier') ?? query.get('session') ?? headers.get('x-plex-session-identifier') ?? sessionFromPath(path);
    const device = query.get('X-Plex-Client-Identifier') ?? headers.get('x-plex-client-identifier');
    const event: PlaybackEvent = { kind, address, port: where.port, sessionKey: session || device || address, timestamp, path, source: 'log' };
    if (request[2]) {
      event.network = request[2];
      const local = plexSaysLocal(request[2]);
      if (local !== undefined) event.local = local;
    }
    const user = USER.exec(rest)?.[1];
    if (user) event.user = user;
    const maxVideoBitrate = kind === 'start' && path.includes('/transcode/') ? kbitPerSecond(query.get('maxVideoBitrate')) : undefined;
    if (maxVideoBitrate !== undefined) event.maxVideoBitrate = maxVideoBitrate;
    return event;
  }

  /** Inline headers (2021+ servers): ` / Name => value`, names lower-cased. */
  private headers(rest: string): Map<string, string> {
    const found = new Map<string, string>();
    if (rest.indexOf(' => ') < 0) return found;
    for (const match of rest.matchAll(HEADER)) found.set(match[1]!.toLowerCase(), match[2]!.trim());
    return found;
  }

  /** Behind a trusted proxy, the client is the right-most X-Forwarded-For hop that is not a proxy. */
  private clientBehindProxy(peer: string, headers: Map<string, string>): string | undefined {
    if (this.proxies.size === 0 || !this.proxies.contains(peer)) return undefined;
    const forwarded = headers.get('x-forwarded-for');
    if (forwarded) {
      const hops = forwarded
        .split(',')
        .map((hop) => normalise(hop.trim()))
        .filter((hop): hop is string => hop !== undefined);
      for (let index = hops.length - 1; index >= 0; index--) {
        if (!this.proxies.contains(hops[index]!)) return hops[index];
      }
      return hops[0];
    }
    const realIp = headers.get('x-real-ip');
    return realIp ? normalise(realIp) : undefined;
  }
}

/** A positive whole number of kbit/s as bits/s; anything else (absent, 0, garbage) says nothing. */
function kbitPerSecond(text: string | null): number | undefined {
  if (text === null || !/^\d{1,9}$/.test(text)) return undefined;
  const kbit = Number(text);
  return kbit > 0 ? kbit * 1000 : undefined;
}

/** Plex labels its own view of the client network: "WAN" is remote; "Subnet"/"LAN" labels are local. */
function plexSaysLocal(network: string): boolean | undefined {
  if (/\bWAN\b/i.test(network)) return false;
  if (/subnet|lan|local/i.test(network)) return true;
  return undefined;
}

function sessionFromPath(path: string): string | undefined {
  return /\/transcode\/universal\/session\/([^/]+)\//.exec(path)?.[1];
}
