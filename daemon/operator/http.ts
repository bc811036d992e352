/**
 * shaperrd's optional HTTP endpoint (config `status:`; off by default, 127.0.0.1 unless configured):
 *   GET /             the live status page (one static HTML file, no build step)
 *   GET /api/status   the status report as JSON
 *   GET /metrics      Prometheus metrics
 * With a token configured every request needs `Authorization: Bearer <token>` or `?token=<token>`.
 *
 * It may face a network: headers are bounded (8 KiB, 5 s), so is a request (10 s); idle keep-alive
 * connections close after 5 s; at most MAX_CONNECTIONS are open, and a new one pushes out the oldest
 * connection that has no request in progress, so a pile of idle sockets cannot lock the page out. The
 * token is compared in constant time, and only the three exact paths exist.
 */
import type { Socket } from 'node:net';
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { parseListen } from '../support/listen.js';
import { STATUS_PAGE } from './status-page.js';
import type { StatusReport } from './status.js';

export interface StatusServerOptions {
  /** `host:port`, `[v6]:port` or a bare port (then 127.0.0.1). */
  listen: string;
  token?: string;
  status: () => Promise<StatusReport>;
  metrics: Registry;
}

const MAX_HEADER_BYTES = 8 * 1024;
const HEADERS_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10_000;
const KEEP_ALIVE_TIMEOUT_MS = 5000;
/** A status page, a few scrapers and some headroom. */
export const MAX_CONNECTIONS = 128;
const ROUTES = new Set(['/', '/api/status', '/metrics']);

/** Digests have one length whatever was offered, so neither the length nor the bytes of the token leak through timing. */
const digest = (text: string): Buffer => createHash('sha256').update(text).digest();

function authorised(request: IncomingMessage, url: URL, token: Buffer | undefined): boolean {
  if (!token) return true;
  const offered = request.headers.authorization?.replace(/^Bearer /i, '') ?? url.searchParams.get('token') ?? '';
  return timingSafeEqual(digest(offered), token);
}

async function respond(options: StatusServerOptions, token: Buffer | undefined, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const send = (status: number, type: string, body: string) => {
    response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
    response.end(body);
  };
  // The path exactly as sent: no dot segments, doubled slashes or absolute URLs resolved onto a route.
  const target = request.url ?? '';
  const path = target.split('?', 1)[0]!;
  if (!ROUTES.has(path)) return send(404, 'text/plain', 'not found\n');
  if (request.method !== 'GET') return send(405, 'text/plain', 'only GET\n');
  const url = new URL(target, 'http://localhost');
  if (!authorised(request, url, token)) return send(401, 'text/plain', 'missing or wrong token (Authorization: Bearer … or ?token=…)\n');
  switch (path) {
    case '/':
      return send(200, 'text/html; charset=utf-8', STATUS_PAGE);
    case '/api/status':
      return send(200, 'application/json', JSON.stringify(await options.status()));
    case '/metrics':
      return send(200, options.metrics.contentType, await options.metrics.metrics());
    default:
      return send(404, 'text/plain', 'not found\n');
  }
}

/**
 * Open connections, oldest first, and whether each has a request in progress: a new connection beyond
 * MAX_CONNECTIONS closes the oldest idle one (or itself, when all are busy).
 */
function capConnections(server: Server): void {
  const open = new Map<Socket, { busy: boolean }>();
  server.on('connection', (socket: Socket) => {
    if (open.size >= MAX_CONNECTIONS) {
      const idle = [...open].find(([, state]) => !state.busy)?.[0];
      if (!idle) return void socket.destroy();
      idle.destroy();
      open.delete(idle);
    }
    open.set(socket, { busy: false });
    socket.once('close', () => open.delete(socket));
  });
  server.on('request', (request: IncomingMessage, response: ServerResponse) => {
    const state = open.get(request.socket);
    if (!state) return;
    state.busy = true;
    response.once('close', () => (state.busy = false));
  });
}

/** Starts listening; resolves with the server once bound (rejects naming the address when it cannot). */
export async function startStatusServer(options: StatusServerOptions): Promise<Server> {
  const { host, port } = parseListen(options.listen);
  const token = options.token ? digest(options.token) : undefined;
  const server = createServer(
    { maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 1000 },
    (request, response) => {
      respond(options, token, request, response).catch((error: unknown) => {
        response.writeHead(500, { 'content-type': 'text/plain' });
        response.end(`${(error as Error).message}\n`);
      });
    },
  );
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  capConnections(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => reject(new Error(`status page cannot listen on ${options.listen}: ${error.message}`)));
    server.listen(port, host, resolve);
  });
  return server;
}
