/** The shipped daemon (`dist/daemon/cli.js` with its shebang's V8 flags, as systemd runs it), for the benchmarks. */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const DAEMON = fileURLToPath(new URL('../dist/daemon/cli.js', import.meta.url));

export interface ShippedDaemon {
  pid: number;
  /** Where its status page listens, when the config has one (as the daemon logged it at start). */
  statusUrl?: string;
  stop(): Promise<void>;
}

/**
 * Writes `config` to `dir`/shaperr.yaml and starts the daemon on it; resolves once it has started.
 * `nodeFlags` replaces the shebang's flags (to compare V8 settings).
 */
export async function startShippedDaemon(config: object, dir: string, nodeFlags = shippedNodeFlags()): Promise<ShippedDaemon> {
  writeFileSync(join(dir, 'shaperr.yaml'), JSON.stringify(config)); // JSON is YAML
  const daemon = spawn(process.execPath, [...nodeFlags, DAEMON, '--config', join(dir, 'shaperr.yaml'), '--log-level', 'info'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  daemon.stdout!.on('data', (data: Buffer) => (output += data.toString()));
  const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
  const stop = async () => {
    daemon.kill('SIGTERM');
    await exited;
  };
  await waitFor(() => output.includes('"shaperrd started"'), 10_000, 'shaperrd did not start').catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  const statusLine = output.split('\n').find((line) => line.includes('"status page and /metrics listening"'));
  const statusUrl: string | undefined = statusLine ? JSON.parse(statusLine).url : undefined;
  return { pid: daemon.pid!, ...(statusUrl ? { statusUrl } : {}), stop };
}

/** The node flags the shipped bin's `#!/usr/bin/env -S node …` line passes, so the daemon runs as installed. */
export const shippedNodeFlags = (): string[] => readFileSync(DAEMON, 'utf8').split('\n', 1)[0]!.split(' ').slice(3);

export async function waitFor(ready: () => boolean, timeoutMs: number, failure: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!ready()) {
    if (performance.now() > deadline) throw new Error(`${failure} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
