/**
 * shaperrd's configuration: YAML validated with zod. Every key has a documented default; a bad key or
 * value is refused at start with one message naming the key and the value.
 */
import { readFileSync, statSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { type BitsPerSecond, formatRate, NetworkSet, parseRate } from '../lib/index.js';
import { isLoopbackListen } from './support/listen.js';
import { isIP } from 'node:net';

// ---- what the policy reads (daemon/sessions/policy.ts), parsed -------------------------------------

/** Rates as the policy reads them: parsed here once, bits/s from here on. */
export interface RateConfig {
  rate: BitsPerSecond;
  ceil?: BitsPerSecond;
}

/** The media servers an override may name; the Plex log's events count as Plex's. */
export const overrideSources = ['plex', 'jellyfin', 'emby'] as const;
export type OverrideSource = (typeof overrideSources)[number];

export interface OverrideConfig extends RateConfig {
  /** The user name as the source gives it (Plex's log: "Signed-in Token (remi)"), case-insensitive. */
  user?: string;
  /** Client network (CIDR). */
  network?: string;
  /** Only clients this server sees playing; without it the override matches in any source. */
  source?: OverrideSource;
}

export interface ScheduleConfig {
  /** "18:00" … "23:00" local time; an end before the start wraps past midnight. */
  from: string;
  to: string;
  /** Days the window applies (0 = Sunday); default every day. */
  days?: number[];
  server: RateConfig;
}

/** The client pipe: a fixed rate, or `auto` (stream-aware: see StreamNeed). */
export interface ClientRateConfig {
  rate: BitsPerSecond | 'auto';
  ceil?: BitsPerSecond | 'auto';
  headroom?: number;
  directPlayHeadroom?: number;
  min?: BitsPerSecond;
  max?: BitsPerSecond;
}

export interface PolicyConfig {
  client: ClientRateConfig;
  server: RateConfig;
  exempt: string[];
  /** Throttle only streams that leave the local network. */
  remoteOnly: boolean;
  /** What counts as local when the source does not say (remoteOnly). */
  localNetworks: string[];
  overrides: OverrideConfig[];
  schedules: ScheduleConfig[];
}

/**
 * Headroom of a direct-played stream over its media's average bitrate. Measured (benchmarks/playback.ts,
 * results/playback-headroom.md, two runs): a VBR film peaking at 3× its average for 5 s, ExoPlayer's
 * buffering, the pipe's guarantee alone. Up to 1.5 a seek to a random position still rebuffered; from 1.75
 * only seeks landing right before the two heaviest passages did, for 10 s in all at 1.75 and 4–6 s at 2;
 * 2.5 avoided even those, at a guarantee a quarter larger.
 */
export const DEFAULT_DIRECT_PLAY_HEADROOM = 2;

/** `rate: auto`: a stream's pipe over what it needs (direct play has its own, above), when the config names none. */
export const DEFAULT_HEADROOM = 1.25;

/** `rate: auto` bounds when the config names none: 1 and 20 Mbit/s. */
export const DEFAULT_AUTO_MIN: BitsPerSecond = 1e6;
export const DEFAULT_AUTO_MAX: BitsPerSecond = 20e6;

/** A rate as written (`2mbit`, or bits/s), parsed here once: the rest of the daemon holds bits/s. */
const rate = z.union([z.string(), z.number()]).transform((value, context) => {
  try {
    return parseRate(value);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

const rates = z.strictObject({ rate, ceil: rate.optional() });

/** A UDP echo service beyond the modem (`probe: address:port`), for the automatic ceiling's probe. */
export interface UdpProbeTarget {
  host: string;
  port: number;
  /** As written ("198.51.100.7:7", "[2001:db8::7]:7"), for messages. */
  text: string;
}

/** "address:port" (IPv6 in brackets) → target; throws naming the problem. */
function parseProbeTarget(text: string): UdpProbeTarget {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  const port = Number(match?.[2]);
  if (!match || !isIP(match[1]!) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid probe target ${JSON.stringify(text)}: expected address:port of a UDP echo service, e.g. 198.51.100.7:7 or [2001:db8::7]:7`);
  }
  return { host: match[1]!, port, text };
}

/**
 * The server ceiling: a fixed rate (and ceil), or `auto` — it follows the uplink between `min` and `max`
 * (the plan's upload rate), from the queueing delay Plex's own connections see beyond the host (`signal:
 * plex`, the default) or a UDP echo service beyond the modem (`signal: probe`, `probe: address:port`).
 */
const serverRates = z
  .strictObject({
    rate: z.union([z.literal('auto'), rate]),
    ceil: rate.optional(),
    min: rate.optional(),
    max: rate.optional(),
    /** Where `auto` starts when the state file holds no last good ceiling; default max. */
    start: rate.optional(),
    signal: z.enum(['plex', 'probe']).optional(),
    probe: z
      .string()
      .transform((value, context) => {
        try {
          return parseProbeTarget(value);
        } catch (error) {
          context.addIssue({ code: 'custom', message: (error as Error).message });
          return z.NEVER;
        }
      })
      .optional(),
  })
  .superRefine((server, context) => {
    const problem = (key: string, message: string) => context.addIssue({ code: 'custom', path: [key], message });
    if (server.rate !== 'auto') {
      for (const key of ['min', 'max', 'start', 'signal', 'probe'] as const)
        if (server[key] !== undefined) problem(key, `${key} belongs to rate: auto (the rate is fixed at ${formatRate(server.rate)})`);
      return;
    }
    if (server.ceil !== undefined) problem('ceil', 'rate: auto sets the ceil itself (leave ceil out)');
    if (server.min === undefined) problem('min', 'rate: auto needs min (the least the ceiling may fall to)');
    if (server.max === undefined) problem('max', "rate: auto needs max (the plan's upload rate)");
    if (server.min === undefined || server.max === undefined) return;
    if (server.min > server.max) problem('min', `min is above max (${formatRate(server.max)})`);
    if (server.start !== undefined && (server.start < server.min || server.start > server.max))
      problem('start', `start must lie between min (${formatRate(server.min)}) and max (${formatRate(server.max)})`);
    if (server.signal === 'probe' && server.probe === undefined)
      problem('probe', 'signal: probe needs probe: address:port of a UDP echo service beyond the modem');
  });

/**
 * A client's pipe: a fixed rate, or `auto` — what the stream needs (Plex's Session.bandwidth, else the
 * media bitrate) × headroom, clamped to min/max; ceil defaults to max (`auto`: the same as the rate).
 */
const clientRates = z
  .strictObject({
    rate: z.union([z.literal('auto'), rate]),
    ceil: z.union([z.literal('auto'), rate]).optional(),
    headroom: z.number().min(1).max(10).default(DEFAULT_HEADROOM),
    /**
     * Direct play sends the file as it is: its peaks sit well above the average bitrate Plex reports.
     * Default 2, measured: from 1.75 only seeks straight into a film’s heaviest passages (3× its
     * average for 5 s) still rebuffered, at 2 for half as long (see DEFAULT_DIRECT_PLAY_HEADROOM).
     */
    directPlayHeadroom: z.number().min(1).max(10).default(DEFAULT_DIRECT_PLAY_HEADROOM),
    min: rate.default(DEFAULT_AUTO_MIN),
    max: rate.default(DEFAULT_AUTO_MAX),
  })
  .superRefine((client, context) => {
    if (client.rate !== 'auto' && client.ceil === 'auto')
      context.addIssue({ code: 'custom', path: ['ceil'], message: "ceil: auto needs rate: auto (a fixed rate's ceil is a rate)" });
    if (client.min > client.max) context.addIssue({ code: 'custom', path: ['min'], message: `min is above max (${formatRate(client.max)})` });
  });

const cidr = z.string().superRefine((value, context) => {
  try {
    new NetworkSet([value]);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
  }
});

/** A media server's base URL: http(s), no query or credentials (its key has its own settings). */
const serverUrl = (example: string, keySettings: string) =>
  z.string().superRefine((value, context) => {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      return context.addIssue({ code: 'custom', message: `expected a URL such as ${example}` });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') context.addIssue({ code: 'custom', message: 'expected an http:// or https:// URL' });
    if (url.search || url.username || url.password)
      context.addIssue({ code: 'custom', message: `the URL must carry no query or credentials: put the key in ${keySettings}` });
  });

const port = z.number().int().min(1).max(65535);
/**
 * Gateway mode: the TCP port the router forwards to this server, which its streams leave the WAN interface
 * from (a Jellyfin behind a proxy on 443 while Plex is on 32400). Defaults in gatewayPort.
 */
const publicPort = port.optional();

/** One Plex Media Server to listen to (its websocket notifications and /status/sessions). */
const plexServer = z
  .strictObject({
    url: serverUrl('http://127.0.0.1:32400', 'plex.token or plex.tokenFile').default('http://127.0.0.1:32400'),
    token: z.string().min(1).optional(),
    tokenFile: z.string().min(1).optional(),
    /** false for a self-signed certificate. */
    verifyTls: z.boolean().default(true),
    /** Full /status/sessions reconcile period; 0: only on (re)connect. */
    pollSeconds: z.number().min(0).max(86400).default(30),
    publicPort,
  })
  .refine((server) => !(server.token && server.tokenFile), 'set plex.token or plex.tokenFile, not both');

export type PlexServerConfig = z.infer<typeof plexServer>;

/** The media servers that speak Jellyfin's API (Emby is its ancestor): the `jellyfin:` and `emby:` keys. */
export const mediaServerKinds = ['jellyfin', 'emby'] as const;
export type MediaServerKind = (typeof mediaServerKinds)[number];

/** One Jellyfin or Emby server to listen to (its websocket's Sessions messages and GET /Sessions). */
const mediaServer = (kind: MediaServerKind) =>
  z
    .strictObject({
      url: serverUrl('http://127.0.0.1:8096', `${kind}.apiKey or ${kind}.apiKeyFile`).default('http://127.0.0.1:8096'),
      apiKey: z.string().min(1).optional(),
      apiKeyFile: z.string().min(1).optional(),
      /** false for a self-signed certificate. */
      verifyTls: z.boolean().default(true),
      /** Full GET /Sessions reconcile period besides the pushes; 0: only on (re)connect. */
      pollSeconds: z.number().min(0).max(86400).default(30),
      publicPort,
    })
    .refine((server) => !(server.apiKey && server.apiKeyFile), `set ${kind}.apiKey or ${kind}.apiKeyFile, not both`);
const jellyfinServer = mediaServer('jellyfin');

export type MediaServerConfig = z.infer<typeof jellyfinServer>;

const timeOfDay = z.string().regex(/^([01]?\d|2[0-3]):[0-5]\d$|^24:00$/, 'expected HH:MM');

export const configSchema = z
  .strictObject({
    /** Network device whose upload is shaped. */
    device: z.string().min(1).max(15),
    /** Network namespace of the device (name under /var/run/netns); default: the daemon's own. */
    netns: z.string().min(1).optional(),
    /** Server-wide limits shared by all throttled clients. */
    server: serverRates,
    /** Default pipe per playing client. */
    client: clientRates,
    leaf: z.enum(['sfq', 'bfifo', 'none']).default('sfq'),
    exempt: z.array(cidr).default(['127.0.0.0/8', '::1/128']),
    remoteOnly: z.boolean().default(false),
    localNetworks: z.array(cidr).default(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', 'fc00::/7', 'fe80::/10']),
    overrides: z
      .array(
        z
          .strictObject({
            user: z.string().min(1).optional(),
            network: cidr.optional(),
            /** Only this server's clients (the Plex log counts as plex); without it, any source's. */
            source: z.enum(overrideSources, { error: `expected a media server: ${overrideSources.join(', ')}` }).optional(),
            rate,
            ceil: rate.optional(),
          })
          .refine((o) => o.user !== undefined || o.network !== undefined, 'an override needs a user or a network'),
      )
      .default([]),
    schedules: z.array(z.strictObject({ from: timeOfDay, to: timeOfDay, days: z.array(z.number().int().min(0).max(6)).optional(), server: rates })).default([]),
    /** Where playback events come from: the Plex API (needs a token), the log (needs DEBUG logging), or both; auto: the API when a token is found. */
    source: z
      .union([z.enum(['auto', 'log', 'plex', 'both', ...mediaServerKinds]), z.array(z.enum(['log', 'plex', ...mediaServerKinds])).min(1)])
      .default('auto'),
    /**
     * shaperrd runs on the router: `device` is its WAN interface and client filters also match the TCP
     * source port Plex's streams leave it from (the server's public port), so other LAN hosts talking to
     * the same address stay unshaped.
     */
    gateway: z.strictObject({ plexPort: port.default(32400) }).optional(),
    /** One Plex server, or a list of them. */
    plex: z.union([plexServer, z.array(plexServer).min(1)]).optional(),
    /** One Jellyfin server, or a list of them; likewise Emby. */
    jellyfin: z.union([jellyfinServer, z.array(jellyfinServer).min(1)]).optional(),
    emby: z.union([mediaServer('emby'), z.array(mediaServer('emby')).min(1)]).optional(),
    /** Plex Media Server log file; default: the first that exists of the usual locations. */
    log: z.string().min(1).optional(),
    trustedProxies: z.array(cidr).default([]),
    /** Seconds a client keeps its pipe after its last session stops (rides through seeks). */
    graceSeconds: z.number().min(0).max(3600).default(5),
    /** Seconds without log activity and without bytes before a silent session counts as gone. */
    idleSeconds: z.number().min(5).max(86400).default(120),
    stateFile: z.string().min(1).default('/var/lib/shaperr/state.json'),
    keepRulesOnExit: z.boolean().default(false),
    takeover: z.boolean().default(false),
    status: z
      .strictObject({
        listen: z.string().default('127.0.0.1:9750'),
        token: z.string().min(8).optional(),
      })
      .superRefine((status, context) => {
        try {
          if (status.token === undefined && !isLoopbackListen(status.listen)) {
            context.addIssue({
              code: 'custom',
              path: ['token'],
              message: `status.listen ${status.listen} is reachable from other machines and would show every client's address and Plex user to them: set status.token, or listen on 127.0.0.1`,
            });
          }
        } catch (error) {
          context.addIssue({ code: 'custom', path: ['listen'], message: (error as Error).message });
        }
      })
      .optional(),
  })
  .superRefine((config, context) => {
    if (!config.gateway) {
      for (const kind of ['plex', ...mediaServerKinds] as const) {
        const servers = config[kind];
        [servers ?? []].flat().forEach((server, index) => {
          if (server.publicPort === undefined) return;
          const path = Array.isArray(servers) ? [kind, index, 'publicPort'] : [kind, 'publicPort'];
          context.addIssue({ code: 'custom', path, message: 'publicPort is for gateway mode (shaperrd on the router): add gateway: {} or leave it out' });
        });
      }
    }
    if (config.gateway && config.server.rate === 'auto' && (config.server.signal === 'plex' || config.server.probe === undefined)) {
      context.addIssue({
        code: 'custom',
        path: ['server', 'probe'],
        message: "in gateway mode Plex's connections are on another host: rate: auto needs probe: address:port of a UDP echo service beyond the modem",
      });
    }
  });

