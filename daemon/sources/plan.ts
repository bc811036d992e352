/**
 * Which event sources shaperrd runs: `source: log` the log tail, `plex` the Plex API of every configured
 * server, `both` both, and `auto` the API when every configured server has a token (config, token file,
 * PLEX_TOKEN or Plex's own Preferences.xml), else the log.
 */
import { type PlexServerConfig, type ShaperrConfig, plexServers } from '../config.js';
import { findPlexToken, preferencesPaths, type TokenChoice } from './plex-token.js';

export interface PlannedPlexServer {
  url: string;
  verifyTls: boolean;
  pollSeconds: number;
  token: TokenChoice;
}

export interface SourcePlan {
  log: boolean;
  plex: PlannedPlexServer[];
  /** One line saying what was chosen and why (token sources named, never tokens). */
  reason: string;
  /** Plex token files that exist but cannot be used, each with what to do. */
  problems: string[];
}

export class SourceError extends Error {
  override readonly name = 'SourceError';
}

function withTokens(
  servers: PlexServerConfig[],
  logPath: string | undefined,
  env: NodeJS.ProcessEnv,
): { planned: PlannedPlexServer[]; missing: string[]; problems: string[] } {
  const planned: PlannedPlexServer[] = [];
  const missing: string[] = [];
  const problems: string[] = [];
  for (const server of servers) {
    const lookup = findPlexToken(server, { env, preferences: preferencesPaths(logPath) });
    problems.push(...lookup.problems.filter((problem) => !problems.includes(problem)));
    if (lookup.choice) planned.push({ url: server.url, verifyTls: server.verifyTls, pollSeconds: server.pollSeconds, token: lookup.choice });
    else
      missing.push(
        `no Plex token for ${server.url}: set plex.token or plex.tokenFile, or the PLEX_TOKEN environment variable${lookup.problems.length ? ` (${lookup.problems.join('; ')})` : ''}`,
      );
  }
  return { planned, missing, problems };
}

/** Throws SourceError when `plex`/`both` is asked for and a server has no token (or a token file is unreadable). */
export function planSources(config: ShaperrConfig, logPath: string | undefined, env: NodeJS.ProcessEnv = process.env): SourcePlan {
  if (config.source === 'log') return { log: true, plex: [], reason: 'source: log', problems: [] };
  let found: ReturnType<typeof withTokens>;
  try {
    found = withTokens(plexServers(config), logPath, env);
  } catch (error) {
    throw new SourceError((error as Error).message);
  }
  const describe = (servers: PlannedPlexServer[]) => servers.map((server) => `${server.url} (token from ${server.token.source})`).join(', ');
  if (config.source === 'auto') {
    if (found.missing.length === 0) return { log: false, plex: found.planned, reason: `source: auto → Plex API at ${describe(found.planned)}`, problems: [] };
    return { log: true, plex: [], reason: `source: auto → the log (${found.missing.join('; ')})`, problems: found.problems };
  }
  if (found.missing.length) throw new SourceError(found.missing.join('; '));
  return {
    log: config.source === 'both',
    plex: found.planned,
    reason: `source: ${config.source} → Plex API at ${describe(found.planned)}${config.source === 'both' ? ' and the log' : ''}`,
    problems: [],
  };
}
