/**
 * The automatic server ceiling (`server: { rate: auto }`): a controller that moves the server rate with
 * the uplink, fed every tick with the downstream queueing delay (what the modem's queue adds to Plex's
 * round trips, or to a UDP probe's), what the remote ends acknowledged, and the demand (the wanted rates
 * of the pipes backlogged now). Pure: it decides, the caller applies (auto-ceiling.ts).
 *
 * - Cut at once when the modem queues (a delay over 12 ms twice, or one that climbed four samples in a
 *   row to 6 ms: a link that turns down shows so before its queue is deep): to what the link delivered
 *   while it queued, less enough to drain the queue within a quarter second, and at a queue's onset by
 *   half at least (every reading lags then); once drained, hold a little below the capacity the drain
 *   measured. Two drains that measure the link lower and lower show it falling: the ceiling then descends
 *   ahead of it along that slope for a while; during and after it (or after one drain lower than the one
 *   before), a queue is expected (two climbs to 5 ms) and cut a tenth under what the link carried at
 *   least, and no probe comes for a while after a descent.
 * - Raise only while the players want more than the ceiling and the delay says there is room: tentative
 *   probes, reverted at the first sign of a queue (also one found a few seconds after a probe held: a
 *   small overshoot queues slowly), straight to the hold level — a probe from a ramp that grew as far
 *   under what the link carried as it went over, until its queue drained; a failed probe's shallow queue
 *   is no link that moved, unless it does not shrink once the revert shows. Probes that fail at a steady
 *   capacity back off (5 s growing to a minute, so at most two changes a minute); near where the link last
 *   queued they step by 4 %, past it the steps grow — a step short of one that failed, while the link
 *   has not dropped since (it rises slowly).
 * - Nothing playing (no fresh delay, no demand): hold. Silence is never congestion.
 * - Still queueing at `min`: the uplink is busy with traffic shaperr does not carry (a bulk upload from
 *   another host), which only the router can shape: say so.
 */
import type { BitsPerSecond } from '../../lib/index.js';

/** One look at the uplink, taken every tick. */
export interface UplinkSample {
  /** Monotonic ms. */
  at: number;
  /** Queueing delay downstream of shaperr in ms; undefined when no fresh sample came (nothing flows). */
  delayMs?: number | undefined;
  /** What the remote ends acknowledged over the last moment (bits/s on the wire), when known. */
  deliveredRate?: BitsPerSecond | undefined;
  /** What shaperr sent through the server class over the last tick (bits/s). */
  sentRate: BitsPerSecond;
  /** The wanted ceilings of the pipes backlogged now, added up (bits/s). */
  demand: BitsPerSecond;
}

/** Why the ceiling moved (the metrics' label, the state file's and the status page's word). */
export const CEILING_REASONS = ['queue', 'drained', 'falling', 'probe', 'probe failed', 'bounds'] as const;
export type CeilingReason = (typeof CEILING_REASONS)[number];

export interface CeilingChange {
  from: BitsPerSecond;
  to: BitsPerSecond;
  reason: CeilingReason;
  /** One line for the log and the status page. */
  why: string;
}

export interface CeilingBounds {
  min: BitsPerSecond;
  max: BitsPerSecond;
}

/** The cause reported while the ceiling cannot help (see the header). */
export const BUSY_UPLINK_CAUSE = 'the uplink is busy with other traffic';

