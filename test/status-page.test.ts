/**
 * The status page in real headless Chromium (Debian's chromium, driven by playwright-core): it loads,
 * shows the client the test makes play, its chart updates with real traffic, and a screenshot is kept
 * in test/artifacts/.
 */
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHROMIUM, launchChromium } from './helpers/browser.js';
import t from 'tap';
import { daemonWithStatusPage, play } from './helpers/daemon.js';
import { netnsUnavailable } from '../daemon/support/netns.js';
import { measureGoodput } from './helpers/traffic.js';

const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const skip = netnsUnavailable() || (existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install chromium)`);

t.test('the status page shows a playing client and its live chart', { skip }, async (t) => {
  const { topology, log, daemon } = await daemonWithStatusPage(t, { server: '20mbit', client: '3mbit', token: 'page-token' });

  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));

  await page.goto(`${daemon.statusUrl}?token=page-token`);
  await page.waitForFunction(() => document.getElementById('summary')?.textContent?.includes('0 throttled'));
  t.match(await page.textContent('#clients'), /no client is throttled/, 'empty table before anyone plays');

  appendFileSync(log, play('10.200.1.1', 'page-1'));
  const row = page.locator('tr[data-address="10.200.1.1"]');
  await row.waitFor({ timeout: 10_000 });
  t.match(
    await row.textContent(),
    /10\.200\.1\.1.*playing.*3\.00 Mbit\/s \/ 3\.00 Mbit\/s3\.00 Mbit\/s/,
    'the playing client is in the table with its guarantee, ceil and wanted rate',
  );

  const traffic = measureGoodput(topology, { to: '10.200.1.1', seconds: 4, warmupSeconds: 0 });
  const pointsBefore = Number(await page.getAttribute('#chart', 'data-points'));
  await page.waitForFunction((before) => Number(document.getElementById('chart')!.dataset.points) >= before + 3, pointsBefore, { timeout: 10_000 });
  await page.waitForFunction(
    () => /[23]\.\d\d Mbit\/s/.test(document.querySelector('tr[data-address="10.200.1.1"] td:nth-child(7)')?.textContent ?? ''),
    undefined,
    { timeout: 10_000 },
  );
  t.pass('the chart gained points and the row shows the shaped rate');
  t.match(await page.textContent('#axis'), /2 min ago.*now/, 'the chart has a time axis: two minutes back to now');
  const legendColour = await page.evaluate(
    () => (document.querySelector('#legend [data-address="10.200.1.1"] .swatch') as HTMLElement | null)?.style.background,
  );
  const rowColour = await page.evaluate(() => (document.querySelector('tr[data-address="10.200.1.1"] .swatch') as HTMLElement | null)?.style.background);
  t.ok(legendColour && legendColour === rowColour, `the chart's legend names the client in its line's colour (${legendColour})`);
  t.match(await page.textContent('#decisions'), /throttle 10\.200\.1\.1/, 'the decision is listed');
  const width = await page.evaluate(() => parseFloat(document.getElementById('utilisation')!.style.width));
  t.ok(width > 5 && width < 30, `server ceiling utilisation bar at ${width} % (3 of 20 Mbit/s)`);

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'status-page.png'), fullPage: true });
  t.ok(existsSync(join(ARTIFACTS, 'status-page.png')), 'screenshot saved to test/artifacts/status-page.png');
  await traffic;

  // Seven viewers wanting 3 Mbit/s each under a 20 Mbit/s server: each is guaranteed its share, and the
  // page says the server rate is too low for them.
  appendFileSync(log, ['1', '2', '3', '4', '5', '6'].map((n) => play(`198.51.100.${n}`, `more-${n}`)).join(''));
  await page.waitForFunction(() => /7 clients are guaranteed less than they want/.test(document.getElementById('shortfall')?.textContent ?? ''), undefined, {
    timeout: 10_000,
  });
  t.match(await row.getAttribute('title'), /guaranteed 2\.8 Mbit\/s of the 3 Mbit\/s it wants/, 'each row says why its guarantee is short');
  t.match(await row.textContent(), /2\.80 Mbit\/s \/ 3\.00 Mbit\/s3\.00 Mbit\/s/, 'share, ceil and wanted rate side by side');

  // A long operation under way (a restart restoring thousands of pipes) shows in the summary line.
  await page.route('**/api/status*', async (route) => {
    const report = await (await route.fetch()).json();
    await route.fulfill({ json: { ...report, operation: { what: 'restoring pipes', done: 1250, total: 5000 } } });
  });
  await page.waitForFunction(() => document.getElementById('summary')?.textContent?.includes('restoring pipes 1250/5000'), undefined, { timeout: 10_000 });
  t.pass('the operation under way and its progress are shown');
  await page.unrouteAll({ behavior: 'ignoreErrors' }); // a poll still in flight must not outlive the page

  const denied = await browser.newPage();
  const response = await denied.goto(daemon.statusUrl!);
  t.equal(response?.status(), 401, 'without the token the page is refused');
  t.same(errors, [], 'no script errors on the page');
});
