/**
 * shaperrd keeps the server ceiling with more viewers than it holds: shares in the kernel, the shortfall in
 * its log, /api/status and /metrics; wanted limits survive kill -9 through the state file (the kernel only
 * holds the shares); a reload and a schedule rebalance every pipe at once.
 */
import { appendFileSync } from 'node:fs';
import t from 'tap';
import { type DaemonConfigKeys, kernelClientClasses, logDir, play, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

const total = (classes: { rate: number }[]) => classes.reduce((sum, tcClass) => sum + tcClass.rate, 0);

t.test('shaperrd: more viewers than the server rate holds, across kill -9, reload and schedule', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const { dir, log } = logDir(t, 'shaperrd-ceiling');
  const writeConfig = (server: string, keys: DaemonConfigKeys = {}) =>
    writeDaemonConfig(dir, {
      netns: topology.serverNs,
      server: { rate: server },
      client: { rate: '4mbit', ceil: '8mbit' },
      leaf: undefined,
      overrides: [{ network: '198.51.100.3/32', rate: '8mbit' }],
      log,
      status: { listen: '127.0.0.1:0', token: 'ceiling-test-token' },
      ...keys,
    });
  const config = writeConfig('6mbit');
  let daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);

  appendFileSync(log, play('198.51.100.1', 'a') + play('198.51.100.2', 'b') + play('198.51.100.3', 'c'));
  await until(() => kernelClientClasses(topology).length === 3);
  await daemon.waitFor(/decision throttle 198\.51\.100\.3/);
  let classes = kernelClientClasses(topology);
  t.ok(total(classes) <= 6 * MBIT, `4 + 4 + 8 Mbit/s wanted under a 6 Mbit/s server: ${total(classes) / MBIT} Mbit/s guaranteed`);
  t.same(
    classes.map((tcClass) => +(tcClass.rate / classes[0]!.rate).toFixed(2)),
    [1, 1, 2],
    'shared 1:1:2, the override keeping its proportion',
  );
  t.ok(
    classes.every((tcClass) => tcClass.ceil === 6 * MBIT),
    'ceilings capped at the server rate',
  );
  await until(() => daemon.output.filter((line) => /guaranteed .* of the .* it wants/.test(line)).length >= 3);
  t.equal(daemon.output.filter((line) => /guaranteed .* of the .* it wants/.test(line)).length, 3, 'the log says so once per client');

  const url = JSON.parse((await daemon.waitFor(/status page and \/metrics listening/)).toString()).url as string;
  const headers = { authorization: 'Bearer ceiling-test-token' };
  const status = (await (await fetch(`${url}api/status`, { headers })).json()) as {
    clients: { address: string; rate: number; wanted: number; shortfall?: string }[];
  };
  const vip = status.clients.find((client) => client.address === '198.51.100.3')!;
  t.equal(vip.wanted, 8 * MBIT, '/api/status: the wanted rate');
  t.ok(vip.rate < vip.wanted && /guaranteed .* of the 8 Mbit\/s it wants/.test(vip.shortfall ?? ''), `beside its share and why: ${vip.shortfall}`);
  const metrics = await (await fetch(`${url}metrics`, { headers })).text();
  const requests = Number(/^shaperr_kernel_requests_total (\d+)/m.exec(metrics)?.[1]);
  const rebalanced = Number(/^shaperr_rebalance_changes_total (\d+)/m.exec(metrics)?.[1]);
  t.ok(requests >= 9 + 6, `/metrics counts kernel requests: ${requests} (set-up and three pipes at least)`);
  t.ok(rebalanced >= 2, `and the class changes rebalancing made: ${rebalanced}`);

  // kill -9, restart: the kernel holds ceilings of 6 Mbit/s; the state file remembers the wanted 8.
  await new Promise((resolve) => setTimeout(resolve, 1500)); // the state file is saved every second
  daemon.child.kill('SIGKILL');
  daemon = startDaemon(config);
  await daemon.waitFor(/shaperrd started/);
  t.same(kernelClientClasses(topology), classes, 'the restart adopted the pipes as they were');

  writeConfig('12mbit');
  daemon.child.kill('SIGHUP');
  await daemon.waitFor(/configuration reloaded/);
  classes = kernelClientClasses(topology);
  t.same(
    classes.map((tcClass) => tcClass.ceil),
    [8 * MBIT, 8 * MBIT, 8 * MBIT],
    'a higher server rate lets the ceilings up to the wanted 8 Mbit/s, which only the state file knew',
  );
  t.ok(total(classes) <= 12 * MBIT && total(classes) >= 0.95 * 12 * MBIT, `and the shares grow with it: ${total(classes) / MBIT} Mbit/s of 12`);

  writeConfig('12mbit', { schedules: [{ from: '00:00', to: '24:00', server: { rate: '3mbit' } }] });
  const reloads = daemon.output.filter((line) => /configuration reloaded/.test(line)).length;
  daemon.child.kill('SIGHUP');
  await until(() => daemon.output.filter((line) => /configuration reloaded/.test(line)).length > reloads);
  classes = kernelClientClasses(topology);
  t.ok(total(classes) <= 3 * MBIT, `a schedule lowering the server to 3 Mbit/s rebalanced every pipe: ${total(classes) / MBIT} Mbit/s guaranteed`);
  t.same(
    classes.map((tcClass) => +(tcClass.rate / classes[0]!.rate).toFixed(2)),
    [1, 1, 2],
    'still 1:1:2',
  );
});
