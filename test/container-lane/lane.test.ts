/**
 * The container lane: the image `npm run image` builds, run with the shaperr service's options from
 * examples/docker-compose.yml (network, cap_drop/cap_add, security_opt, read_only, environment, volumes).
 * The lane adds only what this machine needs (runc, ulimits) and a throwaway netns in place of the host's
 * network; the Plex test server answers across a veth into that netns. It proves:
 * - the image carries its HEALTHCHECK (docker format), which passes on a healthy container and fails while
 *   the tree is deleted and not yet repaired (the daemon held with SIGSTOP), then passes again; its command
 *   fails where no shaperrd runs;
 * - the status page answers across the network with the config's token, and refuses without it;
 * - with exactly CAP_NET_ADMIN and root without DAC_OVERRIDE, the token is read from Plex's Preferences.xml
 *   as Plex's images leave it (owned by Plex's uid, mode 0644), mounted read-only;
 * - a playing client is throttled (class and filter read back, real TCP within ±10 % of the rate) and
 *   released on stop; SIGTERM stops it with exit 0 and the rules removed; its state stays in the volume
 *   across a restart (the pipe comes back from it while Plex is down);
 * - without NET_ADMIN it exits 1 with one line naming the capability and the compose line;
 * - `shaperr check` in the container says what is wrong in container terms; a group-readable (0640)
 *   Preferences.xml is readable with the PGID added (--group-add, as in the Unraid template), a private
 *   (0600) one is not, and the documented alternative (tokenFile in /config) works.
 * Measured here: 27-45 s for both tests; `npm run image` on a clean checkout 1 min 37 s and 2 min 43 s.
 * Skipped only where `podman info` fails (not root, no podman); where it works, a missing image is built.
 */
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { parse, stringify } from 'yaml';
import { inspectShaper } from '../../lib/index.js';
import { createTopology, ip, type Topology } from '../../daemon/support/netns.js';
import { kernelClientClasses, kernelHasPipesFor } from '../helpers/daemon.js';
import { type PlexTestServer, SECRET_TOKEN, sleep, startPlexServer } from '../helpers/plex.js';
import { measureGoodput, shapedTo } from '../helpers/traffic.js';
import { composeImage, composeService, containerLines, podman, podmanUnavailable, REPO, runOptions } from './podman.js';

const run = promisify(execFile);
const MBIT = 1e6;
/** Plex's uid and gid in linuxserver/plex without PUID (911); the file's owner is all that matters here. */
const PLEX_UID = 911;
/** Unraid's PGID for Plex (users): the group the Unraid template's Extra Parameters add. */
const PLEX_GID = 100;
const PREFERENCES = 'Library/Application Support/Plex Media Server/Preferences.xml';

t.setTimeout(900_000);
const unavailable = await podmanUnavailable();
const service = composeService();
const image = composeImage(service);

/** Polls until `check` holds: a deadline, not a timing. */
async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

interface Lane {
  topology: Topology;
  plex: PlexTestServer;
  /** The container's status page as another machine on the LAN reaches it, and its token. */
  status: { url: string; token: string };
  configDir: string;
  plexDir: string;
  preferences: string;
  /** podman options from the compose file, with the test's netns and folders. */
  options(without?: string[]): string[];
  /** A container name removed at the end of the test. */
  name(t: Test): string;
}

let lanes = 0;

