/**
 * cake-autorate's published rate rules (lynxthecat/cake-autorate, its defaults.sh and README), as a
 * `CeilingRules`, so scenario 9 can run them in closed loop on the same signal and kernel path as
 * shaperr's controller. Written from the documented behaviour and default values, not from its code:
 *
 * - Each delay sample is measured against a baseline that follows it down at once and up only slowly
 *   (path changes); a sample counts as delayed when it is more than 30 ms above the baseline.
 * - Bufferbloat: 3 of the last 6 samples delayed. The rate is then multiplied by a factor between 0.99 and
 *   0.75, the deeper the window's mean delay (30 ms → 0.99, 60 ms and more → 0.75), at most once per 300 ms.
 * - Otherwise, while what was achieved is above 75 % of the rate, the rate grows by 1.04 (mean delay 10 ms or
 *   less) down to 1.00 (30 ms) each time the achieved rate is measured again (every 200 ms), outside the
 *   bufferbloat refractory period.
 * - At lower load the rate decays toward its base by 1 % a second (down from above, up from below).
 * - min and max bound it all; the base is where the ceiling starts.
 *
 * Left out: the delay threshold's allowance for a full-size packet's serialisation (negligible above
 * 12 Mbit/s, as its documentation says), the reflector bookkeeping and the idle sleep. cake-autorate sets
 * a new rate whenever the rate moves by a whole kbit/s, which is what `observe` returns.
 */
import type { BitsPerSecond } from '../lib/index.js';
import type { CeilingBounds, CeilingChange, CeilingRules, UplinkSample } from '../daemon/ceiling/controller.js';

/** cake-autorate's defaults (defaults.sh), in this project's units: ms and plain factors. */
export const CAKE_AUTORATE_DEFAULTS = {
  delayThresholdMs: 30,
  /** Mean delay over the window at which the cut reaches its deepest factor. */
  deepestCutAtMs: 60,
  /** Mean delay up to which a raise takes its largest factor. */
  fullRaiseBelowMs: 10,
  detectionWindow: 6,
  detectionThreshold: 3,
  baselineRise: 0.001,
  baselineFall: 0.9,
  cutFactors: { least: 0.99, most: 0.75 },
  raiseFactors: { least: 1.0, most: 1.04 },
  decayDown: 0.99,
  decayUp: 1.01,
  highLoadShare: 0.75,
  bufferbloatRefractoryMs: 300,
  decayRefractoryMs: 1000,
  achievedRateIntervalMs: 200,
} as const;

export class CakeAutorateRules implements CeilingRules {
  private current: BitsPerSecond;
  private limits: CeilingBounds;
  private readonly base: BitsPerSecond;
  private baseline?: number;
  /** The last `detectionWindow` samples' deltas above the baseline, ms. */
  private readonly deltas: number[] = [];
  private lastDelay?: number;
  private lastBufferbloatAt = -Infinity;
  private lastDecayAt = -Infinity;
  /** The achieved rate, measured every `achievedRateIntervalMs` as the mean of what was sent since. */
  private achieved = { since: Number.NaN, bits: 0, rate: 0, fresh: false };
  private lastSampleAt?: number;

  constructor(bounds: CeilingBounds, start: BitsPerSecond) {
    this.limits = { ...bounds };
    this.current = this.clamp(start);
    this.base = this.current;
  }

  get bounds(): Readonly<CeilingBounds> {
    return this.limits;
  }

  get rate(): BitsPerSecond {
    return this.current;
  }

  /** No tentative changes here: every rate set is settled. */
  get settledRate(): BitsPerSecond {
    return this.current;
  }

  /** cake-autorate measures no capacity. */
  get capacity(): BitsPerSecond | undefined {
    return undefined;
  }

  /** The latest sample's delay above the baseline, ms. */
  get delayMs(): number | undefined {
    return this.lastDelay;
  }

  get cause(): string | undefined {
    return undefined;
  }

  setBounds(bounds: CeilingBounds): CeilingChange | undefined {
    this.limits = { ...bounds };
    return this.move(this.clamp(this.current), 'bounds', 'within the new bounds');
  }

  restore(rate: BitsPerSecond): void {
    this.current = rate;
  }

