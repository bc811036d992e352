/**
 * Policy: who gets throttled and how much — the knobs Plex owners ask for most. Exempt networks, "remote
 * streams only", per-user and per-network overrides, and time-of-day schedules for the server ceiling.
 */
import { type BitsPerSecond, NetworkSet } from '../../lib/index.js';
import {
  DEFAULT_AUTO_MAX,
  DEFAULT_AUTO_MIN,
  DEFAULT_DIRECT_PLAY_HEADROOM,
  DEFAULT_HEADROOM,
  type OverrideSource,
  type PolicyConfig,
  type RateConfig,
} from '../config.js';

export interface Limits {
  rate: BitsPerSecond;
  ceil: BitsPerSecond;
}

/** What one playing stream needs, as far as a source knows it (bits per second). */
export interface StreamNeed {
  /** The server's reservation for the stream (Plex's Session.bandwidth, Jellyfin's transcode bitrate). */
  bandwidth?: number;
  /** Which source said so ('plex', 'jellyfin'…): the decision's text names it. */
  source?: string;
  /** The media's average bitrate. */
  mediaBitrate?: number;
  /** The video bitrate cap of a transcode start request in the log (`maxVideoBitrate`). */
  maxVideoBitrate?: number;
  /** Direct play sends the file as it is (no transcoder): a bigger headroom over its average. */
  directPlay?: boolean;
}

export function toLimits(config: RateConfig): Limits {
  return { rate: config.rate, ceil: config.ceil ?? config.rate };
}

export interface Verdict {
  /** Why the client is never throttled, when it is not. */
  exempt?: string;
  limits?: Limits;
  /** Which rate was chosen and why. */
  why?: string;
}

interface AutoRate {
  headroom: number;
  directPlayHeadroom: number;
  min: number;
  max: number;
  /** Ceil follows the rate (`ceil: auto`), else this fixed ceil (at least the rate). */
  ceil: number | 'auto';
}

const mbit = (bits: number): string => `${(bits / 1e6).toFixed(2)} Mbit/s`;
/** Rounded up to 10 kbit/s: small wobbles of a reported bandwidth change nothing in the kernel. */
const roundUp = (bits: number): number => Math.ceil(bits / 1e4) * 1e4;

interface CompiledOverride {
  user?: string;
  network?: NetworkSet;
  source?: OverrideSource;
  limits: Limits;
}

/** The server behind a source's events: the Plex log is Plex's. */
const serverOf = (source: string): string => (source === 'log' ? 'plex' : source);

/** The first override that applies wins, the most specific first: a user's before a network's, one naming the source before one that does not. */
const specificity = (override: CompiledOverride): number => (override.user === undefined ? 2 : 0) + (override.source === undefined ? 1 : 0);

const capitalised = (name: string): string => name.charAt(0).toUpperCase() + name.slice(1);

interface CompiledSchedule {
  fromMinute: number;
  toMinute: number;
  days?: Set<number>;
  server: Limits;
}

function minuteOfDay(text: string): number {
  const match = /^(\d{1,2}):(\d{2})$/.exec(text.trim());
  const hours = Number(match?.[1]);
  const minutes = Number(match?.[2]);
  if (!match || hours > 24 || minutes > 59 || (hours === 24 && minutes > 0)) throw new Error(`invalid time of day ${JSON.stringify(text)}: expected HH:MM`);
  return hours * 60 + minutes;
}

/** Who a verdict is for: the client, what its source says of its network, what its streams need. */
export interface PolicyInput {
  address: string;
  user?: string;
  /** The server says the client is local (true) or remote (false); undefined: localNetworks decide. */
  local?: boolean;
  /** The sources that see the client playing ('log', 'plex', 'jellyfin'…): overrides naming a source match on them. */
  sources?: readonly string[];
  streams?: readonly StreamNeed[];
}

export class Policy {
  private readonly exempt: NetworkSet;
  private readonly local: NetworkSet;
  private readonly overrides: CompiledOverride[];
  private readonly schedules: CompiledSchedule[];
  readonly defaults: Limits;
  /** Set with `client.rate: auto`. */
  private readonly auto?: AutoRate;
  readonly server: Limits;

