/**
 * shaperrd's Prometheus metrics (`/metrics`). Gauges are read when scraped, from the same status report
 * the page shows; per-client series are capped at MAX_CLIENT_SERIES (the busiest clients, the rest summed
 * under client="other") so a busy server cannot blow up the label cardinality.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ShaperStats } from '../../lib/index.js';
import { CEILING_REASONS } from '../ceiling/controller.js';
import type { StatusReport } from './status.js';

export const MAX_CLIENT_SERIES = 50;

export interface MetricsSources {
  status: () => Promise<StatusReport>;
  /** What the shaper has sent the kernel (undefined before it is open). */
  shaper: () => ShaperStats | undefined;
}

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly events: Counter<'kind' | 'source'>;
  readonly kernelOperationSeconds: Histogram<'operation'>;
  readonly reconciliations: Counter<'reason'>;
  readonly kernelErrors: Counter;
  readonly sourceRequests: Counter<'source' | 'endpoint' | 'result'>;
  readonly ceilingChanges: Counter<'reason'>;

  /** A source's event series at 0, so that rate() and alerts work before its first event. */
  sourceStarted(source: string): void {
    for (const kind of ['start', 'progress', 'pause', 'stop']) this.events.inc({ kind, source }, 0);
  }

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    this.events = new Counter({
      name: 'shaperr_playback_events_total',
      help: 'Playback events from the sources, by kind and source (log, plex…)',
      labelNames: ['kind', 'source'],
      registers,
    });
    this.kernelOperationSeconds = new Histogram({
      name: 'shaperr_kernel_operation_seconds',
      help: 'Time from a decision to the kernel acknowledging it',
      labelNames: ['operation'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25],
      registers,
    });
    this.reconciliations = new Counter({
      name: 'shaperr_reconciliations_total',
      help: 'Times the kernel state was reconciled (restart adoption, repair after removal)',
      labelNames: ['reason'],
      registers,
    });
    this.kernelErrors = new Counter({ name: 'shaperr_kernel_errors_total', help: 'Kernel changes that failed', registers });
    this.sourceRequests = new Counter({
      name: 'shaperr_source_requests_total',
      help: "HTTP requests to the media servers' APIs, by source (plex…), endpoint and result (ok, timeout, http-error, malformed, unreachable, unauthorized)",
      labelNames: ['source', 'endpoint', 'result'],
      registers,
    });
    this.ceilingChanges = new Counter({
      name: 'shaperr_ceiling_changes_total',
      help: `Changes of the automatic server ceiling (server.rate: auto), by reason (${CEILING_REASONS.join(', ')})`,
      labelNames: ['reason'],
      registers,
    });
    // Every series exists from the start (at 0), so rate() and alerts work before the first event.
    for (const reason of ['restart', 'repair']) this.reconciliations.inc({ reason }, 0);

    // One status report (one kernel dump) per scrape, shared by the gauges below.
    let scraped: { report: Promise<StatusReport>; at: number } | undefined;
    const report = (): Promise<StatusReport> => {
      if (!scraped || performance.now() - scraped.at > 250) scraped = { report: sources.status(), at: performance.now() };
      return scraped.report;
    };
    /** A per-client gauge: the busiest MAX_CLIENT_SERIES clients by bytes, the rest summed as "other". */
    const clientGauge = (name: string, what: string, value: (client: StatusReport['clients'][number]) => number) =>
      new Gauge({
        name,
        help: `${what} (the ${MAX_CLIENT_SERIES} busiest clients; the rest as client="other")`,
        labelNames: ['client'],
        registers,
        async collect() {
          const clients = [...(await report()).clients].sort((a, b) => b.bytes - a.bytes);
          this.reset();
          for (const client of clients.slice(0, MAX_CLIENT_SERIES)) this.set({ client: client.address }, value(client));
          const rest = clients.slice(MAX_CLIENT_SERIES);
          if (rest.length)
            this.set(
              { client: 'other' },
              rest.reduce((sum, client) => sum + value(client), 0),
            );
        },
      });
    new Gauge({
      name: 'shaperr_throttled_clients',
      help: 'Clients with their own pipe now',
      registers,
      async collect() {
        this.set((await report()).clients.length);
      },
    });
    new Gauge({
      name: 'shaperr_sessions',
      help: 'Playback sessions of throttled clients',
      registers,
      async collect() {
        this.set((await report()).clients.reduce((sum, client) => sum + client.sessions.length, 0));
      },
    });
    clientGauge('shaperr_client_sent_bytes', "Bytes sent through each client's pipe", (client) => client.bytes);
    clientGauge('shaperr_client_dropped_packets', "Packets dropped in each client's pipe", (client) => client.drops);
    new Gauge({
      name: 'shaperr_server_sent_bytes',
      help: 'Bytes sent through the server-wide class',
      registers,
      async collect() {
        this.set((await report()).server?.bytes ?? 0);
      },
    });
    new Gauge({
      name: 'shaperr_server_ceiling_bits_per_second',
      help: 'The server rate in force now (fixed, scheduled, or set by the automatic ceiling)',
      registers,
      async collect() {
        this.set((await report()).server?.rate ?? 0);
      },
    });
    /** A reading of the automatic ceiling; no sample while it has none (fixed ceiling, nothing measured yet). */
    const ceilingGauge = (name: string, help: string, value: (ceiling: NonNullable<StatusReport['ceiling']>) => number | undefined) =>
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          const ceiling = (await report()).ceiling;
          const reading = ceiling && value(ceiling);
          this.reset();
          if (reading !== undefined) this.set(reading);
        },
      });
    ceilingGauge(
      'shaperr_uplink_capacity_bits_per_second',
      'What the uplink carried for Plex the last time it queued (server.rate: auto)',
      (ceiling) => ceiling.capacity,
    );
    ceilingGauge(
      'shaperr_uplink_delay_seconds',
      'Queueing delay beyond the host seen now by Plex’s connections or the UDP probe (server.rate: auto)',
      (ceiling) => (ceiling.delayMs === undefined ? undefined : ceiling.delayMs / 1000),
    );
    /** A counter kept by the shaper, read at each scrape. */
    const shaperCounter = (name: string, help: string, value: (stats: ShaperStats) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          const stats = sources.shaper();
          this.reset();
          if (stats) this.inc(value(stats));
        },
      });
    shaperCounter(
      'shaperr_kernel_requests_total',
      'Requests sent to the kernel that change shaping state (adds, changes, deletes)',
      (stats) => stats.kernelRequests,
    );
    shaperCounter(
      'shaperr_rebalance_changes_total',
      "Class changes made to other clients' pipes so that the guaranteed rates keep fitting the server rate",
      (stats) => stats.rebalanceChanges,
    );
    new Gauge({
      name: 'shaperr_log_lines',
      help: 'Plex log lines read, by result',
      labelNames: ['result'],
      registers,
      async collect() {
        const log = (await report()).sources?.find((source) => source.source === 'log');
        this.reset();
        for (const result of ['playback', 'ignored', 'malformed']) this.set({ result }, log?.counters[result] ?? 0);
      },
    });
  }
}
