/**
 * shaperr in a container (compose, Unraid, podman): what `shaperr check` adds there, in container terms
 * (the network it sees, the capability, Plex's mounted config, Plex reachable), and the HEALTHCHECK's
 * verdict: shaperrd runs and its tree is on the device.
 */
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { basename } from 'node:path';
import { checkDevice } from '../../lib/index.js';
import { mediaServerKinds, plexServers, type ShaperrConfig } from '../config.js';
import { hasNetAdmin } from '../support/capabilities.js';
import { findPlexToken, preferencesPaths } from '../sources/plex-token.js';

/** One line of `shaperr check`. */
export interface CheckLine {
  verdict: 'ok' | 'warn' | 'fail';
  what: string;
  fix?: string;
}

const HOST_NETWORK_FIX = 'give shaperr the host\'s network: `network_mode: host` in compose (docker run --network=host; Unraid: Network Type "Host")';

/** Docker leaves /.dockerenv, podman /run/.containerenv, systemd-nspawn and LXC set $container. */
export function inContainer(): boolean {
  return existsSync('/.dockerenv') || existsSync('/run/.containerenv') || process.env.container !== undefined;
}

/**
 * The interfaces of this network namespace but lo, split into what a container network gives (virtual
 * links such as a veth or a macvlan, whose other end is outside) and the rest: physical NICs, and the
 * bridges and bonds a NAS's host network has (Unraid's br0, bond0).
 */
function interfaces(): { containerLinks: string[]; hostLinks: string[] } {
  const containerLinks: string[] = [];
  const hostLinks: string[] = [];
  for (const name of readdirSync('/sys/class/net')) {
    if (name === 'lo') continue;
    const path = `/sys/class/net/${name}`;
    const virtual = readlinkSync(path).includes('/virtual/');
    (virtual && !existsSync(`${path}/bridge`) && !existsSync(`${path}/bonding`) ? containerLinks : hostLinks).push(name);
  }
  return { containerLinks, hostLinks };
}

function networkLine(device: string | undefined): CheckLine {
  const { containerLinks, hostLinks } = interfaces();
  const visible = ['lo', ...containerLinks, ...hostLinks].join(', ');
  if (hostLinks.length > 0 || containerLinks.length === 0) return { verdict: 'ok', what: `host networking: this container sees ${visible}` };
  if (device && !containerLinks.includes(device))
    return { verdict: 'fail', what: `not on the host's network: this container sees only ${visible} (its own network), not ${device}`, fix: HOST_NETWORK_FIX };
  return {
    verdict: 'warn',
    what: `this container sees only ${visible}: its own network, so shaperr shapes the container's ${device ?? containerLinks[0]}, not the host's uplink`,
    fix: HOST_NETWORK_FIX,
  };
}

/** Why none of the Preferences.xml `paths` gives the token, in container terms; undefined when one does. */
function preferencesLine(paths: string[]): CheckLine | undefined {
  const path = paths.find((candidate) => existsSync(candidate));
  if (!path)
    return {
      verdict: 'fail',
      what: `Plex's config is not mounted: no Preferences.xml at ${preferencesPaths()[0]}`,
      fix: "mount the folder Plex's container keeps as its /config read-only at /plex (`- /path/to/plex/config:/plex:ro`), or give the token in plex.tokenFile or PLEX_TOKEN",
    };
  const found = findPlexToken({}, { env: {}, preferences: [path] });
  if (found.choice) return undefined;
  const { mode, uid, gid } = statSync(path);
  return {
    verdict: 'fail',
    what: `Preferences.xml is mounted but unreadable here: mode ${(mode & 0o777).toString(8).padStart(4, '0')}, owner ${uid}:${gid}; shaperr runs as uid ${process.getuid?.()} without CAP_DAC_OVERRIDE (cap_drop: ALL), so it reads only what other users may read`,
    fix: 'put the token in a file in /config (chmod 600) and set plex.tokenFile: /config/plex-token, or set PLEX_TOKEN; do not add capabilities (see README, Docker / NAS)',
  };
}

