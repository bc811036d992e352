/**
 * The state file: session table, what is applied, and the log position — written atomically (temp file,
 * fsync, rename) so a crash mid-write leaves the previous state, never a torn one.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { CEILING_REASONS } from '../ceiling/controller.js';

const stateSchema = z.object({
  version: z.literal(1),
  device: z.string(),
  savedAt: z.string(),
  clients: z.array(
    z.object({
      address: z.string(),
      sessions: z.array(z.string()),
      limits: z.object({ rate: z.number(), ceil: z.number() }),
      user: z.string().optional(),
      since: z.string().optional(),
    }),
  ),
  log: z.object({ path: z.string(), inode: z.union([z.number(), z.string()]), offset: z.number() }).optional(),
  /**
   * The DeviceId shaperr presents to each Jellyfin or Emby server ("jellyfin http://…" → id): made once at
   * random and kept, so neither a reconnect nor a restart adds a device to the server's list.
   */
  devices: z.record(z.string(), z.string()).optional(),
  /**
   * The automatic server ceiling (server.rate: auto): the last good rate (bits/s), where a restart starts,
   * and what `shaperr status` shows of it.
   */
  ceiling: z
    .object({
      rate: z.number().positive(),
      min: z.number(),
      max: z.number(),
      signal: z.enum(['plex', 'probe']),
      changes: z.number(),
      capacity: z.number().optional(),
      cause: z.string().optional(),
      lastChange: z.object({ at: z.string(), from: z.number(), to: z.number(), reason: z.enum(CEILING_REASONS), why: z.string() }).optional(),
    })
    .optional(),
});

export type DaemonState = z.infer<typeof stateSchema>;

/** Reads the state file; a missing file is a fresh start, an unreadable one is reported and ignored. */
export async function loadState(path: string, warn: (message: string) => void): Promise<DaemonState | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') warn(`state file ${path} cannot be read (${(error as Error).message}); starting fresh`);
    return undefined;
  }
  try {
    return stateSchema.parse(JSON.parse(text));
  } catch (error) {
    warn(`state file ${path} is not valid (${(error as Error).message.split('\n')[0]}); starting fresh — the kernel state is adopted instead`);
    return undefined;
  }
}

export async function saveState(path: string, state: DaemonState): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${process.pid}.tmp`;
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.chmod(0o600); // the mode above applies only to a new file, not to a leftover temp file
    await file.writeFile(`${JSON.stringify(state, null, 2)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
}
