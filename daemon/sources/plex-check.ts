/**
 * `shaperr check` for the Plex API source: which source and token source are in use (never the token),
 * whether each server answers, accepts the token, and lets it list every user's sessions.
 */
import type { ShaperrConfig } from '../config.js';
import { planSources, type SourcePlan } from './plan.js';
import { PlexHttpError, type PlexIdentity, parseIdentity, parseSessionListing, plexGet, type PlexRequestOptions } from './plex.js';

export interface PlexCheckLine {
  verdict: 'ok' | 'warn' | 'fail';
  what: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

const OWNER_TOKEN_FIX =
  "use the server owner's token: sign in to Plex Web as the owner, open any item → Get Info → View XML, and copy X-Plex-Token from the address; or leave the token out on the Plex host to use Plex's own Preferences.xml";

async function checkServer(server: SourcePlan['plex'][number], timeoutMs: number): Promise<PlexCheckLine[]> {
  const options: PlexRequestOptions = { url: server.url, token: server.token.token, verifyTls: server.verifyTls, timeoutMs };
  let identity: PlexIdentity;
  try {
    identity = parseIdentity(await plexGet(options, '/'));
  } catch (error) {
    if (error instanceof PlexHttpError && error.result === 'unauthorized')
      return [{ verdict: 'fail', what: `Plex rejected the token (from ${server.token.source}) at ${server.url}`, fix: OWNER_TOKEN_FIX }];
    const certificate = /certificate/i.test((error as Error).message);
    return [
      {
        verdict: 'fail',
        what: `Plex at ${server.url} is not reachable: ${(error as Error).message}`,
        fix: certificate
          ? "a self-signed certificate needs verifyTls: false; with Plex's own certificate use the https://<ip-with-dashes>.<id>.plex.direct:32400 address"
          : 'check plex.url and that Plex Media Server is running',
      },
    ];
  }
  const lines: PlexCheckLine[] = [
    {
      verdict: 'ok',
      what: `Plex server "${identity.name ?? identity.machineIdentifier}" ${identity.version ?? ''} at ${server.url} accepts the token (from ${server.token.source})`,
    },
  ];
  try {
    const sessions = parseSessionListing(await plexGet(options, '/status/sessions'));
    const users = [...new Set(sessions.map((session) => session.user ?? '?'))];
    lines.push({
      verdict: 'ok',
      what: `the token may list the server's sessions: ${sessions.length} now${users.length ? ` (users: ${users.join(', ')})` : ''}`,
    });
  } catch (error) {
    const refused = error instanceof PlexHttpError && (error.result === 'unauthorized' || /HTTP 403/.test(error.message));
    lines.push(
      refused
        ? { verdict: 'fail', what: 'the token may not list the sessions of other users', fix: OWNER_TOKEN_FIX }
        : { verdict: 'warn', what: `listing sessions failed: ${(error as Error).message}` },
    );
  }
  return lines;
}

/** The check lines, and whether the log source is in use (else its checks do not apply). */
export async function checkPlexSource(
  config: ShaperrConfig,
  logPath: string | undefined,
  timeoutMs = 5000,
): Promise<{ lines: PlexCheckLine[]; usesLog: boolean }> {
  let plan: SourcePlan;
  try {
    plan = planSources(config, logPath);
  } catch (error) {
    return {
      lines: [{ verdict: 'fail', what: (error as Error).message, fix: 'or set source: log to use the Plex log instead' }],
      usesLog: config.source === 'both',
    };
  }
  const lines: PlexCheckLine[] = [{ verdict: 'ok', what: `event ${plan.reason}` }];
  for (const problem of plan.problems) lines.push({ verdict: 'warn', what: problem });
  for (const server of plan.plex) lines.push(...(await checkServer(server, timeoutMs)));
  return { lines, usesLog: plan.log };
}
