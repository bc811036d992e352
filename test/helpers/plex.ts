/** The Plex test server in tests: started per test, closed at its end; a self-signed certificate for https. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PlexTestServer, type PlexTestServerOptions } from '../../daemon/demo/plex-test-server.js';

export { PlexTestServer } from '../../daemon/demo/plex-test-server.js';

/** A distinctive token: any hit for it in an output is a leak. */
export const SECRET_TOKEN = 'SeCrEt-pl3x-T0KEN-4a7c';

export async function startPlexServer(t: { teardown(fn: () => unknown): void }, options: Partial<PlexTestServerOptions> = {}): Promise<PlexTestServer> {
  const server = await PlexTestServer.start({ token: SECRET_TOKEN, ...options });
  t.teardown(() => server.close());
  return server;
}

/** A fresh self-signed certificate for 127.0.0.1 (openssl, made at test time, never stored). */
export function selfSignedCertificate(): { key: string; cert: string } {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-cert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