/** Thresholds and periods; tests and the benchmark may shorten nothing but may read them. */
export const CEILING_TUNING = {
  /** A delay above this in two samples in a row (or twice it once) means the modem queues. */
  bloatMs: 12,
  /**
   * A queue still shallower than `bloatMs` that grew by at least `growingByMs` in each of `growingSamples`
   * samples in a row, to at least `growingFromMs`, is a link that turned down: noise does not climb
   * steadily, and waiting for `bloatMs` twice lets a falling link's queue pass 20 ms.
   */
  growingFromMs: 6,
  growingByMs: 1,
  growingSamples: 4,
  /**
   * While a link is known to be falling (a descent under way, or ended within `fallingWithinMs`), its queue
   * is expected: two climbs to this much are enough (after a descent ended, the link crossed the ceiling
   * left ~1 Mbit/s under it within seconds, and four climbs let the queue pass 25 ms).
   */
  fallingGrowingSamples: 2,
  fallingGrowingFromMs: 5,
  /** Below this the queue counts as drained, and a probe as harmless. */
  clearMs: 4,
  /** A probe is reverted as soon as the delay passes this (a probe is worth less than the gamer's ping). */
  probeFailMs: 6,
  /**
   * ...or this, when the delay read while nothing was probed or drained (the last `cleanReadings`) stays
   * `cleanMarginMs` under it at the `cleanPercentile`: the signal is clean (on the testbed, the Plex signal
   * read under 2 ms in 4,089 of 4,090 readings while the modem's queue was under 1 ms), and a probe past
   * the link is reverted a tick earlier. A signal that jitters keeps `probeFailMs`.
   */
  probeFailCleanMs: 4,
  cleanReadings: 50,
  cleanPercentile: 0.9,
  cleanMarginMs: 2,
  /** The queue found at a cut should be gone within this long. */
  drainSeconds: 0.25,
  /** A cut goes no lower than this fraction of the delivered rate (however deep the queue). */
  deepestCut: 0.3,
  /**
   * The first cut at a queue's onset goes at least this deep: every reading lags then (the round trips by
   * the queue itself, the delivered rate by its window), so the queue is deeper than it reads and the link
   * slower; the drain measures the link, and the hold after it gives the rate back.
   */
  onsetCut: 0.5,
  /**
   * A queue while the link is known to be falling is cut at least this deep: the link goes on falling
   * while the queue drains, and a cut sized by the shallow queue found early (two climbs to 5 ms) left it
   * above the link and was cut again half a second later.
   */
  fallingCut: 0.9,
  /** A drain lasts at least this long. */
  leastDrainMs: 800,
  /** After draining, the ceiling holds at this fraction of the measured capacity. */
  holdFraction: 0.95,
  /** After a cut, another waits this long (the first must take effect: the srtt lags by a round trip). */
  refractoryMs: 600,
  /** A probe that sees no queue for this long holds. */
  probeHoldMs: 1000,
  /** Near where the link last queued a probe must hold this long: an overshoot of a few % needs it to show. */
  probeHoldNearCapacityMs: 2000,
  /** A probe goes at least this far past the capacity measured last (a small overshoot queues slowly). */
  probeBeyondCapacity: 1.02,
  /**
   * A failed probe's revert shows in the round trips this late: a queue deeper than `probeQueueStuckMs`
   * (jitter is not) that has not begun to shrink by then is the link's (the revert landed on a link that
   * had fallen since it was measured), and is cut at once instead of after `refractoryMs`.
   */
  probeQueueShowsMs: 200,
  probeQueueStuckMs: 10,
  /** A queue found this soon after a probe failed is that probe's, not a link that moved. */
  probeAftermathMs: 1000,
  /**
   * A shallow queue found this soon after a probe held is that probe's, found late (a small overshoot
   * queues slowly): it fails the probe, backing off, instead of reading as a link that moved.
   */
  lateProbeFailMs: 5000,
  /** A probe's own queue (found late, or still showing after it failed) is no deeper than this: a deeper one is the link's. */
  probeQueueDeepestMs: 36,
  /** A probe that holds this far past the capacity measured last shows a link that grew. */
  clearlyPast: 1.05,
  /**
   * Probe steps grow while probes keep holding (a link that came back is found in seconds), to 12 %: a
   * step past a rising link overshoots by up to its size for a round trip and more before the queue shows.
   */
  probeSteps: [1.04, 1.08, 1.12] as readonly number[],
  /**
   * A ramp whose probe failed with no queue of the link's since (no cut) met a link that rises slowly (a
   * sine's rising half), not one that came back: for this long, later ramps stop a step short of the step
   * that failed (on the benchmark's sine, each such ramp failed a 12 % step with a queue of 20–30 ms).
   */
  rampCapMs: 30_000,
  /**
   * A link that fell and comes back (a LAN uploader stops, a congested evening ends) most likely comes back
   * to what it carried before: for this long after it fell, a ramp stops at `formerStop` of that, and goes
   * past it only in the small steps used near a capacity measured (on the benchmark's uploader phase, the
   * ramp after the uploader stopped took a 12 % step past the link, and queued up to 27 ms).
   */
  formerCapacityMs: 120_000,
  formerStop: 0.98,
  /**
   * Waits before the next probe after failed ones, at a capacity that stays: quick at first (a link that
   * just moved may move back), then a minute (a probe and its revert are two changes).
   */
  probeBackoffMs: [5000, 5000, 5000, 10_000, 10_000, 20_000, 40_000, 60_000] as readonly number[],
  /**
   * Two drains this close together, the second measuring this much less than the first, show a link that
   * keeps falling (LTE, a congested cable evening): the ceiling then descends ahead of it along the slope
   * they show (times `fallingMargin`, as the reading lags), for `fallingAheadMs`, instead of waiting for the
   * next queue at every step down.
   */
  fallingWithinMs: 15_000,
  fallingLeast: 0.03,
  /**
   * ...and the level held after the first drain lasted this long before the queue came back: a step down
   * drains twice in quick succession (the first measure lags the step), which is no slope.
   */
  fallingHeldMs: 1200,
  /**
   * ...and the link lost less than this share of what it carries a second: faster is a step down that
   * came a few seconds after another drain (the demo's 20 → 10 Mbit/s drop, 4 s after shaperr started:
   * 20 % a second), no slope to follow down to `min`. A sine of 8–20 Mbit/s over a minute falls 4.5 %;
   * a step's lagging first measure and the second drain read ~10 %, and the descent then helps.
   */
  fallingFastest: 0.15,
  fallingMargin: 1.2,
  fallingAheadMs: 5000,
  /** A descent moves the ceiling in steps of at least this share (each step is a kernel batch). */
  fallingStep: 0.03,
  /**
   * No probe this soon after a descent ended: the slope it followed was a guess, and a probe then meets a
   * link that may still fall (or has just turned at its trough).
   */
  quietAfterDescentMs: 5000,
  /** Queueing this long at `min` reports the busy uplink. */
  busyAfterMs: 3000,
} as const;

