/**
 * The test harness itself: topology creation and removal, the signal safety net, stale-namespace cleanup,
 * and goodput measurement against shaping applied with the tc command line (test-only; the library
 * never spawns tc).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { cleanupStaleNamespaces, createNetns, createTopology, ip, netnsUnavailable } from '../../daemon/support/netns.js';
import { measureGoodput, measureGoodputConcurrently } from './traffic.js';

const skip = netnsUnavailable();
const MBIT = 1e6;
const mbit = (bitsPerSecond: number) => (bitsPerSecond / MBIT).toFixed(3);

const namespaces = async () => (await ip('netns', 'list')).split('\n').map((line) => line.split(' ')[0]);

interface AddressInfo {
  ifname: string;
  operstate: string;
  addr_info: { local: string; prefixlen: number }[];
}
async function addresses(netns: string, device: string): Promise<{ operstate: string; cidrs: string[] }> {
  const [link] = JSON.parse(await ip('-n', netns, '-j', 'addr', 'show', 'dev', device)) as AddressInfo[];
  // Sorted, without link-local ones: the kernel lists IPv6 addresses in no fixed order.
  const cidrs = link!.addr_info.filter((a) => !a.local.startsWith('fe80:')).map((a) => `${a.local}/${a.prefixlen}`);
  return { operstate: link!.operstate, cidrs: cidrs.sort() };
}

t.test('a topology: two namespaces, a veth pair, all addresses, shaped and unshaped goodput, clean removal', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2 });
  t.teardown(() => topology.destroy());
  const { serverNs, clientNs } = topology;
  t.match(serverNs, new RegExp(`^shaperr-t${process.pid}-[0-9a-f]+-srv$`), 'names carry the creating pid');
  t.ok((await namespaces()).includes(serverNs) && (await namespaces()).includes(clientNs), 'both namespaces exist');

  const server = await addresses(serverNs, 'srv0');
  const client = await addresses(clientNs, 'cli0');
  t.same(server.cidrs, ['10.200.0.1/16', 'fd00:5a::1/64'], 'server addresses');
  t.same(client.cidrs, ['10.200.1.1/16', '10.200.1.2/16', 'fd00:5a::1:1/64', 'fd00:5a::1:2/64'], 'client addresses, all on cli0');
  t.same(topology.clientAddresses, ['10.200.1.1', '10.200.1.2']);
  t.same(topology.clientAddresses6, ['fd00:5a::1:1', 'fd00:5a::1:2']);
  t.equal(server.operstate, 'UP');
  t.equal(client.operstate, 'UP');
  t.equal((await addresses(clientNs, 'lo')).operstate, 'UNKNOWN', 'lo is up (loopback reports UNKNOWN)');
  const [link] = JSON.parse(await topology.exec(serverNs, 'ip', ['-j', 'link', 'show', 'dev', 'srv0'])) as { ifindex: number }[];
  t.equal(topology.serverIfindex, link!.ifindex, 'serverIfindex is srv0 in the server namespace');
  if (topology.offloadsDisabled) {
    const features = await topology.exec(serverNs, 'ethtool', ['-k', 'srv0']);
    t.match(features, /tcp-segmentation-offload: off/, 'TSO off');
    t.match(features, /generic-segmentation-offload: off/, 'GSO off');
    t.match(features, /generic-receive-offload: off/, 'GRO off');
  } else {
    t.comment('ethtool is missing: offloads stay on');
  }

  const [v4, v6] = await measureGoodputConcurrently(topology, [
    { to: topology.clientAddresses[0]!, seconds: 2 },
    { to: topology.clientAddresses6[0]!, seconds: 2 },
  ]);
  t.ok(v4!.bitsPerSecond > 100 * MBIT, `unshaped IPv4: ${mbit(v4!.bitsPerSecond)} Mbit/s`);
  t.ok(v6!.bitsPerSecond > 100 * MBIT, `unshaped IPv6: ${mbit(v6!.bitsPerSecond)} Mbit/s`);

  // Client 1 by IPv4 and client 2 by IPv6 get 2 Mbit/s each; unclassified traffic (default 1: no such class) is not shaped.
  const tc = (...args: string[]) => topology.exec(serverNs, 'tc', args);
  await tc('qdisc', 'add', 'dev', 'srv0', 'root', 'handle', '1:', 'htb', 'default', '1');
  await tc('class', 'add', 'dev', 'srv0', 'parent', '1:', 'classid', '1:10', 'htb', 'rate', '2mbit', 'ceil', '2mbit');
  await tc('class', 'add', 'dev', 'srv0', 'parent', '1:', 'classid', '1:20', 'htb', 'rate', '2mbit', 'ceil', '2mbit');
  await tc('filter', 'add', 'dev', 'srv0', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', 'dst', '10.200.1.1/32', 'flowid', '1:10');
  await tc('filter', 'add', 'dev', 'srv0', 'parent', '1:', 'protocol', 'ipv6', 'prio', '2', 'u32', 'match', 'ip6', 'dst', 'fd00:5a::1:2/128', 'flowid', '1:20');

  const [shaped4, shaped6, fast4, fast6] = await measureGoodputConcurrently(topology, [
    { to: '10.200.1.1' },
    { to: 'fd00:5a::1:2' },
    { to: '10.200.1.2', seconds: 2 },
    { to: 'fd00:5a::1:1', seconds: 2 },
  ]);
  t.ok(Math.abs(shaped4!.bitsPerSecond - 2 * MBIT) <= 0.1 * 2 * MBIT, `shaped IPv4 client: ${mbit(shaped4!.bitsPerSecond)} Mbit/s (want 2 ±10 %)`);
  t.ok(Math.abs(shaped6!.bitsPerSecond - 2 * MBIT) <= 0.1 * 2 * MBIT, `shaped IPv6 client: ${mbit(shaped6!.bitsPerSecond)} Mbit/s (want 2 ±10 %)`);
  t.ok(fast4!.bitsPerSecond > 100 * MBIT, `other client over IPv4 stays fast: ${mbit(fast4!.bitsPerSecond)} Mbit/s`);
  t.ok(fast6!.bitsPerSecond > 100 * MBIT, `other client over IPv6 stays fast: ${mbit(fast6!.bitsPerSecond)} Mbit/s`);

  const streams = await measureGoodput(topology, { to: '10.200.1.1', streams: 4 });
  t.ok(Math.abs(streams.bitsPerSecond - 2 * MBIT) <= 0.1 * 2 * MBIT, `four streams share the class: ${mbit(streams.bitsPerSecond)} Mbit/s`);

  await topology.destroy();
  const left = await namespaces();
  t.notOk(left.includes(serverNs) || left.includes(clientNs), 'destroy removes both namespaces');
});

t.test('a failed measurement rejects with the reason and leaves no process behind', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  t.same(topology.clientAddresses6, [], 'no IPv6 addresses when ipv6: false');
  await t.rejects(measureGoodput(topology, { to: '10.200.1.9', seconds: 1 }), /receiver on 10\.200\.1\.9:\d+ exited with 1: .*EADDRNOTAVAIL/);
  await t.rejects(
    measureGoodputConcurrently(topology, [
      { to: '10.200.1.1', seconds: 1 },
      { to: '10.200.1.9', seconds: 1 },
    ]),
    /EADDRNOTAVAIL/,
  );
  // The killed peers close asynchronously; poll briefly rather than assume a duration.
  for (let attempt = 0; attempt < 50 && (await ip('netns', 'pids', topology.clientNs)).trim() !== ''; attempt++) await new Promise((r) => setTimeout(r, 100));
  t.equal((await ip('netns', 'pids', topology.clientNs)).trim(), '', 'no peer process left in the clients namespace');
  t.equal((await ip('netns', 'pids', topology.serverNs)).trim(), '', 'nor in the server namespace');
});

t.test('the mtu option sets both veth ends', { skip }, async (t) => {
  const topology = await createTopology({ clients: 1, mtu: 1400 });
  t.teardown(() => topology.destroy());
  for (const [netns, device] of [
    [topology.serverNs, 'srv0'],
    [topology.clientNs, 'cli0'],
  ] as const) {
    const [link] = JSON.parse(await ip('-n', netns, '-j', 'link', 'show', 'dev', device)) as { mtu: number }[];
    t.equal(link!.mtu, 1400, device);
  }
});

t.test('stale namespaces of dead runs are removed, those of live runs kept', { skip }, async (t) => {
  // Above the kernel's pid_max (at most 2^22), so no such process can exist.
  const stale = 'shaperr-t99999999-0badc0-srv';
  await ip('netns', 'add', stale);
  t.teardown(() => ip('netns', 'del', stale).catch(() => {}));
  const live = await createNetns('cli');
  t.teardown(() => ip('netns', 'del', live).catch(() => {}));
  const removed = await cleanupStaleNamespaces();
  t.ok(removed.includes(stale) && !removed.includes(live), 'reports what it removed');
  const left = await namespaces();
  t.notOk(left.includes(stale), 'stale namespace removed');
  t.ok(left.includes(live), 'namespace of this (live) process kept');
});

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  t.test(`${signal} removes the namespaces and still ends the process by that signal`, { skip }, async (t) => {
    const netnsModule = new URL('../../daemon/support/netns.ts', import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `const { createTopology } = await import(${JSON.stringify(netnsModule)});
const topology = await createTopology({ clients: 1 });
console.log(JSON.stringify([topology.serverNs, topology.clientNs]));
setInterval(() => {}, 1000);`,
      ],
      { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    t.teardown(() => void child.kill('SIGKILL'));
    const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
    const created = JSON.parse(chunk.toString()) as string[];
    const before = await namespaces();
    t.ok(
      created.every((name) => before.includes(name)),
      'the child created its namespaces',
    );
    child.kill(signal);
    const [code, endedBy] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    t.same({ code, endedBy }, { code: null, endedBy: signal }, `ended by ${signal}`);
    const after = await namespaces();
    t.ok(
      created.every((name) => !after.includes(name)),
      'its namespaces are gone',
    );
  });
}
