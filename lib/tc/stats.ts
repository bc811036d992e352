/** TCA_STATS2: the counters the kernel keeps for every qdisc and class (and, with TCA_RATE, a rate estimate). */
import { attr, attrBytes, attributeSet, attrU64 } from '../wire/attributes.js';
import { struct, u32, u64 } from '../wire/struct.js';

const gnetStatsBasic = struct({ bytes: u64, packets: u32, pad: u32 });
const gnetStatsRateEst = struct({ bps: u32, pps: u32 });
const gnetStatsRateEst64 = struct({ bps: u64, pps: u64 });
const gnetStatsQueue = struct({ qlen: u32, backlog: u32, drops: u32, requeues: u32, overlimits: u32 });

const stats2Attributes = attributeSet({
  basic: attr(1, gnetStatsBasic),
  rateEstimate: attr(2, gnetStatsRateEst),
  queue: attr(3, gnetStatsQueue),
  application: attr(4, attrBytes),
  rateEstimate64: attr(5, gnetStatsRateEst64),
  packets64: attr(8, attrU64),
});

export interface TcStatistics {
  bytes: number;
  packets: number;
  drops: number;
  overlimits: number;
  requeues: number;
  /** Bytes queued now. */
  backlog: number;
  /** Packets queued now. */
  qlen: number;
  /** Rate estimator (only when one was requested with an estimator): bytes/s and packets/s. */
  rateBytesPerSecond?: number;
  ratePacketsPerSecond?: number;
}

/** Decodes TCA_STATS2; `application` is the kind's extended stats, decoded by the kind. */
export function readStatistics(payload: Uint8Array): { statistics: TcStatistics; application?: Uint8Array } {
  const values = stats2Attributes.read(payload);
  const statistics: TcStatistics = {
    bytes: Number(values.basic?.bytes ?? 0n),
    packets: values.packets64 !== undefined ? Number(values.packets64) : (values.basic?.packets ?? 0),
    drops: values.queue?.drops ?? 0,
    overlimits: values.queue?.overlimits ?? 0,
    requeues: values.queue?.requeues ?? 0,
    backlog: values.queue?.backlog ?? 0,
    qlen: values.queue?.qlen ?? 0,
  };
  const estimate = values.rateEstimate64 ?? values.rateEstimate;
  if (estimate && (estimate.bps || estimate.pps)) {
    statistics.rateBytesPerSecond = Number(estimate.bps);
    statistics.ratePacketsPerSecond = Number(estimate.pps);
  }
  return values.application ? { statistics, application: values.application } : { statistics };
}
