/**
 * A reload is all or nothing. With takeover off and another tool's root qdisc in shaperr's place, SIGHUP
 * with a changed config is refused whole (one line saying why), the other tool's qdisc is left alone, and
 * once it is removed shaperr comes back with the old limits; a second SIGHUP then applies the new config,
 * as does one turning takeover on. A reload the kernel refuses (the device gone meanwhile) likewise
 * leaves the books as they were. Real shaperrd, kernel state read back over netlink in throwaway namespaces.
 */
import { writeFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import type { StatusReport } from '../daemon/operator/status.js';
import { createTopology, inNetns, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { addServerLink, type Daemon, deleteServerLink, logDir, play, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';

const SHAPERR_ROOT = 0x005a0000;
const SERVER_CLASS = 0x005a0001;
const CLIENT = '10.200.1.1';
const skip = netnsUnavailable();

interface Limits {
  server: string;
  client: string;
  takeover?: boolean;
}

/** A daemon on srv0 of a one-client topology with a status page, and the config file a reload rereads. */
async function reloadableDaemon(t: Test, limits: Limits) {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperr-foreign-root');
  const writeConfig = ({ server, client, takeover = false }: Limits) =>
    writeDaemonConfig(dir, { netns: topology.serverNs, server: { rate: server }, client: { rate: client }, takeover, status: { listen: '127.0.0.1:0' }, log });
  const daemon = startDaemon(writeConfig(limits));
  t.teardown(() => daemon.child.kill('SIGKILL'));
  const listening = JSON.parse(await daemon.waitFor(/status page and \/metrics listening/, 120_000)) as { url: string };
  await daemon.waitFor(/shaperrd started/);
  const tc = TrafficControl.open({ netns: topology.serverNs });
  t.teardown(() => tc.close());
  const apiStatus = async () => (await (await fetch(`${listening.url}api/status`)).json()) as StatusReport;
  return { topology, log, daemon, tc, writeConfig, apiStatus };
}

/** SIGHUP, then the line that says how the reload ended (the next `configuration reloaded` or `reload …: …`). */
async function reload(daemon: Daemon): Promise<string> {
  const outcome = /configuration reloaded|reload (refused|failed)/;
  const before = daemon.output.filter((line) => outcome.test(line)).length;
  daemon.child.kill('SIGHUP');
  await until(() => daemon.output.filter((line) => outcome.test(line)).length > before);
  return daemon.output.filter((line) => outcome.test(line))[before]!;
}

/** The rates (bits/s) of shaperr's server class and of the client's class in the kernel; undefined where missing. */
function kernelRates(tc: TrafficControl) {
  const classes = tc.classes('srv0');
  return {
    server: classes.find((tcClass) => tcClass.handle === SERVER_CLASS)?.parameters.rate,
    client: classes.find((tcClass) => tcClass.parent === SERVER_CLASS)?.parameters.rate,
  };
}

const shaperrRoot = (tc: TrafficControl) => tc.rootQdisc('srv0')?.handle === SHAPERR_ROOT;

async function stopCleanly(t: Test, daemon: Daemon) {
  const exited = new Promise<number | null>((resolve) => daemon.child.once('exit', (code) => resolve(code)));
  daemon.child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM exits 0');
}

const tcIn = (topology: Topology, ...args: string[]) => inNetns(topology.serverNs, 'tc', ...args);

t.test("takeover off, another tool's root in place: SIGHUP is refused whole; shaperr comes back when that root goes", { skip }, async (t) => {
  const { topology, log, daemon, tc, writeConfig, apiStatus } = await reloadableDaemon(t, { server: '50mbit', client: '2mbit' });
  writeFileSync(log, play(CLIENT, 'one'));
  await until(() => kernelRates(tc).client === 2e6);
  t.same(kernelRates(tc), { server: 50e6, client: 2e6 }, 'started: server 50 Mbit/s, the client 2 Mbit/s');

  await tcIn(topology, 'qdisc', 'replace', 'dev', 'srv0', 'root', 'handle', '1:', 'htb');
  await daemon.waitFor(/another root qdisc \(htb 1:\) replaced shaperr's/, 10_000);
  writeConfig({ server: '40mbit', client: '3mbit' });
  const refused = await reload(daemon);
  t.match(
    JSON.parse(refused).msg,
    /^reload refused: device srv0's root qdisc is htb 1:, not shaperr's, and takeover is off: remove that qdisc or set takeover: true, then reload again; kept the old configuration$/,
    'one line says the reload was refused, why, and that the old config is kept',
  );
  t.equal(daemon.output.filter((line) => /reload (refused|failed)/.test(line)).length, 1, 'and only one');
  const client = (await apiStatus()).clients.find((entry) => entry.address === CLIENT);
  t.match(client, { wanted: 2e6, rate: 2e6 }, '/api/status still shows the old client limits');
  const root = tc.rootQdisc('srv0');
  t.match(root, { kind: 'htb', handle: 0x00010000 }, "the other tool's root is still there");
  t.equal(tc.classes('srv0').length, 0, 'and nothing of shaperr went under it');

  await tcIn(topology, 'qdisc', 'del', 'dev', 'srv0', 'root');
  await until(() => shaperrRoot(tc) && kernelRates(tc).client !== undefined);
  t.same(kernelRates(tc), { server: 50e6, client: 2e6 }, 'that root removed: shaperr is back with the old limits, none of the refused config');

  t.match(JSON.parse(await reload(daemon)).msg, /^configuration reloaded$/, 'SIGHUP again: reloaded');
  await until(() => kernelRates(tc).client === 3e6);
  t.same(kernelRates(tc), { server: 40e6, client: 3e6 }, 'the new config in full: server 40 Mbit/s, the client 3 Mbit/s');
  t.match(
    (await apiStatus()).clients.find((entry) => entry.address === CLIENT),
    { wanted: 3e6, rate: 3e6 },
    '/api/status agrees',
  );

  await tcIn(topology, 'qdisc', 'replace', 'dev', 'srv0', 'root', 'handle', '1:', 'tbf', 'rate', '10mbit', 'burst', '20k', 'latency', '50ms');
  await until(() => tc.rootQdisc('srv0')?.kind === 'tbf');
  writeConfig({ server: '30mbit', client: '4mbit', takeover: true });
  t.match(JSON.parse(await reload(daemon)).msg, /^configuration reloaded$/, 'another root again, SIGHUP turning takeover on: reloaded');
  t.ok(shaperrRoot(tc), "shaperr's root replaced the other one at once");
  await until(() => kernelRates(tc).client === 4e6);
  t.same(kernelRates(tc), { server: 30e6, client: 4e6 }, 'with the new config in full');

  await stopCleanly(t, daemon);
});

t.test('a reload the kernel refuses keeps the old config in the books too', { skip }, async (t) => {
  const { topology, log, daemon, tc, writeConfig } = await reloadableDaemon(t, { server: '50mbit', client: '2mbit' });
  // The device is gone while the owner reloads: the kernel refuses the new server limits (ENODEV).
  await deleteServerLink(topology);
  writeConfig({ server: '40mbit', client: '3mbit' });
  t.match(
    JSON.parse(await reload(daemon)).msg,
    /^reload failed: the kernel refused the new server limits: .*; kept the old configuration$/,
    'one line says the kernel refused it and the old config is kept',
  );

  // The device comes back: the watch puts the whole tree on it, with the limits the books still hold.
  await addServerLink(topology);
  tc.link('srv0', { refresh: true });
  await until(() => shaperrRoot(tc) && kernelRates(tc).server !== undefined);
  t.equal(kernelRates(tc).server, 50e6, 'the repaired tree has the old server rate');
  writeFileSync(log, play(CLIENT, 'one'));
  await until(() => kernelRates(tc).client !== undefined);
  t.equal(kernelRates(tc).client, 2e6, 'and a new client gets the old client rate');

  t.match(JSON.parse(await reload(daemon)).msg, /^configuration reloaded$/, 'SIGHUP again: reloaded');
  await until(() => kernelRates(tc).client === 3e6);
  t.same(kernelRates(tc), { server: 40e6, client: 3e6 }, 'the new config in full');

  await stopCleanly(t, daemon);
});
