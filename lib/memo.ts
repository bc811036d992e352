/**
 * Memoises a pure function of its input under a string key, keeping at most `limit` results (cleared
 * wholesale when full: cheaper than LRU bookkeeping, and the working set — a handful of rates, the live
 * clients — is small).
 */
export function memoizeBy<I, T>(keyOf: (input: I) => string, compute: (input: I) => T, limit = 4096): (input: I) => T {
  const cache = new Map<string, T>();
  return (input) => {
    const key = keyOf(input);
    let value = cache.get(key);
    if (value === undefined) {
      if (cache.size >= limit) cache.clear();
      value = compute(input);
      cache.set(key, value);
    }
    return value;
  };
}

/** memoizeBy for a function of a string, which is its own key. */
export const memoize = <T>(compute: (key: string) => T, limit = 4096): ((key: string) => T) => memoizeBy((key: string) => key, compute, limit);