/** The netns with srv0, a veth to the Plex test server, the /config and /plex folders, shaperr.yaml. */
async function prepare(t: Test): Promise<Lane> {
  const topology = await createTopology({ clients: 1, ipv6: false });
  // Containers first: a running one keeps the netns (and the veths in it) alive after its name is gone.
  const names: string[] = [];
  t.teardown(async () => {
    for (const name of names) await podman(['rm', '--force', '--time', '0', name]);
    await topology.destroy();
  });
  // Plex across a veth from this process's namespace: the container's netns has no route to loopback here.
  // Each lane its own veth and /30: the last lane's may outlive its test by a moment.
  const lane = ++lanes;
  const hostEnd = `shp${process.pid}x${lane}`.slice(0, 15);
  const plexAddress = `10.203.${lane}.1`;
  await ip('link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'plex0', 'netns', topology.serverNs);
  await ip('addr', 'add', `${plexAddress}/30`, 'dev', hostEnd);
  await ip('link', 'set', hostEnd, 'up');
  await ip('-n', topology.serverNs, 'addr', 'add', `10.203.${lane}.2/30`, 'dev', 'plex0');
  await ip('-n', topology.serverNs, 'link', 'set', 'plex0', 'up');
  const plex = await startPlexServer(t, { host: plexAddress });

  const work = mkdtempSync(join(tmpdir(), 'shaperr-container-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const configDir = join(work, 'config');
  const plexDir = join(work, 'plex');
  mkdirSync(configDir);
  // Plex's config folder as linuxserver/plex leaves it: every folder and Preferences.xml owned by Plex's
  // uid; Plex writes the file itself under the image's umask 022 (pms-docker creates it as root the same
  // way, then chowns it): mode 0644.
  const preferences = join(plexDir, PREFERENCES);
  mkdirSync(join(preferences, '..', 'Logs'), { recursive: true });
  writeFileSync(preferences, `<?xml version="1.0" encoding="utf-8"?>\n<Preferences MachineIdentifier="lane" PlexOnlineToken="${SECRET_TOKEN}"/>\n`);
  chmodSync(preferences, 0o644);
  await run('chown', ['-R', `${PLEX_UID}:${PLEX_UID}`, plexDir]);

  // The container example's config, pointed at the lane's device and Plex; a fixed pipe so goodput has one rate.
  const config = parse(readFileSync(join(REPO, 'examples/shaperr.container.yaml'), 'utf8')) as Record<string, unknown>;
  Object.assign(config, {
    device: topology.serverDevice,
    server: { rate: '20mbit' },
    client: { rate: '4mbit', ceil: '4mbit' },
    exempt: ['127.0.0.0/8'],
    plex: { url: plex.url, pollSeconds: 5 },
    graceSeconds: 1,
  });
  writeFileSync(join(configDir, 'shaperr.yaml'), stringify(config));
  const { listen, token } = config.status as { listen: string; token: string };
  const status = { url: `http://10.203.${lane}.2:${listen.split(':').pop()}`, token };

  let count = 0;
  return {
    topology,
    plex,
    status,
    configDir,
    plexDir,
    preferences,
    options: (without = []) => runOptions(service, { netns: topology.serverNs, mounts: { '/config': configDir, '/plex': plexDir }, without }),
    name: () => {
      const name = `shaperr-lane-${process.pid}-${++count}`;
      names.push(name);
      return name;
    },
  };
}

const shaperrRoot = (lane: Lane): boolean => inspectShaper({ device: lane.topology.serverDevice, netns: lane.topology.serverNs }) !== undefined;
const logs = async (name: string): Promise<string> => {
  const { stdout, stderr } = await podman(['logs', name]);
  return stdout + stderr;
};
/** Matches a command's output, and shows the whole output when it does not. */
function shows(t: Test, output: string, pattern: RegExp, message: string): void {
  if (!t.match(output, pattern, message)) t.comment(output);
}
const health = async (name: string): Promise<number> => (await podman(['healthcheck', 'run', name])).status;
const hostPid = async (name: string): Promise<number> => Number((await podman(['inspect', '--format', '{{.State.Pid}}', name])).stdout.trim());

/** `shaperr check` in a fresh container with the compose options (and any extra podman options). */
async function check(lane: Lane, extra: string[] = [], without: string[] = [], cli: string[] = []): Promise<Run> {
  return podman(['run', '--rm', ...lane.options(without), ...extra, '--entrypoint', 'shaperr', image, '--config', '/config/shaperr.yaml', ...cli, 'check']);
}
type Run = Awaited<ReturnType<typeof podman>>;

t.test('shaperrd in its container, run as the compose example says', { skip: unavailable || false }, async (t) => {
  const started = performance.now();
  if (!(await podman(['image', 'exists', image])).status) t.comment(`image ${image} present`);
  else {
    t.comment(`image ${image} missing: building it (npm run image)`);
    await run('bash', [join(REPO, 'container/build-image.sh')], { cwd: REPO, maxBuffer: 64 << 20, timeout: 1_200_000 });
  }
  const [inspected] = JSON.parse((await podman(['image', 'inspect', image])).stdout) as Array<{ Healthcheck?: { Test?: string[] } }>;
  t.match(inspected?.Healthcheck?.Test?.join(' '), /shaperr .*health/, 'the image carries its HEALTHCHECK (built in the docker format)');

  t.equal(service.network_mode, 'host', 'compose: host networking');
  t.same([service.cap_drop, service.cap_add], [['ALL'], ['NET_ADMIN']], 'compose: NET_ADMIN and nothing else');
  t.notOk(service.privileged, 'compose: never privileged');
  t.equal(service.read_only, true, 'compose: read-only root');

  const lane = await prepare(t);
  const { topology, plex } = lane;
  const client = topology.clientAddresses[0]!;
  const name = lane.name(t);
  const start = await podman(['run', '--detach', '--name', name, ...lane.options(), image]);
  t.equal(start.status, 0, `podman run ${lane.options().join(' ')} ${image}`);
  await until("shaperr's tree on srv0", () => shaperrRoot(lane));

  const status = readFileSync(`/proc/${await hostPid(name)}/status`, 'utf8');
  t.equal(/^CapEff:\s*(\w+)/m.exec(status)?.[1], '0000000000001000', 'shaperrd runs with exactly CAP_NET_ADMIN effective');
  t.equal(/^Uid:\s*(\d+)/m.exec(status)?.[1], '0', 'as root (uid 0), so without CAP_DAC_OVERRIDE');
  await until('the Plex source connected', async () => /token from PlexOnlineToken in \/plex\/Library/.test(await logs(name)));
  t.pass(`the token came from Plex's Preferences.xml (owner ${PLEX_UID}, mode 0644, mounted read-only)`);
  t.equal(await health(name), 0, 'podman healthcheck run: healthy');
  const zone = service.environment?.find((each) => each.startsWith('TZ='))?.slice(3) ?? 'UTC';
  const offset = new Intl.DateTimeFormat('en', { timeZone: zone, timeZoneName: 'longOffset' })
    .formatToParts(new Date())
    .find((part) => part.type === 'timeZoneName')!
    .value.replace(/^GMT$/, 'GMT+00:00')
    .slice(3);
  shows(t, await logs(name), new RegExp(`"time":"\\d{4}-\\d\\d-\\d\\dT[\\d:.]+\\${offset}"`), `the log's timestamps are local time in TZ=${zone} (${offset})`);

  // The status page of the container example, from this namespace as from another machine on the LAN.
  const api = `${lane.status.url}/api/status`;
  t.equal((await fetch(api)).status, 401, `${api} without the token: 401`);
  const report = await fetch(api, { headers: { authorization: `Bearer ${lane.status.token}` } });
  t.equal(report.status, 200, 'with the token from the config: 200');
  t.equal((await fetch(`${lane.status.url}/?token=${lane.status.token}`)).status, 200, 'the page itself, token in the address as the README says');

  // Throttle: class and filter read back from the kernel, real TCP through the pipe.
  const movie = plex.play({ player: { address: client } });
  await until('a pipe for the playing client', () => kernelHasPipesFor(topology, [client]));
  t.same(kernelClientClasses(topology), [{ rate: 4 * MBIT, ceil: 4 * MBIT }], 'its class: 4 Mbit/s, read back from the kernel');
  const goodput = await measureGoodput(topology, { to: client });
  const shaped = shapedTo(goodput.bitsPerSecond, 4 * MBIT);
  t.ok(shaped.within, `real TCP to the client: ${shaped.reading}`);

  // The healthcheck: the tree deleted while shaperrd is held (no repair yet) is unhealthy; repaired, healthy.
  const pid = await hostPid(name);
  process.kill(pid, 'SIGSTOP');
  try {
    await run('ip', ['netns', 'exec', topology.serverNs, 'tc', 'qdisc', 'del', 'dev', topology.serverDevice, 'root']);
    t.equal(await health(name), 1, 'healthcheck fails while the tree is deleted and not yet repaired');
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  await until('the tree repaired', () => kernelHasPipesFor(topology, [client]));
  t.equal(await health(name), 0, 'healthy again once shaperrd has put the tree back');

  // shaperr check inside: the container's own network (the lane's netns) is named as such.
  const inside = await podman(['exec', name, 'shaperr', 'check']);
  shows(
    t,
    inside.stdout,
    /warn +this container sees only lo, .*srv0.*: its own network, so shaperr shapes the container's srv0, not the host's uplink/,
    "check names the container's own network",
  );
  shows(t, inside.stdout, /→ give shaperr the host's network: `network_mode: host`/, 'with the compose fix');
  shows(t, inside.stdout, /^ok +running with CAP_NET_ADMIN$/m, 'check: the capability is there');
  t.notMatch(inside.stdout, /^fail/m, 'no check fails (the token is read from the mounted Preferences.xml)');
  t.match((await podman(['exec', name, 'touch', '/usr/x'])).stderr, /Read-only file system/, 'the root filesystem is read-only');

  // Release on stop.
  plex.setState(movie.sessionKey, 'stopped');
  await until('the pipe released', () => kernelHasPipesFor(topology, []));
  t.pass('stop releases the client');

  // SIGTERM: exit 0, rules removed, the playing client's session kept in the volume.
  const second = plex.play({ player: { address: client } });
  await until('a pipe again', () => kernelHasPipesFor(topology, [client]));
  const stopped = await podman(['stop', '--time', '20', name]);
  t.equal(stopped.status, 0, 'podman stop (SIGTERM)');
  t.equal((await podman(['inspect', '--format', '{{.State.ExitCode}}', name])).stdout.trim(), '0', 'shaperrd exits 0 on SIGTERM');
  t.notOk(shaperrRoot(lane), "shaperr's rules are removed from srv0");
  const saved = JSON.parse(readFileSync(join(lane.configDir, 'state.json'), 'utf8')) as { clients?: Array<{ address: string }> };
  t.same(
    saved.clients?.map((each) => each.address),
    [client],
    'the state is in the /config volume (the image links /var/lib/shaperr there)',
  );

  // Restart with Plex down: the pipe comes back from the saved state alone.
  await plex.down();
  t.equal((await podman(['start', name])).status, 0, 'podman start (the same container, the same volume)');
  await until('the saved pipe restored', () => kernelHasPipesFor(topology, [client]));
  t.match(await logs(name), /"saved":1.*reconciled with the kernel/, 'restored from the saved state, with Plex unreachable');
  const heard = async () => (await logs(name)).match(/listening to Plex notifications|Plex notifications reconnected/g)?.length ?? 0;
  const before = await heard();
  await plex.listen();
  await until('Plex heard again', async () => (await heard()) > before).catch(async (error) => {
    t.comment((await logs(name)).split('\n').slice(-15).join('\n'));
    throw error;
  });
  plex.setState(second.sessionKey, 'stopped');
  await until('released after the restart', () => kernelHasPipesFor(topology, []));
  await podman(['stop', '--time', '20', name]);

  // Without NET_ADMIN: exit 1, one line naming the capability and the compose line.
  const refused = await podman(['run', '--rm', ...lane.options(['cap_add']), image]);
  t.equal(refused.status, 1, 'without cap_add: exit code 1');
  const lines = containerLines(refused.stderr + refused.stdout);
  t.equal(lines.length, 1, `one line: ${lines.join(' | ')}`);
  t.match(lines[0], /CAP_NET_ADMIN.*`cap_add: \[NET_ADMIN\]`/, 'naming the capability and the compose line that adds it');
  t.notOk(shaperrRoot(lane), 'and nothing on the device');
  t.comment(`container lane: ${((performance.now() - started) / 1000).toFixed(0)} s`);
});

t.test("shaperr check in the container, and Plex's token when Preferences.xml is private", { skip: unavailable || false }, async (t) => {
  const lane = await prepare(t);

  // The HEALTHCHECK's command where no shaperrd runs (an exec into a container whose daemon is gone).
  const alone = await podman(['run', '--rm', ...lane.options(), '--entrypoint', 'shaperr', image, 'health']);
  t.equal(alone.status, 1, 'shaperr health without a running shaperrd: exit 1');
  t.match(alone.stdout, /^unhealthy: shaperrd is not running$/m, 'saying why');

  const noCapability = await check(lane, [], ['cap_add']);
  shows(
    t,
    noCapability.stdout,
    /fail +the container lacks CAP_NET_ADMIN\n +→ add `cap_add: \[NET_ADMIN\]`/,
    'check: the capability missing, with the compose line',
  );

  const otherDevice = await check(lane, [], [], ['--device', 'eth9']);
  shows(
    t,
    otherDevice.stdout,
    /fail +not on the host's network: this container sees only lo, .*srv0.* \(its own network\), not eth9\n +→ give shaperr the host's network/,
    'check: the device is not visible from a container network',
  );

  const elsewhere = await check(lane, ['--env', `PLEX_MEDIA_SERVER_APPLICATION_SUPPORT_DIR=/nowhere`]);
  shows(
    t,
    elsewhere.stdout,
    /warn +Plex's config is not mounted: no Preferences\.xml at \/nowhere\/Plex Media Server\/Preferences\.xml/,
    "check: Plex's config not mounted",
  );

  const unreachable = await check(lane, [], []).then(async (ok) => {
    shows(t, ok.stdout, /accepts the token \(from PlexOnlineToken in \/plex\/Library/, 'a 0644 Preferences.xml owned by Plex gives the token');
    await lane.plex.down();
    const down = await check(lane);
    await lane.plex.listen();
    return down;
  });
  shows(
    t,
    unreachable.stdout,
    /fail +Plex at http:\/\/10\.203\.\d+\.1:\d+ does not answer from this container \(ECONNREFUSED\)/,
    'check: Plex unreachable from the container',
  );

  // Group-readable (0640, Plex's PGID): readable once the container joins that group, as the Unraid template does.
  chmodSync(lane.preferences, 0o640);
  chownSync(lane.preferences, PLEX_UID, PLEX_GID);
  shows(
    t,
    (await check(lane)).stdout,
    /warn +Preferences\.xml is mounted but unreadable here: mode 0640, owner 911:100;/,
    'a 0640 file: unreadable without its group',
  );
  shows(t, (await check(lane, [`--group-add=${PLEX_GID}`])).stdout, /accepts the token \(from PlexOnlineToken/, `readable with --group-add=${PLEX_GID} (PGID)`);

  // A private Preferences.xml (0600, Plex's uid): root without CAP_DAC_OVERRIDE cannot read it.
  chmodSync(lane.preferences, 0o600);
  const privateFile = await check(lane);
  shows(
    t,
    privateFile.stdout,
    /warn +Preferences\.xml is mounted but unreadable here: mode 0600, owner 911:100; shaperr runs as uid 0 without CAP_DAC_OVERRIDE/,
    'check: a private Preferences.xml, with its mode and owner',
  );
  t.notMatch(privateFile.stdout, /accepts the token/, 'no token from it');

  // The alternative: the token in /config (root's own file, 0600) named by plex.tokenFile.
  const token = join(lane.configDir, 'plex-token');
  writeFileSync(token, `${SECRET_TOKEN}\n`, { mode: 0o600 });
  chownSync(token, 0, 0);
  const configPath = join(lane.configDir, 'shaperr.yaml');
  const config = parse(readFileSync(configPath, 'utf8')) as { plex: Record<string, unknown> };
  config.plex.tokenFile = '/config/plex-token';
  writeFileSync(configPath, stringify(config));
  const withFile = await check(lane);
  shows(t, withFile.stdout, /accepts the token \(from plex\.tokenFile \/config\/plex-token\)/, 'tokenFile in /config works with the same capabilities');
  t.notMatch(withFile.stdout, /Preferences\.xml/, 'and the private Preferences.xml is not needed');
  t.notOk(existsSync(join(lane.configDir, 'state.json')), 'check writes nothing');
});
