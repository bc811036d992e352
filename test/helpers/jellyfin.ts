/** The Jellyfin/Emby test server in tests: started per test, closed at its end. */
import { JellyfinTestServer, type JellyfinTestServerOptions } from '../../daemon/demo/jellyfin-test-server.js';

export { JellyfinTestServer } from '../../daemon/demo/jellyfin-test-server.js';

/** A distinctive API key: any hit for it in an output is a leak. */
export const SECRET_KEY = 'c0ffee5ecretJe11yf1nKey9b2d';

export async function startJellyfinServer(
  t: { teardown(fn: () => unknown): void },
  options: Partial<JellyfinTestServerOptions> = {},
): Promise<JellyfinTestServer> {
  const server = await JellyfinTestServer.start({ apiKey: SECRET_KEY, ...options });
  t.teardown(() => server.close());
  return server;
}