const RATE_STEP = 8000;
/** The sent rate's smoothing per tick (a time constant of about five ticks). */
const SENT_SMOOTHING = 0.2;
/** Changes smaller than this share of the ceiling are not made. */
const SMALLEST_CHANGE = 0.01;
/** A link measured this much lower than the time before has fallen (its former capacity is remembered). */
const FELL_BY = 1.05;

const mbit = (bits: number): string => `${+(bits / 1e6).toFixed(2)} Mbit/s`;

/** What drives the ceiling from the samples: shaperr's controller, or other rules to weigh it against (the benchmark's). */
export interface CeilingRules {
  readonly rate: BitsPerSecond;
  /** The ceiling without a probe under way: what a restart starts from. */
  readonly settledRate: BitsPerSecond;
  readonly capacity: BitsPerSecond | undefined;
  readonly delayMs: number | undefined;
  readonly cause: string | undefined;
  /** The bounds in force (setBounds changes them). */
  readonly bounds: Readonly<CeilingBounds>;
  setBounds(bounds: CeilingBounds): CeilingChange | undefined;
  restore(rate: BitsPerSecond): void;
  observe(sample: UplinkSample): CeilingChange | undefined;
}

export type CeilingRulesFactory = (bounds: CeilingBounds, start: BitsPerSecond) => CeilingRules;

