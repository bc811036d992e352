/**
 * Memoises a pure function of a string key, keeping at most `limit` results (cleared wholesale when full:
 * cheaper than LRU bookkeeping, and the working set — a handful of rates, the live clients — is small).
 */
export function memoize<T>(compute: (key: string) => T, limit = 4096): (key: string) => T {
  const cache = new Map<string, T>();
  return (key) => {
    let value = cache.get(key);
    if (value === undefined) {
      if (cache.size >= limit) cache.clear();
      value = compute(key);
      cache.set(key, value);
    }
    return value;
  };
}
