// History rows (receipts, failed requests, ledger entries) have no foreign keys (the checks cost
// every write); the rows they name cannot be deleted or truncated away while named, and a row that
// nothing names still can be.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { scene, write, type Row } from "./support/spend-rows.ts";
import { walletBucket } from "../src/money/ledger.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(() => database?.dispose());

const row = (over: Partial<Row>): Row => ({
  failed: false,
  key: 0,
  route: 0,
  channel: 0,
  run: null,
  anonymous: false,
  bucket: "CREDIT",
  uncharged: "none",
  charge: 1_000,
  prompt: 1,
  completion: 1,
  cached: 0,
  latencyMs: 5,
  at: 60_000,
  ...over,
});
const count = async (table: string, where: string, id: string) => Number((await database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "${table}" WHERE ${where} = $1`, [id]))[0]!.n);

describe("rows named by history", () => {
  it("are not deleted while a receipt, failed request or ledger entry names them; the history is unchanged", async () => {
    const s = await scene(database);
    // A receipt on key 0 / route 0 / channel 0, a failed request on key 1 / route 1's backup channel (run 0).
    await write(database, s, Date.UTC(2026, 5, 1), [row({}), row({ failed: true, key: 1, route: 1, channel: 1, run: 0, uncharged: "none" })], true);
    const receiptKey = s.keys[0]!.id;
    const failedChannel = s.routes[1]!.channels[1]!.id;
    const failedRun = s.runs[0]!.id;
    const bucket = await walletBucket(s.orgId, "CREDIT"); // its top-up is a ledger entry
    const refused = [
      [`DELETE FROM "ApiKey" WHERE id = $1`, receiptKey, /TG_REFERENCED: ApiKey .* is named by Receipt\.keyId/],
      [`DELETE FROM "PriceSnapshot" WHERE id = $1`, s.routes[0]!.channels[0]!.snapshotId, /TG_REFERENCED: PriceSnapshot .* is named by Receipt\.priceSnapshotId/],
      [`DELETE FROM "Channel" WHERE id = $1`, failedChannel, /TG_REFERENCED: Channel .* is named by FailedRequest\.channelId/],
      [`DELETE FROM "Run" WHERE id = $1`, failedRun, /TG_REFERENCED: Run .* is named by FailedRequest\.runId/],
      [`DELETE FROM "WalletBucket" WHERE id = $1`, bucket.id, /TG_REFERENCED: WalletBucket .* is named by LedgerEntry\.bucketId/],
    ] as const;
    for (const [sql, id, message] of refused) await expect(database.sql.query(sql, [id])).rejects.toThrow(message);
    expect(await count("ApiKey", "id", receiptKey)).toBe(1);
    expect(await count("Channel", "id", failedChannel)).toBe(1);
    expect(await count("Receipt", `"keyId"`, receiptKey)).toBe(1);
    expect(await count("FailedRequest", `"channelId"`, failedChannel)).toBe(1);
    // The receipts themselves: ledger entries name them (a TRUNCATE is refused while any entry exists).
    await expect(database.sql.exec(`TRUNCATE "Receipt"`)).rejects.toThrow(/TG_REFERENCED: Receipt \(truncate\) is named by LedgerEntry\.receiptId/);
    expect(await count("Receipt", `"keyId"`, receiptKey)).toBe(1);
  });

  it("are deleted when nothing names them (a run no request used)", async () => {
    const s = await scene(database);
    const unused = s.runs[1]!.id;
    await database.sql.query(`DELETE FROM "Run" WHERE id = $1`, [unused]);
    expect(await count("Run", "id", unused)).toBe(0);
  });
});
