/** Typed errors: what went wrong, on which object, in the kernel's own words, and what it usually means. */
import { errnoName } from '../../native-bindings/netlink-socket.js';

/** What a request was about, for error messages and warnings. */
export interface RequestContext {
  /** e.g. `add class`, `delete filter`, `list qdiscs`. */
  operation: string;
  /** e.g. `class 1:10 (htb) on dev eth0`. */
  object: string;
  /**
   * The protocol layer's reading of a refusal (tc: which module a missing kind needs); undefined, or no
   * hint, falls back to the errno's generic meaning.
   */
  explain?: (refusal: { code: string; kernelMessage: string | undefined }) => { hint?: string | undefined; unknownKind?: boolean } | undefined;
}

function errnoHint(code: string): string | undefined {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      return 'needs root or CAP_NET_ADMIN';
    case 'EEXIST':
      return 'it already exists';
    case 'ENOENT':
      return 'it does not exist (or its parent does not)';
    case 'ENODEV':
      return 'no such network device';
    case 'EBUSY':
      return 'it is in use (e.g. a filter still points at the class)';
    case 'EINVAL':
      return 'the kernel rejected the parameters';
    case 'ENOBUFS':
      return 'the netlink receive buffer overflowed; replies were lost';
    case 'EAGAIN':
      return 'no reply from the kernel within the receive timeout';
    default:
      return undefined;
  }
}

/** A request the kernel refused (or could not answer). */
export class NetlinkError extends Error {
  override readonly name = 'NetlinkError';
  /** The errno name: EEXIST, ENOENT, EPERM, EINVAL, … */
  readonly code: string;
  readonly operation: string;
  readonly object: string;
  readonly hint: string | undefined;
  /** True when the kernel refused because it has no such kind (module missing), as the context explained it. */
  readonly unknownKind: boolean;

  constructor(
    readonly errno: number,
    context: RequestContext,
    /** The kernel's extended-ACK text, when it gave one. */
    readonly kernelMessage?: string,
  ) {
    const code = errnoName(errno);
    const explained = context.explain?.({ code, kernelMessage });
    const hint = explained?.hint ?? errnoHint(code);
    const said = kernelMessage ? `: kernel says "${kernelMessage}"` : '';
    super(`${context.operation} ${context.object} failed with ${code}${said}${hint ? ` — ${hint}` : ''}`);
    this.code = code;
    this.operation = context.operation;
    this.object = context.object;
    this.hint = hint;
    this.unknownKind = explained?.unknownKind ?? false;
  }
}

/** A kernel warning carried by a successful ACK (e.g. "quantum of class 10010 is big"). */
export interface KernelWarning {
  operation: string;
  object: string;
  message: string;
}

/** Bad input from a caller: a rate, size, handle, address or option that cannot be used. */
export class ShaperrInputError extends Error {
  override readonly name = 'ShaperrInputError';
}
