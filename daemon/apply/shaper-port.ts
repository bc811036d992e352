/**
 * The apply stage: the session tracker's decisions reach lib's Shaper through this port, and after a
 * restart the kernel is made to match what the tracker restored. The daemon only counts and logs.
 */
import type { ProgressListener, Shaper } from '../../lib/index.js';
import type { Limits } from '../sessions/policy.js';
import type { ClientShaper, SavedClient } from '../sessions/sessions.js';
import type { DaemonState } from './state.js';

export interface ShaperPortOptions {
  /** The daemon's idle timeout: how fresh the byte counters must be to notice a vanished client. */
  idleMs: number;
  /** Pipes were asked to change (`count` of them): the state file is behind. */
  onChange: (action: 'throttle' | 'release', count: number) => void;
  /** A kernel change for `address` failed, or (no address) what `what` says. */
  onError: (error: unknown, address?: string, what?: string) => void;
}

export interface ReconcileReport {
  /** Pipes found in the kernel when the Shaper opened. */
  adopted: number;
  /** Adopted pipes no saved or rebuilt session explained: removed. */
  orphansRemoved: number;
}

/** The saved sessions, those rebuilt from the recent log taking the place of a saved entry for the same address. */
export function clientsToRestore(saved: DaemonState | undefined, recent: readonly SavedClient[]): SavedClient[] {
  const rebuilt = new Set(recent.map((client) => client.address));
  return [...(saved?.clients ?? []).filter((client) => !rebuilt.has(client.address)), ...recent];
}

export class ShaperPort implements ClientShaper {
  /** Counters a twelfth of the idle timeout old (1–10 s) notice a vanished client in time; fresher ones
   * would cost a dump of every class each second (12 % of a core at 5,000 clients). */
  private readonly counterAge: { maxAgeMs: number };

  constructor(
    private readonly shaper: Shaper,
    private readonly options: ShaperPortOptions,
  ) {
    this.counterAge = { maxAgeMs: Math.min(10_000, Math.max(1000, options.idleMs / 12)) };
  }

  async throttle(address: string, limits: Limits): Promise<unknown> {
    this.options.onChange('throttle', 1);
    return this.shaper.throttle(address, limits);
  }

  async release(address: string): Promise<unknown> {
    this.options.onChange('release', 1);
    return this.shaper.release(address);
  }

  async throttleAll(entries: readonly { address: string; limits: Limits }[]): Promise<readonly { error?: Error }[]> {
    this.options.onChange('throttle', entries.length);
    return this.shaper.throttleAll(entries);
  }

  bytesSent(address: string): number | undefined {
    return this.shaper.bytesSent(address, this.counterAge);
  }

  /**
   * After a restart: the kernel objects were adopted by Shaper.open; make them match `clients` (what the
   * tracker restored). Pipes none of them explains are orphans and go. Thousands of them (a reboot emptied
   * the kernel) take seconds: done in chunks, with progress.
   */
  async reconcile(clients: readonly SavedClient[], onProgress: ProgressListener): Promise<ReconcileReport> {
    const adopted = new Set(this.shaper.clients().map((client) => client.address));
    const explained = new Set(clients.map((client) => client.address));
    const orphans = [...adopted].filter((address) => !explained.has(address));
    for (const address of orphans) await this.shaper.release(address).catch((error: unknown) => this.options.onError(error, address));
    // Every saved client, adopted or not: the kernel holds its share, the state file what it wants. One
    // rebalance for all of them.
    const outcomes = await this.shaper
      .throttleAll(
        clients.map((client) => ({ address: client.address, limits: client.limits })),
        onProgress,
      )
      .catch((error: unknown) => {
        this.options.onError(error, undefined, 'restoring the saved pipes failed');
        return [];
      });
    outcomes.forEach((outcome, index) => {
      if (outcome.error) this.options.onError(outcome.error, clients[index]!.address);
    });
    return { adopted: adopted.size, orphansRemoved: orphans.length };
  }
}
