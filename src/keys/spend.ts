// A key's spend per bucket over a time range, and when it was last used: from its receipts and
// failed requests (their (keyId, createdAt) indexes), so they are exactly what the ledger holds.
// Both take many keys at once (two grouped statements), for lists of keys.
import { db } from "../db/index.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { capWindow, type ZoneState } from "../money/windows.ts";

export interface BucketSpend {
  bucket: BalanceBucket;
  charged: bigint;
  requests: number;
  failures: number;
}

const BUCKETS: BalanceBucket[] = ["CREDIT", "ROUTED"];

/** Per key, both buckets always (a bucket it never spent from shows 0): [from, to), default the current day of `zone` (the organization's). */
export async function keysSpend(keyIds: readonly string[], range: { from?: Date | null; to?: Date | null } = {}, now = new Date(), zone?: ZoneState): Promise<Map<string, BucketSpend[]>> {
  const createdAt = { gte: range.from ?? capWindow("DAY", now, zone).start, ...(range.to ? { lt: range.to } : {}) };
  const ids = [...new Set(keyIds)];
  const [receipts, failures] = await Promise.all([
    db.receipt.groupBy({ by: ["keyId", "bucket"], where: { keyId: { in: ids }, createdAt }, _count: { _all: true }, _sum: { charge: true } }),
    db.failedRequest.groupBy({ by: ["keyId", "bucket"], where: { keyId: { in: ids }, createdAt, bucket: { not: null } }, _count: { _all: true }, _sum: { charge: true } }),
  ]);
  return new Map(
    ids.map((keyId) => [
      keyId,
      BUCKETS.map((bucket) => {
        const r = receipts.find((g) => g.keyId === keyId && g.bucket === bucket);
        const f = failures.find((g) => g.keyId === keyId && g.bucket === bucket);
        return { bucket, charged: (r?._sum.charge ?? 0n) + (f?._sum.charge ?? 0n), requests: r?._count._all ?? 0, failures: f?._count._all ?? 0 };
      }),
    ]),
  );
}

/** Per key, the time of its latest recorded request (answered or failed); absent if never used. */
export async function keysLastUsedAt(keyIds: readonly string[]): Promise<Map<string, Date>> {
  const ids = [...new Set(keyIds)];
  const [receipts, failures] = await Promise.all([
    db.receipt.groupBy({ by: ["keyId"], where: { keyId: { in: ids } }, _max: { createdAt: true } }),
    db.failedRequest.groupBy({ by: ["keyId"], where: { keyId: { in: ids } }, _max: { createdAt: true } }),
  ]);
  const last = new Map<string, Date>();
  for (const g of [...receipts, ...failures]) {
    const at = g._max.createdAt;
    if (!at || !g.keyId) continue;
    const seen = last.get(g.keyId);
    if (!seen || at > seen) last.set(g.keyId, at);
  }
  return last;
}
