/**
 * The attributes every qdisc, class and filter message carries after its tcmsg header (TCA_*, from
 * include/uapi/linux/rtnetlink.h): declared here once, for the request builders, the decoders and the kinds.
 */
import { attr, attrBytes, attributeSet, attrString, attrU32 } from '../wire/attributes.js';
import { s8, struct, u8 } from '../wire/struct.js';

export const TCA = { KIND: 1, OPTIONS: 2, RATE: 5, STATS2: 7, STAB: 8, CHAIN: 11 } as const;

/** struct tc_estimator (TCA_RATE). */
export const tcEstimator = struct({ interval: s8, ewmaLog: u8 });

/** What a dump reply carries; the options and statistics are decoded by the kind and stats.ts. */
export const tcaAttributes = attributeSet({
  kind: attr(TCA.KIND, attrString),
  rate: attr(TCA.RATE, tcEstimator),
  options: attr(TCA.OPTIONS, attrBytes),
  stats2: attr(TCA.STATS2, attrBytes),
  chain: attr(TCA.CHAIN, attrU32),
});
