/**
 * End to end: the real shaperrd process follows a log file the test appends to, in a throwaway netns,
 * with real traffic. Playing → throttled to its rate; stopped → full speed; exempt → never throttled;
 * kill -9 in the middle of a seek storm, restart → the kernel holds exactly what live sessions need.
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { kernelState, play, plexLine, startDaemon, stop, until } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from './helpers/netns.js';
import { measureGoodput, measureGoodputConcurrently } from './helpers/traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

t.test('shaperrd end to end with real traffic, kill -9 and restart', { skip }, async (t) => {
  const topology = await createTopology({ clients: 3 });
  t.teardown(() => topology.destroy());
  const dir = mkdtempSync(join(tmpdir(), 'shaperrd-e2e-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, plexLine('10.200.1.1', '/library/sections/1/all'));
  const config = join(dir, 'shaperr.yaml');
  writeFileSync(
    config,
    [
      'device: srv0',
      `netns: ${topology.serverNs}`,
      'server: { rate: 100mbit }',
      'client: { rate: 2mbit }',
      'exempt: [10.200.1.3/32]',
      `log: ${JSON.stringify(log)}`,
      `stateFile: ${JSON.stringify(join(dir, 'state.json'))}`,
      'graceSeconds: 1',
      'idleSeconds: 600',
    ].join('\n'),
  );
  const [remote, other, exempt] = topology.clientAddresses as [string, string, string];

  let daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);

  appendFileSync(log, play(remote, 's1') + play(exempt, 'lan1'));
  await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  const [playing, exemptRate] = await measureGoodputConcurrently(topology, [{ to: remote }, { to: exempt }]);
  t.ok(Math.abs(playing!.bitsPerSecond - 2 * MBIT) <= 0.2 * MBIT, `playing client: ${(playing!.bitsPerSecond / MBIT).toFixed(3)} Mbit/s (2 ±10 %)`);
  t.ok(exemptRate!.bitsPerSecond > 20 * MBIT, `exempt client never throttled: ${(exemptRate!.bitsPerSecond / MBIT).toFixed(0)} Mbit/s`);
  t.ok(daemon.output.some((line) => /decision exempt 10\.200\.1\.3/.test(line)));
  t.notOk(daemon.output.some((line) => /tok\b|X-Plex-Token/.test(line)), 'no token in our logs');

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
