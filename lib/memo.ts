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

/**
 * memoize for a parser of text: a result or the error it throws (the same text fails the same way) is
 * remembered, and the error is thrown again on each call.
 */
export function memoizeParser<T>(parse: (text: string) => T, limit = 4096): (text: string) => T {
  const cached = memoize((text: string): { value: T } | { error: unknown } => {
    try {
      return { value: parse(text) };
    } catch (error) {
      return { error };
    }
  }, limit);
  return (text) => {
    const outcome = cached(text);
    if ('error' in outcome) throw outcome.error;
    return outcome.value;
  };
}
