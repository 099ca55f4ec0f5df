// The spend rollups' folder. A write's trigger queues what it adds as one row of
// "SpendRollupPending" (prisma/functions.sql, "Spend rollups"); each gateway moves those rows into
// the rollups every ROLLUP_FOLD_MS. Reports read rollup + queue (the "...Live" views), so how late a
// fold runs changes what a report costs, never what it says.
import { directSql } from "../db/index.ts";

/** Queued rows folded per statement (a second of a busy instance's batches; a bounded transaction). */
const FOLD_BATCH_ROWS = 2_000;

/** Folds every queued row now, a batch at a time; returns how many rows it folded. */
export async function foldSpendRollups(): Promise<number> {
  let total = 0;
  for (;;) {
    const rows = await directSql().$queryRawUnsafe<Array<{ n: number }>>(`SELECT tg_spend_rollup_fold($1::int) AS n`, FOLD_BATCH_ROWS);
    const n = Number(rows[0]!.n);
    total += n;
    if (n < FOLD_BATCH_ROWS) return total;
  }
}

/** Folds every `intervalMs` (never two at once); stop() waits for a fold in flight and folds once more. */
export function startRollupFolder(intervalMs: number, onError: (error: unknown) => void): () => Promise<void> {
  let running: Promise<void> | null = null;
  const fold = () =>
    (running ??= foldSpendRollups()
      .then(() => undefined, onError)
      .finally(() => {
        running = null;
      }));
  const timer = setInterval(() => void fold(), intervalMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await running;
    await fold();
  };
}
