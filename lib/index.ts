/**
 * shaperr — Linux traffic shaping over rtnetlink, for Plex Media Server and any Node tool.
 *
 * - `Shaper`: one throttled pipe per client address under a server-wide ceiling; `ShaperWatch` puts its
 *   pipes back as soon as the kernel reports them removed; `inspectShaper`, `clearShaper` and
 *   `checkDevice` read, remove and check what shaperr has on a device (the `shaperr` CLI).
 * - `TcMonitor`: the kernel's tc and link notifications (what `tc monitor` shows), decoded.
 * - `TrafficControl`: qdiscs, classes and filters (htb, sfq, fq_codel, pfifo/bfifo, tbf; u32, matchall) —
 *   create, read back with statistics, change, delete, batch — and `toTcCommand()` for the equivalent tc
 *   command line.
 * - `SocketDiag`: TCP connections as the kernel sees them (`ss -tin` over sock_diag): addresses, state and
 *   tcp_info's round trips and delivery rate, filtered in the kernel by local port and peer addresses.
 */
export { Shaper } from './shaper/shaper.js';
export type {
  ClientLimits,
  ClientState,
  LeafKind,
  PipeCounters,
  RateLimits,
  ShaperOptions,
  ShaperState,
  ShaperView,
  ShaperStats,
  ThrottleOutcome,
} from './shaper/shaper.js';
export { checkDevice, clearShaper, inspectShaper } from './shaper/inspect.js';
export type { DeviceCheck, DeviceOptions } from './shaper/inspect.js';
export type { ShaperKernel } from './shaper/kernel.js';
/**
 * Telling shaperr's root qdisc from another tool's (for checks and messages): `isShaperRoot(root)`, and
 * `describeQdisc` names a qdisc as tc prints it (`tbf 1:`).
 */
export { describeQdisc, isShaperRoot } from './shaper/layout.js';
export type { Progress, ProgressListener } from './progress.js';
export { ShaperWatch } from './shaper/watch.js';
export type { RepairReport, ShaperWatchOptions } from './shaper/watch.js';
export { TcMonitor } from './tc/monitor.js';
export type { TcMonitorOptions, TcMonitorStats, TcNotification, TcNotificationAction } from './tc/monitor.js';
export { TrafficControl } from './tc/traffic-control.js';
export type { DeviceInput, Link, OperationResult, TrafficControlOptions } from './tc/traffic-control.js';
export { operationRequest, toTcCommand } from './tc/objects.js';
export type {
  ClassRef,
  ClassSpec,
  Estimator,
  Filter,
  FilterProtocol,
  FilterRef,
  FilterSpec,
  Operation,
  Qdisc,
  QdiscRef,
  QdiscSpec,
  TcClass,
  WriteMode,
} from './tc/objects.js';
export type { ClassKindName, FilterKindName, QdiscKindName } from './tc/registry.js';
export type { TcStatistics } from './tc/stats.js';
export { formatHandle, parseHandle, TC_H_ROOT } from './tc/handle.js';
export { describeRate, formatRate, parseRate, parseSize, parseTime } from './tc/units.js';
export type { BitsPerSecond, RateInput, SizeInput } from './tc/units.js';
export { formatU32Handle, parseU32Handle } from './tc/kinds/u32.js';
export { hashBucketForAddress, SHAPER_ROOT } from './shaper/layout.js';
export type { U32Match, U32Options, U32Parameters } from './tc/kinds/u32.js';
export type { HtbClassOptions, HtbClassParameters, HtbClassStats, HtbQdiscOptions } from './tc/kinds/htb.js';
export type { SfqOptions } from './tc/kinds/sfq.js';
export type { FifoOptions } from './tc/kinds/fifo.js';
export type { TbfOptions } from './tc/kinds/tbf.js';
export type { FqCodelOptions, FqCodelParameters, FqCodelStats } from './tc/kinds/fq_codel.js';
export type { MatchallOptions, MatchallParameters } from './tc/kinds/matchall.js';
export { SocketDiag } from './diag/socket-diag.js';
export type { SocketDiagOptions, TcpSocketQuery } from './diag/socket-diag.js';
export type { TcpSocket } from './diag/inet-diag.js';
export type { TcpInfo } from './diag/tcp-info.js';
export type { TcpStateName } from './diag/tcp-states.js';
export { NetworkSet, parseClientAddress } from './address.js';
export { NetlinkError, ShaperrInputError } from './wire/errors.js';
export type { KernelWarning } from './wire/errors.js';
