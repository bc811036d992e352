/**
 * SIGHUP changes `takeover` for the repair watch too: shaperrd started with takeover replaces another
 * tool's root; reloaded without it, it leaves such a root alone (one error); reloaded with it again, it
 * takes the root back at once (not at the 30 s safety check). Kernel state read back over netlink in a
 * throwaway namespace.
 */
import { writeFileSync } from 'node:fs';
import t from 'tap';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { kernelState, logDir, play, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const ROOT = 0x005a0000;
const foreignRoot = { kind: 'tbf', handle: '9:', options: { rate: '10mbit', burst: 20_000, latency: '50ms' } } as const;

t.test('SIGHUP turning takeover off and on again reaches the repair watch', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-takeover');
  const writeConfig = (takeover: boolean) => writeDaemonConfig(dir, { netns: topology.serverNs, takeover, log });
  const config = writeConfig(true);
  writeFileSync(log, play('10.200.1.1', 'one'));
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/, 120_000);
  await until(() => kernelState(topology).classes === 1);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  const ours = () => tc.rootQdisc('srv0')?.handle === ROOT && kernelState(topology).classes === 1;
  const reloaded = async (takeover: boolean) => {
    const before = daemon.output.filter((line) => /configuration reloaded/.test(line)).length;
    writeConfig(takeover);
    daemon.child.kill('SIGHUP');
    await until(() => daemon.output.filter((line) => /configuration reloaded/.test(line)).length > before);
  };

  tc.replaceQdisc('srv0', foreignRoot);
  await until(ours);
  t.pass("started with takeover: another root is replaced by shaperr's");

  await reloaded(false);
  tc.replaceQdisc('srv0', foreignRoot);
  await daemon.waitFor(/another root qdisc \(tbf 9:\)/, 10_000);
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.equal(tc.rootQdisc('srv0')?.kind, 'tbf', 'reloaded without takeover: the other tool keeps its root');

  await reloaded(true);
  await until(ours, 10_000); // the safety check is 30 s away
  t.pass("reloaded with takeover: shaperr's root and the pipe are back at once");
  t.match(
    daemon.output.find((line) => /"reason":"takeover turned on"/.test(line)),
    /re-applying/,
    'the repair says why',
  );

  const exited = new Promise<number | null>((resolve) => daemon.child.once('exit', (code) => resolve(code)));
  daemon.child.kill('SIGTERM');
  t.equal(await exited, 0);
});
