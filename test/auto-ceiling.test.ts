/**
 * `server: { rate: auto }` in shaperrd: the config refuses what cannot work with one line naming the key;
 * the ceiling starts at `start`, holds while nothing plays (no change, no drift), shows in /api/status,
 * /metrics and `shaperr status`; SIGHUP switches fixed ↔ auto; a restart starts from the last good ceiling
 * in the state file. Kernel state read back over netlink in a throwaway namespace. The ceiling following
 * a real uplink is auto-ceiling-uplink.test.ts.
 */
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { ConfigError, validateConfig } from '../daemon/config.js';
import { CLI, daemonConfig, type DaemonConfigKeys, logDir, play, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const MBIT = 1e6;
const SHAPERR_CLI = CLI.replace(/cli\.js$/, 'operator/shaperr-cli.js');

t.test('the config: rate auto needs min and max, and refuses what cannot work, naming the key', async (t) => {
  const refused = (server: unknown, more: object = {}) => {
    try {
      validateConfig({ ...daemonConfig('/tmp'), server, ...more });
    } catch (error) {
      t.type(error, ConfigError);
      return (error as Error).message;
    }
    return 'accepted';
  };
  t.match(refused({ rate: 'auto', max: '30mbit' }), /'server\.min' = missing: rate: auto needs min/);
  t.match(refused({ rate: 'auto', min: '2mbit' }), /'server\.max' = missing: rate: auto needs max \(the plan's upload rate\)/);
  t.match(refused({ rate: 'auto', min: '40mbit', max: '30mbit' }), /'server\.min' = "40mbit": min is above max/);
  t.match(refused({ rate: 'auto', min: '2mbit', max: '30mbit', start: '1mbit' }), /'server\.start' = "1mbit": start must lie between min/);
  t.match(refused({ rate: 'auto', min: '2mbit', max: '30mbit', ceil: '20mbit' }), /'server\.ceil' = "20mbit": rate: auto sets the ceil itself/);
  t.match(refused({ rate: '10mbit', min: '2mbit' }), /'server\.min' = "2mbit": min belongs to rate: auto/);
  t.match(refused({ rate: 'auto', min: '2mbit', max: '30mbit', probe: '10.0.0.1' }), /'server\.probe' = "10\.0\.0\.1": invalid probe target/);
  t.match(refused({ rate: 'auto', min: '2mbit', max: '30mbit', signal: 'probe' }), /'server\.probe' = missing: signal: probe needs probe/);
  t.match(refused({ rate: 'automatic', min: '2mbit', max: '30mbit' }), /'server\.rate' = "automatic"/);
  t.match(
    refused({ rate: 'auto', min: '2mbit', max: '30mbit' }, { gateway: { plexPort: 32400 } }),
    /'server\.probe' = missing: in gateway mode Plex's connections are on another host/,
  );
  t.equal(refused({ rate: 'auto', min: '2mbit', max: '30mbit', start: '18mbit', probe: '[2001:db8::7]:7' }), 'accepted');
  t.equal(refused({ rate: '10mbit', ceil: '10mbit' }), 'accepted', 'a fixed rate works as before');
});

/** The server class's rate on srv0 (bits/s), read back from the kernel. */
function kernelCeiling(serverNs: string): number | undefined {
  const tc = TrafficControl.open({ netns: serverNs });
  try {
    return tc.getClass('srv0', '5a:1')?.parameters.rate;
  } finally {
    tc.close();
  }
}

t.test(
  'auto in shaperrd: starts at start, holds while idle, switches fixed ↔ auto on SIGHUP, restarts from the last good ceiling',
  { skip: netnsUnavailable() },
  async (t) => {
    const topology = await createTopology({ clients: 1, ipv6: false });
    t.teardown(() => topology.destroy());
    const { dir, log } = logDir(t, 'shaperr-auto');
    const auto = { rate: 'auto', min: '2mbit', max: '30mbit', start: '18mbit' } as const;
    const write = (server: DaemonConfigKeys['server']) => writeDaemonConfig(dir, { netns: topology.serverNs, server, log, status: { listen: '127.0.0.1:0' } });
    const config = write(auto);
    writeFileSync(log, play(topology.clientAddresses[0]!, 'one'));
    let daemon = startDaemon(config);
    t.teardown(() => daemon.child.kill('SIGKILL'));
    await daemon.waitFor(/shaperrd started/, 120_000);
    await daemon.waitFor(/automatic server ceiling on/);
    t.equal(kernelCeiling(topology.serverNs), 18 * MBIT, 'the server class starts at start');

    // Idle: the pipe exists, nothing flows. Two seconds of ticks (20 of them) change nothing.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    t.equal(kernelCeiling(topology.serverNs), 18 * MBIT, 'idle: the ceiling has not drifted');
    t.notOk(
      daemon.output.some((line) => /server ceiling \d/.test(line)),
      'idle: no change logged',
    );

    const url = JSON.parse(daemon.output.find((line) => /status page and \/metrics listening/.test(line))!).url as string;
    const status = (await (await fetch(`${url}api/status`)).json()) as { ceiling?: Record<string, unknown>; server?: { rate: number } };
    t.match(status.ceiling, { mode: 'auto', signal: 'plex', rate: 18 * MBIT, min: 2 * MBIT, max: 30 * MBIT, changes: 0 }, '/api/status has the ceiling');
    t.notOk('delayMs' in (status.ceiling ?? {}), 'no delay while nothing flows (silence is not a measurement)');
    const metrics = await (await fetch(`${url}metrics`)).text();
    t.match(metrics, /shaperr_server_ceiling_bits_per_second 18000000/, '/metrics has the ceiling');
    t.match(metrics, /shaperr_ceiling_changes_total\{reason="queue"\} 0|# TYPE shaperr_ceiling_changes_total counter/, '/metrics counts the changes');

    const reloaded = async () => {
      const before = daemon.output.filter((line) => /configuration reloaded/.test(line)).length;
      daemon.child.kill('SIGHUP');
      await until(() => daemon.output.filter((line) => /configuration reloaded/.test(line)).length > before);
    };
    write({ rate: '12mbit' });
    await reloaded();
    t.equal(kernelCeiling(topology.serverNs), 12 * MBIT, 'SIGHUP to a fixed rate: the server class takes it');
    const fixedStatus = (await (await fetch(`${url}api/status`)).json()) as { ceiling?: unknown };
    t.equal(fixedStatus.ceiling, undefined, 'and the automatic ceiling is off');

    write({ ...auto, start: undefined, min: '2mbit', max: '10mbit' });
    await reloaded();
    t.equal(kernelCeiling(topology.serverNs), 10 * MBIT, 'SIGHUP back to auto: from the rate in force, within the new max');

    // The state file keeps the last good ceiling; a restart starts from it, not from start or max.
    const exited = new Promise<number | null>((resolve) => daemon.child.once('exit', resolve));
    daemon.child.kill('SIGTERM');
    t.equal(await exited, 0, 'stops cleanly');
    const stateFile = join(dir, 'state.json');
    const state = JSON.parse(readFileSync(stateFile, 'utf8'));
    t.match(state.ceiling, { rate: 10 * MBIT, min: 2 * MBIT, max: 10 * MBIT, signal: 'plex' }, 'the state file has the ceiling');
    // As if the ceiling had followed the uplink down to 7 Mbit/s before the restart.
    writeFileSync(stateFile, JSON.stringify({ ...state, ceiling: { ...state.ceiling, rate: 7 * MBIT } }));
    write(auto);
    daemon = startDaemon(config);
    await daemon.waitFor(/automatic server ceiling on/, 120_000);
    t.equal(kernelCeiling(topology.serverNs), 7 * MBIT, 'restarted from the last good ceiling');
    await daemon.waitFor(/shaperrd started/);
    t.equal(JSON.parse(readFileSync(stateFile, 'utf8')).ceiling?.rate, 7 * MBIT, 'the state saved at start keeps it: a crash now loses nothing');

    const { stdout } = await promisify(execFile)(process.execPath, [SHAPERR_CLI, '--config', config, 'status', '--interval', '0.2']);
    t.match(stdout, /automatic ceiling 7(\.00)? Mbit\/s \(2(\.00)? Mbit\/s–30(\.00)? Mbit\/s, plex signal\)/, '`shaperr status` shows it');
    const stopped = new Promise<number | null>((resolve) => daemon.child.once('exit', resolve));
    daemon.child.kill('SIGTERM');
    t.equal(await stopped, 0);
  },
);

t.test('`shaperr check` says which signal the automatic ceiling follows and whether it can be read here', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir } = logDir(t, 'shaperr-auto-check');
  // A real UDP echo service on loopback for the probe, and a port where nothing answers.
  const echo = dgram.createSocket('udp4');
  echo.on('message', (message, from) => echo.send(message, from.port, from.address));
  await new Promise<void>((resolve) => echo.bind(0, '127.0.0.1', resolve));
  t.teardown(() => echo.close());
  const check = async (server: DaemonConfigKeys['server'], more: DaemonConfigKeys = {}) => {
    const config = writeDaemonConfig(dir, { netns: topology.serverNs, server, ...more });
    const result = await promisify(execFile)(process.execPath, [SHAPERR_CLI, '--config', config, 'check']).catch((error: { stdout: string }) => error);
    return result.stdout;
  };
  const auto = { rate: 'auto', min: '2mbit', max: '30mbit' } as const;
  const plex = await check(auto);
  t.match(plex, /ok {4}automatic server ceiling between 2 and 30 Mbit\/s, following Plex's own connections/);
  t.match(plex, /warn {2}Plex's connections \(sock_diag, local port 32400\): 0 open now/, 'nothing plays: readable, nothing to read yet');
  const answered = await check({ ...auto, probe: `127.0.0.1:${echo.address().port}` });
  t.match(answered, /ok {4}the UDP probe to 127\.0\.0\.1:\d+ answered \d+ of \d+/);
  const silent = await check({ ...auto, signal: 'probe', probe: '127.0.0.1:9' });
  t.match(silent, /fail {2}the UDP probe to 127\.0\.0\.1:9 got no answer/, 'the probe as the signal and no echo: a failure, with the fix');
  t.match(silent, /run a UDP echo service there/);
  const gateway = await check({ ...auto, probe: `127.0.0.1:${echo.address().port}` }, { gateway: { plexPort: 32400 } });
  t.match(gateway, /not readable in gateway mode \(they are on another host\); the probe is the signal/);
  t.match(await check({ rate: '20mbit' }), /ok {4}server ceiling fixed/);
});
