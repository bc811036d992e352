/**
 * One shaperrd per device: the lock is an abstract unix socket named after the device, bound inside the
 * device's network namespace. The kernel drops it when the holder exits or is killed, and anything in
 * that namespace (a second shaperrd, another container sharing it, `shaperr clear`) sees it.
 */
import { type AbstractLock, tryAbstractLock } from '../../native-bindings/abstract-lock.js';

export interface DeviceTarget {
  device: string;
  netns?: string;
}

const lockName = ({ device }: DeviceTarget): string => `shaperr/device/${device}`;

export const describeTarget = ({ device, netns }: DeviceTarget): string => `${device}${netns ? ` (netns ${netns})` : ''}`;

export class DeviceLockedError extends Error {
  override readonly name = 'DeviceLockedError';
  constructor(target: DeviceTarget, doing: string) {
    super(`another shaperrd is shaping ${describeTarget(target)} (it holds the lock @${lockName(target)}): ${doing}`);
  }
}

/** Takes the device's lock, or throws DeviceLockedError saying what was refused. */
export function lockDevice(target: DeviceTarget, refusing: string): AbstractLock {
  const lock = tryAbstractLock(lockName(target), target.netns);
  if (!lock) throw new DeviceLockedError(target, refusing);
  return lock;
}
