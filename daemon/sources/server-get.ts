/**
 * One GET to a media server's HTTP API: given headers (the key travels only there), a timeout, an abort
 * signal, a bounded body, and every failure as a ServerHttpError whose result names the outcome for the
 * requests metric. The caller's `redact` runs over every message, so no key ends up in an error.
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { SourceRequestResult } from './source.js';

export class ServerHttpError extends Error {
  constructor(
    message: string,
    readonly result: SourceRequestResult,
  ) {
    super(message);
  }
}

/** The keep-alive agent a source's GETs share: one connection to its server instead of one per request. */
export function keepAliveAgent(url: string, verifyTls: boolean): HttpAgent {
  return new URL(url).protocol === 'https:' ? new HttpsAgent({ keepAlive: true, rejectUnauthorized: verifyTls }) : new HttpAgent({ keepAlive: true });
}

export interface ServerGetOptions {
  /** The server's base URL. */
  url: string;
  headers: Record<string, string>;
  verifyTls: boolean;
  timeoutMs: number;
  /** What a 401 means, in words ("Jellyfin rejected the API key (401)"). */
  unauthorized: string;
  redact: (text: string) => string;
  signal?: AbortSignal;
  agent?: HttpAgent;
}

const MAX_BODY = 64 << 20;

/** The body of a 2xx answer, else a ServerHttpError. */
export function serverGet(options: ServerGetOptions, path: string): Promise<string> {
  const url = new URL(path, options.url);
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise<string>((resolve, reject) => {
    const outgoing = request(
      url,
      {
        headers: options.headers,
        rejectUnauthorized: options.verifyTls,
        timeout: options.timeoutMs,
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.agent ? { agent: options.agent } : {}),
      },
      (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_BODY) outgoing.destroy(new ServerHttpError(`GET ${path}: answer larger than ${MAX_BODY >> 20} MiB`, 'malformed'));
          else chunks.push(chunk);
        });
        response.on('error', () => undefined); // the request's own error handler reports it
        response.on('end', () => {
          const status = response.statusCode ?? 0;
          if (status === 401) return reject(new ServerHttpError(options.unauthorized, 'unauthorized'));
          if (status < 200 || status >= 300) return reject(new ServerHttpError(`GET ${path} answered HTTP ${status}`, 'http-error'));
          resolve(Buffer.concat(chunks).toString('utf8'));
        });
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new ServerHttpError(`GET ${path}: no answer within ${options.timeoutMs / 1000} s`, 'timeout')));
    outgoing.on('error', (error) =>
      reject(error instanceof ServerHttpError ? error : new ServerHttpError(`GET ${path}: ${options.redact(error.message)}`, 'unreachable')),
    );
    outgoing.end();
  });
}

/** One GET counted once for the metrics (by path, without its query): ok only when `read` understands the answer. */
export async function readFromServer<T>(
  options: ServerGetOptions,
  path: string,
  read: (body: string) => T,
  onRequest?: (endpoint: string, result: SourceRequestResult) => void,
): Promise<T> {
  const endpoint = new URL(path, options.url).pathname;
  let body: string;
  try {
    body = await serverGet(options, path);
  } catch (error) {
    onRequest?.(endpoint, error instanceof ServerHttpError ? error.result : 'unreachable');
    throw error;
  }
  try {
    const result = read(body);
    onRequest?.(endpoint, 'ok');
    return result;
  } catch (error) {
    onRequest?.(endpoint, 'malformed');
    throw new ServerHttpError(`GET ${endpoint}: unreadable answer (${options.redact((error as Error).message)})`, 'malformed');
  }
}
