/**
 * Which event sources shaperrd runs: `source: log` the log tail, `plex` the Plex API of every configured
 * server, `both` both, and `auto` the API when every configured server has a token (config, token file,
 * PLEX_TOKEN or Plex's own Preferences.xml), else the log. The plan is a list: the daemon creates, starts,
 * checks and reports each entry the same way, whatever it is.
 */
import { gatewayPort, type MediaServerKind, mediaServerKinds, mediaServers, type ShaperrConfig, plexServers } from '../config.js';
import { apiKeyVariable, deviceKey, findApiKey, MediaServerSource } from './jellyfin.js';
import { checkMediaServer } from './jellyfin-check.js';
import { LogSource } from './log.js';
import { checkPlexServer } from './plex-check.js';
import { findPlexToken, preferencesPaths } from './plex-token.js';
import { PlexSource } from './plex.js';
import type { PlaybackSource, SourceCheckLine, SourceContext } from './source.js';

/** One source the config asks for, ready to be created (and re-created on a reload). */
export interface PlannedSource {
  /** The source's name ('log', 'plex'…). */
  name: string;
  /** What it listens to: a server's URL, the log's path. */
  target: string;
  /** Where its key comes from (a config key, a file, an environment variable), never the key. */
  keySource?: string;
  create(context: SourceContext): PlaybackSource;
  /**
   * `shaperr check`'s lines for it: the server answers, accepts the key, lets it see every session.
   * `deviceIds`: the ones shaperrd keeps (its state file's devices), presented again so a check adds no device.
   */
  check?(timeoutMs: number, deviceIds: Readonly<Record<string, string>>): Promise<SourceCheckLine[]>;
}

export interface SourcePlan {
  sources: PlannedSource[];
  /** The log is one of the sources (the daemon warm-starts from it; `shaperr check` checks it). */
  usesLog: boolean;
  /** One line saying what was chosen and why (key sources named, never keys). */
  reason: string;
  /** Key files that exist but cannot be used, each with what to do. */
  problems: string[];
}

export class SourceError extends Error {
  override readonly name = 'SourceError';
}

/** The API sources the config names, or the keys missing for them. */
interface ServerPlan {
  planned: PlannedSource[];
  missing: string[];
  problems: string[];
}

/** Gateway mode: every event of a server's source carries the server's public port. */
function stampPort(context: SourceContext, publicPort: number | undefined): SourceContext {
  return publicPort === undefined ? context : { ...context, onEvent: (event) => context.onEvent({ ...event, publicPort }) };
}

function plexPlan(config: ShaperrConfig, logPath: string | undefined, env: NodeJS.ProcessEnv): ServerPlan {
  const found: ServerPlan = { planned: [], missing: [], problems: [] };
  for (const server of plexServers(config)) {
    const lookup = findPlexToken(server, { env, preferences: preferencesPaths(logPath) });
    found.problems.push(...lookup.problems.filter((problem) => !found.problems.includes(problem)));
    const token = lookup.choice;
    if (!token) {
      found.missing.push(
        `no Plex token for ${server.url}: set plex.token or plex.tokenFile, or the PLEX_TOKEN environment variable${lookup.problems.length ? ` (${lookup.problems.join('; ')})` : ''}`,
      );
      continue;
    }
    const { url, verifyTls } = server;
    found.planned.push({
      name: 'plex',
      target: url,
      keySource: token.source,
      create: (context) =>
        new PlexSource({
          ...stampPort(context, gatewayPort(config, 'plex', server)),
          url,
          token: token.token,
          verifyTls,
          timings: { ...context.timings, pollMs: server.pollSeconds * 1000, idleMs: context.idleMs },
        }),
      check: (timeoutMs) => checkPlexServer({ url, verifyTls, token }, timeoutMs),
    });
  }
  return found;
}

const mediaServerLabel: Record<MediaServerKind, string> = { jellyfin: 'Jellyfin', emby: 'Emby' };

/** Every configured Jellyfin (or Emby) server, with its key. */
function mediaServerPlan(config: ShaperrConfig, kind: MediaServerKind, env: NodeJS.ProcessEnv): ServerPlan {
  const found: ServerPlan = { planned: [], missing: [], problems: [] };
  for (const server of mediaServers(config, kind)) {
    const key = findApiKey(server, kind, env);
    const { url, verifyTls } = server;
    if (!key) {
      found.missing.push(
        `no ${mediaServerLabel[kind]} API key for ${url}: set ${kind}.apiKey or ${kind}.apiKeyFile, or the ${apiKeyVariable(kind)} environment variable`,
      );
      continue;
    }
    found.planned.push({
      name: kind,
      target: url,
      keySource: key.source,
      create: (context) =>
        new MediaServerSource({
          ...stampPort(context, gatewayPort(config, kind, server)),
          kind,
          url,
          apiKey: key.token,
          verifyTls,
          timings: { ...context.timings, pollMs: server.pollSeconds * 1000 },
        }),
      check: (timeoutMs, deviceIds) => checkMediaServer({ kind, url, verifyTls, key, deviceId: deviceIds[deviceKey(kind, url)] }, timeoutMs),
    });
  }
  return found;
}

