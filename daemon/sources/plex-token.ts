/**
 * Where the Plex token comes from: the config (`plex.token` or `plex.tokenFile`), the PLEX_TOKEN
 * environment variable, or — on the Plex host, with nothing configured — Plex's own Preferences.xml
 * (attribute PlexOnlineToken, in the data folder beside the Logs folder). The token itself is never part
 * of any message here; only where it came from.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { defaultPlexLogPaths } from './tail.js';

export interface TokenChoice {
  token: string;
  /** Where it came from, safe to print: "plex.token", "tokenFile /etc/shaperr/plex-token", … */
  source: string;
}

export interface TokenSettings {
  token?: string | undefined;
  tokenFile?: string | undefined;
}

/** Why Plex's own token file could not be used, when that is the only candidate left. */
export interface TokenLookup {
  choice?: TokenChoice;
  /** One line per Preferences.xml that exists but cannot be used, naming the cause and the fix. */
  problems: string[];
}

export class TokenError extends Error {
  override readonly name = 'TokenError';
}

/** Preferences.xml beside each place Plex keeps its Logs folder (the configured log's first). */
export function preferencesPaths(logPath?: string): string[] {
  const logs = [...(logPath ? [logPath] : []), ...defaultPlexLogPaths()];
  return [...new Set(logs.map((log) => join(dirname(dirname(log)), 'Preferences.xml')))];
}

function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? `permission denied for uid ${process.getuid?.()}` : (error as Error).message;
    throw new TokenError(`cannot read plex.tokenFile ${path}: ${why}`);
  }
  const token = text.trim();
  if (!token) throw new TokenError(`plex.tokenFile ${path} is empty`);
  if (/\s/.test(token)) throw new TokenError(`plex.tokenFile ${path} holds more than one word; it must hold only the token`);
  return token;
}

/** The PlexOnlineToken attribute of a Preferences.xml, or a reason it cannot be had. */
export function readPreferencesToken(path: string): { token?: string; problem?: string; missing?: boolean } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { missing: true };
    if (code === 'EACCES') {
      return {
        problem: `${path} exists but uid ${process.getuid?.()} cannot read it (Plex keeps it private to its own user; Docker images run Plex under their own uid): put the token in plex.tokenFile, or add shaperrd's user to the file's group and make it group-readable`,
      };
    }
    return { problem: `cannot read ${path}: ${(error as Error).message}` };
  }
  let parsed: { Preferences?: Record<string, unknown> };
  try {
    parsed = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(text) as typeof parsed;
  } catch {
    return { problem: `${path} is not valid XML` };
  }
  const token = parsed.Preferences?.PlexOnlineToken;
  if (typeof token !== 'string' || token === '') return { problem: `${path} has no PlexOnlineToken (this Plex server is not signed in to a Plex account)` };
  return { token };
}

/**
 * The token for one server: configured token, token file, PLEX_TOKEN, then Plex's Preferences.xml.
 * Throws TokenError when a configured token file cannot be used (that is a configuration mistake).
 */
export function findPlexToken(settings: TokenSettings, options: { env?: NodeJS.ProcessEnv; preferences?: string[] } = {}): TokenLookup {
  if (settings.token) return { choice: { token: settings.token, source: 'plex.token' }, problems: [] };
  if (settings.tokenFile) return { choice: { token: readTokenFile(settings.tokenFile), source: `plex.tokenFile ${settings.tokenFile}` }, problems: [] };
  const env = options.env ?? process.env;
  if (env.PLEX_TOKEN) return { choice: { token: env.PLEX_TOKEN.trim(), source: 'PLEX_TOKEN environment variable' }, problems: [] };
  const problems: string[] = [];
  for (const path of options.preferences ?? preferencesPaths()) {
    const found = readPreferencesToken(path);
    if (found.token) return { choice: { token: found.token, source: `PlexOnlineToken in ${path}` }, problems };
    if (found.problem) problems.push(found.problem);
  }
  return { problems };
}

/** Replaces every occurrence of the token (raw or URL-encoded) in a text meant for a log or a person. */
export function redactToken(text: string, token: string): string {
  if (!token) return text;
  let redacted = text.split(token).join('<token>');
  const encoded = encodeURIComponent(token);
  if (encoded !== token) redacted = redacted.split(encoded).join('<token>');
  return redacted;
}
