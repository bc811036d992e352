#!/usr/bin/env node
/**
 * `shaperr`: the operator's tool next to shaperrd — status, clear, check, tc. It reads the kernel over
 * netlink itself (and the daemon's state file for sessions), so it works whether or not shaperrd runs.
 */
import { accessSync, closeSync, constants, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { checkDevice, clearShaper, describeRate, formatHandle, inspectShaper, NetlinkError, SHAPER_ROOT } from '../../lib/index.js';
import { ConfigError, loadConfig, type ShaperrConfig } from '../config.js';
import { checkSources } from '../sources/plan.js';
import { checkCeiling } from '../ceiling/check.js';
import { loadState } from '../apply/state.js';
import { lockDevice } from '../apply/device-lock.js';
import { ThroughputMeter } from '../support/throughput.js';
import { buildStatus, type SessionInfo, type StatusReport } from './status.js';
import type { CeilingStatus } from '../ceiling/auto-ceiling.js';
import { findPlexLog } from '../sources/tail.js';
import { hasNetAdmin } from '../support/capabilities.js';
import { checkContainer, containerHealth } from './container-check.js';

const DEFAULT_CONFIG = '/etc/shaperr/shaperr.yaml';

/** Exit codes, also in the help text and the README. */
const EXIT = { ok: 0, failed: 1, usage: 2, nothing: 3 } as const;

interface GlobalOptions {
  config: string;
  device?: string;
  netns?: string;
}

class UsageError extends Error {}

const program = new Command()
  .name('shaperr')
  .description('Inspect and manage what shaperr does on a device: status, clear, check, tc.')
  .option('-c, --config <file>', 'shaperrd configuration (device, netns, state file, log)', DEFAULT_CONFIG)
  .option('-d, --device <name>', 'network device (overrides the config)')
  .option('-n, --netns <name>', 'network namespace of the device (overrides the config)')
  .showHelpAfterError()
  .addHelpText(
    'after',
    '\nExit codes: 0 ok; 1 a check failed or the kernel refused; 2 bad arguments or configuration; 3 shaperr has nothing on the device (status, tc).',
  );

/** The config when there is one; a missing default config is fine when --device says where to look. */
function configFor(options: GlobalOptions): ShaperrConfig | undefined {
  const explicit = options.config !== DEFAULT_CONFIG;
  if (!explicit && !existsSync(options.config)) return undefined;
  return loadConfig(options.config);
}

function target(options: GlobalOptions): { device: string; netns?: string; config?: ShaperrConfig } {
  const config = configFor(options);
  const device = options.device ?? config?.device;
  if (!device) throw new UsageError(`no device: pass --device, or a config with \`device:\` (${options.config} does not exist)`);
  const netns = options.netns ?? config?.netns;
  return { device, ...(netns ? { netns } : {}), ...(config ? { config } : {}) };
}

const mbit = (bits: number | undefined) => (bits === undefined ? '…' : describeRate(bits));
const size = (bytes: number) =>
  bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the state file adds to the kernel's counters: the sessions, and the automatic ceiling's last word. */
async function savedParts(config: ShaperrConfig | undefined): Promise<{ sessions: SessionInfo[]; ceiling?: CeilingStatus }> {
  if (!config) return { sessions: [] };
  const state = await loadState(config.stateFile, (message) => process.stderr.write(`shaperr: ${message}\n`));
  const sessions = (state?.clients ?? []).map((client) => ({
    address: client.address,
    sessions: client.sessions,
    ...(client.user ? { user: client.user } : {}),
    ...(client.since ? { since: client.since } : {}),
    wanted: client.limits,
  }));
  // Only while the config still says auto: a ceiling saved before a switch to a fixed rate is history.
  return state?.ceiling && config.server.rate === 'auto' ? { sessions, ceiling: { mode: 'auto', history: [], ...state.ceiling } } : { sessions };
}

/** One report from the kernel; undefined when shaperr has nothing on the device. */
async function report(where: ReturnType<typeof target>, meter: ThroughputMeter): Promise<StatusReport | undefined> {
  const shaper = inspectShaper(where);
  if (!shaper) return undefined;
  try {
    const { sessions, ceiling } = await savedParts(where.config);
    const status = buildStatus({ device: where.device, leaf: shaper.leafKind, ...shaper.state(), sessions, meter });
    if (ceiling) status.ceiling = ceiling;
    return status;
  } finally {
    await shaper.close();
  }
}

function table(report: StatusReport): string {
  const rows = report.clients.map((c) => [
    c.address,
    c.user ?? '',
    c.state,
    String(c.sessions.length),
    `${mbit(c.rate)} / ${mbit(c.ceil)}${c.rate < c.wanted ? ' !' : ''}`,
    mbit(c.wanted),
    mbit(c.bitsPerSecond),
    size(c.bytes),
    String(c.drops),
    c.since ? new Date(c.since).toLocaleTimeString() : '',
  ]);
  const header = ['CLIENT', 'USER', 'STATE', 'SESSIONS', 'GUARANTEED / CEIL', 'WANTS', 'NOW', 'SENT', 'DROPS', 'SINCE'];
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  const server = report.server;
  const serverLine = server
    ? `server ${report.device}: ${mbit(server.bitsPerSecond)} of ${mbit(server.rate)} (${((server.utilisation ?? 0) * 100).toFixed(0)} %), ${size(server.bytes)} sent, ${server.drops} drops; leaf ${report.leaf}` +
      (server.note ? `\n  ${server.note}` : '')
    : `server ${report.device}: no server class`;
  const ceiling = report.ceiling;
  const ceilingLines = ceiling
    ? [
        `automatic ceiling ${mbit(ceiling.rate)} (${mbit(ceiling.min)}–${mbit(ceiling.max)}, ${ceiling.signal} signal): ` +
          `uplink delay ${ceiling.delayMs === undefined ? 'not measured (nothing flows)' : `${ceiling.delayMs} ms`}, capacity ${ceiling.capacity === undefined ? 'not measured yet' : mbit(ceiling.capacity)}, ${ceiling.changes} change${ceiling.changes === 1 ? '' : 's'}` +
          (ceiling.lastChange ? `; last ${new Date(ceiling.lastChange.at).toLocaleTimeString()}: ${ceiling.lastChange.why}` : '') +
          (ceiling.cause ? `\n  ${ceiling.cause}: only the router can shape it` : ''),
      ]
    : [];
  const short = report.clients.filter((c) => c.rate < c.wanted).length;
  const shortLine = short ? [`${short} guaranteed less than they want (!): the server rate is shared by more viewers than it holds`] : [];
  return `${[
    serverLine,
    ...ceilingLines,
    `${report.clients.length} throttled client${report.clients.length === 1 ? '' : 's'}`,
    ...shortLine,
    ...(rows.length ? [line(header), ...rows.map(line)] : []),
  ].join('\n')}\n`;
}

program
  .command('status')
  .description('throttled clients (address, user, sessions, guaranteed rate/ceil, wanted rate, throughput now, bytes, drops, since) and the server class')
  .option('--json', 'print the report as JSON (one object; one per line with --watch)')
  .option('-w, --watch', 'refresh until interrupted')
  .option(
    '-i, --interval <seconds>',
    'measuring interval for throughput',
    (value) => {
      const seconds = Number(value);
      if (!(seconds >= 0.2 && seconds <= 3600)) throw new InvalidArgumentError('expected seconds from 0.2 to 3600');
      return seconds;
    },
    1,
  )
  .action(async (options: { json?: boolean; watch?: boolean; interval: number }) => {
    const where = target(program.opts<GlobalOptions>());
    const meter = new ThroughputMeter();
    const tty = process.stdout.isTTY === true && !options.json;
    if (!(await report(where, meter))) {
      process.stderr.write(
        `shaperr has nothing on ${where.device}${where.netns ? ` (netns ${where.netns})` : ''}: shaperrd is not running there, or was stopped with its rules removed\n`,
      );
      process.exitCode = EXIT.nothing;
      return;
    }
    if (tty) process.stderr.write(`measuring for ${options.interval} s…\r`);
    do {
      await sleep(options.interval * 1000);
      const current = await report(where, meter);
      if (!current) throw new Error(`shaperr's qdisc disappeared from ${where.device}`);
      const text = options.json ? `${JSON.stringify(current, null, options.watch ? undefined : 2)}\n` : table(current);
      process.stdout.write(tty && options.watch ? `\x1b[H\x1b[2J${text}` : text);
    } while (options.watch);
  });

program
  .command('clear')
  .description(
    'remove every object shaperr owns on the device (its root qdisc, and with it all classes, leaves and filters); refuses while shaperrd runs there',
  )
  .action(async () => {
    const where = target(program.opts<GlobalOptions>());
    // Held while clearing, so no shaperrd starts meanwhile; a running one would only put everything back.
    const lock = lockDevice(where, 'not clearing what it would put back; stop it first (e.g. systemctl stop shaperrd), which removes its rules');
    // Thousands of pipes take the kernel a moment: say what is under way, then overwrite it.
    const tty = process.stdout.isTTY;
    let removed: number | undefined;
    try {
      removed = await clearShaper({
        ...where,
        onProgress: ({ done, total }) => {
          if (tty && done === 0 && total > 0) process.stdout.write(`removing ${total} client pipe${total === 1 ? '' : 's'} from ${where.device}…`);
        },
      });
    } finally {
      lock.release();
    }
    process.stdout.write(
      `${tty && removed ? '\r\x1b[2K' : ''}${
        removed !== undefined
          ? `removed shaperr's root qdisc ${formatHandle(SHAPER_ROOT)} and ${removed} client pipe${removed === 1 ? '' : 's'} from ${where.device}`
          : `nothing of shaperr's on ${where.device}`
      }\n`,
    );
  });

program
  .command('tc')
  .description('print the tc commands that would rebuild the current state from an empty device')
  .action(async () => {
    const where = target(program.opts<GlobalOptions>());
    const shaper = inspectShaper(where);
    if (!shaper) {
      process.stderr.write(`shaperr has nothing on ${where.device}\n`);
      process.exitCode = EXIT.nothing;
      return;
    }
    try {
      if (where.netns) process.stdout.write(`# in network namespace ${where.netns}: ip netns exec ${where.netns} sh -c '…'\n`);
      process.stdout.write(`${shaper.tcCommands().join('\n')}\n`);
    } finally {
      await shaper.close();
    }
  });