function logSource(config: ShaperrConfig, path: string): PlannedSource {
  return { name: 'log', target: path, create: (context) => new LogSource({ ...context, path, trustedProxies: config.trustedProxies }) };
}

/**
 * The sources for `config` (`logPath`: the Plex log found, if any). Throws SourceError when `plex`/`both`
 * is asked for and a server has no token (or a token file is unreadable).
 */
export function planSources(config: ShaperrConfig, logPath: string | undefined, env: NodeJS.ProcessEnv = process.env): SourcePlan {
  const log = logPath ? [logSource(config, logPath)] : [];
  if (config.source === 'log') return { sources: log, usesLog: true, reason: 'source: log', problems: [] };
  const auto = config.source === 'auto';
  const names: readonly string[] = config.source === 'both' ? ['log', 'plex'] : [config.source].flat();
  // auto: every Jellyfin and Emby server configured; otherwise the ones `source` names.
  const kinds = mediaServerKinds.filter((kind) => (auto ? config[kind] !== undefined : names.includes(kind)));
  let found: ServerPlan = { planned: [], missing: [], problems: [] };
  let others: PlannedSource[];
  try {
    if (auto || names.includes('plex')) found = plexPlan(config, logPath, env);
    const servers = kinds.map((kind) => mediaServerPlan(config, kind, env));
    const missing = servers.flatMap((server) => server.missing);
    if (missing.length) throw new Error(missing.join('; '));
    others = servers.flatMap((server) => server.planned);
  } catch (error) {
    throw new SourceError((error as Error).message);
  }
  const describe = (servers: PlannedSource[]) => servers.map((server) => `${server.target} (token from ${server.keySource})`).join(', ');
  const besides = others.map((server) => `${mediaServerLabel[server.name as MediaServerKind]} at ${server.target} (key from ${server.keySource})`).join(', ');
  const also = besides ? ` and ${besides}` : '';
  if (auto) {
    if (found.missing.length === 0)
      return { sources: [...found.planned, ...others], usesLog: false, reason: `source: auto → Plex API at ${describe(found.planned)}${also}`, problems: [] };
    // No Plex token: the Plex log, when there is one or nothing else to follow.
    const usesLog = logPath !== undefined || others.length === 0;
    return { sources: [...log, ...others], usesLog, reason: `source: auto → the log (${found.missing.join('; ')})${also}`, problems: found.problems };
  }
  if (found.missing.length) throw new SourceError(found.missing.join('; '));
  const usesLog = names.includes('log');
  const parts = [...(found.planned.length ? [`Plex API at ${describe(found.planned)}`] : []), ...(besides ? [besides] : [])];
  return {
    sources: [...(usesLog ? log : []), ...found.planned, ...others],
    usesLog,
    reason: `source: ${Array.isArray(config.source) ? `[${names.join(', ')}]` : config.source} → ${parts.join(' and ')}${usesLog ? ' and the log' : ''}`,
    problems: [],
  };
}

/** What a reload compares: the config the sources are made from (a change re-creates them all). */
export function sourceSettings(config: ShaperrConfig): string {
  return JSON.stringify([config.source, config.plex, config.jellyfin, config.emby, config.log, config.trustedProxies]);
}

/**
 * `shaperr check` for the event sources: which are in use and where their keys come from (never a key),
 * then each one's own check; and whether the log is one of them (else its checks do not apply).
 */
export async function checkSources(
  config: ShaperrConfig,
  logPath: string | undefined,
  timeoutMs = 5000,
  deviceIds: Readonly<Record<string, string>> = {},
): Promise<{ lines: SourceCheckLine[]; usesLog: boolean }> {
  let plan: SourcePlan;
  try {
    plan = planSources(config, logPath);
  } catch (error) {
    return {
      lines: [{ verdict: 'fail', what: (error as Error).message, fix: 'or set source: log to use the Plex log instead' }],
      usesLog: config.source === 'both' || [config.source].flat().includes('log'),
    };
  }
  const lines: SourceCheckLine[] = [{ verdict: 'ok', what: `event ${plan.reason}` }];
  for (const problem of plan.problems) lines.push({ verdict: 'warn', what: problem });
  for (const source of plan.sources) if (source.check) lines.push(...(await source.check(timeoutMs, deviceIds)));
  return { lines, usesLog: plan.usesLog };
}