  constructor(private readonly config: PolicyConfig) {
    this.exempt = new NetworkSet(config.exempt);
    this.local = new NetworkSet(config.localNetworks);
    const { client } = config;
    if (client.rate === 'auto') {
      const max = client.max ?? DEFAULT_AUTO_MAX;
      this.auto = {
        headroom: client.headroom ?? DEFAULT_HEADROOM,
        directPlayHeadroom: client.directPlayHeadroom ?? DEFAULT_DIRECT_PLAY_HEADROOM,
        min: client.min ?? DEFAULT_AUTO_MIN,
        max,
        ceil: client.ceil ?? max,
      };
      // A stream whose need is not known yet gets the most a stream may have (never starved at start).
      this.defaults = { rate: max, ceil: this.auto.ceil === 'auto' ? max : Math.max(this.auto.ceil, max) };
    } else {
      if (client.ceil === 'auto') throw new Error("ceil: auto needs rate: auto (a fixed rate's ceil is a rate)");
      this.defaults = toLimits({ rate: client.rate, ceil: client.ceil ?? client.rate });
    }
    this.server = toLimits(config.server);
    this.overrides = config.overrides
      .map((override) => {
        const compiled: CompiledOverride = { limits: toLimits(override) };
        if (override.user !== undefined) compiled.user = override.user.toLowerCase();
        if (override.network !== undefined) compiled.network = new NetworkSet([override.network]);
        if (override.source !== undefined) compiled.source = override.source;
        return compiled;
      })
      .sort((a, b) => specificity(a) - specificity(b));
    this.schedules = config.schedules.map((schedule) => {
      const compiled: CompiledSchedule = { fromMinute: minuteOfDay(schedule.from), toMinute: minuteOfDay(schedule.to), server: toLimits(schedule.server) };
      if (schedule.days) compiled.days = new Set(schedule.days);
      return compiled;
    });
  }

  /** Whether and how a client should be throttled, given what its source says and what its streams need. */
  limitsFor(client: PolicyInput): Verdict {
    if (this.exempt.contains(client.address)) return { exempt: 'exempt network' };
    if (this.config.remoteOnly) {
      const local = client.local ?? this.local.contains(client.address);
      if (local) return { exempt: 'local stream (remoteOnly)' };
    }
    const user = client.user?.toLowerCase();
    const servers = new Set((client.sources ?? []).map(serverOf));
    const override = this.overrides.find(
      (candidate) =>
        (candidate.user === undefined || candidate.user === user) &&
        (!candidate.network || candidate.network.contains(client.address)) &&
        (!candidate.source || servers.has(candidate.source)),
    );
    if (override)
      return {
        limits: override.limits,
        why: `override (${override.user ? `user ${override.user}` : 'network'}${override.source ? ` on ${override.source}` : ''})`,
      };
    if (!this.auto) return { limits: this.defaults, why: 'fixed client rate' };
    return this.autoLimits(client.streams ?? []);
  }

  /** `rate: auto`: the streams' needs × headroom, added up, clamped to min/max. */
  private autoLimits(streams: readonly StreamNeed[]): Verdict {
    const auto = this.auto!;
    const parts: string[] = [];
    let wanted = 0;
    for (const stream of streams) {
      const [need, what] =
        stream.bandwidth !== undefined
          ? [stream.bandwidth, `${stream.source ? capitalised(serverOf(stream.source)) : 'server'} bandwidth`]
          : stream.maxVideoBitrate !== undefined
            ? [stream.maxVideoBitrate, 'maxVideoBitrate of the transcode request']
            : [stream.mediaBitrate, 'media bitrate'];
      if (need === undefined) continue;
      const headroom = stream.directPlay ? auto.directPlayHeadroom : auto.headroom;
      wanted += need * headroom;
      parts.push(`${mbit(need)} ${what} × ${headroom}${stream.directPlay ? ' (direct play)' : ''}`);
    }
    if (parts.length === 0) return { limits: this.defaults, why: 'auto: stream need unknown, max rate' };
    const rate = roundUp(Math.min(auto.max, Math.max(auto.min, wanted)));
    const ceil = auto.ceil === 'auto' ? rate : Math.max(auto.ceil, rate);
    const clamped = wanted > auto.max ? ', clamped to max' : wanted < auto.min ? ', raised to min' : '';
    return { limits: { rate, ceil }, why: `auto: ${parts.join(' + ')} = ${mbit(wanted)}${clamped}` };
  }

  /** The server-wide limits in force at `date` (the first schedule that covers it, else the default). */
  serverLimitsAt(date: Date): Limits {
    const minute = date.getHours() * 60 + date.getMinutes();
    const day = date.getDay();
    const active = this.schedules.find((schedule) => {
      const wraps = schedule.toMinute <= schedule.fromMinute;
      const inside = wraps ? minute >= schedule.fromMinute || minute < schedule.toMinute : minute >= schedule.fromMinute && minute < schedule.toMinute;
      // A window wrapping past midnight belongs to the day it started on.
      const startDay = wraps && minute < schedule.toMinute ? (day + 6) % 7 : day;
      return inside && (!schedule.days || schedule.days.has(startDay));
    });
    return active?.server ?? this.server;
  }
}
