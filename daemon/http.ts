/**
 * shaperrd's optional HTTP endpoint (config `status:`; off by default, 127.0.0.1 unless configured):
 *   GET /             the live status page (one static HTML file, no build step)
 *   GET /api/status   the status report as JSON
 *   GET /metrics      Prometheus metrics
 * With a token configured every request needs `Authorization: Bearer <token>` or `?token=<token>`.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { STATUS_PAGE } from './status-page.js';
import type { StatusReport } from './status.js';

export interface StatusServerOptions {
  /** `host:port`, `[v6]:port` or a bare port (then 127.0.0.1). */
  listen: string;
  token?: string;
  status: () => StatusReport;
  metrics: Registry;
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen) ?? /^()()(\d+)$/.exec(listen);
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`status.listen ${JSON.stringify(listen)}: expected host:port, [v6]:port or a port`);
  return { host: match[1] || match[2] || '127.0.0.1', port };
}

function authorised(request: IncomingMessage, url: URL, token: string | undefined): boolean {
  if (!token) return true;
  const offered = request.headers.authorization?.replace(/^Bearer /i, '') ?? url.searchParams.get('token') ?? '';
  const a = Buffer.from(offered);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

async function respond(options: StatusServerOptions, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const url = new URL(request.url ?? '/', 'http://localhost');
  const send = (status: number, type: string, body: string) => {
    response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
    response.end(body);
  };
  if (request.method !== 'GET') return send(405, 'text/plain', 'only GET\n');
  if (!authorised(request, url, options.token)) return send(401, 'text/plain', 'missing or wrong token (Authorization: Bearer … or ?token=…)\n');
  switch (url.pathname) {
    case '/':
      return send(200, 'text/html; charset=utf-8', STATUS_PAGE);
    case '/api/status':
      return send(200, 'application/json', JSON.stringify(options.status()));
    case '/metrics':
      return send(200, options.metrics.contentType, await options.metrics.metrics());
    default:
      return send(404, 'text/plain', 'not found\n');
  }
}

/** Starts listening; resolves with the server once bound (rejects naming the address when it cannot). */
export async function startStatusServer(options: StatusServerOptions): Promise<Server> {
  const { host, port } = parseListen(options.listen);
  const server = createServer((request, response) => {
    respond(options, request, response).catch((error: unknown) => {
      response.writeHead(500, { 'content-type': 'text/plain' });
      response.end(`${(error as Error).message}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => reject(new Error(`status page cannot listen on ${options.listen}: ${error.message}`)));
    server.listen(port, host, resolve);
  });
  return server;
}
