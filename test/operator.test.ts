/**
 * What an operator touches: the `shaperr` CLI (status, tc, clear, check), /metrics and its token, and
 * shaperrd running with nothing but CAP_NET_ADMIN — against real kernel state in throwaway namespaces.
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Shaper } from '../lib/shaper/shaper.js';
import { inspectShaper } from '../lib/shaper/inspect.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { loadConfig } from '../daemon/config.js';
import { inContainer } from '../daemon/operator/container-check.js';
import { daemonWithStatusPage, kernelState, logDir, play, plexLine, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createNetns, createTopology, deleteNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';
import { startStream } from './helpers/traffic.js';

const skip = netnsUnavailable();
const SHAPERR = fileURLToPath(new URL('../dist/daemon/operator/shaperr-cli.js', import.meta.url));
const shaperr = (...args: string[]) => spawnSync(process.execPath, [SHAPERR, ...args], { encoding: 'utf8' });

t.test('shaperr status, tc and clear read and change the real kernel state', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2 });
  t.teardown(() => topology.destroy());
  const where = ['--device', 'srv0', '--netns', topology.serverNs];
  const [first] = topology.clientAddresses as [string];
  const ipv6 = topology.clientAddresses6[1]!;

  t.equal(shaperr(...where, 'status').status, 3, 'nothing of shaperr on the device: exit 3');
  const shaper = await Shaper.open({ device: 'srv0', netns: topology.serverNs, server: { rate: '50mbit' }, client: { rate: '2mbit' }, onWarning: () => {} });
  t.teardown(() => shaper.close({ teardown: true }));
  await shaper.throttle(first);
  await shaper.throttle(ipv6, { rate: '1mbit', ceil: '3mbit' });

  // Traffic during the measuring interval, so "now" is a real rate (started once it flows: node can take
  // seconds to start on a loaded machine).
  const traffic = await startStream(topology, first, 30);
  const status = shaperr(...where, 'status', '--json', '--interval', '2');
  traffic.stop();
  t.equal(status.status, 0, status.stderr);
  const report = JSON.parse(status.stdout) as {
    clients: Array<{ address: string; rate: number; ceil: number; bytes: number; bitsPerSecond: number }>;
    server: { ceil: number };
  };
  t.same(
    report.clients.map((c) => [c.address, c.rate, c.ceil]).sort(),
    [
      [first, 2e6, 2e6],
      [ipv6, 1e6, 3e6],
    ].sort(),
    'both clients with their rate and ceil',
  );
  const playing = report.clients.find((c) => c.address === first)!;
  // Class counters count Ethernet framing and HTB's burst, so a short window reads somewhat above the rate.
  t.ok(
    playing.bytes > 0 && Math.abs(playing.bitsPerSecond - 2e6) < 0.5e6,
    `throughput now from kernel counters: ${(playing.bitsPerSecond / 1e6).toFixed(2)} Mbit/s`,
  );
  t.equal(report.server.ceil, 50e6);
  const table = shaperr(...where, 'status', '--interval', '0.2');
  t.match(table.stdout, /CLIENT\s+USER\s+STATE\s+SESSIONS\s+GUARANTEED \/ CEIL\s+WANTS\s+NOW\s+SENT\s+DROPS\s+SINCE/);
  t.match(table.stdout, new RegExp(`${first.replaceAll('.', '\\.')}\\s+unknown\\s+0\\s+2 Mbit/s / 2 Mbit/s`));

  // `shaperr tc` rebuilds the same state on an empty device: replay it with tc and read it back.
  const commands = shaperr(...where, 'tc');
  t.equal(commands.status, 0, commands.stderr);
  const lines = commands.stdout.split('\n').filter((line) => line.startsWith('tc '));
  t.ok(lines.length >= 8, `${lines.length} tc commands`);
  const replayNs = await createNetns('replay');
  t.teardown(() => deleteNetns(replayNs));
  await ip('-n', replayNs, 'link', 'add', 'srv0', 'type', 'veth', 'peer', 'name', 'peer0');
  const replay = spawnSync('ip', ['netns', 'exec', replayNs, 'tc', '-batch', '-'], { input: lines.map((line) => line.slice(3)).join('\n'), encoding: 'utf8' });
  t.equal(replay.status, 0, `tc -batch accepts every line ${replay.stderr}`);
  t.notMatch(replay.stderr, /quantum of class/, "no kernel warning: the server class's clamped quantum is in the commands");
  const rebuilt = inspectShaper({ device: 'srv0', netns: replayNs })!;
  t.same(
    rebuilt
      .clients()
      .map((c) => [c.address, c.rate, c.ceil, c.classid])
      .sort(),
    shaper
      .clients()
      .map((c) => [c.address, c.rate, c.ceil, c.classid])
      .sort(),
    'replayed state equals the original',
  );
  await rebuilt.close();

  const cleared = shaperr(...where, 'clear');
  t.equal(cleared.status, 0, cleared.stderr);
  t.match(cleared.stdout, /removed shaperr's root qdisc 5a: and 2 client pipes from srv0/);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.equal(tc.rootQdisc('srv0'), undefined, 'root qdisc gone');
  t.match(shaperr(...where, 'clear').stdout, /nothing of shaperr's on srv0/);
  tc.addQdisc('srv0', { kind: 'tbf', handle: '1:', options: { rate: '1mbit', burst: '10kb', limit: 30000 } });
  const refused = shaperr(...where, 'clear');
  t.equal(refused.status, 1);
  t.match(refused.stderr, /root qdisc on srv0 is tbf 1:, not shaperr's; not touching it/);
  t.equal(tc.rootQdisc('srv0')?.kind, 'tbf', 'a foreign qdisc is left alone');
  tc.close();
});

t.test('shaperr check: one line per check, with what to do', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-check');
  writeFileSync(log, 'Sep 26, 2026 22:48:26.451 [140562] INFO - Plex Media Server v1.41 - Debian\n');
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, server: { rate: '50mbit' }, log });

  const quiet = shaperr('--config', config, 'check');
  t.equal(quiet.status, 0, 'warnings only: exit 0');
  t.match(quiet.stdout, /^ok {4}configuration .* is valid$/m);
  t.match(quiet.stdout, /^ok {4}running with CAP_NET_ADMIN$/m);
  t.match(quiet.stdout, /^ok {4}device srv0 exists in netns .* \(mtu 1500\)$/m);
  t.match(quiet.stdout, /^ok {4}kernel has the htb qdisc$/m);
  t.match(
    quiet.stdout,
    /^(ok {4}kernel has the sfq qdisc|warn {2}kernel has no sfq qdisc \(module sch_sfq\)\n {6}→ client pipes will use bfifo leaves)/m,
    'sfq, or the fallback named',
  );
  t.match(
    quiet.stdout,
    /^warn {2}no request lines in the log: Plex debug logging looks off\n {6}→ Plex Web → Settings → General → Enable Plex Media Server debug logging$/m,
  );

  appendFileSync(log, plexLine('10.200.1.1', '/library/sections/1/all'));
  t.match(shaperr('--config', config, 'check').stdout, /^ok {4}Plex debug logging is on/m);

  const missing = shaperr('--config', config, '--device', 'nope0', 'check');
  t.equal(missing.status, 1, 'a failed check: exit 1');
  t.match(missing.stdout, /^fail {2}no device nope0 in netns .*\n {6}→ set `device:`/m);

  writeFileSync(config, 'device: srv0\nserver: { rate: fast }\nclient: { rate: 2mbit }\n');
  const bad = shaperr('--config', config, 'status');
  t.equal(bad.status, 2, 'bad configuration: exit 2');
  t.match(bad.stderr, /'server\.rate' = "fast"/);
});

t.test('shaperr check with Jellyfin as the only source says nothing of Plex (its config, its port) nor of a Plex API source', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir } = logDir(t, 'shaperr-check-jellyfin');
  const closed = 'http://127.0.0.1:9'; // nothing listens: each server check fails fast
  const check = (keys: object) => shaperr('--config', writeDaemonConfig(dir, { netns: topology.serverNs, ...keys }), 'check').stdout;
  const jellyfin = check({ source: 'jellyfin', jellyfin: { url: closed, apiKey: 'k' } });
  t.match(jellyfin, /^ok {4}event source: jellyfin → Jellyfin at http:\/\/127\.0\.0\.1:9/m);
  t.match(jellyfin, /^ok {4}the Plex log and its debug logging are not needed \(the log is not one of the sources\)$/m);
  t.notMatch(jellyfin, /Plex API|Preferences\.xml|Plex's config|Plex at /, 'no line about Plex');
  // The control: with source: plex the same container check does look at Plex.
  const plex = check({ source: 'plex', plex: { url: closed, token: 'token-of-the-test' } });
  if (inContainer()) t.match(plex, /^fail {2}Plex at http:\/\/127\.0\.0\.1:9 does not answer from this container/m, 'with source: plex, Plex is checked');
  else t.match(plex, /^fail {2}Plex at http:\/\/127\.0\.0\.1:9 is not reachable/m, 'with source: plex, Plex is checked');
});

t.test('/metrics and /api/status, with a token', { skip }, async (t) => {
  const { topology, log, daemon } = await daemonWithStatusPage(t, { server: '50mbit', client: '2mbit', token: 'secret-token' });
  const url = daemon.statusUrl!;
  t.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/, 'bound to 127.0.0.1');
  t.equal((await fetch(`${url}metrics`)).status, 401, 'no token: 401');
  t.equal((await fetch(`${url}metrics?token=wrong-token`)).status, 401, 'wrong token: 401');

  appendFileSync(log, play('10.200.1.1', 'm1'));
  await until(() => daemon.sessions().some((s) => s.throttled));
  const metrics = await (await fetch(`${url}metrics`, { headers: { authorization: 'Bearer secret-token' } })).text();
  t.match(metrics, /^shaperr_throttled_clients 1$/m);
  t.match(metrics, /^shaperr_sessions 1$/m);
  t.match(metrics, /^shaperr_playback_events_total\{kind="start",source="log"\} 1$/m);
  t.match(metrics, /^shaperr_kernel_operation_seconds_count\{operation="throttle"\} 1$/m);
  t.match(metrics, /^shaperr_client_sent_bytes\{client="10\.200\.1\.1"\} \d+$/m);
  t.match(metrics, /^shaperr_log_lines\{result="playback"\} 1$/m);
  t.match(metrics, /^shaperr_reconciliations_total\{reason="repair"\} 0$/m);
  t.match(metrics, /^shaperr_playback_events_total\{kind="stop",source="log"\} 0$/m);
  const status = (await (await fetch(`${url}api/status?token=secret-token`)).json()) as {
    clients: Array<{ address: string; sessions: string[] }>;
    decisions: Array<{ action: string }>;
  };
  t.same(
    status.clients.map((c) => [c.address, c.sessions]),
    [['10.200.1.1', ['m1']]],
  );
  t.match(status.decisions, [{ action: 'throttle' }]);
  t.same(kernelState(topology), { classes: 1, destinations: ['10.200.1.1/32'] }, 'and the kernel agrees');
});

t.test('shaperrd works with only CAP_NET_ADMIN (not root), as the systemd unit runs it', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-capability');
  chmodSync(dir, 0o777);
  chmodSync(log, 0o644);
  // No netns key: joining a namespace needs CAP_SYS_ADMIN; like a service, the daemon starts inside it.
  const config = writeDaemonConfig(dir, { server: { rate: '50mbit' }, log, stateFile: join(dir, 'state', 'state.json') });
  const daemon = startDaemon(config, [
    'ip',
    'netns',
    'exec',
    topology.serverNs,
    'setpriv',
    '--reuid=65534',
    '--regid=65534',
    '--clear-groups',
    '--inh-caps=-all,+net_admin',
    '--ambient-caps=-all,+net_admin',
    '--bounding-set=-all,+net_admin',
  ]);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  const status = readFileSync(`/proc/${daemon.child.pid}/status`, 'utf8');
  // setpriv execs node in place, so this is the daemon itself.
  t.match(status, /^Uid:\s+65534\s/m, 'runs as nobody');
  t.match(status, /^CapEff:\s+0000000000001000$/m, 'effective capabilities: CAP_NET_ADMIN only');

  appendFileSync(log, play('10.200.1.1', 'c1'));
  await until(() => kernelState(topology).classes === 1);
  t.same(kernelState(topology), { classes: 1, destinations: ['10.200.1.1/32'] }, 'the client got its pipe');
  daemon.child.kill('SIGTERM');
  const code = await new Promise((resolve) => daemon.child.once('exit', resolve));
  t.equal(code, 0, 'SIGTERM exits 0');
  t.same(kernelState(topology), { classes: 0, destinations: [] }, 'and its rules are removed');
  t.ok(JSON.parse(readFileSync(join(dir, 'state', 'state.json'), 'utf8')).clients, 'state saved as nobody');
});

t.test('the shipped examples: the commented config is valid, the unit grants only CAP_NET_ADMIN', async (t) => {
  const config = loadConfig(fileURLToPath(new URL('../examples/shaperr.yaml', import.meta.url)));
  t.match(config, { device: 'eth0', leaf: 'sfq', status: { listen: '127.0.0.1:9750' } });
  const unit = fileURLToPath(new URL('../examples/shaperrd.service', import.meta.url));
  const text = readFileSync(unit, 'utf8');
  t.match(text, /^AmbientCapabilities=CAP_NET_ADMIN$/m);
  t.match(text, /^CapabilityBoundingSet=CAP_NET_ADMIN$/m);
  t.match(text, /^User=shaperr$/m);
  const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' });
  t.test('systemd-analyze verify', { skip: verify.error ? 'systemd-analyze is not installed' : false }, async (t) => {
    t.same(
      verify.stderr.split('\n').filter((line) => line && !/is not executable|No such file/.test(line)),
      [],
      'finds nothing but the not-yet-installed binary',
    );
  });
});
