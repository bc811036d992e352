/**
 * A second thread that runs send() on a netlink socket. rtnetlink handles a datagram inside send(), so a
 * batch of many datagrams spends most of its time there; with the sends on this thread, the caller writes
 * the next datagram and reads the ACKs of the sent ones meanwhile. The caller still waits for the whole
 * batch: its interface stays synchronous.
 */
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { Worker } from 'node:worker_threads';

/** Datagrams in flight at once (a power of two): enough that the thread does not wait for the caller. */
const SLOTS = 4;
/** Offsets into the shared Int32Array: counters, flags, then a length and an errno per slot. */
const at = { queued: 0, sent: 1, stop: 2, ready: 3, lengths: 4, errnos: 4 + SLOTS } as const;

/** The thread's script, from the sources (native-bindings/) or from dist/native-bindings/. */
const scriptCandidates = [new URL('./send-thread.mjs', import.meta.url), new URL('../../native-bindings/send-thread.mjs', import.meta.url)];

export interface BackgroundSender {
  /** The thread starts in the background; until it is up (or once it failed), send in the foreground. */
  readonly ready: boolean;
  /** Queues a copy of `datagram` (at most the slot size), waiting while every slot is in flight. */
  queue(datagram: Uint8Array): void;
  /**
   * Waits until at least `count` of the datagrams queued since the last endRound() are sent (the kernel
   * has handled them and queued their ACKs), and returns how many are. Fewer than `count`: the thread did
   * not answer in time and is stopped; the rest will never be sent.
   */
  waitSent(count: number): number;
  /** The send() errno of datagram `index` of this round (0: sent), once waitSent counted it. */
  errno(index: number): number;
  /** Starts a new round, after waiting for the sends still in flight. */
  endRound(): void;
  close(): void;
}

/**
 * Starts the thread for `fd`, with slots of `slotBytes`. Each wait for it is bounded by `timeoutMs`: a
 * thread that does not answer in time is stopped, and `ready` stays false from then on.
 */
export function startBackgroundSender(fd: number, slotBytes: number, timeoutMs: number): BackgroundSender {
  const control = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT * (at.errnos + SLOTS));
  const state = new Int32Array(control);
  const slots = Array.from({ length: SLOTS }, () => new SharedArrayBuffer(slotBytes));
  const buffers = slots.map((slot) => new Uint8Array(slot));
  // Looked for here, not at import: only a process that sends a batch of several datagrams needs it.
  const script = scriptCandidates.find((url) => existsSync(url));
  let broken = !script;
  // No loader flags: the script is plain JS, and a test run's TypeScript loader would only slow its start.
  const worker = script ? new Worker(script, { workerData: { fd, control, slots, at }, execArgv: [] }) : undefined;
  worker?.unref();
  worker?.on('error', () => {
    broken = true;
  });
  worker?.on('exit', () => {
    broken = true;
  });
  /** Counters since the thread started (int32, as the shared ones); a round starts at `roundStart`. */
  let queued = 0;
  let roundStart = 0;
  /** errnos of this round's sent datagrams, read from their slots before the slots are reused. */
  const errnos: number[] = [];

  const sentSoFar = () => Atomics.load(state, at.sent);
  /** Records the errnos of the datagrams sent since the last call; returns how many of the round are sent. */
  const collect = (): number => {
    const sent = (sentSoFar() - roundStart) | 0;
    for (let index = errnos.length; index < sent; index++) errnos.push(state[at.errnos + ((roundStart + index) & (SLOTS - 1))]!);
    return sent;
  };
  const stop = () => {
    broken = true;
    Atomics.store(state, at.stop, 1);
    Atomics.notify(state, at.queued);
  };

  const sender: BackgroundSender = {
    get ready() {
      return !broken && Atomics.load(state, at.ready) === 1;
    },
    queue(datagram) {
      if (broken) return; // never sent: waitSent() stops short of it
      if (datagram.byteLength > slotBytes) throw new RangeError(`datagram of ${datagram.byteLength} bytes does not fit a ${slotBytes}-byte slot`);
      const index = (queued - roundStart) | 0;
      // The slot's previous datagram must be sent (and its errno read) before it is overwritten.
      if (index >= SLOTS && sender.waitSent(index - SLOTS + 1) < index - SLOTS + 1) return;
      const slot = queued & (SLOTS - 1);
      buffers[slot]!.set(datagram);
      state[at.lengths + slot] = datagram.byteLength;
      queued = (queued + 1) | 0;
      Atomics.store(state, at.queued, queued);
      Atomics.notify(state, at.queued);
    },
    waitSent(count) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const sent = collect();
        if (sent >= count || broken) return sent;
        const left = deadline - performance.now();
        if (left <= 0 || Atomics.wait(state, at.sent, (roundStart + sent) | 0, left) === 'timed-out') {
          stop();
          void worker?.terminate();
          return collect();
        }
      }
    },
    errno(index) {
      return errnos[index] ?? constants.errno.ETIMEDOUT;
    },
    endRound() {
      sender.waitSent((queued - roundStart) | 0);
      errnos.length = 0;
      roundStart = queued;
    },
    close: stop,
  };
  return sender;
}
