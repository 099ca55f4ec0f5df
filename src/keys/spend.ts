// A key's spend per bucket over a time range, and when it was last used: from its receipts and
// failed requests (their (keyId, createdAt) indexes), so they are exactly what the ledger holds.
import { db } from "../db/index.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { dayStart } from "../accounting/index.ts";

export interface BucketSpend {
  bucket: BalanceBucket;
  charged: bigint;
  requests: number;
  failures: number;
}

const BUCKETS: BalanceBucket[] = ["CREDIT", "ROUTED"];

/** Both buckets, always (a bucket it never spent from shows 0): [from, to), default the current UTC day. */
export async function keySpend(keyId: string, range: { from?: Date | null; to?: Date | null } = {}, now = new Date()): Promise<BucketSpend[]> {
  const createdAt = { gte: range.from ?? dayStart(now), ...(range.to ? { lt: range.to } : {}) };
  const [receipts, failures] = await Promise.all([
    db.receipt.groupBy({ by: ["bucket"], where: { keyId, createdAt }, _count: { _all: true }, _sum: { charge: true } }),
    db.failedRequest.groupBy({ by: ["bucket"], where: { keyId, createdAt, bucket: { not: null } }, _count: { _all: true }, _sum: { charge: true } }),
  ]);
  return BUCKETS.map((bucket) => {
    const r = receipts.find((g) => g.bucket === bucket);
    const f = failures.find((g) => g.bucket === bucket);
    return { bucket, charged: (r?._sum.charge ?? 0n) + (f?._sum.charge ?? 0n), requests: r?._count._all ?? 0, failures: f?._count._all ?? 0 };
  });
}

/** The time of the key's latest recorded request (answered or failed); null if it was never used. */
export async function keyLastUsedAt(keyId: string): Promise<Date | null> {
  const [r, f] = await Promise.all([
    db.receipt.findFirst({ where: { keyId }, orderBy: { createdAt: "desc" }, select: { createdAt: true } }),
    db.failedRequest.findFirst({ where: { keyId }, orderBy: { createdAt: "desc" }, select: { createdAt: true } }),
  ]);
  if (!r) return f?.createdAt ?? null;
  if (!f) return r.createdAt;
  return r.createdAt > f.createdAt ? r.createdAt : f.createdAt;
}
