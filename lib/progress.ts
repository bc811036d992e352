/** Progress of a long operation (restoring, repairing or clearing thousands of pipes). */
export interface Progress {
  done: number;
  total: number;
}

export type ProgressListener = (progress: Progress) => void;

/**
 * Runs `work` over `items` a chunk at a time, yielding to the event loop between chunks so a daemon stays
 * responsive (its status page, its log tail) during a long operation, and reports progress after each.
 */
export async function inChunks<T>(items: readonly T[], work: (chunk: readonly T[]) => unknown, onProgress?: ProgressListener, chunkSize = 250): Promise<void> {
  onProgress?.({ done: 0, total: items.length });
  for (let from = 0; from < items.length; from += chunkSize) {
    if (from > 0) await new Promise((resolve) => setImmediate(resolve));
    await work(items.slice(from, from + chunkSize));
    onProgress?.({ done: Math.min(from + chunkSize, items.length), total: items.length });
  }
}
