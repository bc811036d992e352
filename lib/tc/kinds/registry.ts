/**
 * Every tc kind the library speaks, one line each. The export name is the kernel's name for the kind
 * (TCA_KIND); the entry says which roles it plays (qdisc, class, filter). Specs, read-back types,
 * request building, decoding and tc command lines all derive from this list (lib/tc/registry.ts).
 */
export { htb } from './htb.js';
export { sfq } from './sfq.js';
export { bfifo, pfifo } from './fifo.js';
export { tbf } from './tbf.js';
export { u32 } from './u32.js';
export { fq_codel } from './fq_codel.js';
export { matchall } from './matchall.js';
