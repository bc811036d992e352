/**
 * shaperrd with cake-autorate's rules driving its automatic ceiling (scenario 9's variant e): the same
 * daemon, signal and kernel path as the shipped one, only the rules differ. Run with tsx inside the Plex
 * host's namespace: `node --import tsx benchmarks/ceiling-rules-daemon.ts --config FILE`. Logs as shaperrd
 * does (JSON lines on stdout); SIGTERM stops it and removes its rules.
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadConfig } from '../daemon/config.js';
import { Shaperrd } from '../daemon/shaperrd.js';
import { CakeAutorateRules } from './cake-autorate-rules.js';

const { values } = parseArgs({ options: { config: { type: 'string' } } });
if (!values.config) throw new Error('usage: ceiling-rules-daemon.ts --config FILE (a shaperr config with server: { rate: auto })');
const config = loadConfig(values.config);
if (config.server.rate !== 'auto') throw new Error(`${values.config}: server.rate must be auto for other ceiling rules to drive it`);
const logger = pino({ level: 'info', base: { service: 'shaperrd', ceilingRules: 'cake-autorate' } });
const daemon = new Shaperrd({ config, logger, ceilingRules: (bounds, start) => new CakeAutorateRules(bounds, start) });
await daemon.start();
// Nothing else may hold the event loop open (see cli.ts): this keeps it running until a signal.
const alive = setInterval(() => undefined, 2 ** 31 - 1);
process.once('SIGTERM', () => {
  daemon.stop().then(
    () => {
      clearInterval(alive);
      process.exit(0);
    },
    (error: unknown) => {
      logger.error({ err: (error as Error).message }, 'error while stopping');
      process.exit(1);
    },
  );
});
