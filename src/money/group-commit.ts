// Group commit for the hot path's durable write (receipt + charge): calls that arrive while
// a batch of the same kind is in flight wait and go together in the next batch, one statement and
// one WAL flush for all of them. A lone call goes at once (no added latency when idle). If a batch
// statement fails as a whole, its items are retried one by one, so one bad item fails alone.
export class GroupCommit<I, O> {
  private queue: Array<{ item: I; resolve: (o: O) => void; reject: (e: unknown) => void }> = [];
  private inFlight = 0;
  private scheduled = false;
  /** Counters: statements of more than one item, items they carried, batches retried one by one. */
  readonly stats = { batches: 0, batchedItems: 0, fallbacks: 0, lastError: null as string | null };

  constructor(
    private readonly runBatch: (items: I[]) => Promise<O[]>,
    private readonly runOne: (item: I) => Promise<O>,
    private readonly options: { maxBatch: number; maxInFlight: number; windowMs?: number } = { maxBatch: 64, maxInFlight: 1 },
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight >= this.options.maxInFlight) return;
    this.scheduled = true;
    const go = () => {
      this.scheduled = false;
      this.flush();
    };
    // Let the calls of this event-loop turn join the batch (or, with a window, those of the next windowMs).
    if (this.options.windowMs && this.queue.length < this.options.maxBatch) setTimeout(go, this.options.windowMs);
    else setImmediate(go);
  }

  private flush(): void {
    while (this.queue.length > 0 && this.inFlight < this.options.maxInFlight) {
      const batch = this.queue.splice(0, this.options.maxBatch);
      this.inFlight++;
      void this.execute(batch).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  private async execute(batch: Array<{ item: I; resolve: (o: O) => void; reject: (e: unknown) => void }>): Promise<void> {
    if (batch.length === 1) {
      const [only] = batch;
      await this.runOne(only!.item).then(only!.resolve, only!.reject);
      return;
    }
    let results: O[] | null = null;
    try {
      results = await this.runBatch(batch.map((b) => b.item));
      this.stats.batches++;
      this.stats.batchedItems += batch.length;
    } catch (error) {
      results = null;
      this.stats.fallbacks++;
      this.stats.lastError = error instanceof Error ? error.message : String(error);
    }
    if (results) {
      batch.forEach((b, i) => {
        b.resolve(results![i]!);
      });
      return;
    }
    await Promise.all(batch.map((b) => this.runOne(b.item).then(b.resolve, b.reject)));
  }
}
