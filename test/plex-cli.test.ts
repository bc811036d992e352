/**
 * shaperrd as a process with the Plex API as its only source: when the websocket drops (or Plex is down
 * at start) nothing but the retry timer is left, and the process must still wait for Plex instead of
 * exiting with 0 and leaving its pipes behind. Real CLI, Plex test server on loopback, throwaway netns.
 */
import t from 'tap';
import { kernelState, logDir, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';
import { SECRET_TOKEN, sleep, startPlexServer } from './helpers/plex.js';

t.test('with source: plex the daemon outlives a dropped websocket and a Plex that is down, and reconnects', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const server = await startPlexServer(t);
  await server.down();
  const { dir } = logDir(t, 'shaperr-plexcli');
  const config = writeDaemonConfig(dir, { netns: topology.serverNs, source: 'plex', plex: { url: server.url, token: SECRET_TOKEN } }, { mode: 0o600 });
  const daemon = startDaemon(config);
  t.teardown(() => void daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/waiting for Plex/);
  await sleep(1500); // the first retry is due after 1 s
  t.equal(daemon.child.exitCode, null, 'still running while Plex is down at start');
  const connected = () => daemon.output.filter((line) => /Plex notifications reconnected/.test(line)).length;
  await server.listen();
  await until(() => connected() === 1, 10_000);
  server.play({ player: { address: '10.200.1.1' } });
  await until(() => kernelState(topology).destinations.includes('10.200.1.1/32'));

  server.dropSockets();
  await until(() => connected() === 2, 10_000);
  t.equal(daemon.child.exitCode, null, 'still running after the websocket dropped');
  t.same(kernelState(topology).destinations, ['10.200.1.1/32'], 'the playing client keeps its pipe');

  const exited = new Promise<number | null>((resolve) => daemon.child.once('exit', resolve));
  daemon.child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM still stops it with 0');
  t.same(kernelState(topology).destinations, [], 'and removes its rules');
});
