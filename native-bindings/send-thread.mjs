/*
 * The thread behind BackgroundSender (background-sender.ts): it runs send() for the datagrams the main
 * thread queues in shared slots, in order, so that the main thread builds the next datagram and reads
 * ACKs while the kernel handles this one inside send(). Plain JS: it runs as is from the sources and
 * from dist, without a TypeScript loader. Everything it shares is in `workerData`.
 */
import { workerData } from 'node:worker_threads';
import koffi from 'koffi';

const send = koffi.load('libc.so.6').func('intptr_t send(int fd, void *buf, size_t len, int flags)');
const { fd, control, slots, at } = workerData;
const state = new Int32Array(control);
const buffers = slots.map((slot) => new Uint8Array(slot));

Atomics.store(state, at.ready, 1);
let sent = 0;
for (;;) {
  const queued = Atomics.load(state, at.queued);
  if (Atomics.load(state, at.stop)) break;
  if (queued === sent) {
    Atomics.wait(state, at.queued, queued);
    continue;
  }
  const slot = sent & (buffers.length - 1); // a power of two: right after the counter wraps too
  const result = Number(send(fd, buffers[slot], state[at.lengths + slot], 0));
  state[at.errnos + slot] = result < 0 ? koffi.errno() : 0;
  sent = (sent + 1) | 0; // int32, as the shared counters
  Atomics.store(state, at.sent, sent);
  Atomics.notify(state, at.sent);
}
