/**
 * Policy: who gets throttled and how much — the knobs Plex owners ask for most. Exempt networks, "remote
 * streams only", per-user and per-network overrides, and time-of-day schedules for the server ceiling.
 */
import { NetworkSet } from '../lib/address.js';
import { parseRate } from '../lib/tc/units.js';
import type { PlaybackEvent } from './parse.js';

/** Rates in bits per second. */
export interface Limits {
  rate: number;
  ceil: number;
}

export interface RateConfig {
  rate: string | number;
  ceil?: string | number;
}

export interface OverrideConfig extends RateConfig {
  /** Plex user name as logged ("Signed-in Token (remi)"), case-insensitive. */
  user?: string;
  /** Client network (CIDR). */
  network?: string;
}

export interface ScheduleConfig {
  /** "18:00" … "23:00" local time; an end before the start wraps past midnight. */
  from: string;
  to: string;
  /** Days the window applies (0 = Sunday); default every day. */
  days?: number[];
  server: RateConfig;
}

export interface PolicyConfig {
  client: RateConfig;
  server: RateConfig;
  exempt: string[];
  /** Throttle only streams that leave the local network. */
  remoteOnly: boolean;
  /** What counts as local when Plex's own label does not say (remoteOnly). */
  localNetworks: string[];
  overrides: OverrideConfig[];
  schedules: ScheduleConfig[];
}

export function toLimits(config: RateConfig): Limits {
  const rate = parseRate(config.rate) * 8;
  return { rate, ceil: config.ceil === undefined ? rate : parseRate(config.ceil) * 8 };
}

export interface Verdict {
  /** Why the client is never throttled, when it is not. */
  exempt?: string;
  limits?: Limits;
}

interface CompiledOverride {
  user?: string;
  network?: NetworkSet;
  limits: Limits;
}

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

/** Plex labels its own view of the client network: "WAN" is remote; "Subnet"/"LAN" labels are local. */
function plexSaysLocal(network: string | undefined): boolean | undefined {
  if (!network) return undefined;
  if (/\bWAN\b/i.test(network)) return false;
  if (/subnet|lan|local/i.test(network)) return true;
  return undefined;
}

export class Policy {
  private readonly exempt: NetworkSet;
  private readonly local: NetworkSet;
  private readonly overrides: CompiledOverride[];
  private readonly schedules: CompiledSchedule[];
  readonly defaults: Limits;
  readonly server: Limits;

  constructor(private readonly config: PolicyConfig) {
    this.exempt = new NetworkSet(config.exempt);
    this.local = new NetworkSet(config.localNetworks);
    this.defaults = toLimits(config.client);
    this.server = toLimits(config.server);
    this.overrides = config.overrides.map((override) => {
      const compiled: CompiledOverride = { limits: toLimits(override) };
      if (override.user !== undefined) compiled.user = override.user.toLowerCase();
      if (override.network !== undefined) compiled.network = new NetworkSet([override.network]);
      return compiled;
    });
    this.schedules = config.schedules.map((schedule) => {
      const compiled: CompiledSchedule = { fromMinute: minuteOfDay(schedule.from), toMinute: minuteOfDay(schedule.to), server: toLimits(schedule.server) };
      if (schedule.days) compiled.days = new Set(schedule.days);
      return compiled;
    });
  }

  /** Whether and how a client should be throttled, given what its log line says. */
  limitsFor(client: Pick<PlaybackEvent, 'address'> & { user?: string; network?: string }): Verdict {
    if (this.exempt.contains(client.address)) return { exempt: 'exempt network' };
    if (this.config.remoteOnly) {
      const local = plexSaysLocal(client.network) ?? this.local.contains(client.address);
      if (local) return { exempt: 'local stream (remoteOnly)' };
    }
    const user = client.user?.toLowerCase();
    const override =
      this.overrides.find((candidate) => candidate.user !== undefined && candidate.user === user && (!candidate.network || candidate.network.contains(client.address))) ??
      this.overrides.find((candidate) => candidate.user === undefined && candidate.network?.contains(client.address));
    return { limits: override?.limits ?? this.defaults };
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