type Verdict = 'ok' | 'warn' | 'fail';
interface CheckLine {
  verdict: Verdict;
  what: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

/** Whether the tail of the log has request lines, which Plex writes only with debug logging on. */
function debugLinesSeen(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const { size } = fstatSync(fd);
    const length = Math.min(size, 4 << 20);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, size - length);
    return /\] (?:DEBUG -|Debug —) Request: \[/.test(buffer.toString('latin1'));
  } finally {
    closeSync(fd);
  }
}

async function runChecks(options: GlobalOptions): Promise<CheckLine[]> {
  const lines: CheckLine[] = [];
  let config: ShaperrConfig | undefined;
  try {
    config = configFor(options);
    lines.push(
      config
        ? { verdict: 'ok', what: `configuration ${options.config} is valid` }
        : { verdict: 'warn', what: `no configuration at ${options.config}`, fix: 'copy examples/shaperr.yaml there (see README)' },
    );
  } catch (error) {
    lines.push({ verdict: 'fail', what: (error as Error).message, fix: 'fix the key named above (see README, configuration reference)' });
  }
  const device = options.device ?? config?.device;
  const netns = options.netns ?? config?.netns;
  const privileged = hasNetAdmin();
  lines.push(
    privileged
      ? { verdict: 'ok', what: 'running with CAP_NET_ADMIN' }
      : {
          verdict: 'fail',
          what: 'no CAP_NET_ADMIN: the kernel will refuse every change',
          fix: 'run as root, or as the systemd service (AmbientCapabilities=CAP_NET_ADMIN)',
        },
  );

  if (!device) {
    lines.push({ verdict: 'fail', what: 'no device to check', fix: 'pass --device or set `device:` in the config' });
  } else {
    try {
      const found = checkDevice({ device, ...(netns ? { netns } : {}), probeKinds: privileged });
      lines.push({ verdict: 'ok', what: `device ${device} exists${netns ? ` in netns ${netns}` : ''} (mtu ${found.mtu})` });
      const { root } = found;
      if (root.state === 'none') lines.push({ verdict: 'ok', what: `no root qdisc on ${device} yet: shaperrd will add its own` });
      else if (root.state === 'shaperr') lines.push({ verdict: 'ok', what: `shaperr's root qdisc is on ${device}` });
      else
        lines.push({
          verdict: config?.takeover ? 'warn' : 'fail',
          what: `${device} already has a root qdisc ${root.description} that shaperr did not create`,
          fix: config?.takeover ? 'takeover: true will replace it' : 'remove it, or set takeover: true to let shaperrd replace it',
        });
      if (found.qdiscKinds) {
        for (const kind of ['htb', 'sfq'] as const) {
          const present = found.qdiscKinds[kind];
          if (present) lines.push({ verdict: 'ok', what: `kernel has the ${kind} qdisc` });
          else if (kind === 'sfq')
            lines.push({
              verdict: 'warn',
              what: 'kernel has no sfq qdisc (module sch_sfq)',
              fix: 'client pipes will use bfifo leaves (one byte-limited queue per client, no per-flow fairness); `modprobe sch_sfq` if your kernel ships it',
            });
          else
            lines.push({ verdict: 'fail', what: 'kernel has no htb qdisc (module sch_htb)', fix: '`modprobe sch_htb`, or a kernel with CONFIG_NET_SCH_HTB' });
        }
        // A filter kind can only be tried on a classful qdisc: shaperr's own, when it is there.
        if (found.u32 !== undefined) {
          lines.push(
            found.u32
              ? { verdict: 'ok', what: 'kernel has the u32 filter' }
              : { verdict: 'fail', what: 'kernel has no u32 filter (module cls_u32)', fix: '`modprobe cls_u32`, or a kernel with CONFIG_NET_CLS_U32' },
          );
        } else {
          lines.push({ verdict: 'ok', what: 'u32 filter: probed by shaperrd when it starts (needs its qdisc on the device)' });
        }
      } else {
        lines.push({ verdict: 'warn', what: 'kernel qdisc kinds not probed (needs CAP_NET_ADMIN)' });
      }
    } catch (error) {
      const code = error instanceof NetlinkError ? error.code : '';
      lines.push({
        verdict: 'fail',
        what: code === 'ENODEV' ? `no device ${device}${netns ? ` in netns ${netns}` : ''}` : (error as Error).message,
        fix: "set `device:` to your server's upstream interface (ip link)",
      });
    }
  }

  lines.push(...(await checkContainer(config, { device, netns })));
  if (config) lines.push(...(await checkCeiling(config)));
  const log = config?.log ?? (await findPlexLog());
  // The DeviceIds shaperrd keeps: the check presents them too, so it is no new device to Jellyfin or Emby.
  const devices = config ? (await loadState(config.stateFile, () => undefined))?.devices : undefined;
  const sources = config ? await checkSources(config, log, undefined, devices) : undefined;
  lines.push(...(sources?.lines ?? []));
  if (sources && !sources.usesLog) {
    lines.push({ verdict: 'ok', what: 'the Plex log and its debug logging are not needed (the log is not one of the sources)' });
  } else if (!log) {
    lines.push({
      verdict: 'fail',
      what: 'no Plex Media Server log found in the usual places',
      fix: 'set `log:` in the config to "…/Plex Media Server/Logs/Plex Media Server.log"',
    });
  } else {
    try {
      accessSync(log, constants.R_OK);
      lines.push({ verdict: 'ok', what: `log ${log} is readable` });
      lines.push(
        debugLinesSeen(log)
          ? { verdict: 'ok', what: 'Plex debug logging is on (request lines seen)' }
          : {
              verdict: 'warn',
              what: 'no request lines in the log: Plex debug logging looks off',
              fix: 'Plex Web → Settings → General → Enable Plex Media Server debug logging',
            },
      );
    } catch (error) {
      lines.push({
        verdict: 'fail',
        what: `log ${log} is not readable: ${(error as Error).message}`,
        fix: 'give the shaperr user read access (e.g. add it to the plex group)',
      });
    }
  }
  return lines;
}

