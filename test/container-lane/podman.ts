/**
 * The container lane's tools: podman run the way this machine needs it, and the shaperr service of
 * examples/docker-compose.yml turned into podman options, so the lane runs what users run.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const COMPOSE = 'examples/docker-compose.yml';

/**
 * What this machine needs and compose does not say: runc (crun refuses this kernel's hybrid cgroups),
 * limits within the hard ones (podman's defaults exceed them).
 */
const RUNTIME = ['--runtime', 'runc'];
const LIMITS = ['--ulimit', 'nofile=1024:20000', '--ulimit', 'nproc=1024:1024'];

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

/** podman with this machine's runtime; never throws for a non-zero exit. */
export function podman(args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile('podman', [...RUNTIME, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const status = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ status, stdout, stderr });
    });
  });
}

/**
 * podman's own complaints on stderr (without systemd it cannot schedule the healthcheck timer) are not
 * the container's: lines of its logrus format, left out when judging what shaperrd printed.
 */
export const containerLines = (stderr: string): string[] =>
  stderr.split('\n').filter((line) => line.trim() !== '' && !/^time="[^"]*" level=\w+ msg=/.test(line));

/** Why the lane cannot run here, or false: root, and `podman info` answering. */
export async function podmanUnavailable(): Promise<string | false> {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, and podman with NET_ADMIN)';
  const info = await new Promise<Run>((resolve) =>
    execFile('podman', ['info', '--format', '{{.Host.OCIRuntime.Name}}'], { timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ status: error ? 1 : 0, stdout, stderr }),
    ),
  );
  return info.status === 0 ? false : `podman info failed: ${info.stderr.trim().split('\n').pop() ?? 'not installed'}`;
}

interface ComposeService {
  image: string;
  network_mode?: string;
  cap_add?: string[];
  cap_drop?: string[];
  security_opt?: string[];
  read_only?: boolean;
  privileged?: boolean;
  environment?: string[];
  volumes?: string[];
  [key: string]: unknown;
}

/** Keys of the service that say how to build, name or order it: nothing podman run needs. */
const NOT_RUN_OPTIONS = new Set(['build', 'container_name', 'restart', 'depends_on']);

export function composeService(name = 'shaperr'): ComposeService {
  const compose = parse(readFileSync(`${REPO}/${COMPOSE}`, 'utf8')) as { services: Record<string, ComposeService> };
  const service = compose.services[name];
  if (!service) throw new Error(`${COMPOSE} has no service ${name}`);
  return service;
}

/**
 * `podman run` options for the compose service: its network (the host's → the test's netns), capabilities,
 * security options, read-only root, environment and volumes (each container path mounted from the test's
 * folder for it, with the compose file's mode). An option this does not know is an error, so the lane
 * never silently runs something else than the example.
 */
export function runOptions(
  service: ComposeService,
  { netns, mounts, without = [] }: { netns: string; mounts: Record<string, string>; without?: string[] },
): string[] {
  const options = [...LIMITS];
  for (const [key, value] of Object.entries(service)) {
    if (NOT_RUN_OPTIONS.has(key) || key === 'image' || without.includes(key)) continue;
    switch (key) {
      case 'network_mode':
        if (value !== 'host') throw new Error(`${COMPOSE}: network_mode is ${String(value)}, not host`);
        options.push('--network', `ns:/run/netns/${netns}`);
        break;
      case 'cap_add':
      case 'cap_drop':
      case 'security_opt':
        for (const each of value as string[]) options.push(`--${key.replace('_', '-')}=${each}`);
        break;
      case 'read_only':
        if (value === true) options.push('--read-only');
        break;
      case 'environment':
        for (const each of value as string[]) options.push('--env', each);
        break;
      case 'volumes':
        for (const volume of value as string[]) {
          const [, target, mode] = volume.split(':') as [string, string, string | undefined];
          const source = mounts[target];
          if (!source) throw new Error(`${COMPOSE} mounts ${target}, and the test has no folder for it`);
          options.push('--volume', `${source}:${target}${mode ? `:${mode}` : ''}`);
        }
        break;
      default:
        throw new Error(`${COMPOSE}: the lane does not know the option ${key}`);
    }
  }
  return options;
}

/** The image compose builds (`image: shaperr:local`), as podman names a local image. */
export const composeImage = (service: ComposeService): string => (service.image.includes('/') ? service.image : `localhost/${service.image}`);
