// Accounting micro-benchmark: reserve+settle pairs per second, against a baseline of the cheapest
// durable write (one single-row UPDATE per commit) on the same database in the same run.
import { randomUUID } from "node:crypto";
import { PGlite } from "@electric-sql/pglite";
import { openDatabase, useDatabase, type Database } from "../src/db/index.ts";
import { reserve, settle } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import * as f from "../test/support/fixtures.ts";

const DURATION_MS = Number(process.env.BENCH_SECONDS ?? 4) * 1000;

async function measure(concurrency: number, op: () => Promise<unknown>): Promise<number> {
  let done = 0;
  const end = Date.now() + DURATION_MS;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) {
        await op();
        done++;
      }
    }),
  );
  return done / ((performance.now() - started) / 1000);
}

export interface AccountingRow {
  database: string;
  concurrency: number;
  baselinePerSec: number;
  pairsPerSec: number;
}

async function benchDatabase(label: string, database: Database, concurrencies: number[]): Promise<AccountingRow[]> {
  useDatabase(database);
  const w = await f.world({ credit: "1000000" });
  const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
  const rows: AccountingRow[] = [];
  for (const concurrency of concurrencies) {
    const baselinePerSec = await measure(concurrency, () => database.prisma.$executeRawUnsafe(`UPDATE "Project" SET name = name WHERE id = $1`, w.project.id));
    const pairsPerSec = await measure(concurrency, async () => {
      const r = await reserve({ requestId: randomUUID(), bucketId, amount: 1_000n, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
      if (!r.ok) throw new Error(`refused: ${r.refusal}`);
      await settle(r.holdId, 700n);
    });
    rows.push({ database: label, concurrency, baselinePerSec, pairsPerSec });
  }
  return rows;
}

export async function runAccountingBench(): Promise<AccountingRow[]> {
  const rows: AccountingRow[] = [];
  const pglite = await openDatabase({ pglite: await PGlite.create() });
  rows.push(...(await benchDatabase("PGlite (in-memory)", pglite, [1, 16])));
  await pglite.close();

  const pg = await startEmbeddedPostgres({ durable: true });
  try {
    const database = await openDatabase({ databaseUrl: pg.url, poolSize: 20 });
    rows.push(...(await benchDatabase("PostgreSQL 18 (fsync on)", database, [1, 16])));
    await database.close();
  } finally {
    await pg.stop();
  }
  return rows;
}

export function accountingTable(rows: AccountingRow[]): string {
  const lines = [
    "| database | concurrency | baseline: 1-row UPDATE commits/s | reserve+settle pairs/s | ratio to baseline |",
    "|---|---:|---:|---:|---:|",
    ...rows.map((r) => `| ${r.database} | ${r.concurrency} | ${r.baselinePerSec.toFixed(0)} | ${r.pairsPerSec.toFixed(0)} | ${(r.pairsPerSec / r.baselinePerSec).toFixed(2)} |`),
  ];
  return lines.join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runAccountingBench();
  console.log(accountingTable(rows));
}
