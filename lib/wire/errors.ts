/** Typed errors: what went wrong, on which object, in the kernel's own words, and what it usually means. */
import { errnoName } from '../../native-bindings/netlink-socket.js';

/** What a request was about, for error messages and warnings. */
export interface RequestContext {
  /** e.g. `add class`, `delete filter`, `list qdiscs`. */
  operation: string;
  /** e.g. `class 1:10 (htb) on dev eth0`. */
  object: string;
  /** The tc kind involved, so "unknown kind" errors can name the missing module. */
  kind?: string;
  /** `qdisc`, `class` or `filter`: which kernel module prefix a missing kind maps to. */
  family?: 'qdisc' | 'class' | 'filter';
}

const modulePrefix = { qdisc: 'sch_', class: 'sch_', filter: 'cls_' } as const;

/** The kernel's words for a kind it does not have (qdisc_create, tcf_proto_lookup_ops). */
const UNKNOWN_KIND = /kind is unknown|classifier not found|unknown filter/i;

function isUnknownKind(code: string, kernelMessage: string | undefined): boolean {
  return code === 'ENOENT' && kernelMessage !== undefined && UNKNOWN_KIND.test(kernelMessage);
}

/** qdisc_change's words for a kind without a change operation (sfq on many kernels, 6.1 among them). */
const NO_CHANGE = /change operation not supported/i;

function explain(code: string, kernelMessage: string | undefined, context: RequestContext): string | undefined {
  if (isUnknownKind(code, kernelMessage) && context.kind) {
    const what = context.family === 'filter' ? 'filter' : 'qdisc';
    return `the kernel has no '${context.kind}' ${what} (module ${modulePrefix[context.family ?? 'qdisc']}${context.kind} not available)`;
  }
  if (code === 'EINVAL' && kernelMessage && NO_CHANGE.test(kernelMessage)) {
    return `this kernel cannot change ${context.kind ? `a '${context.kind}' qdisc` : 'this qdisc'} in place: delete it and add it again`;
  }
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

  constructor(
    readonly errno: number,
    context: RequestContext,
    /** The kernel's extended-ACK text, when it gave one. */
    readonly kernelMessage?: string,
  ) {
    const code = errnoName(errno);
    const hint = explain(code, kernelMessage, context);
    const said = kernelMessage ? `: kernel says "${kernelMessage}"` : '';
    super(`${context.operation} ${context.object} failed with ${code}${said}${hint ? ` — ${hint}` : ''}`);
    this.code = code;
    this.operation = context.operation;
    this.object = context.object;
    this.hint = hint;
  }

  /** True when the kernel refused because it has no such qdisc/filter kind (module missing). */
  get unknownKind(): boolean {
    return isUnknownKind(this.code, this.kernelMessage);
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