/** Keys whose values are secrets: a config file other users can read gives them away. */
const SECRET_KEYS: ReadonlyArray<readonly string[]> = [['status', 'token']];

/** A warning when the file is readable by every user and holds a secret; undefined otherwise. */
export function exposedSecretsWarning(path: string, config: ShaperrConfig): string | undefined {
  const present = SECRET_KEYS.filter(
    (key) => key.reduce<unknown>((value, part) => (value as Record<string, unknown> | undefined)?.[part], config) !== undefined,
  ).map((key) => key.join('.'));
  // One Plex server or a list of them: each may carry its token.
  if ([config.plex ?? []].flat().some((server) => (server as { token?: string }).token !== undefined)) present.push('plex.token');
  for (const kind of mediaServerKinds) if ([config[kind] ?? []].flat().some((server) => server.apiKey !== undefined)) present.push(`${kind}.apiKey`);
  if (present.length === 0 || (statSync(path).mode & 0o004) === 0) return undefined;
  return `${path} is readable by every user and holds ${present.join(', ')}: chmod o-r ${JSON.stringify(path)} (e.g. mode 0640, group of the shaperr user)`;
}

export type ShaperrConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

function describeIssue(issue: z.core.$ZodIssue, input: unknown): string {
  const path = issue.path.map(String);
  const key = path.join('.') || '(top level)';
  let value: unknown = input;
  for (const part of issue.path) value = (value as Record<PropertyKey, unknown> | undefined)?.[part as PropertyKey];
  // A union (`plex:` one server or a list): report the branch that matches the input's shape.
  if (issue.code === 'invalid_union' && issue.errors.length) {
    const branch = (Array.isArray(value) ? issue.errors.at(-1) : issue.errors[0])!;
    return branch.map((inner) => describeIssue({ ...inner, path: [...issue.path, ...inner.path] } as z.core.$ZodIssue, input)).join('; ');
  }
  if (issue.code === 'unrecognized_keys')
    return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `'${[...path, k].join('.')}'`).join(', ')}`;
  // Tokens are secrets: never echoed, not even in a complaint about them.
  const secret = path.at(-1) === 'token' || path.at(-1) === 'apiKey';
  // A server URL may carry a key in its query or user info (the very mistake being reported): not echoed either.
  const hidden = path.at(-1) === 'url' && typeof value === 'string' ? value.replace(/\?.*$/, '?…').replace(/\/\/[^/@]*@/, '//…@') : value;
  const shown =
    hidden === undefined
      ? 'missing'
      : secret
        ? '<token>'
        : JSON.stringify(hidden, (name, inner: unknown) => (name === 'token' || name === 'apiKey' ? '<token>' : inner));
  return `'${key}' = ${shown}: ${issue.message}`;
}

/** Validates a parsed config object; throws ConfigError naming the first bad key and value. */
export function validateConfig(input: unknown, source = 'config'): ShaperrConfig {
  const result = configSchema.safeParse(input ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => describeIssue(issue, input));
  throw new ConfigError(`${source}: ${problems.join('; ')}`);
}

export function loadConfig(path: string): ShaperrConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`${path} is not valid YAML: ${(error as Error).message}`);
  }
  return validateConfig(parsed, path);
}

/** The configured Plex servers as a list (none configured: the local default server). */
export function plexServers(config: ShaperrConfig): PlexServerConfig[] {
  if (config.plex === undefined) return [plexServer.parse({})];
  return Array.isArray(config.plex) ? config.plex : [config.plex];
}

/** The configured Jellyfin (or Emby) servers as a list; none configured: the local default server. */
export function mediaServers(config: ShaperrConfig, kind: MediaServerKind): MediaServerConfig[] {
  const configured = config[kind];
  if (configured === undefined) return [jellyfinServer.parse({})];
  return Array.isArray(configured) ? configured : [configured];
}

/** The public port Jellyfin and Emby are reached on when a server does not say (their default HTTP port). */
export const DEFAULT_MEDIA_SERVER_PUBLIC_PORT = 8096;

/**
 * Gateway mode: the port a server's streams leave the router from (its `publicPort`; else Plex's is
 * gateway.plexPort, Jellyfin's and Emby's 8096). Undefined outside gateway mode.
 */
export function gatewayPort(config: ShaperrConfig, kind: 'plex' | MediaServerKind, server: PlexServerConfig | MediaServerConfig): number | undefined {
  if (!config.gateway) return undefined;
  return server.publicPort ?? (kind === 'plex' ? config.gateway.plexPort : DEFAULT_MEDIA_SERVER_PUBLIC_PORT);
}

/** The automatic ceiling's settings, when `server.rate` is `auto`. */
export interface AutoCeilingConfig {
  min: number;
  max: number;
  start?: number;
  signal: 'plex' | 'probe';
  probe?: UdpProbeTarget;
  /** Plex's local port, whose connections the Plex signal reads: the first server's URL's (default 32400). */
  plexPort: number;
}

export function autoCeilingConfig(config: ShaperrConfig): AutoCeilingConfig | undefined {
  const { server } = config;
  if (server.rate !== 'auto') return undefined;
  // Gateway mode: Plex's sockets are on another host, so the probe is the only signal.
  const signal = server.signal ?? (config.gateway ? 'probe' : 'plex');
  return {
    min: server.min!,
    max: server.max!,
    signal,
    plexPort: Number(new URL(plexServers(config)[0]!.url).port || 32400),
    ...(server.start !== undefined ? { start: server.start } : {}),
    ...(server.probe !== undefined ? { probe: server.probe } : {}),
  };
}

export function policyConfig(config: ShaperrConfig): PolicyConfig {
  const { server } = config;
  return {
    client: config.client,
    // Automatic: the policy's server rate is the most the ceiling may reach (schedules cap it further).
    server: server.rate === 'auto' ? { rate: server.max! } : { rate: server.rate, ...(server.ceil !== undefined ? { ceil: server.ceil } : {}) },
    exempt: config.exempt,
    remoteOnly: config.remoteOnly,
    localNetworks: config.localNetworks,
    overrides: config.overrides,
    schedules: config.schedules,
  };
}