/** Whether a TCP connection to host:port opens within the timeout. */
function answers(url: string, timeoutMs: number): Promise<string | undefined> {
  const { hostname, port, protocol } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname.replace(/^\[|\]$/g, ''), port: Number(port || (protocol === 'https:' ? 443 : 80)), timeout: timeoutMs });
    const done = (problem?: string) => {
      socket.destroy();
      resolve(problem);
    };
    socket.once('connect', () => done());
    socket.once('timeout', () => done(`no answer within ${timeoutMs / 1000} s`));
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? error.message));
  });
}

/**
 * Whether the config may follow Plex's API: `source` names it (or both), or is auto with a Plex server
 * configured or no other server to follow. Otherwise Plex's config and port are none of shaperr's business.
 */
function mayUsePlexApi(config: ShaperrConfig): boolean {
  const { source } = config;
  if (source === 'auto') return config.plex !== undefined || mediaServerKinds.every((kind) => config[kind] === undefined);
  return source === 'plex' || source === 'both' || (Array.isArray(source) && source.includes('plex'));
}

/**
 * The container lines of `shaperr check`; none outside a container. A device in a named netns is looked
 * up there, so what this container's own namespace shows says nothing about it.
 */
export async function checkContainer(config: ShaperrConfig | undefined, where: { device?: string; netns?: string }, timeoutMs = 2000): Promise<CheckLine[]> {
  if (!inContainer()) return [];
  const network = where.netns ? undefined : networkLine(where.device);
  const lines: CheckLine[] = network ? [network] : [];
  if (!hasNetAdmin())
    lines.push({
      verdict: 'fail',
      what: 'the container lacks CAP_NET_ADMIN',
      fix: 'add `cap_add: [NET_ADMIN]` to its compose service (docker run --cap-add=NET_ADMIN); nothing more: never privileged',
    });
  if (!config || !mayUsePlexApi(config)) return lines;
  const servers = plexServers(config);
  const fromPreferences = !process.env.PLEX_TOKEN && servers.some((server) => !server.token && !server.tokenFile);
  const preferences = fromPreferences ? preferencesLine(preferencesPaths(config.log)) : undefined;
  if (preferences) {
    // With source: auto a missing token means the log source instead: worth a word, not a failure, and
    // Plex's API is then not used, so not tried.
    if (config.source === 'auto') return [...lines, { ...preferences, verdict: 'warn' }];
    lines.push(preferences);
  }
  for (const server of servers) {
    const problem = await answers(server.url, timeoutMs);
    if (problem)
      lines.push({
        verdict: 'fail',
        what: `Plex at ${server.url} does not answer from this container (${problem})`,
        fix:
          network?.verdict !== 'warn' && network?.verdict !== 'fail'
            ? "is Plex's container running? With host networking Plex listens on the host's 127.0.0.1:32400"
            : `inside the container's own network 127.0.0.1 is the container itself: ${HOST_NETWORK_FIX}`,
      });
  }
  return lines;
}

/** PIDs of shaperrd processes in this PID namespace (node runs it as …/shaperrd or …/daemon/cli.js). */
function shaperrdProcesses(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .filter((pid) => {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        return argv.some((arg) => basename(arg) === 'shaperrd' || arg.endsWith('daemon/cli.js'));
      } catch {
        return false; // gone since the listing
      }
    })
    .map(Number);
}

/** The HEALTHCHECK: healthy while shaperrd runs and shaperr's tree is the device's root. */
export function containerHealth(target: { device: string; netns?: string }): { healthy: boolean; line: string } {
  const pids = shaperrdProcesses();
  if (pids.length === 0) return { healthy: false, line: 'unhealthy: shaperrd is not running' };
  let root: string;
  try {
    root = checkDevice({ ...target, probeKinds: false }).root.state;
  } catch (error) {
    return { healthy: false, line: `unhealthy: cannot read ${target.device}: ${(error as Error).message}` };
  }
  if (root !== 'shaperr') return { healthy: false, line: `unhealthy: shaperr's tree is not on ${target.device} (root qdisc: ${root})` };
  return { healthy: true, line: `healthy: shaperrd (pid ${pids.join(', ')}) runs and its tree is on ${target.device}` };
}
