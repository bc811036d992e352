/**
 * What tc refusals usually mean, in tc's terms: a kind the kernel lacks names its module (sch_… for
 * qdiscs and classes, cls_… for filters); a qdisc that cannot be changed in place says what to do. The
 * netlink layer asks this through RequestContext.explain and falls back to its errno hints.
 */
import type { RequestContext } from '../wire/errors.js';

export type TcFamily = 'qdisc' | 'class' | 'filter';

const modulePrefix: Record<TcFamily, string> = { qdisc: 'sch_', class: 'sch_', filter: 'cls_' };

/** The kernel's words for a kind it does not have (qdisc_create, tcf_proto_lookup_ops). */
const UNKNOWN_KIND = /kind is unknown|classifier not found|unknown filter/i;

/** qdisc_change's words for a kind without a change operation (sfq on many kernels, 6.1 among them). */
const NO_CHANGE = /change operation not supported/i;

/** The explain hook for a request about a `family` object of tc kind `kind`. */
export function explainTcRefusal(family: TcFamily, kind: string | undefined): NonNullable<RequestContext['explain']> {
  return ({ code, kernelMessage }) => {
    if (code === 'ENOENT' && kernelMessage !== undefined && UNKNOWN_KIND.test(kernelMessage)) {
      const what = family === 'filter' ? 'filter' : 'qdisc';
      return { unknownKind: true, hint: kind ? `the kernel has no '${kind}' ${what} (module ${modulePrefix[family]}${kind} not available)` : undefined };
    }
    if (code === 'EINVAL' && kernelMessage && NO_CHANGE.test(kernelMessage)) {
      return { hint: `this kernel cannot change ${kind ? `a '${kind}' qdisc` : 'this qdisc'} in place: delete it and add it again` };
    }
    return undefined;
  };
}
