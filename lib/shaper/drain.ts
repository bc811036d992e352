/**
 * Removing shaperr's objects without dropping what they hold queued: streams in flight would stall on
 * retransmission timeouts for a second or more if up to a few hundred KB of their flows vanished. Used by
 * a Shaper's release and teardown, and by clearShaper.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Operation, TcClass } from '../tc/types.js';
import type { ShaperKernel } from './kernel.js';
import { isShaperRoot, SHAPER_ROOT, SHAPER_SERVER_CLASS } from './layout.js';

/** A queue draining at the server's limits is given up on after this long, and removed even if not empty. */
const DRAIN_LIMIT_MS = 2000;
const DRAIN_POLL_MS = 5;

/** Resolves once `queued()` reads 0, or after DRAIN_LIMIT_MS. */
export async function drained(queued: () => number): Promise<void> {
  const deadline = performance.now() + DRAIN_LIMIT_MS;
  while (queued() > 0 && performance.now() < deadline) await sleep(DRAIN_POLL_MS);
}

/**
 * Deletes shaperr's root qdisc as release does one pipe: the client filters go first (`unsteer`: new
 * packets leave unshaped), busy pipes may borrow up to the server rate (`open`, guarantees unchanged), and
 * the root goes once nothing is queued, or after DRAIN_LIMIT_MS. Nothing queued: the root goes at once.
 */
export async function removeRootDraining(
  kernel: ShaperKernel,
  apply: (operations: Operation[]) => void,
  { open, unsteer }: { open: (busy: readonly TcClass[]) => Operation[]; unsteer: () => Operation[] },
): Promise<void> {
  const queued = (): number => {
    const root = kernel.rootQdisc();
    return isShaperRoot(root) ? (root!.statistics?.backlog ?? 0) : 0;
  };
  if (queued() > 0) {
    const busy = kernel.classes().filter((tcClass) => tcClass.parent === SHAPER_SERVER_CLASS && (tcClass.statistics?.backlog ?? 0) > 0);
    apply([...unsteer(), ...open(busy)]);
    await drained(queued);
  }
  apply([{ op: 'delete', qdisc: { handle: SHAPER_ROOT }, ifPresent: true }]);
}
