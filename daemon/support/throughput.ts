/** Rates from byte counters (bits/s): each key's bytes against its previous reading; none for a first reading or a counter that went back. */
export class ThroughputMeter {
  private readonly last = new Map<string, { bytes: number; at: number }>();

  bitsPerSecond(key: string, bytes: number, at = performance.now()): number | undefined {
    const previous = this.last.get(key);
    this.last.set(key, { bytes, at });
    if (!previous || at <= previous.at || bytes < previous.bytes) return undefined;
    return ((bytes - previous.bytes) * 8 * 1000) / (at - previous.at);
  }

  /** Forgets keys not seen in the latest report (released clients). */
  keepOnly(keys: Iterable<string>): void {
    const keep = new Set(keys);
    for (const key of this.last.keys()) if (!keep.has(key)) this.last.delete(key);
  }
}
