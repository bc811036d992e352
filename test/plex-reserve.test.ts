/**
 * Streams Plex sends without a pipe (here: Plex Relay) still use the uplink: shaperrd keeps the bandwidth
 * Plex reserved for them out of the pipes' guarantees. The Plex test server drives a real shaperrd on srv0
 * in a throwaway netns; the shaped client's class is read back over netlink as a relayed session starts,
 * changes its bandwidth and stops, and the reserve total is read from /api/status and the status page.
 */
import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { CHROMIUM, launchChromium } from './helpers/browser.js';
import t, { type Test } from 'tap';
import { validateConfig } from '../daemon/config.js';
import { Shaperrd } from '../daemon/shaperrd.js';
import type { StatusReport } from '../daemon/operator/status.js';
import { daemonConfig, kernelClientClasses, logDir, until } from './helpers/daemon.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { SECRET_TOKEN, startPlexServer } from './helpers/plex.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

/** The status page in headless Chromium (when installed): the reserve line once it matches `pattern`. */
async function statusPage(t: Test, url: string): Promise<{ reserveText(pattern: RegExp): Promise<string> } | undefined> {
  if (!existsSync(CHROMIUM)) {
    t.comment(`${CHROMIUM} is not installed: the page is not checked, /api/status is`);
    return undefined;
  }
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  await page.goto(url);
  return {
    reserveText: async (pattern) => {
      await page.waitForFunction((source) => new RegExp(source).test(document.getElementById('reserve')?.textContent ?? ''), pattern.source, {
        timeout: 10_000,
      });
      return (await page.textContent('#reserve')) ?? '';
    },
  };
}

/** Guaranteed rate (bits/s) of every client class under the server class, as the kernel has it. */
const classRates = (topology: Topology): number[] => kernelClientClasses(topology).map((pipe) => pipe.rate);

t.test('a relayed stream’s bandwidth is kept out of the shaped clients’ shares while it plays', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [remote] = topology.clientAddresses as [string];
  const server = await startPlexServer(t);
  const { dir, log } = logDir(t, 'shaperr-reserve');
  const config = validateConfig(
    daemonConfig(dir, {
      netns: topology.serverNs,
      server: { rate: '10mbit' },
      client: { rate: '8mbit' },
      source: 'plex',
      plex: { url: server.url, token: SECRET_TOKEN, pollSeconds: 1 },
      graceSeconds: 1,
      idleSeconds: 600,
      status: { listen: '127.0.0.1:0' },
    }),
  );
  const daemon = new Shaperrd({ config, logger: pino({ level: 'silent' }), logPath: log, sourceTimings: { retryMinMs: 100, retryMaxMs: 1000 } });
  await daemon.start();
  t.teardown(() => daemon.stop());

  const reservedInApi = async () => ((await (await fetch(`${daemon.statusUrl}api/status`)).json()) as StatusReport).reservedRate;
  const page = await statusPage(t, daemon.statusUrl!);

  server.play({ player: { address: remote } });
  await until(() => classRates(topology).length === 1);
  t.same(classRates(topology), [8 * MBIT], 'alone under a 10 Mbit/s server the client gets its 8 Mbit/s');
  t.equal(await reservedInApi(), 0, '/api/status: nothing reserved yet');

  const relayed = server.play({ player: { address: '203.0.113.9', relayed: true }, user: { title: 'bob' }, session: { bandwidth: 4000 } });
  await until(() => classRates(topology)[0]! < 8 * MBIT);
  const [shrunk] = classRates(topology) as [number];
  // 10 − 4 = 6 Mbit/s left; a contended share is set up to 2 % below its exact value.
  t.ok(shrunk <= 6 * MBIT && shrunk >= 0.97 * 6 * MBIT, `a 4 Mbit/s relayed stream: the client's share is ${shrunk / MBIT} Mbit/s (want 6 less at most 3 %)`);
  t.equal(await reservedInApi(), 4 * MBIT, '/api/status: the reserve total is the relayed stream’s 4 Mbit/s');
  if (page)
    t.equal(await page.reserveText(/4\.00 Mbit\/s/), 'kept for streams without a pipe: 4.00 Mbit/s of the server’s 10.00 Mbit/s', 'the status page shows it');

  server.updateSession(relayed.sessionKey, (session) => (session.session.bandwidth = 7000));
  await until(() => classRates(topology)[0]! < 0.97 * 6 * MBIT);
  const [smaller] = classRates(topology) as [number];
  t.ok(smaller <= 3 * MBIT && smaller >= 0.97 * 3 * MBIT, `its bandwidth rises to 7 Mbit/s: the share follows, ${smaller / MBIT} Mbit/s`);
  t.equal(await reservedInApi(), 7 * MBIT, '/api/status follows the new bandwidth');
  if (page) t.match(await page.reserveText(/7\.00 Mbit\/s/), /7\.00 Mbit\/s/, 'and so does the page');

  server.setState(relayed.sessionKey, 'stopped');
  await until(() => classRates(topology)[0] === 8 * MBIT);
  t.pass('the relayed stream stops: the client gets its 8 Mbit/s back');
  t.equal(await reservedInApi(), 0, '/api/status: the reserve is given back');
  if (page) t.match(await page.reserveText(/: 0 kbit\/s/), /: 0 kbit\/s/, 'and the page shows it given back');
  t.equal(classRates(topology).length, 1, 'the relayed stream never had a pipe of its own');
});
