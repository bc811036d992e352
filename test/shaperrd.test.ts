/**
 * End to end: the real shaperrd process follows a log file the test appends to, in a throwaway netns,
 * with real traffic. Playing → throttled to its rate; stopped → full speed; exempt → never throttled;
 * kill -9 in the middle of a seek storm, restart → the kernel holds exactly what live sessions need.
 * A client whose log lines stop but whose bytes keep flowing stays throttled; once the bytes stop too, it
 * is released after the idle timeout (the kernel's class counters, read as the daemon reads them).
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { kernelState, play, plexLine, startDaemon, stop, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';
import { measureGoodput, measureGoodputConcurrently, shapedTo, startStream } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

t.test('shaperrd end to end with real traffic, kill -9 and restart', { skip }, async (t) => {
  const topology = await createTopology({ clients: 3 });
  t.teardown(() => topology.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'shaperrd-e2e-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, plexLine('10.200.1.1', '/library/sections/1/all'));
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, leaf: undefined, exempt: ['10.200.1.3/32'], log, graceSeconds: 1, idleSeconds: 600 });
  const [remote, other, exempt] = topology.clientAddresses as [string, string, string];

  let daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);

  appendFileSync(log, play(remote, 's1') + play(exempt, 'lan1'));
  await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  const [playing, exemptRate] = await measureGoodputConcurrently(topology, [{ to: remote }, { to: exempt }]);
  const playingRate = shapedTo(playing!.bitsPerSecond, 2 * MBIT);
  t.ok(playingRate.within, `playing client: ${playingRate.reading}`);
  t.ok(exemptRate!.bitsPerSecond > 20 * MBIT, `exempt client never throttled: ${(exemptRate!.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);
  t.ok(daemon.output.some((line) => /decision exempt 10\.200\.1\.3/.test(line)));
  t.notOk(
    daemon.output.some((line) => /tok\b|X-Plex-Token/.test(line)),
    'no token in our logs',
  );

  appendFileSync(log, stop(remote, 's1'));
  await daemon.waitFor(/decision release 10\.200\.1\.1/);
  const stopped = await measureGoodput(topology, { to: remote, seconds: 2 });
  t.ok(stopped.bitsPerSecond >= 10 * MBIT, `after stop: ${(stopped.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);

  // A seek storm on two clients; kill -9 in the middle of it.
  appendFileSync(log, play(remote, 'seek-0') + play(other, 'o-0'));
  let storm = '';
  for (let i = 0; i < 300; i++) storm += stop(remote, `seek-${i}`) + play(remote, `seek-${i + 1}`);
  appendFileSync(log, storm);
  await daemon.waitFor(/decision throttle 10\.200\.1\.2/);
  daemon.child.kill('SIGKILL');
  await new Promise((resolve) => daemon.child.once('exit', resolve));
  // Written while the daemon is down: the second client stops; the first keeps playing.
  appendFileSync(log, stop(other, 'o-0'));

  daemon = startDaemon(config);
  await daemon.waitFor(/shaperrd started/);
  await until(() => {
    const state = kernelState(topology);
    return state.classes === 1 && state.destinations.length === 1;
  });
  t.same(kernelState(topology), { classes: 1, destinations: ['10.200.1.1/32'] }, 'exactly the playing client remains, nothing duplicated');

  daemon.child.kill('SIGTERM');
  const code = await new Promise((resolve) => daemon.child.once('exit', resolve));
  t.equal(code, 0, 'SIGTERM exits 0');
  t.same(kernelState(topology), { classes: 0, destinations: [] }, 'rules removed on exit');
});

t.test('a client with no new log lines stays throttled while its bytes flow, and is released once they stop', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'shaperrd-idle-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  const idleSeconds = 5;
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, leaf: undefined, log, graceSeconds: 1, idleSeconds });
  const [client] = topology.clientAddresses as [string];
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);
  // Flowing before playback starts: on a slow (emulated) machine starting the stream can take longer than the idle timeout.
  const stream = await startStream(topology, client, 90);
  t.teardown(() => stream.stop());
  appendFileSync(log, play(client, 'long-1'));
  await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  await stream.bitsPerSecondOver(2 * idleSeconds);
  t.notOk(
    daemon.output.some((line) => /decision (expire|release) 10\.200\.1\.1/.test(line)),
    `still throttled after ${2 * idleSeconds} s without a log line: its bytes keep moving`,
  );
  t.match(kernelState(topology), { classes: 1 });

  stream.stop();
  const stopped = Date.now();
  await daemon.waitFor(/decision release 10\.200\.1\.1/);
  t.ok(
    daemon.output.some((line) => /decision expire 10\.200\.1\.1/.test(line)),
    `expired ${((Date.now() - stopped) / 1000).toFixed(1)} s after its bytes stopped (idle timeout ${idleSeconds} s)`,
  );
  await until(() => kernelState(topology).classes === 0);
  t.match(kernelState(topology), { classes: 0, destinations: [] }, 'its pipe is gone');
});