export class CeilingController implements CeilingRules {
  private current: BitsPerSecond;
  private limits: CeilingBounds;
  /** What the link delivered to Plex the last time it queued, or more that a probe since carried (bits/s); undefined: not measured yet. */
  private capacityEstimate?: BitsPerSecond;
  /** What the link delivered the last time it queued (probes that held since do not move it). */
  private queuedCapacity?: BitsPerSecond;
  private lastDelay?: number;
  private aboveBloat = 0;
  /** Samples in a row whose delay grew by at least `growingByMs`. */
  private growing = 0;
  private belowClear = 0;
  private lastCutAt = -Infinity;
  /** Set while the ceiling is cut below the hold level to drain a queue: the link's (it moved) or a failed probe's. */
  private draining?: 'link' | 'probe';
  /** What the link carried at each tick of the drain under way while the queue lasted: the modem drains at its rate meanwhile. */
  private drainReadings: BitsPerSecond[] = [];
  /** A probe under way: the ceiling it left, and since when Plex has sent more than the link carried before. */
  private probe?: { base: BitsPerSecond; target: BitsPerSecond; startedAt: number };
  /** The last probe that held, and when: a queue soon after is its failure, found late. */
  private heldProbe?: { base: BitsPerSecond; heldAt: number };
  /** What shaperr sent, smoothed over about half a second (bits/s). */
  private smoothedSent = 0;
  private probeStep = 0;
  /** What the link carried before it last fell (by more than 5 %), and until when that counts (see `formerCapacityMs`). */
  private formerCapacity = { rate: 0, until: -Infinity };
  /** The largest probe step a ramp may take, until when (see `rampCapMs`). */
  private rampCap = { step: 0, until: -Infinity };
  private failedProbes = 0;
  private lastProbeFailedAt = -Infinity;
  /** The deepest delay read since the last probe failed. */
  private failedProbeQueuePeak = 0;
  private nextProbeAt = -Infinity;
  private queueingAtMinSince?: number;
  private busy = false;
  /** The last drain's measure of the link, and when, and whether it was lower than the one before (the link falls). */
  private lastDrain?: { at: number; capacity: BitsPerSecond; lower: boolean };
  /** When the queue of the drain under way was first cut. */
  private drainStartedAt = -Infinity;
  /** A descent ahead of a falling link: from `from` at `since`, `slope` bits/s less every ms, until `until`. */
  private descent?: { from: BitsPerSecond; since: number; until: number; slope: number };
  /** When the last descent ended: a queue soon after is the same fall, no onset. */
  private descentEndedAt = -Infinity;
  /** The latest delays read while nothing was probed or drained (see `probeFailCleanMs`). */
  private unprobedDelays: number[] = [];

  constructor(bounds: CeilingBounds, start: BitsPerSecond) {
    this.limits = { ...bounds };
    this.current = this.clamp(start);
  }

  /** The bounds in force (bits/s). */
  get bounds(): Readonly<CeilingBounds> {
    return this.limits;
  }

  /** The ceiling now (bits/s). */
  get rate(): BitsPerSecond {
    return this.current;
  }

  /** The ceiling without a probe under way. */
  get settledRate(): BitsPerSecond {
    return this.probe?.base ?? this.current;
  }

  /** The capacity measured the last time the modem queued (bits/s). */
  get capacity(): BitsPerSecond | undefined {
    return this.capacityEstimate;
  }

  /** The downstream delay of the latest sample (ms). */
  get delayMs(): number | undefined {
    return this.lastDelay;
  }

  /** Why the ceiling cannot keep the modem's queue short, when that is so. */
  get cause(): string | undefined {
    return this.busy ? BUSY_UPLINK_CAUSE : undefined;
  }

  /** New bounds (reload, a schedule's cap): the ceiling is clamped into them at once. */
  setBounds(bounds: CeilingBounds): CeilingChange | undefined {
    this.limits = { ...bounds };
    const clamped = this.clamp(this.current);
    if (clamped === this.current) return undefined;
    return this.move(clamped, 'bounds', `within ${mbit(bounds.min)}–${mbit(bounds.max)}`);
  }

  /** The kernel refused a change: the ceiling is what it was. */
  restore(rate: BitsPerSecond): void {
    this.current = rate;
    this.probe = undefined;
  }

