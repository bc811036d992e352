/**
 * The apply stage: the session tracker's decisions reach lib's Shaper through this port, and after a
 * restart the kernel is made to match what the tracker restored. The daemon only counts and logs.
 */
import type { ProgressListener, Shaper } from '../../lib/index.js';
import type { Limits } from '../sessions/policy.js';
import type { ClientShaper, SavedClient } from '../sessions/sessions.js';
import type { PlaybackEvent } from '../sources/source.js';
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

/**
 * Gateway mode: which server's port each pipe's filter matches. The pipe follows the oldest session heard
 * playing at its address: a second server's stream to the same address meanwhile is not matched, and when
 * the first one stops the filter moves to the other's port. Pipes adopted after a restart keep their port
 * until a session is heard for them.
 */
class GatewayPorts {
  /** Per address, each live session's server port, oldest first. */
  private readonly heard = new Map<string, Map<string, number>>();
  /** Per address, the port of a pipe adopted from the kernel. */
  private readonly adopted = new Map<string, number>();

  /** Notes an event's server port; returns the address's port when the event changed it. */
  note(event: PlaybackEvent): number | undefined {
    const { address, sessionKey, publicPort } = event;
    if (publicPort === undefined) return undefined;
    const before = this.portOf(address);
    const sessions = this.heard.get(address);
    if (event.kind === 'stop') {
      sessions?.delete(sessionKey);
      if (sessions?.size === 0) this.heard.delete(address);
    } else {
      const live = sessions ?? new Map<string, number>();
      live.set(sessionKey, publicPort);
      this.heard.set(address, live);
    }
    const after = this.portOf(address);
    return after !== before ? after : undefined;
  }

  portOf(address: string): number | undefined {
    return this.heard.get(address)?.values().next().value ?? this.adopted.get(address);
  }

  adopt(address: string, port: number): void {
    this.adopted.set(address, port);
  }

  /** The pipe is gone: its sessions have ended. */
  forget(address: string): void {
    this.heard.delete(address);
    this.adopted.delete(address);
  }
}

export class ShaperPort implements ClientShaper {
  /** Counters a twelfth of the idle timeout old (1–10 s) notice a vanished client in time; fresher ones
   * would cost a dump of every class each second (12 % of a core at 5,000 clients). */
  private readonly counterAge: { maxAgeMs: number };
  private readonly ports = new GatewayPorts();

  constructor(
    private readonly shaper: Shaper,
    private readonly options: ShaperPortOptions,
  ) {
    this.counterAge = { maxAgeMs: Math.min(10_000, Math.max(1000, options.idleMs / 12)) };
  }

  /**
   * Gateway mode: each event says which server's port the stream at its address comes from (see
   * GatewayPorts); a pipe whose port changes has its filter pointed at the new one.
   */
  noteEvent(event: PlaybackEvent): void {
    const port = this.ports.note(event);
    if (port === undefined) return;
    this.shaper.setSourcePort(event.address, port).catch((error: unknown) => this.options.onError(error, event.address));
  }

  /** The limits with the address's server port, when gateway mode knows it. */
  private withPort(address: string, limits: Limits) {
    const sourcePort = this.ports.portOf(address);
    return sourcePort === undefined ? limits : { ...limits, sourcePort };
  }

  async throttle(address: string, limits: Limits): Promise<unknown> {
    this.options.onChange('throttle', 1);
    return this.shaper.throttle(address, this.withPort(address, limits));
  }

  async release(address: string): Promise<unknown> {
    this.options.onChange('release', 1);
    this.ports.forget(address);
    return this.shaper.release(address);
  }

  async throttleAll(entries: readonly { address: string; limits: Limits }[]): Promise<readonly { error?: Error }[]> {
    this.options.onChange('throttle', entries.length);
    return this.shaper.throttleAll(entries.map(({ address, limits }) => ({ address, limits: this.withPort(address, limits) })));
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
    const kernel = this.shaper.clients();
    for (const client of kernel) if (client.sourcePort !== undefined) this.ports.adopt(client.address, client.sourcePort);
    const adopted = new Set(kernel.map((client) => client.address));
    const explained = new Set(clients.map((client) => client.address));
    const orphans = [...adopted].filter((address) => !explained.has(address));
    for (const address of orphans) await this.shaper.release(address).catch((error: unknown) => this.options.onError(error, address));
    // Every saved client, adopted or not: the kernel holds its share, the state file what it wants. One
    // rebalance for all of them.
    const outcomes = await this.shaper
      .throttleAll(
        clients.map((client) => ({ address: client.address, limits: this.withPort(client.address, client.limits) })),
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
