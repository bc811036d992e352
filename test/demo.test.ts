/** `npm start`'s demo, non-TTY and short: its summary must show the product working, and nothing left behind. */
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { netnsUnavailable } from '../daemon/support/netns.js';

const CLI = fileURLToPath(new URL('../dist/daemon/cli.js', import.meta.url));

t.test(
  'the demo throttles the remote client to its rate, rides a seek storm, spares the LAN, calms the home uplink, cleans up',
  { skip: netnsUnavailable() },
  async (t) => {
    const result = spawnSync(process.execPath, [CLI, '--demo', '--duration', '20'], { encoding: 'utf8', timeout: 90_000 });
    const summaryLine = result.stdout.split('\n').find((line) => line.startsWith('demo-summary '));
    t.ok(summaryLine, `summary printed (stderr: ${result.stderr.trim()})`);
    const summary = JSON.parse(summaryLine!.slice('demo-summary '.length));
    const { configuredBitsPerSecond: configured, measuredWhilePlayingBitsPerSecond: measured } = summary.remote;
    t.ok(Math.abs(measured - configured) <= 0.1 * configured, `remote measured ${(measured / 1e6).toFixed(2)} Mbit/s for ${configured / 1e6} configured`);
    t.ok(summary.remote.measuredAfterReleaseBitsPerSecond > 5 * configured, 'full speed after release');
    const app = summary.plexApp;
    t.ok(
      app.withinTenPercent,
      `the client heard through the Plex API: measured ${(app.measuredWhilePlayingBitsPerSecond / 1e6).toFixed(2)} Mbit/s for ${app.configuredBitsPerSecond / 1e6} configured (its user's override)`,
    );
    t.ok(app.measuredAfterReleaseBitsPerSecond > 5 * app.configuredBitsPerSecond, 'and full speed after its stop');
    t.equal(summary.lan.throttled, false, 'LAN client never throttled');
    t.ok(summary.seekStorm.events >= 500, `${summary.seekStorm.events} seek-storm events`);
    t.ok(summary.seekStorm.kernelChanges <= 2, `${summary.seekStorm.kernelChanges} kernel changes during the storm`);
    t.ok(summary.eventsRead > 0);
    // The home uplink: the modem's queue, read from its kernel counters, is shorter once shaperr is on.
    const home = summary.homeUplink;
    t.ok(home.unshaped.modemPeakBacklogBytes > 0, `unshaped, Plex queues in the modem (${home.unshaped.modemPeakBacklogBytes} bytes)`);
    t.ok(
      home.shaperr.modemPeakBacklogBytes < home.unshaped.modemPeakBacklogBytes,
      `with shaperr the modem queue peaks at ${home.shaperr.modemPeakBacklogBytes} bytes`,
    );
    t.equal(home.streams.length, 3, 'three remote viewers streamed');
    t.match(result.stdout, /gamer p99: [\d.]+ ms → [\d.]+ ms/, 'the summary prints both p99s');
    t.equal(result.status, 0);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: an ESC would be a terminal escape sequence
    t.notMatch(result.stdout, /\x1b\[/, 'plain lines when not a TTY');
    t.same(summary.leftoverNamespaces, []);
    t.notMatch(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), /shaperr-demo/, 'ip netns list shows nothing of the demo');
  },
);

t.test('without root the demo says so and exits non-zero', { skip: netnsUnavailable() }, async (t) => {
  const result = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, CLI, '--demo', '--duration', '8'], {
    encoding: 'utf8',
  });
  t.equal(result.status, 1);
  t.match(result.stderr, /the demo needs root: it creates network namespaces/);
});