  /** Takes one sample; returns the change to apply, if any. */
  observe(sample: UplinkSample): CeilingChange | undefined {
    const tuning = CEILING_TUNING;
    const delay = sample.delayMs;
    const previous = this.lastDelay;
    this.lastDelay = delay;
    if (delay === undefined) {
      // No fresh round trip: nothing flows, or too little to tell. Hold whatever is set.
      this.aboveBloat = 0;
      this.growing = 0;
      return undefined;
    }
    const carried = () => this.carried(sample, delay, previous);
    this.aboveBloat = delay > tuning.bloatMs ? this.aboveBloat + 1 : 0;
    this.growing = previous !== undefined && delay - previous >= tuning.growingByMs ? this.growing + 1 : 0;
    this.belowClear = delay < tuning.clearMs ? this.belowClear + 1 : 0;
    this.noteBusy(sample.at, delay);

    this.smoothedSent += (sample.sentRate - this.smoothedSent) * SENT_SMOOTHING;
    if (!this.probe && !this.draining) {
      this.unprobedDelays.push(delay);
      if (this.unprobedDelays.length > tuning.cleanReadings) this.unprobedDelays.shift();
    }
    if (this.probe) {
      if (delay > this.probeFailMs()) {
        const base = this.probe.base;
        this.probe = undefined;
        return this.failProbe(sample.at, carried(), base);
      }
      // Only traffic into the new room tells that the link has it: a probe the players do not fill stays
      // pending (it costs nothing until they do, and a queue then reverts it).
      const used = this.smoothedSent >= (this.probe.base + this.probe.target) / 2;
      // At or above the level a drain there would hold is near the capacity before the link fell.
      const nearFormer = this.probe.target >= (this.formerAt(sample.at) ?? Infinity) * tuning.holdFraction;
      const nearCapacity = this.probe.target < (this.queuedCapacity ?? 0) * tuning.clearlyPast || nearFormer;
      const holdMs = nearCapacity ? tuning.probeHoldNearCapacityMs : tuning.probeHoldMs;
      if (used && sample.at - this.probe.startedAt >= holdMs) {
        // The link carried more than before without a queue: it has at least that much room, and the
        // ramp goes on at once, with a larger step. Only a probe clearly past the capacity measured last
        // says the link grew (one just past it may be that measure's error): then failed probes are
        // forgotten; until then they keep backing off.
        const { base, target } = this.probe;
        const known = this.capacityEstimate ?? 0;
        if (target >= known * tuning.clearlyPast) this.failedProbes = 0;
        this.capacityEstimate = Math.max(known, this.smoothedSent);
        this.heldProbe = { base, heldAt: sample.at };
        this.probe = undefined;
        // Near where the link last queued the steps stay small (a probe there overshoots, and its queue is the
        // gamer's); past it, the link grew, and they grow.
        const largest = sample.at < this.rampCap.until ? this.rampCap.step : tuning.probeSteps.length - 1;
        this.probeStep = nearCapacity ? 0 : Math.min(this.probeStep + 1, largest);
        this.nextProbeAt = sample.at;
      }
      return undefined;
    }
    // Only while the round trips still show the queue (both lag alike): once it is empty, the far ends
    // acknowledge the cut ceiling, not the link.
    if (this.draining && delay >= tuning.bloatMs) this.drainReadings.push(carried());
    const growingQueue = this.knownFalling(sample.at)
      ? this.growing >= tuning.fallingGrowingSamples && delay >= tuning.fallingGrowingFromMs
      : this.growing >= tuning.growingSamples && delay >= tuning.growingFromMs;
    const afterFailedProbe = sample.at - this.lastProbeFailedAt < tuning.refractoryMs;
    if (afterFailedProbe) this.failedProbeQueuePeak = Math.max(this.failedProbeQueuePeak, delay);
    const probesOwnQueue = this.failedProbesQueue(sample.at, delay);
    const stuckProbeQueue = afterFailedProbe && delay > tuning.probeQueueStuckMs && !probesOwnQueue;
    if (this.aboveBloat >= 2 || delay > 2 * tuning.bloatMs || growingQueue || stuckProbeQueue) {
      if (sample.at - this.lastCutAt < tuning.refractoryMs) return undefined;
      // A failed probe's own shallow queue still shows for a round trip or two, shrinking: no link moved.
      if (probesOwnQueue) return undefined;
      const held = this.heldProbe;
      this.heldProbe = undefined;
      if (held && sample.at - held.heldAt <= tuning.lateProbeFailMs && delay <= tuning.probeQueueDeepestMs)
        return this.failProbe(sample.at, carried(), held.base);
      return this.cut(sample.at, delay, carried());
    }
    if (this.descent && !this.draining) {
      const change = this.descend(sample.at);
      if (this.descent) return change;
    }
    if (delay >= tuning.clearMs) return undefined;
    // Drained when two samples in a row say so (one may be a round trip that met no queue by chance), and
    // not before the cut had time to work: right after it the pipes fill, and the round trips read then
    // are the least reliable.
    if (this.draining && this.belowClear >= 2 && sample.at - this.lastCutAt >= tuning.leastDrainMs) {
      this.draining = undefined;
      // While the modem drained, it sent at its rate: the middle reading of the drain tells that rate best
      // (the first still hold the time before the link moved, the last may come after the queue emptied).
      const sorted = [...this.drainReadings].sort((a, b) => a - b);
      if (sorted.length >= 3) this.measuredAtQueue(sample.at, sorted[Math.floor(sorted.length / 2)]!);
      const capacity = this.capacityEstimate!;
      const hold = this.clamp(tuning.holdFraction * capacity);
      this.noteDrain(sample.at, capacity, hold);
      return this.move(hold, 'drained', `queue drained: holding at ${tuning.holdFraction * 100} % of the ${mbit(capacity)} measured`);
    }
    const hold = this.capacityEstimate === undefined ? undefined : this.clamp(tuning.holdFraction * this.capacityEstimate);
    if (this.draining || sample.demand <= this.current * 1.02 || this.current >= this.limits.max) return undefined;
    // Back up only once the queue read clear twice, and not while a failed probe's queue drains (see failProbe).
    const settling = this.belowClear < 2 || sample.at - this.lastProbeFailedAt < tuning.leastDrainMs;
    if (hold !== undefined && hold > this.current * (1 + SMALLEST_CHANGE) && !settling)
      return this.move(hold, 'drained', `back to ${tuning.holdFraction * 100} % of the ${mbit(this.capacityEstimate!)} measured`);
    if (sample.at < this.nextProbeAt) return undefined;
    if (sample.at - this.descentEndedAt <= tuning.quietAfterDescentMs) return undefined;
    // A probe goes past what the link carried last: it either finds room or fails at once.
    const step = tuning.probeSteps[this.probeStep]!;
    const wanted = Math.min(Math.max(this.current * step, (this.capacityEstimate ?? 0) * tuning.probeBeyondCapacity), sample.demand);
    // A ramp (a probe after one that held) from well below what the link carried before it fell stops short
    // of that: past it, small steps.
    const stop = (this.formerAt(sample.at) ?? Infinity) * tuning.formerStop;
    const stopsShort = this.probeStep > 0 && this.current < stop * (1 - 2 * SMALLEST_CHANGE);
    const target = this.clamp(stopsShort ? Math.min(wanted, stop) : wanted);
    if (target <= this.current) return undefined;
    this.probe = { base: this.current, target, startedAt: sample.at };
    this.heldProbe = undefined;
    return this.move(target, 'probe', `players want ${mbit(sample.demand)} and the uplink shows no queue: trying more`);
  }

