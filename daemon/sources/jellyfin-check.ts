/**
 * `shaperr check` for one Jellyfin or Emby server (the key's source named, never the key): whether it
 * answers, accepts the key, lists every session, and pushes sessions on its websocket or will be polled.
 */
import WebSocket from 'ws';
import { type MediaServerKind, mediaServerAccess, parseMediaSessions, parseSystemInfo } from './jellyfin.js';
import type { TokenChoice } from './plex-token.js';
import { redactToken } from './plex-token.js';
import { ServerHttpError, type ServerGetOptions, serverGet } from './server-get.js';
import type { SourceCheckLine } from './source.js';

const KEY_FIX: Record<MediaServerKind, string> = {
  jellyfin: 'create a key in Jellyfin: Dashboard → API Keys → + (an administrator key sees every session), and set jellyfin.apiKey or apiKeyFile',
  emby: 'create a key in Emby: Settings → Advanced → API Keys → New API Key, and set emby.apiKey or apiKeyFile',
};

export interface MediaServerCheckTarget {
  kind: MediaServerKind;
  url: string;
  verifyTls: boolean;
  key: TokenChoice;
  /** The DeviceId shaperrd keeps for this server (its state file): the check is then no new device either. */
  deviceId?: string | undefined;
}

/** One server: it answers, accepts the key, lists sessions, and pushes them (else shaperrd polls). */
export async function checkMediaServer(server: MediaServerCheckTarget, timeoutMs: number): Promise<SourceCheckLine[]> {
  const access = mediaServerAccess(server.kind, server.url, server.key.token, server.deviceId);
  const redact = (text: string) => redactToken(text, server.key.token);
  const options: ServerGetOptions = {
    url: server.url,
    headers: { ...access.headers, Accept: 'application/json' },
    verifyTls: server.verifyTls,
    timeoutMs,
    unauthorized: `${access.label} rejected the API key (401)`,
    redact,
  };
  let identity: ReturnType<typeof parseSystemInfo>;
  try {
    identity = parseSystemInfo(await serverGet(options, '/System/Info'), access.label);
  } catch (error) {
    if (error instanceof ServerHttpError && error.result === 'unauthorized')
      return [{ verdict: 'fail', what: `${access.label} rejected the API key (from ${server.key.source}) at ${server.url}`, fix: KEY_FIX[server.kind] }];
    return [
      {
        verdict: 'fail',
        what: `${access.label} at ${server.url} is not reachable: ${redact((error as Error).message)}`,
        fix: /certificate/i.test((error as Error).message)
          ? 'a self-signed certificate needs verifyTls: false'
          : `check ${server.kind}.url (the address shaperrd reaches the server at, e.g. http://127.0.0.1:8096) and that the server runs`,
      },
    ];
  }
  const lines: SourceCheckLine[] = [
    {
      verdict: 'ok',
      what: `${access.label} server "${identity.name ?? identity.id}" ${identity.version ?? ''} at ${server.url} accepts the API key (from ${server.key.source})`,
    },
  ];
  try {
    const sessions = parseMediaSessions(JSON.parse(await serverGet(options, '/Sessions')));
    const playing = sessions.filter((session) => session.itemId !== undefined).length;
    const users = [...new Set(sessions.map((session) => session.user ?? '?'))];
    lines.push({
      verdict: 'ok',
      what: `the key may list the server's sessions: ${sessions.length} now, ${playing} playing${users.length ? ` (users: ${users.join(', ')})` : ''}`,
    });
  } catch (error) {
    lines.push({ verdict: 'warn', what: `listing sessions failed: ${redact((error as Error).message)}` });
  }
  lines.push(await checkPush(access, server.verifyTls, timeoutMs, redact));
  return lines;
}

/** Opens the websocket, sends SessionsStart and waits for a Sessions message. */
function checkPush(
  access: ReturnType<typeof mediaServerAccess>,
  verifyTls: boolean,
  timeoutMs: number,
  redact: (text: string) => string,
): Promise<SourceCheckLine> {
  return new Promise((resolve) => {
    const socket = new WebSocket(access.socketUrl, { headers: access.headers, rejectUnauthorized: verifyTls, handshakeTimeout: timeoutMs });
    const done = (line: SourceCheckLine) => {
      clearTimeout(timer);
      socket.terminate();
      resolve(line);
    };
    const polling: SourceCheckLine = {
      verdict: 'warn',
      what: `${access.label} pushed no Sessions message within ${timeoutMs / 1000} s of SessionsStart: shaperrd will poll GET /Sessions every 2 s instead (a start is then seen within 2 s, not at once)`,
      fix: 'some servers push nothing to an API key (jellyfin/jellyfin #13479); polling works, only slower',
    };
    const timer = setTimeout(() => done(polling), timeoutMs);
    socket.on('open', () => socket.send(JSON.stringify({ MessageType: 'SessionsStart', Data: '0,1500' })));
    socket.on('message', (data) => {
      let type: unknown;
      try {
        type = (JSON.parse(data.toString()) as { MessageType?: unknown }).MessageType;
      } catch {
        return;
      }
      if (type === 'Sessions') done({ verdict: 'ok', what: `${access.label} pushes sessions on its websocket (${access.socketUrl.pathname})` });
    });
    socket.on('unexpected-response', (_request, response) => {
      response.resume();
      done({
        verdict: 'warn',
        what: `${access.label}'s websocket ${access.socketUrl.pathname} refused with HTTP ${response.statusCode}: shaperrd will poll GET /Sessions every 2 s instead`,
        fix: 'let the reverse proxy in front of the server pass websocket upgrades, or point the url at the server itself',
      });
    });
    socket.on('error', (error) => done({ verdict: 'fail', what: `${access.label}'s websocket failed: ${redact(error.message)}` }));
  });
}
