/**
 * Hands out small integers from a range, lowest free first, reusing released ones: class minors for
 * clients, and node ids inside a u32 hash bucket. Never derived from addresses (octets collide).
 */
export class HandlePool {
  private readonly free: number[] = [];
  private readonly taken = new Set<number>();
  private next: number;

  constructor(
    private readonly first: number,
    private readonly last: number,
    private readonly reserved: ReadonlySet<number> = new Set(),
  ) {
    this.next = first;
  }

  /** Throws when the range is exhausted. */
  allocate(): number {
    let value = this.free.pop();
    while (value === undefined) {
      if (this.next > this.last) throw new Error(`no free handle left in ${this.first}…${this.last} (${this.taken.size} in use)`);
      const candidate = this.next++;
      if (!this.reserved.has(candidate) && !this.taken.has(candidate)) value = candidate;
    }
    this.taken.add(value);
    return value;
  }

  /** Marks a value as used (adopting objects found in the kernel). */
  claim(value: number): void {
    if (value < this.first || value > this.last || this.taken.has(value)) throw new Error(`handle ${value} cannot be claimed`);
    this.taken.add(value);
    const index = this.free.indexOf(value);
    if (index >= 0) this.free.splice(index, 1);
  }

  release(value: number): void {
    if (!this.taken.delete(value)) return;
    this.free.push(value);
    // Keep the lowest free value on top so allocation stays compact.
    this.free.sort((a, b) => b - a);
  }

  get size(): number {
    return this.taken.size;
  }
}
