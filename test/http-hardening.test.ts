/**
 * The status/metrics server under abuse, over real sockets: oversized headers, a slow-headers client,
 * paths that only resolve onto a route, 1,000 idle connections, and a listen address beyond loopback
 * without a token (refused by shaperrd at start).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import t from 'tap';
import { MAX_CONNECTIONS, startStatusServer } from '../daemon/operator/http.js';
import { CLI, writeDaemonConfig } from './helpers/daemon.js';

const TOKEN = 'a-long-enough-token';

async function server(t: { teardown(fn: () => unknown): void }): Promise<{ server: Server; port: number }> {
  const server = await startStatusServer({
    listen: '127.0.0.1:0',
    token: TOKEN,
    status: async () => ({ at: '', device: 'eth0', leaf: 'bfifo', clients: [], decisions: [] }),
    metrics: new Registry(),
  });
  t.teardown(() => new Promise((resolve) => server.close(resolve).closeAllConnections()));
  return { server, port: (server.address() as { port: number }).port };
}

/** Sends raw bytes; resolves with what came back once the server closes (or after `waitMs`). */
function raw(port: number, request: string, waitMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(received);
    }, waitMs);
    socket.on('data', (data) => {
      received += data.toString();
    });
    socket.on('error', reject);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
    socket.write(request);
  });
}
const get = (port: number, path: string, headers = '') =>
  raw(port, `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n${headers}\r\n`);
const statusOf = (response: string) => Number(/^HTTP\/1\.1 (\d+)/.exec(response)?.[1]);

t.test('only the three exact paths exist', async (t) => {
  const { port } = await server(t);
  for (const path of ['/', '/api/status', '/metrics']) t.equal(statusOf(await get(port, path)), 200, `${path}: 200`);
  for (const path of [
    '/api/../metrics',
    '/x/../api/status',
    '//evil.example/metrics',
    'http://evil.example/metrics',
    '/metrics/',
    '/%2e%2e/metrics',
    '/API/status',
  ]) {
    t.equal(statusOf(await get(port, path)), 404, `${path}: 404`);
  }
  t.equal(
    statusOf(await raw(port, `GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN.slice(0, -1)}\r\nConnection: close\r\n\r\n`)),
    401,
    'a token one byte short: 401',
  );
  t.equal(
    statusOf(await raw(port, `GET /api/status?token=${TOKEN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)),
    200,
    'the token as a query parameter: 200',
  );
});

t.test('headers are bounded in size and in time', async (t) => {
  const { port } = await server(t);
  const big = await get(port, '/', `X-Filler: ${'a'.repeat(10 * 1024)}\r\n`);
  t.equal(statusOf(big), 431, 'a 10 KiB header: 431 Request Header Fields Too Large (limit 8 KiB)');

  // Slow headers: one byte a second, never finished.
  const socket = connect(port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  await new Promise((resolve) => socket.once('connect', resolve));
  const opened = Date.now();
  socket.write('GET / HTTP/1.1\r\nHost: x\r\n');
  const trickle = setInterval(() => socket.write('X'), 1000);
  t.teardown(() => clearInterval(trickle));
  socket.on('error', () => {}); // the server's reset, once it gives up on us
  const closedAfter = await new Promise<number>((resolve) => {
    socket.once('close', () => {
      clearInterval(trickle);
      resolve(Date.now() - opened);
    });
    setTimeout(() => resolve(Infinity), 20_000);
  });
  clearInterval(trickle);
  t.ok(closedAfter < 20_000, `a client trickling headers is cut off after ${(closedAfter / 1000).toFixed(1)} s (headers timeout 5 s)`);
});

t.test('1,000 idle connections do not lock the page out, and at most MAX_CONNECTIONS stay open', async (t) => {
  const { server: http, port } = await server(t);
  const idle: Socket[] = [];
  t.teardown(() => {
    for (const socket of idle) socket.destroy();
  });
  await Promise.all(
    Array.from(
      { length: 1000 },
      () =>
        new Promise<void>((resolve) => {
          const socket = connect(port, '127.0.0.1', () => resolve());
          socket.on('error', () => resolve());
          socket.on('close', () => resolve());
          idle.push(socket);
        }),
    ),
  );
  await new Promise((resolve) => setTimeout(resolve, 200));
  const held = await new Promise<number>((resolve, reject) => http.getConnections((error, count) => (error ? reject(error) : resolve(count))));
  t.ok(held <= MAX_CONNECTIONS, `server holds ${held} connections with 1,000 idle sockets open (cap ${MAX_CONNECTIONS})`);
  const started = performance.now();
  const page = await get(port, '/api/status');
  t.equal(statusOf(page), 200, `/api/status served in ${(performance.now() - started).toFixed(0)} ms beside them`);
});

t.test('shaperrd refuses a status page beyond loopback without a token (exit 2, says how)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-listen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const listen of ['0.0.0.0:9750', '[::]:9750', '192.0.2.1:9750']) {
    // A namespace that does not exist: even a shaperrd that let this config through could touch no device.
    const config = writeDaemonConfig(dir, {
      device: 'absent0',
      netns: `shaperr-absent-${process.pid}`,
      log: join(dir, 'Plex Media Server.log'),
      server: { rate: '10mbit' },
      status: { listen },
    });
    const result = spawnSync(process.execPath, [CLI, '--config', config], { encoding: 'utf8', timeout: 30_000 });
    t.equal(result.status, 2, `listen ${listen} without a token: exit 2`);
    t.match(
      result.stderr,
      /'status\.token' = missing: status\.listen .* is reachable from other machines .*: set status\.token, or listen on 127\.0\.0\.1/,
      result.stderr.trim(),
    );
  }
});
