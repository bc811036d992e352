#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size --no-opt
// shaperrd waits on the kernel, not on JavaScript: a 1 MiB young generation (instead of up to 16) and no
// optimizing compiler save ~45 MB of RSS at 5,000 clients; the parser still reads >1.5 M lines/s.
/** `shaperrd`: command line, logging and signals around the Shaperrd pipeline. */
import { Command, InvalidArgumentError } from 'commander';
import { pino } from 'pino';
import { ConfigError, exposedSecretsWarning, loadConfig, type ShaperrConfig } from './config.js';
import { DeviceLockedError } from './apply/device-lock.js';
import { ReloadRefused, Shaperrd } from './shaperrd.js';
import { hasNetAdmin, NET_ADMIN_MISSING } from './support/capabilities.js';
import { localTimeField } from './support/local-time.js';

const program = new Command()
  .name('shaperrd')
  .description('Throttles each playing Plex client to its own pipe, from the Plex Media Server log.')
  .option('-c, --config <file>', 'configuration file (YAML)', '/etc/shaperr/shaperr.yaml')
  .option('--log <file>', 'Plex Media Server log to follow (overrides the config)')
  .option('--dry-run', 'parse and decide, print the tc commands it would apply, touch nothing')
  .option('--demo', 'run the sandboxed demo: own network namespaces, a bundled Plex log and a Plex test server, real traffic (needs root)')
  .option(
    '--duration <seconds>',
    'length of the demo',
    (value) => {
      const seconds = Number(value);
      if (!Number.isInteger(seconds) || seconds < 8 || seconds > 3600) throw new InvalidArgumentError('expected whole seconds from 8 to 3600');
      return seconds;
    },
    30,
  )
  .option(
    '--log-level <level>',
    'trace, debug, info, warn or error',
    (value) => {
      if (!['trace', 'debug', 'info', 'warn', 'error'].includes(value)) throw new InvalidArgumentError('expected trace, debug, info, warn or error');
      return value;
    },
    'info',
  )
  .addHelpText(
    'after',
    '\nSignals: SIGTERM/SIGINT stop (removing the rules unless keepRulesOnExit), SIGHUP reloads the config.\nExit codes: 0 stopped cleanly, 1 runtime failure, 2 bad configuration or arguments.',
  );

async function demo(durationSeconds: number): Promise<void> {
  const { describeSummary, runDemo } = await import('./demo/demo.js'); // not loaded by the daemon proper
  const summary = await runDemo({ durationSeconds, tty: process.stdout.isTTY === true, write: (text) => process.stdout.write(text) });
  process.stdout.write(describeSummary(summary));
  process.stdout.write(`demo-summary ${JSON.stringify(summary)}\n`);
  const ok =
    summary.remote.withinTenPercent &&
    summary.plexApp.withinTenPercent &&
    !summary.lan.throttled &&
    summary.seekStorm.kernelChanges <= 2 &&
    summary.leftoverNamespaces.length === 0;
  process.exit(ok ? 0 : 1);
}

async function main(): Promise<void> {
  program.parse();
  const options = program.opts<{ config: string; log?: string; dryRun?: boolean; logLevel: string; demo?: boolean; duration: number }>();
  if (options.demo) return demo(options.duration);
  const logger = pino({ level: options.logLevel, base: { service: 'shaperrd' }, timestamp: localTimeField });
  let config: ShaperrConfig;
  try {
    config = loadConfig(options.config);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`shaperrd: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  if (!options.dryRun && !hasNetAdmin()) {
    process.stderr.write(`shaperrd: ${NET_ADMIN_MISSING}\n`);
    process.exit(1);
  }
  const exposed = exposedSecretsWarning(options.config, config);
  if (exposed) logger.warn(exposed);
  const daemon = new Shaperrd({ config, logger, dryRun: options.dryRun ?? false, ...(options.log ? { logPath: options.log } : {}) });
  try {
    await daemon.start();
  } catch (error) {
    if (!(error instanceof DeviceLockedError)) throw error;
    process.stderr.write(`shaperrd: ${error.message}\n`);
    process.exit(2);
  }

  // Runs until a signal stops it. With the Plex API as the only source nothing else holds the event loop
  // open while Plex is unreachable (the source's retry timers are unref'd), and node would exit with 0.
  setInterval(() => undefined, 2 ** 31 - 1);

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    daemon.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: (error as Error).message }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // One line per reload that does not take effect, with its one reason: nothing of the new config is in force.
  const reloadNotDone = (error: unknown): void =>
    logger.error(`${error instanceof ReloadRefused ? 'reload refused' : 'reload failed'}: ${(error as Error).message}; kept the old configuration`);
  process.on('SIGHUP', () => {
    try {
      void daemon.reload(loadConfig(options.config)).catch(reloadNotDone);
    } catch (error) {
      reloadNotDone(error);
    }
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`shaperrd: ${(error as Error).message}\n`);
  process.exit(1);
});
