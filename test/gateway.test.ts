/**
 * Gateway mode: shaperrd on the router, shaping its WAN interface. Four throwaway namespaces:
 *
 *   plex (10.88.1.2) ──┐
 *                      ├─ router ── wan0 198.51.100.1 ═══ internet (198.51.100.20: the remote player)
 *   lan  (10.88.2.2) ──┘   forwards, nftables masquerade on wan0
 *
 * The Plex test server lists a session for the player; the stream is real TCP from port 32400 in the plex
 * namespace, leaving wan0 with the router's address and port 32400. A second LAN host sends to the same
 * player at the same time: after NAT its packets have the same destination and source address, and only
 * the source port tells them apart, so the pipe must match it. Both goodputs are measured at the player.
 */
import { pino } from 'pino';
import t from 'tap';
import { gatewayPort, type MediaServerConfig, type PlexServerConfig, type ShaperrConfig, validateConfig } from '../daemon/config.js';
import { createNetns, createTopology, deleteNetns, hasCommand, inNetns, ip, netnsUnavailable } from '../daemon/support/netns.js';
import { Shaperrd } from '../daemon/shaperrd.js';
import { parseClientAddress } from '../lib/address.js';
import { clientFilterSpec, readClientFilter } from '../lib/shaper/layout.js';
import { Shaper } from '../lib/shaper/shaper.js';
import { inspectShaper } from '../lib/shaper/inspect.js';
import { TrafficControl } from '../lib/tc/traffic-control.js';
import { type DaemonConfigKeys, daemonConfig, logDir, until } from './helpers/daemon.js';
import { SECRET_KEY, startJellyfinServer } from './helpers/jellyfin.js';
import { SECRET_TOKEN, startPlexServer } from './helpers/plex.js';
import { measureGoodputConcurrently, shapedTo } from './helpers/traffic.js';

const MBIT = 1e6;
const PLEX_PORT = 32400;
const PLAYER = '198.51.100.20';
/** A second remote player, watching Jellyfin, published by the router on another port than Plex. */
const JELLYFIN_PLAYER = '198.51.100.21';
const JELLYFIN_PUBLIC_PORT = 8920;
const skip = netnsUnavailable() || (hasCommand('nft') ? false : 'needs nft (nftables) for the router’s NAT');

interface Home {
  plexNs: string;
  lanNs: string;
  routerNs: string;
  internetNs: string;
}