  observe(sample: UplinkSample): CeilingChange | undefined {
    const rules = CAKE_AUTORATE_DEFAULTS;
    this.measureAchieved(sample);
    const delay = sample.delayMs;
    if (delay === undefined) {
      // No delay sample: cake-autorate's pings would go on, finding no delay, and the rate decays.
      this.lastDelay = undefined;
      return this.decay(sample.at);
    }
    this.baseline ??= delay;
    this.baseline += (delay >= this.baseline ? rules.baselineRise : rules.baselineFall) * (delay - this.baseline);
    const delta = delay - this.baseline;
    this.lastDelay = delta;
    this.deltas.push(delta);
    if (this.deltas.length > rules.detectionWindow) this.deltas.shift();
    const delayed = this.deltas.filter((ms) => ms > rules.delayThresholdMs).length;
    const meanDelta = this.deltas.reduce((sum, ms) => sum + ms, 0) / rules.detectionWindow;
    if (delayed >= rules.detectionThreshold) {
      if (sample.at - this.lastBufferbloatAt <= rules.bufferbloatRefractoryMs) return undefined;
      this.lastBufferbloatAt = sample.at;
      this.lastDecayAt = sample.at;
      const depth = between(0, 1, (meanDelta - rules.delayThresholdMs) / (rules.deepestCutAtMs - rules.delayThresholdMs));
      const factor = rules.cutFactors.least - depth * (rules.cutFactors.least - rules.cutFactors.most);
      return this.move(this.current * factor, 'queue', `bufferbloat: ${delayed} of the last ${rules.detectionWindow} samples delayed, ×${factor.toFixed(3)}`);
    }
    if (this.achieved.rate > rules.highLoadShare * this.current) {
      if (!this.achieved.fresh || sample.at - this.lastBufferbloatAt <= rules.bufferbloatRefractoryMs) return undefined;
      this.achieved.fresh = false;
      this.lastDecayAt = sample.at;
      const room = between(0, 1, (rules.delayThresholdMs - meanDelta) / (rules.delayThresholdMs - rules.fullRaiseBelowMs));
      const factor = rules.raiseFactors.least + room * (rules.raiseFactors.most - rules.raiseFactors.least);
      return this.move(this.current * factor, 'probe', `high load: ×${factor.toFixed(3)}`);
    }
    return this.decay(sample.at);
  }

  /** What was sent, averaged over each `achievedRateIntervalMs`; `fresh` until a raise uses it. */
  private measureAchieved(sample: UplinkSample): void {
    const interval = CAKE_AUTORATE_DEFAULTS.achievedRateIntervalMs;
    if (Number.isNaN(this.achieved.since)) this.achieved.since = sample.at;
    // sentRate is the mean over the time since the previous sample.
    if (this.lastSampleAt !== undefined) this.achieved.bits += (sample.sentRate * (sample.at - this.lastSampleAt)) / 1000;
    this.lastSampleAt = sample.at;
    const elapsed = sample.at - this.achieved.since;
    if (elapsed < interval) return;
    this.achieved = { since: sample.at, bits: 0, rate: (this.achieved.bits * 1000) / elapsed, fresh: true };
  }

  /** Low load: a step toward the base, at most once per decay refractory period. */
  private decay(at: number): CeilingChange | undefined {
    const rules = CAKE_AUTORATE_DEFAULTS;
    if (at - this.lastDecayAt <= rules.decayRefractoryMs) return undefined;
    this.lastDecayAt = at;
    if (this.current > this.base) return this.move(Math.max(this.base, this.current * rules.decayDown), 'drained', 'low load: decaying toward the base rate');
    if (this.current < this.base) return this.move(Math.min(this.base, this.current * rules.decayUp), 'drained', 'low load: decaying toward the base rate');
    return undefined;
  }

  private clamp(rate: BitsPerSecond): BitsPerSecond {
    return between(this.limits.min, this.limits.max, rate);
  }

  /** A change of at least a kbit/s, as cake-autorate sets rates in whole kbit/s. */
  private move(rate: BitsPerSecond, reason: CeilingChange['reason'], why: string): CeilingChange | undefined {
    const to = Math.round(this.clamp(rate) / 1000) * 1000;
    const from = this.current;
    if (to === Math.round(from / 1000) * 1000) return undefined;
    this.current = to;
    return { from, to, reason, why };
  }
}

const between = (low: number, high: number, value: number): number => Math.min(high, Math.max(low, value));
