/**
 * The stock-kernel lane: boots Debian's own kernel (which has sfq, fq_codel, prio, fw, flower, matchall —
 * this machine's kernel does not) under qemu with software emulation, on the host's root filesystem shared
 * read-only over virtio-9p and made writable in the guest by an overlay, and runs one command there.
 *
 *   prepareLane()  resolves the current Debian kernel package, downloads and unpacks it once, and builds
 *                  a busybox initramfs with the modules the tests need (all cached in ./cache/).
 *   runInLane()    boots, runs the command in the project directory, streams its output, and resolves
 *                  with its exit status.
 *
 * By hand: `npx tsx test/kernel-lane/lane.ts -- <command…>` (exit 77 when the lane cannot be had).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const CACHE = join(HERE, 'cache');
const INIT = join(HERE, 'init.sh');
/** What the tests touch, and what mounting the host's root needs; dependencies are resolved by modprobe. */
const MODULES = [
  'virtio_pci',
  '9pnet_virtio',
  '9p',
  'overlay',
  'sch_htb',
  'sch_sfq',
  'sch_fq_codel',
  'sch_tbf',
  'sch_prio',
  'cls_u32',
  'cls_fw',
  'cls_flower',
  'cls_matchall',
  'veth',
  'sch_ingress',
];
const TOOLS = { 'qemu-system-x86_64': 'qemu-system-x86', cpio: 'cpio', modprobe: 'kmod', depmod: 'kmod', 'apt-get': 'apt' } as const;

export type LaneReady = { ok: true; kernelVersion: string; kernel: string; initrd: string } | { ok: false; reason: string };

const hasCommand = (name: string): boolean => spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;

/** Debian's current generic kernel, e.g. 6.1.0-50-amd64 (the `-cloud-` flavour has no 9p). */
function currentKernelVersion(): string | undefined {
  const result = spawnSync('apt-cache', ['depends', 'linux-image-amd64'], { encoding: 'utf8' });
  return /linux-image-(\d[\w.-]*-amd64)/.exec(result.stdout ?? '')?.[1];
}

function cachedKernelVersion(): string | undefined {
  if (!existsSync(CACHE)) return undefined;
  return readdirSync(CACHE).find((name) => existsSync(join(CACHE, name, 'tree', 'boot', `vmlinuz-${name}`)));
}

function staticBusybox(): string | undefined {
  for (const path of ['/bin/busybox', '/usr/bin/busybox']) {
    if (existsSync(path) && /statically linked|static-pie/.test(spawnSync('file', ['-L', path], { encoding: 'utf8' }).stdout ?? 'statically linked'))
      return path;
  }
  return undefined;
}

export async function prepareLane({ log = () => {} }: { log?: (line: string) => void } = {}): Promise<LaneReady> {
  const missing = Object.entries(TOOLS).filter(([command]) => !hasCommand(command));
  if (missing.length)
    return {
      ok: false,
      reason: `missing ${missing.map(([command]) => command).join(', ')} (apt-get install ${[...new Set(missing.map(([, pkg]) => pkg))].join(' ')})`,
    };
  const busybox = staticBusybox();
  if (!busybox) return { ok: false, reason: 'no static busybox for the initramfs (apt-get install busybox-static)' };
  const version = currentKernelVersion() ?? cachedKernelVersion();
  if (!version) return { ok: false, reason: "cannot resolve Debian's kernel package (apt-cache depends linux-image-amd64 names none; apt-get update?)" };
  const dir = join(CACHE, version);
  const tree = join(dir, 'tree');
  const kernel = join(tree, 'boot', `vmlinuz-${version}`);
  if (!existsSync(kernel)) {
    mkdirSync(dir, { recursive: true });
    log(`downloading linux-image-${version} (once; cached in ${dir})`);
    const download = spawnSync('apt-get', ['download', `linux-image-${version}`], { cwd: dir, encoding: 'utf8' });
    const deb = readdirSync(dir).find((name) => name.endsWith('.deb'));
    if (download.status !== 0 || !deb)
      return { ok: false, reason: `apt-get download linux-image-${version} failed: ${(download.stderr ?? '').trim().split('\n').pop()}` };
    execFileSync('dpkg-deb', ['-x', join(dir, deb), tree]);
    rmSync(join(dir, deb));
    execFileSync('depmod', ['-b', tree, version]);
  }
  // The initramfs is rebuilt whenever the init script or the module list changes.
  const init = readFileSync(INIT, 'utf8');
  const key = createHash('sha256')
    .update(`${version}\n${init}\n${MODULES.join(' ')}`)
    .digest('hex')
    .slice(0, 12);
  const initrd = join(dir, `initrd-${key}.gz`);
  if (!existsSync(initrd)) {
    log(`building the initramfs for ${version}`);
    const stage = mkdtempSync(join(tmpdir(), 'shaperr-lane-initrd-'));
    try {
      for (const folder of ['bin', 'modules', 'proc', 'sys', 'dev', 'lower', 'rw', 'newroot']) mkdirSync(join(stage, folder));
      copyFileSync(busybox, join(stage, 'bin', 'busybox'));
      writeFileSync(join(stage, 'init'), init, { mode: 0o755 });
      const order: string[] = [];
      for (const module of MODULES) {
        const plan = execFileSync('modprobe', ['-d', tree, '-S', version, '--show-depends', module], { encoding: 'utf8' });
        for (const path of plan.split('\n').flatMap((line) => /^insmod (\S+)/.exec(line)?.[1] ?? [])) {
          if (order.includes(basename(path))) continue;
          copyFileSync(path, join(stage, 'modules', basename(path)));
          order.push(basename(path));
        }
      }
      writeFileSync(join(stage, 'modules', 'order'), `${order.join('\n')}\n`);
      execFileSync('sh', ['-c', `cd "${stage}" && find . | cpio -o -H newc --quiet | gzip -1 > "${initrd}.tmp" && mv "${initrd}.tmp" "${initrd}"`]);
    } finally {
      rmSync(stage, { recursive: true, force: true });
    }
  }
  return { ok: true, kernelVersion: version, kernel, initrd };
}