async function createHome(t: { teardown(fn: () => unknown): void }): Promise<Home> {
  const names: string[] = [];
  t.teardown(async () => {
    for (const name of names) await deleteNetns(name);
  });
  const namespace = async (role: string) => {
    const name = await createNetns(role);
    names.push(name);
    return name;
  };
  const home = { plexNs: await namespace('plex'), lanNs: await namespace('lan'), routerNs: await namespace('router'), internetNs: await namespace('internet') };
  const offloads = hasCommand('ethtool');
  const link = async (a: string, aDevice: string, aCidr: string, b: string, bDevice: string, bCidr: string) => {
    await ip('-n', a, 'link', 'add', aDevice, 'type', 'veth', 'peer', 'name', bDevice, 'netns', b);
    for (const [netns, device, cidr] of [
      [a, aDevice, aCidr],
      [b, bDevice, bCidr],
    ] as const) {
      await ip('-n', netns, 'addr', 'add', cidr, 'dev', device);
      await ip('-n', netns, 'link', 'set', device, 'up');
      // HTB measures what it sends: no 64 KB super-packets.
      if (offloads) await inNetns(netns, 'ethtool', '-K', device, 'tso', 'off', 'gso', 'off', 'gro', 'off');
    }
  };
  await link(home.plexNs, 'lan0', '10.88.1.2/24', home.routerNs, 'pl0', '10.88.1.1/24');
  await link(home.lanNs, 'lan0', '10.88.2.2/24', home.routerNs, 'ln0', '10.88.2.1/24');
  await link(home.routerNs, 'wan0', '198.51.100.1/24', home.internetNs, 'wan1', `${PLAYER}/24`);
  await ip('-n', home.internetNs, 'addr', 'add', `${JELLYFIN_PLAYER}/24`, 'dev', 'wan1');
  await ip('-n', home.plexNs, 'route', 'add', 'default', 'via', '10.88.1.1');
  await ip('-n', home.lanNs, 'route', 'add', 'default', 'via', '10.88.2.1');
  await inNetns(home.routerNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
  await inNetns(
    home.routerNs,
    'nft',
    'add table ip nat; add chain ip nat postrouting { type nat hook postrouting priority srcnat; }; add rule ip nat postrouting oifname "wan0" masquerade',
  );
  return home;
}

/** The client filters on wan0, as the kernel has them. */
function clientFilters(routerNs: string) {
  const tc = TrafficControl.open({ netns: routerNs });
  try {
    return tc.filters('wan0', '5a:').flatMap((filter) => {
      const client = readClientFilter(filter);
      return client ? [{ ...client, address: client.address.text, match: filter.parameters.match }] : [];
    });
  } finally {
    tc.close();
  }
}

/** shaperrd on the router of `home`, shaping wan0 in gateway mode with 4 Mbit/s pipes, plus `keys`. */
async function startRouterDaemon(t: { teardown(fn: () => unknown): void }, home: Home, keys: DaemonConfigKeys) {
  const { dir, log } = logDir(t, 'shaperr-gateway');
  const config = validateConfig(daemonConfig(dir, { device: 'wan0', netns: home.routerNs, gateway: {}, client: { rate: '4mbit' }, ...keys }));
  return { config, log, daemon: await runDaemon(t, config, log) };
}

async function runDaemon(t: { teardown(fn: () => unknown): void }, config: ShaperrConfig, logPath: string) {
  const daemon = new Shaperrd({ config, logger: pino({ level: 'silent' }), logPath, sourceTimings: { retryMinMs: 100, retryMaxMs: 1000 } });
  await daemon.start();
  t.teardown(() => daemon.stop());
  return daemon;
}

/** The home with a Plex (public port 32400) and a Jellyfin (8920) test server, and shaperrd on its router following both. */
async function homeWithPlexAndJellyfin(t: { teardown(fn: () => unknown): void }) {
  const home = await createHome(t);
  const plex = await startPlexServer(t);
  const jellyfin = await startJellyfinServer(t);
  const { daemon } = await startRouterDaemon(t, home, {
    remoteOnly: true,
    source: ['plex', 'jellyfin'],
    plex: { url: plex.url, token: SECRET_TOKEN, pollSeconds: 1 },
    jellyfin: { url: jellyfin.url, apiKey: SECRET_KEY, publicPort: JELLYFIN_PUBLIC_PORT },
  });
  return { home, plex, jellyfin, daemon };
}

t.test('gateway mode: the Plex stream through the router’s NAT is shaped, another LAN host’s traffic to the same player is not', { skip }, async (t) => {
  const home = await createHome(t);
  const server = await startPlexServer(t);
  const { config } = await startRouterDaemon(t, home, { source: 'plex', plex: { url: server.url, token: SECRET_TOKEN, pollSeconds: 1 } });
  t.equal(config.gateway?.plexPort, PLEX_PORT, 'plexPort defaults to 32400');

  server.play({ player: { address: PLAYER, local: false }, session: { location: 'wan' } });
  await until(() => clientFilters(home.routerNs).length === 1);
  t.match(
    clientFilters(home.routerNs),
    [{ address: PLAYER, sourcePort: PLEX_PORT, match: { dst: `${PLAYER}/32`, protocol: 6, sport: PLEX_PORT } }],
    'the filter matches the player’s address and TCP from port 32400',
  );

  const [plex, other] = await measureGoodputConcurrently({ serverNs: home.plexNs, clientNs: home.internetNs }, [
    { to: PLAYER, from: home.plexNs, localPort: PLEX_PORT },
    { to: PLAYER, from: home.lanNs },
  ]);
  const shaped = shapedTo(plex!.bitsPerSecond, 4 * MBIT);
  t.ok(shaped.within, `Plex's stream from port ${PLEX_PORT} through NAT: ${shaped.reading}`);
  t.ok(
    other!.bitsPerSecond > 5 * 4 * MBIT,
    `the other LAN host to the same player at the same time: ${(other!.bitsPerSecond / MBIT).toFixed(1)} Mbit/s (unshaped: over 5× the pipe)`,
  );
});

t.test(
  'gateway mode with Plex on 32400 and Jellyfin on 8920: both players’ streams through NAT are shaped, other traffic to them is not',
  { skip },
  async (t) => {
    const { home, plex, jellyfin } = await homeWithPlexAndJellyfin(t);

    plex.play({ player: { address: PLAYER, local: false }, session: { location: 'wan' } });
    jellyfin.play({ remoteEndPoint: JELLYFIN_PLAYER });
    await until(() => clientFilters(home.routerNs).length === 2);
    t.match(
      Object.fromEntries(clientFilters(home.routerNs).map((filter) => [filter.address, filter.match])),
      {
        [PLAYER]: { dst: `${PLAYER}/32`, protocol: 6, sport: PLEX_PORT },
        [JELLYFIN_PLAYER]: { dst: `${JELLYFIN_PLAYER}/32`, protocol: 6, sport: JELLYFIN_PUBLIC_PORT },
      },
      'each player’s filter matches TCP from its own server’s public port',
    );

    const [viaPlex, viaJellyfin, other] = await measureGoodputConcurrently({ serverNs: home.plexNs, clientNs: home.internetNs }, [
      { to: PLAYER, from: home.plexNs, localPort: PLEX_PORT },
      { to: JELLYFIN_PLAYER, from: home.plexNs, localPort: JELLYFIN_PUBLIC_PORT },
      { to: JELLYFIN_PLAYER, from: home.lanNs },
    ]);
    for (const [what, measured] of [
      [`Plex's stream from port ${PLEX_PORT}`, viaPlex!],
      [`Jellyfin's stream from port ${JELLYFIN_PUBLIC_PORT}`, viaJellyfin!],
    ] as const) {
      const shaped = shapedTo(measured.bitsPerSecond, 4 * MBIT);
      t.ok(shaped.within, `${what} through NAT: ${shaped.reading}`);
    }
    t.ok(
      other!.bitsPerSecond > 5 * 4 * MBIT,
      `another LAN host to the Jellyfin player at the same time: ${(other!.bitsPerSecond / MBIT).toFixed(1)} Mbit/s (unshaped: over 5× the pipe)`,
    );
  },
);

t.test(
  'gateway mode, one address playing from Plex and Jellyfin: the pipe follows the server whose stream started first, then the other',
  { skip },
  async (t) => {
    const { home, plex, jellyfin, daemon } = await homeWithPlexAndJellyfin(t);
    const portOfPipe = () => clientFilters(home.routerNs).map((filter) => filter.sourcePort);
    const sessionsAt = () => daemon.sessions().find((client) => client.address === PLAYER)?.sessions.length ?? 0;

    const viaPlex = plex.play({ player: { address: PLAYER, local: false }, session: { location: 'wan' } });
    await until(() => portOfPipe().length === 1);
    t.same(portOfPipe(), [PLEX_PORT], 'Plex plays first: its port');
    const classid = clientFilters(home.routerNs)[0]?.classid;
    const viaJellyfin = jellyfin.play({ remoteEndPoint: PLAYER });
    await until(() => sessionsAt() === 2);
    // Plex's listings (every second) and Jellyfin's pushes in the meantime change nothing.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    t.same(portOfPipe(), [PLEX_PORT], 'Jellyfin playing too at the same address leaves the pipe on Plex’s port');

    plex.setState(viaPlex.sessionKey, 'stopped');
    await until(() => portOfPipe()[0] === JELLYFIN_PUBLIC_PORT, 5000);
    t.match(clientFilters(home.routerNs), [{ classid, sourcePort: JELLYFIN_PUBLIC_PORT }], 'Plex stops: the same pipe’s filter moves to Jellyfin’s port');
    jellyfin.stop(viaJellyfin.id);
    await until(() => portOfPipe().length === 0, 10_000);
    t.pass('Jellyfin stops: the pipe goes after the grace period');
  },
);

t.test('gateway mode: after a restart, a pipe kept in the kernel keeps its server’s port before the server is heard again', { skip }, async (t) => {
  const home = await createHome(t);
  const jellyfin = await startJellyfinServer(t);
  const { config, log, daemon } = await startRouterDaemon(t, home, {
    keepRulesOnExit: true,
    source: 'jellyfin',
    jellyfin: { url: jellyfin.url, apiKey: SECRET_KEY, publicPort: JELLYFIN_PUBLIC_PORT },
  });
  jellyfin.play({ remoteEndPoint: JELLYFIN_PLAYER });
  await until(() => clientFilters(home.routerNs).length === 1);
  const [made] = clientFilters(home.routerNs);
  t.equal(made?.sourcePort, JELLYFIN_PUBLIC_PORT);
  await daemon.stop();
  await jellyfin.down();

  const again = await runDaemon(t, config, log);
  t.same(
    again.sessions().map((client) => client.address),
    [JELLYFIN_PLAYER],
    'the saved session is restored',
  );
  t.match(
    clientFilters(home.routerNs),
    [{ classid: made!.classid, sourcePort: JELLYFIN_PUBLIC_PORT }],
    'its pipe adopted with Jellyfin’s port, not Plex’s default',
  );
});

t.test('gateway mode: a server’s publicPort changed on a reload moves its pipes to the new port', { skip }, async (t) => {
  const home = await createHome(t);
  const jellyfin = await startJellyfinServer(t);
  const { config, daemon } = await startRouterDaemon(t, home, {
    source: 'jellyfin',
    jellyfin: { url: jellyfin.url, apiKey: SECRET_KEY, publicPort: JELLYFIN_PUBLIC_PORT },
  });
  jellyfin.play({ remoteEndPoint: JELLYFIN_PLAYER });
  await until(() => clientFilters(home.routerNs).length === 1);
  const [made] = clientFilters(home.routerNs);
  await daemon.reload({ ...config, jellyfin: { ...(config.jellyfin as MediaServerConfig), publicPort: 443 } });
  await until(() => clientFilters(home.routerNs)[0]?.sourcePort === 443, 5000);
  t.match(clientFilters(home.routerNs), [{ classid: made!.classid, sourcePort: 443 }], 'the same pipe, now matching port 443');
});

t.test('a gateway filter is adopted after a restart, and rewritten when gateway mode is turned off', { skip: netnsUnavailable() }, async (t) => {
  const topology = await createTopology({ clients: 1, ipv6: false });
  t.teardown(() => topology.destroy());
  const [address] = topology.clientAddresses as [string];
  const open = (sourcePort?: number) =>
    Shaper.open({
      device: 'srv0',
      netns: topology.serverNs,
      server: { rate: '100mbit' },
      client: { rate: '4mbit' },
      leaf: 'bfifo',
      ...(sourcePort ? { sourcePort } : {}),
    });
  const filters = () => {
    const tc = TrafficControl.open({ netns: topology.serverNs });
    try {
      return tc.filters('srv0', '5a:').flatMap((filter) => (readClientFilter(filter) ? [filter.parameters.match] : []));
    } finally {
      tc.close();
    }
  };

  const first = await open(PLEX_PORT);
  await first.throttle(address);
  t.same(first.tcCommands().filter((command) => command.includes('filter add') && command.includes(address)).length, 1);
  t.match(first.tcCommands().join('\n'), /match ip sport 32400 0xffff/, '`shaperr tc` shows the port match');
  await first.close();

  const inspected = inspectShaper({ device: 'srv0', netns: topology.serverNs })!;
  t.match(
    inspected.tcCommands().join('\n'),
    /match ip dst 10\.200\.1\.1 match ip protocol 6 0xff match ip sport 32400 0xffff classid 5a:10/,
    'a read-only view prints the filter as it is',
  );
  await inspected.close();

  const again = await open(PLEX_PORT);
  t.same(
    again.clients().map((client) => client.address),
    [address],
    'the gateway filter is recognised as the client’s',
  );
  t.same(filters(), [{ family: 4, dst: `${address}/32`, protocol: 6, sport: PLEX_PORT }], 'and left as it was');
  await again.close();

  const plain = await open();
  t.same(
    plain.clients().map((client) => client.address),
    [address],
    'gateway mode off: the pipe stays',
  );
  t.same(filters(), [{ family: 4, dst: `${address}/32` }], 'its filter now matches the address alone, as without gateway mode');
  t.same(
    clientFilterSpec(0x5a0000, parseClientAddress(address), 0x5a0010, 1).options,
    { hashTable: 0x201000, match: { family: 4, dst: address }, classid: 0x5a0010 },
    'no port in a filter made without gateway mode',
  );
  await plain.close({ teardown: true });
});

t.test('gateway config: one clear error for a bad port or an unknown key', async (t) => {
  const base = { device: 'wan0', server: { rate: '100mbit' }, client: { rate: '4mbit' } };
  t.equal(validateConfig({ ...base, gateway: { plexPort: 443 } }).gateway?.plexPort, 443);
  t.equal(validateConfig(base).gateway, undefined, 'no gateway key: filters match the address alone');
  t.throws(() => validateConfig({ ...base, gateway: { plexPort: 70000 } }), /'gateway\.plexPort' = 70000: Too big/);
  t.throws(() => validateConfig({ ...base, gateway: { port: 32400 } }), /unknown key 'gateway\.port'/);
  const gateway = { ...base, gateway: {} };
  t.throws(() => validateConfig({ ...gateway, jellyfin: { publicPort: 70000 } }), /^config: 'jellyfin\.publicPort' = 70000: Too big[^;]*$/);
  t.throws(
    () => validateConfig({ ...gateway, plex: [{}, { publicPort: '443' }] }),
    /^config: 'plex\.1\.publicPort' = "443": Invalid input: expected number[^;]*$/,
  );
  t.throws(
    () => validateConfig({ ...base, emby: { publicPort: 443 } }),
    /^config: 'emby\.publicPort' = 443: publicPort is for gateway mode \(shaperrd on the router\): add gateway: \{\} or leave it out$/,
  );
});

t.test('gateway ports: each server’s public port, with its default', async (t) => {
  const config = validateConfig({
    device: 'wan0',
    server: { rate: '100mbit' },
    client: { rate: '4mbit' },
    gateway: { plexPort: 32401 },
    plex: [{ url: 'http://10.0.0.2:32400' }, { url: 'http://10.0.0.3:32400', publicPort: 32402 }],
    jellyfin: [{ url: 'http://10.0.0.4:8096', publicPort: 443 }, { url: 'http://10.0.0.5:8096' }],
    emby: { url: 'http://10.0.0.6:8096' },
  });
  const [plexA, plexB] = config.plex as PlexServerConfig[];
  const [jellyfinA, jellyfinB] = config.jellyfin as MediaServerConfig[];
  t.equal(gatewayPort(config, 'plex', plexA!), 32401, 'Plex: gateway.plexPort');
  t.equal(gatewayPort(config, 'plex', plexB!), 32402, 'its own publicPort first');
  t.equal(gatewayPort(config, 'jellyfin', jellyfinA!), 443);
  t.equal(gatewayPort(config, 'jellyfin', jellyfinB!), 8096, 'Jellyfin: 8096');
  t.equal(gatewayPort(config, 'emby', config.emby as MediaServerConfig), 8096, 'Emby: 8096');
  const routed = validateConfig({ device: 'eth0', server: { rate: '100mbit' }, client: { rate: '4mbit' }, jellyfin: { url: 'http://10.0.0.4:8096' } });
  t.equal(gatewayPort(routed, 'jellyfin', routed.jellyfin as MediaServerConfig), undefined, 'no gateway mode: no port');
});

t.test(
  'each client’s filter matches its own server’s port: read back, rewritten when it changes, kept across a restart',
  { skip: netnsUnavailable() },
  async (t) => {
    const topology = await createTopology({ clients: 2, ipv6: false });
    t.teardown(() => topology.destroy());
    const [plexPlayer, jellyfinPlayer] = topology.clientAddresses as [string, string];
    const open = () =>
      Shaper.open({ device: 'srv0', netns: topology.serverNs, server: { rate: '100mbit' }, client: { rate: '4mbit' }, leaf: 'bfifo', sourcePort: PLEX_PORT });
    const ports = () => {
      const tc = TrafficControl.open({ netns: topology.serverNs });
      try {
        const read = tc.filters('srv0', '5a:').flatMap((filter) => {
          const client = readClientFilter(filter);
          return client ? [[client.address.text, filter.parameters.match?.sport]] : [];
        });
        return Object.fromEntries(read);
      } finally {
        tc.close();
      }
    };

    const first = await open();
    await first.throttle(plexPlayer);
    const made = await first.throttle(jellyfinPlayer, { rate: '4mbit', sourcePort: 443 });
    t.equal(made.client?.sourcePort, 443, 'the outcome names the port');
    t.same(ports(), { [plexPlayer]: PLEX_PORT, [jellyfinPlayer]: 443 }, 'two clients, two ports, as the kernel has them');

    const moved = await first.throttle(jellyfinPlayer, { rate: '4mbit', sourcePort: 8920 });
    t.equal(moved.result, 'changed', 'another port for the same limits is a change');
    t.same(ports(), { [plexPlayer]: PLEX_PORT, [jellyfinPlayer]: 8920 }, 'its filter is rewritten, the other left alone');
    t.equal(first.clients().length, 2, 'and the pipe stays (no new class)');
    t.equal((await first.throttle(jellyfinPlayer, { rate: '4mbit', sourcePort: 8920 })).result, 'unchanged');
    const back = await first.setSourcePort(jellyfinPlayer, 443);
    t.match(back, { result: 'changed', client: { sourcePort: 443, wanted: { rate: 4 * MBIT } } }, 'setSourcePort moves the filter, limits as they were');
    t.same(ports(), { [plexPlayer]: PLEX_PORT, [jellyfinPlayer]: 443 });
    await first.throttle(jellyfinPlayer, { rate: '4mbit', sourcePort: 8920 });
    t.equal(await first.setSourcePort('10.200.9.9', 443), undefined, 'setSourcePort for an address without a pipe makes none');
    t.equal(first.clients().length, 2);
    await first.close();

    const again = await open();
    t.same(
      Object.fromEntries(again.clients().map((client) => [client.address, client.sourcePort])),
      { [plexPlayer]: PLEX_PORT, [jellyfinPlayer]: 8920 },
      'adopted after a restart, each with its port',
    );
    t.same(ports(), { [plexPlayer]: PLEX_PORT, [jellyfinPlayer]: 8920 }, 'and no filter remade');
    const view = inspectShaper({ device: 'srv0', netns: topology.serverNs })!;
    t.match(view.tcCommands().join('\n'), /match ip sport 8920 0xffff/, 'a read-only view prints each port');
    await view.close();
    await again.close({ teardown: true });

    const plain = await Shaper.open({ device: 'srv0', netns: topology.serverNs, server: { rate: '100mbit' }, client: { rate: '4mbit' }, leaf: 'bfifo' });
    t.teardown(() => plain.close({ teardown: true }));
    await t.rejects(plain.throttle(plexPlayer, { rate: '4mbit', sourcePort: 443 }), /a source port for 10\.200\.1\.1 \(443\) needs gateway mode/);
    t.same(ports(), {}, 'refused: nothing made');
  },
);

t.test('a bad source port for a client is one clear error', async (t) => {
  const shaper = await Shaper.open({ device: 'eth0', server: { rate: '100mbit' }, client: { rate: '4mbit' }, sourcePort: PLEX_PORT, dryRun: true });
  await t.rejects(
    shaper.throttle('198.51.100.20', { rate: '4mbit', sourcePort: 70000 }),
    /invalid source port for 198\.51\.100\.20: 70000 \(expected 1-65535\)/,
  );
  await t.rejects(shaper.throttle('198.51.100.20', { rate: '4mbit', sourcePort: 0 }), /invalid source port/);
  t.same(shaper.clients(), [], 'nothing throttled');
  await shaper.close();
});
