// Concurrent reads of one key share one promise (a cache entry expiring under load is read once,
// not by every request that arrives before it is back), and an invalidation while a read is in
// flight keeps that read out of the cache: it answers its waiters but is not stored.
export class SingleFlight<K, V> {
  private readonly pending = new Map<K, Promise<V>>();
  private generation = 0;

  /** `load` once for all concurrent callers of `key`; `store` runs only if nothing was invalidated meanwhile. */
  run(key: K, load: () => Promise<V>, store: (value: V) => void): Promise<V> {
    const found = this.pending.get(key);
    if (found) return found;
    const startedIn = this.generation;
    const read: Promise<V> = load()
      .then((value) => {
        if (startedIn === this.generation) store(value);
        return value;
      })
      .finally(() => {
        if (this.pending.get(key) === read) this.pending.delete(key);
      });
    this.pending.set(key, read);
    return read;
  }

  invalidate(): void {
    this.generation++;
    this.pending.clear();
  }
}