  /**
   * What the link carried for Plex while it queued: what the far ends acknowledged when known, else what
   * shaperr sent less the queue's growth (the modem drains at its rate; the rest piles up).
   */
  private carried(sample: UplinkSample, delay: number, previous: number | undefined): BitsPerSecond {
    if (sample.deliveredRate !== undefined && sample.deliveredRate > 0) return sample.deliveredRate;
    const growth = previous === undefined ? 0 : Math.max(0, (delay - previous) / 100);
    return sample.sentRate / (1 + growth);
  }

  private cut(at: number, delay: number, carried: BitsPerSecond): CeilingChange | undefined {
    const tuning = CEILING_TUNING;
    // Cut again while a moved link's queue drains, the signal still shows the queue met a round trip ago,
    // and the far ends acknowledge less as it drains: that is no lower capacity.
    const again = this.draining === 'link' && this.capacityEstimate !== undefined;
    const capacity = again ? Math.max(this.capacityEstimate!, carried) : carried;
    // A queue left by a failed probe of ours is shallow and understood. Any other is the link's, and its
    // onset is cut deep.
    const probesQueue = at - this.lastProbeFailedAt <= tuning.probeAftermathMs && delay <= tuning.probeQueueDeepestMs;
    // A link known to be falling queues a little ahead of its descent (or soon after it): no surprise to cut deep for.
    const falling = this.knownFalling(at);
    this.descent = undefined;
    const onset = !again && !probesQueue && !falling;
    this.measuredAtQueue(at, capacity);
    this.lastCutAt = at;
    this.aboveBloat = 0;
    this.growing = 0;
    this.probeStep = 0;
    // The link moved (unless it is what a failed probe of ours left): it may move back soon, so probing
    // starts quick again.
    if (!probesQueue) {
      this.failedProbes = 0;
      // ...and a ramp after it may be a link that came back, not one that rises slowly.
      this.rampCap.until = -Infinity;
    }
    this.nextProbeAt = Math.max(this.nextProbeAt, at + tuning.probeBackoffMs[0]!);
    if (!again) {
      this.drainReadings = [];
      this.drainStartedAt = at;
    }
    this.draining = again || onset ? 'link' : 'probe';
    const drainFraction = Math.max(tuning.deepestCut, 1 - delay / 1000 / tuning.drainSeconds);
    const fraction = Math.min(onset ? tuning.onsetCut : falling ? tuning.fallingCut : 1, drainFraction);
    // A queue that outlasts a cut (traffic shaperr does not carry): down from where the ceiling is.
    const target = this.clamp(again ? this.current * Math.max(0.5, fraction) : Math.min(this.current, capacity) * fraction);
    if (target === this.current) return undefined;
    return this.move(target, 'queue', `the uplink queues ${delay.toFixed(0)} ms beyond shaperr (it carried ${mbit(capacity)}): draining`);
  }

