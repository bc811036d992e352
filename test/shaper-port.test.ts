/**
 * The apply stage's port: the tracker's calls reach lib's Shaper (counted for the daemon), and after a
 * restart reconcile makes the adopted kernel pipes match the restored sessions — orphans go, saved
 * clients get their limits back. Read back from the kernel.
 */
import t from 'tap';
import { Shaper } from '../lib/index.js';
import { clientsToRestore, ShaperPort } from '../daemon/apply/shaper-port.js';
import type { SavedClient } from '../daemon/sessions/sessions.js';
import { createTopology, netnsUnavailable, type Topology } from '../daemon/support/netns.js';
import { kernelClientClasses } from './helpers/daemon.js';

const MBIT = 1e6;

const clientRates = (topology: Topology) => kernelClientClasses(topology).map((pipe) => pipe.rate);
const byValue = (a: number, b: number) => a - b;
const saved = (address: string, rate: number, sessions: string[] = ['s']): SavedClient => ({ address, sessions, limits: { rate, ceil: rate } });

t.test('clientsToRestore: a client rebuilt from the recent log replaces its saved entry', async (t) => {
  const state = {
    version: 1 as const,
    device: 'srv0',
    savedAt: '2026-11-29T00:00:00Z',
    clients: [saved('198.51.100.1', 2 * MBIT), saved('198.51.100.2', 2 * MBIT)],
  };
  t.same(clientsToRestore(state, [saved('198.51.100.2', 5 * MBIT)]), [saved('198.51.100.1', 2 * MBIT), saved('198.51.100.2', 5 * MBIT)]);
  t.same(clientsToRestore(undefined, [saved('198.51.100.3', 3 * MBIT)]), [saved('198.51.100.3', 3 * MBIT)], 'no state file: the recent log alone');
});

t.test('reconcile after a restart, then the tracker’s calls, each counted', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const options = {
    device: 'srv0',
    netns: topology.serverNs,
    server: { rate: 100 * MBIT },
    client: { rate: 2 * MBIT },
    leaf: 'bfifo' as const,
    onWarning: () => {},
  };
  const previousRun = await Shaper.open(options);
  await previousRun.throttle('198.51.100.1', { rate: 2 * MBIT, ceil: 2 * MBIT });
  await previousRun.throttle('198.51.100.2', { rate: 2 * MBIT, ceil: 2 * MBIT });
  await previousRun.close({ teardown: false });

  const shaper = await Shaper.open(options);
  t.teardown(() => shaper.close({ teardown: true }));
  const changes: Array<[string, number]> = [];
  const errors: unknown[] = [];
  const port = new ShaperPort(shaper, {
    idleMs: 120_000,
    onChange: (action, count) => void changes.push([action, count]),
    onError: (error) => void errors.push(error),
  });

  const progress: number[] = [];
  const report = await port.reconcile([saved('198.51.100.2', 3 * MBIT), saved('198.51.100.3', 4 * MBIT, [])], ({ done }) => void progress.push(done));
  t.same(report, { adopted: 2, orphansRemoved: 1 }, '198.51.100.1 had no saved session: an orphan');
  t.same(clientRates(topology).sort(byValue), [3 * MBIT, 4 * MBIT], 'the kernel holds the saved limits, the orphan is gone');
  t.same(
    shaper
      .clients()
      .map((client) => client.address)
      .sort(),
    ['198.51.100.2', '198.51.100.3'],
  );
  t.ok(progress.length > 0, 'progress reported');
  t.same(changes, [], 'restoring is not counted as new decisions');
  t.same(errors, []);

  await port.throttle('198.51.100.4', { rate: 1 * MBIT, ceil: 1 * MBIT });
  await port.release('198.51.100.3');
  await port.throttleAll([
    { address: '198.51.100.5', limits: { rate: 5 * MBIT, ceil: 5 * MBIT } },
    { address: '198.51.100.6', limits: { rate: 6 * MBIT, ceil: 6 * MBIT } },
  ]);
  t.same(changes, [
    ['throttle', 1],
    ['release', 1],
    ['throttle', 2],
  ]);
  t.same(
    clientRates(topology).sort(byValue),
    [1, 3, 5, 6].map((rate) => rate * MBIT),
    'read back after the calls',
  );
  t.equal(port.bytesSent('198.51.100.4'), 0, 'a fresh pipe has sent nothing');
  t.equal(port.bytesSent('198.51.100.9'), undefined, 'no pipe, no counter');
});
