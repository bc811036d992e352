/**
 * `shaperr check` for one Plex server of the API source (the token source named, never the token):
 * whether it answers, accepts the token, and lets it list every user's sessions.
 */
import { type PlexIdentity, type PlexRequestOptions, parseIdentity, parseSessionListing, plexGet } from './plex.js';
import { ServerHttpError } from './server-get.js';
import type { TokenChoice } from './plex-token.js';
import type { SourceCheckLine } from './source.js';

const OWNER_TOKEN_FIX =
  "use the server owner's token: sign in to Plex Web as the owner, open any item → Get Info → View XML, and copy X-Plex-Token from the address; or leave the token out on the Plex host to use Plex's own Preferences.xml";

/** One Plex server: it answers, accepts the token, and lets it list every user's sessions. */
export async function checkPlexServer(server: { url: string; verifyTls: boolean; token: TokenChoice }, timeoutMs: number): Promise<SourceCheckLine[]> {
  const options: PlexRequestOptions = { url: server.url, token: server.token.token, verifyTls: server.verifyTls, timeoutMs };
  let identity: PlexIdentity;
  try {
    identity = parseIdentity(await plexGet(options, '/'));
  } catch (error) {
    if (error instanceof ServerHttpError && error.result === 'unauthorized')
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
  const lines: SourceCheckLine[] = [
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
    const refused = error instanceof ServerHttpError && (error.result === 'unauthorized' || /HTTP 403/.test(error.message));
    lines.push(
      refused
        ? { verdict: 'fail', what: 'the token may not list the sessions of other users', fix: OWNER_TOKEN_FIX }
        : { verdict: 'warn', what: `listing sessions failed: ${(error as Error).message}` },
    );
  }
  return lines;
}