export interface LaneRun {
  status: number;
  output: string;
  seconds: number;
}

const shellQuote = (word: string): string => `'${word.replace(/'/g, `'\\''`)}'`;

/** Boots the lane and runs `command` in `cwd` (a host path; the guest sees the host's tree, writable). */
export async function runInLane(
  lane: Extract<LaneReady, { ok: true }>,
  command: string[],
  {
    cwd = process.cwd(),
    env = {},
    timeoutMs = 300_000,
    onOutput = () => {},
  }: { cwd?: string; env?: Record<string, string>; timeoutMs?: number; onOutput?: (line: string) => void } = {},
): Promise<LaneRun> {
  const job = mkdtempSync(join(tmpdir(), 'shaperr-lane-job-'));
  const exports = Object.entries({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/tmp', ...env }).map(
    ([name, value]) => `export ${name}=${shellQuote(value)}`,
  );
  writeFileSync(join(job, 'job.sh'), [...exports, `cd ${shellQuote(cwd)} || exit 126`, `exec ${command.map(shellQuote).join(' ')}`, ''].join('\n'));
  const started = performance.now();
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-cpu',
      'max',
      '-smp',
      '2',
      '-m',
      '1536',
      '-nographic',
      '-no-reboot',
      '-nic',
      'none',
      '-kernel',
      lane.kernel,
      '-initrd',
      lane.initrd,
      '-append',
      'console=ttyS0 quiet loglevel=1 panic=-1',
      '-fsdev',
      'local,id=root,path=/,security_model=none,readonly=on,multidevs=remap',
      '-device',
      'virtio-9p-pci,fsdev=root,mount_tag=hostroot',
      '-fsdev',
      `local,id=job,path=${job},security_model=none`,
      '-device',
      'virtio-9p-pci,fsdev=job,mount_tag=lane',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const lines: string[] = [];
  let status: number | undefined;
  let failure: string | undefined;
  let pending = '';
  const onData = (data: string) => {
    pending += data;
    const complete = pending.split('\n');
    pending = complete.pop()!;
    for (const raw of complete) {
      // The serial console adds \r and the firmware paints escape sequences before the kernel starts.
      // biome-ignore lint/suspicious/noControlCharactersInRegex: ESC is exactly what is removed here
      const line = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[a-zA-Z]|\x1bc/g, '');
      const exit = /^LANE-EXIT (\d+)$/.exec(line);
      if (exit) status = Number(exit[1]);
      else if (line.startsWith('LANE-FAILED ')) failure = line.slice('LANE-FAILED '.length);
      else if (!/^(SeaBIOS|iPXE|Booting from|Press Ctrl-B|\[ *\d+\.\d+\] reboot: Power down)/.test(line.trim()) && line.trim() !== '') {
        lines.push(line);
        onOutput(line);
      }
    }
  };
  // Decoded per stream, so a character split between two reads stays whole.
  qemu.stdout!.setEncoding('utf8').on('data', onData);
  qemu.stderr!.setEncoding('utf8').on('data', onData);
  const timer = setTimeout(() => qemu.kill('SIGKILL'), timeoutMs);
  const exitCode = await new Promise<number | null>((resolve) => qemu.once('close', resolve));
  clearTimeout(timer);
  rmSync(job, { recursive: true, force: true });
  const seconds = (performance.now() - started) / 1000;
  const tail = lines.slice(-5).join('\n');
  if (failure) throw new Error(`the lane's guest failed: ${failure}`);
  if (status === undefined) {
    throw new Error(
      seconds * 1000 >= timeoutMs
        ? `the lane timed out after ${Math.round(seconds)} s; last output:\n${tail}`
        : `qemu exited (${exitCode}) before the command reported a status; last output:\n${tail}`,
    );
  }
  return { status, output: lines.join('\n'), seconds };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const command = process.argv.slice(process.argv.indexOf('--') + 1);
  const lane = await prepareLane({ log: (line) => process.stderr.write(`lane: ${line}\n`) });
  if (!lane.ok) {
    process.stderr.write(`the stock-kernel lane is unavailable: ${lane.reason}\n`);
    process.exit(77);
  }
  const run = await runInLane(lane, command, { onOutput: (line) => process.stdout.write(`${line}\n`) });
  process.stderr.write(`lane: exit ${run.status} after ${run.seconds.toFixed(1)} s (kernel ${lane.kernelVersion})\n`);
  process.exit(run.status);
}