  /** A probe from `base` met a queue: back below what the link carried, and wait longer before the next. */
  private failProbe(at: number, carried: BitsPerSecond, base: BitsPerSecond): CeilingChange | undefined {
    const tuning = CEILING_TUNING;
    const ramped = this.probeStep > 0;
    if (ramped) this.rampCap = { step: this.probeStep - 1, until: at + tuning.rampCapMs };
    this.probeStep = 0;
    const waited = tuning.probeBackoffMs[Math.min(this.failedProbes, tuning.probeBackoffMs.length - 1)]!;
    this.failedProbes++;
    this.lastProbeFailedAt = at;
    this.failedProbeQueuePeak = 0;
    this.nextProbeAt = at + waited;
    // The link carried the base without a queue, not the probe. What the far ends acknowledged tells where
    // in between, when it was measured at the link's limit (a reading well below the base was not). A
    // reading below where the link last queued, when the base held just below that, is no link that fell
    // (a player between two segments acknowledges less): a fallen link queues at the base too, and the cut
    // then measures it. Nor above what the base's holding shows (base ÷ hold fraction): a reading above
    // the link (acknowledgements arrive bunched) would carry each next probe further past it.
    const measured = carried >= 0.9 * base;
    const heldShows = base / tuning.holdFraction;
    const known = Math.min(this.queuedCapacity ?? 0, heldShows);
    const capacity = measured ? Math.min(Math.max(carried, known), heldShows, this.current) : base;
    this.measuredAtQueue(at, capacity);
    // Measured at the link's limit, the hold level is known; else back where the link carried no queue. A
    // probe from a ramp that grew (a rising link that has topped) sent up to its whole step past the link
    // for a round trip and more before the queue showed: as far under what the link carried as it went
    // over, that queue drains about as fast as it grew (the hold level comes back once it has). Near the
    // capacity measured, the step is small and the hold level drains it.
    const hold = measured ? tuning.holdFraction * capacity : base;
    const back = this.clamp(ramped ? Math.min(hold, capacity * (base / this.current)) : hold);
    return this.move(back, 'probe failed', `no room above ${mbit(capacity)}: next try in ${waited / 1000} s`);
  }

  /** A drain measured the link: lower than the drain just before, it is falling, and the ceiling descends from `level` ahead of it. */
  private noteDrain(at: number, capacity: BitsPerSecond, level: BitsPerSecond): void {
    const tuning = CEILING_TUNING;
    const previous = this.lastDrain;
    const lower = previous !== undefined && at - previous.at <= tuning.fallingWithinMs && capacity < previous.capacity * (1 - tuning.fallingLeast);
    this.lastDrain = { at, capacity, lower };
    this.descent = undefined;
    if (!previous || !lower || this.drainStartedAt - previous.at < tuning.fallingHeldMs) return;
    const slope = (previous.capacity - capacity) / (at - previous.at);
    if (slope * 1000 > tuning.fallingFastest * capacity) return;
    this.descent = { from: level, since: at, until: at + tuning.fallingAheadMs, slope: slope * tuning.fallingMargin };
  }

  /** One step of a descent ahead of a falling link, when it has gone far enough to be worth a change. */
  private descend(at: number): CeilingChange | undefined {
    const descent = this.descent!;
    if (at > descent.until) {
      // The slope is a guess: past the time it was made for, probes find the link again from where the
      // descent left the ceiling, in small steps at first (the link may still be falling).
      this.descent = undefined;
      this.descentEndedAt = at;
      this.measuredAtQueue(at, this.current);
      return undefined;
    }
    const target = this.clamp(descent.from - descent.slope * (at - descent.since));
    if (target > this.current * (1 - CEILING_TUNING.fallingStep)) return undefined;
    return this.move(target, 'falling', `the uplink is falling (${mbit(descent.slope * 1000)} less every second): descending ahead of it`);
  }

