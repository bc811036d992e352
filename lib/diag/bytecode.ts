/**
 * The filter a sock_diag dump carries (INET_DIAG_REQ_BYTECODE), so that the kernel sends only the
 * sockets asked for. The program is a list of inet_diag_bc_op: each tests the socket and jumps forward
 * by `yes` or by `no` bytes; the socket matches when a jump lands exactly on the end of the program, and
 * not when one lands 4 bytes past it. The kernel checks every jump when the dump starts.
 *
 * What is built here: "local port == P" and "peer address is one of A, B, …", together meaning both.
 *
 *   [local port P]  S_COND, hostcond of no family and port P (12 bytes): yes → next, no → reject
 *   peer 1          D_COND, hostcond of the peer's family, full prefix, any port (16 bytes IPv4, 28 IPv6):
 *                   yes → the JMP after it, no → peer 2
 *                   JMP (4 bytes): → the end (match)
 *   …
 *   peer n          D_COND: yes → the end (match), no → reject
 *
 * How many peers fit: the program is the payload of one netlink attribute, whose length is 16 bits, and a
 * reject jump from the first test (a 16-bit `no`) spans the whole program plus 4 bytes. Both hold the
 * program to MAX_BYTECODE_BYTES (65,528, the largest multiple of 4 with room for that jump). A peer takes
 * 20 bytes (IPv4) or 32 (IPv6) with its JMP, the last one 4 less, the port 12: at most 3,276 IPv4 or
 * 2,047 IPv6 peers in one dump, with or without a port. An IPv4 peer also matches a dual-stack socket's
 * IPv4-mapped peer: the kernel compares the mapped address for an IPv4 condition.
 */
import type { ClientAddress } from '../address.js';
import { ShaperrInputError } from '../wire/errors.js';
import { bytes, s32, struct, u16, u8 } from '../wire/struct.js';
import { addressFamilyCode } from './inet-diag.js';

/** The largest program: a multiple of 4 whose reject jump (its length + 4) still fits 16 bits. */
export const MAX_BYTECODE_BYTES = 65_528;

const INET_DIAG_BC_JMP = 1;
const INET_DIAG_BC_S_COND = 7;
const INET_DIAG_BC_D_COND = 8;
const AF_UNSPEC = 0;
/** hostcond.port that matches any port. */
const ANY_PORT = -1;

/** struct inet_diag_bc_op: a test, and how far to jump when it holds (`yes`) or not (`no`). */
const bcOp = struct({ code: u8, yes: u8, no: u16 });
/** struct inet_diag_hostcond without its address, which follows it (4 or 16 bytes, none for AF_UNSPEC). */
const hostcond = struct({ family: u8, prefixLength: u8, pad: bytes(2), port: s32 });

export interface SocketFilter {
  localPort?: number;
  /** The socket's peer is one of these. An empty list is no test at all: the caller asks nothing then. */
  peers?: readonly ClientAddress[];
}

interface Instruction {
  code: number;
  size: number;
  /** Where `no` jumps: the next instruction but one (past a peer's JMP), the end, or past the end. */
  no: 'skip-jump' | 'match' | 'reject';
  condition?: { family: number; prefixLength: number; port: number; address?: number[] };
}

function hostTest(code: number, condition: Required<Instruction>['condition'], no: Instruction['no']): Instruction {
  return { code, size: bcOp.size + hostcond.size + (condition.address?.length ?? 0), no, condition };
}

function instructions({ localPort, peers = [] }: SocketFilter): Instruction[] {
  const program: Instruction[] = [];
  if (localPort !== undefined) program.push(hostTest(INET_DIAG_BC_S_COND, { family: AF_UNSPEC, prefixLength: 0, port: localPort }, 'reject'));
  peers.forEach((peer, index) => {
    const last = index === peers.length - 1;
    const condition = { family: addressFamilyCode[peer.family], prefixLength: peer.bytes.length * 8, port: ANY_PORT, address: peer.bytes };
    program.push(hostTest(INET_DIAG_BC_D_COND, condition, last ? 'reject' : 'skip-jump'));
    if (!last) program.push({ code: INET_DIAG_BC_JMP, size: bcOp.size, no: 'match' });
  });
  return program;
}

/**
 * The program for `filter`, or undefined when it asks for nothing (every socket). Throws
 * ShaperrInputError when it would not fit MAX_BYTECODE_BYTES.
 */
export function compileFilter(filter: SocketFilter): Uint8Array | undefined {
  const program = instructions(filter);
  if (program.length === 0) return undefined;
  const length = program.reduce((sum, instruction) => sum + instruction.size, 0);
  if (length > MAX_BYTECODE_BYTES) {
    const peers = filter.peers?.length ?? 0;
    throw new ShaperrInputError(
      `a filter on ${peers} peer addresses takes ${length} bytes, and the kernel takes at most ${MAX_BYTECODE_BYTES} (3,276 IPv4 or 2,047 IPv6 peers): split the list across several calls`,
    );
  }
  const out = new Uint8Array(length);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const { code, size, no, condition } of program) {
    const rest = length - at;
    const jump = no === 'skip-jump' ? size + bcOp.size : no === 'match' ? rest : rest + 4;
    bcOp.encodeInto(view, at, { code, yes: size, no: jump });
    if (condition) {
      hostcond.encodeInto(view, at + bcOp.size, condition);
      if (condition.address) out.set(condition.address, at + bcOp.size + hostcond.size);
    }
    at += size;
  }
  return out;
}