program
  .command('health')
  .description("the container's HEALTHCHECK: exit 0 while shaperrd runs and its tree is on the device, else 1")
  .action(() => {
    const health = containerHealth(target(program.opts<GlobalOptions>()));
    process.stdout.write(`${health.line}\n`);
    process.exitCode = health.healthy ? EXIT.ok : EXIT.failed;
  });

program
  .command('check')
  .description(
    'verify the environment: privileges, device, kernel qdiscs and filters (and the fallback), event source and Plex token, Plex server, log file, Plex debug logging',
  )
  .action(async () => {
    const lines = await runChecks(program.opts<GlobalOptions>());
    for (const line of lines) process.stdout.write(`${line.verdict.padEnd(5)} ${line.what}${line.fix ? `\n      → ${line.fix}` : ''}\n`);
    process.exitCode = lines.some((line) => line.verdict === 'fail') ? EXIT.failed : EXIT.ok;
  });

program.exitOverride((error) => {
  process.exit(error.exitCode === 0 ? EXIT.ok : EXIT.usage);
});

program.parseAsync().catch((error: unknown) => {
  process.stderr.write(`shaperr: ${(error as Error).message}\n`);
  process.exit(error instanceof UsageError || error instanceof ConfigError ? EXIT.usage : EXIT.failed);
});