  /** The delay that fails a probe: lower while the signal has been clean (see `probeFailCleanMs`). */
  private probeFailMs(): number {
    const tuning = CEILING_TUNING;
    if (this.unprobedDelays.length < tuning.cleanReadings) return tuning.probeFailMs;
    const sorted = [...this.unprobedDelays].sort((a, b) => a - b);
    const level = sorted[Math.floor(tuning.cleanPercentile * (sorted.length - 1))]!;
    return level + tuning.cleanMarginMs <= tuning.probeFailCleanMs ? tuning.probeFailCleanMs : tuning.probeFailMs;
  }

  /**
   * The queue read now is a failed probe's own, draining: shallow, soon after the failure, and too soon for
   * the revert to show or shrinking since (one that is not is the link's: see `probeQueueShowsMs`).
   */
  private failedProbesQueue(at: number, delay: number): boolean {
    const tuning = CEILING_TUNING;
    const since = at - this.lastProbeFailedAt;
    if (since >= tuning.refractoryMs || delay > tuning.probeQueueDeepestMs) return false;
    return since < tuning.probeQueueShowsMs || delay < this.failedProbeQueuePeak - tuning.growingByMs;
  }

  /**
   * A descent under way or one that ended a little while ago, or a drain a little while ago that measured
   * the link lower than the one before (too soon after it for a slope, or too fast: it still falls).
   */
  private knownFalling(at: number): boolean {
    const within = CEILING_TUNING.fallingWithinMs;
    return this.descent !== undefined || at - this.descentEndedAt <= within || (this.lastDrain?.lower === true && at - this.lastDrain.at <= within);
  }

  /** What the link carried while it queued: the capacity estimate, and where probes step small from. */
  private measuredAtQueue(at: number, capacity: BitsPerSecond): void {
    const before = this.queuedCapacity ?? 0;
    if (before > capacity * FELL_BY) this.formerCapacity = { rate: Math.max(before, this.formerAt(at) ?? 0), until: at + CEILING_TUNING.formerCapacityMs };
    this.capacityEstimate = capacity;
    this.queuedCapacity = capacity;
  }

  /** What the link carried before it last fell, while that still counts. */
  private formerAt(at: number): BitsPerSecond | undefined {
    return at < this.formerCapacity.until ? this.formerCapacity.rate : undefined;
  }

  /** Queueing for a while at `min`: traffic shaperr does not carry fills the uplink. */
  private noteBusy(at: number, delay: number): void {
    const queueing = delay > CEILING_TUNING.bloatMs;
    if (queueing && this.current <= this.limits.min) {
      this.queueingAtMinSince ??= at;
      if (at - this.queueingAtMinSince >= CEILING_TUNING.busyAfterMs) this.busy = true;
    } else if (!queueing) {
      this.queueingAtMinSince = undefined;
      if (this.busy) {
        // The other traffic stopped: probe again at once, from the first step.
        this.busy = false;
        this.failedProbes = 0;
        this.nextProbeAt = at;
        this.draining = undefined;
      }
    }
  }

  private clamp(rate: BitsPerSecond): BitsPerSecond {
    // Whole kbyte/s: the kernel keeps rates in bytes/s, so the ceiling read back is the one set.
    return Math.min(this.limits.max, Math.max(this.limits.min, Math.round(rate / RATE_STEP) * RATE_STEP));
  }

  private move(to: BitsPerSecond, reason: CeilingReason, why: string): CeilingChange | undefined {
    const from = this.current;
    // Less than this is noise in the estimates, and a kernel request for nothing; but a bound is always
    // reached (a cut that landed just above min, at 2.016 of 2 Mbit/s, held there and never reported the
    // busy uplink, which needs the ceiling at min).
    const bound = to === this.limits.min || to === this.limits.max;
    if (Math.abs(to - from) < SMALLEST_CHANGE * from && !bound) return undefined;
    if (to === from) return undefined;
    this.current = to;
    return { from, to, reason, why };
  }
}
