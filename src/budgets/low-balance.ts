// Low-balance alerts. An organization sets a threshold per bucket (setLowBalanceThreshold, audited);
// the charge that takes the bucket's ledger balance below it raises one alert: stored (BalanceAlert),
// published live (lowBalanceAlert) and delivered to the alert webhook. A top-up or adjustment that
// lifts the balance back to the threshold, or a new threshold, re-arms it. A threshold set above
// the current balance alerts at once.
//
// Cost: checked after this instance's committed charges, off the request path, from the balance the
// batch returned. At most one read per bucket per THRESHOLD_CACHE_MS while it spends, one write per
// crossing; the conditional update decides which instance raises the alert.
import { db, directSql } from "../db/index.ts";
import type { Prisma, WalletBucket } from "../generated/prisma/client.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { assertCanWrite, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { badInput } from "../errors.ts";
import { parseMoney } from "../money/amounts.ts";
import { walletBucket, onRequestRecorded, type ChargedBalance } from "../money/index.ts";
import type { EventBus } from "../events/index.ts";
import { services } from "../installed.ts";

type Tx = Prisma.TransactionClient;

/** How long an instance trusts what it read of a threshold (a change on another instance is also announced). */
const THRESHOLD_CACHE_MS = 5_000;
const THRESHOLD_CACHE_MAX = 10_000;

interface KnownThreshold {
  threshold: bigint | null;
  /** An alert was raised and not re-armed (or this instance just tried). */
  alerted: boolean;
  until: number;
}

const known = new Map<string, KnownThreshold>();

async function thresholdOf(bucketId: string): Promise<KnownThreshold> {
  const hit = known.get(bucketId);
  if (hit && hit.until > Date.now()) return hit;
  const rows = await directSql().$queryRawUnsafe<Array<{ threshold: string; alerted: boolean }>>(
    `SELECT threshold::text AS threshold, "alertedAt" IS NOT NULL AS alerted FROM "BalanceThreshold" WHERE "bucketId" = $1`,
    bucketId,
  );
  const fresh = { threshold: rows[0] ? BigInt(rows[0].threshold) : null, alerted: rows[0]?.alerted ?? false, until: Date.now() + THRESHOLD_CACHE_MS };
  if (known.size >= THRESHOLD_CACHE_MAX) known.clear();
  known.set(bucketId, fresh);
  return fresh;
}

/**
 * Raises the alert of a bucket whose balance is below its armed threshold: the conditional update
 * lets one caller win across instances, and re-reads the bucket's balance (a credit that came after
 * the charge being checked leaves nothing to alert).
 */
async function raise(bus: EventBus, bucketId: string, bucket: BalanceBucket, balance: bigint, requestId: string | null, at: Date): Promise<void> {
  const rows = await directSql().$queryRawUnsafe<Array<{ id: string; organizationId: string; threshold: string }>>(
    `WITH armed AS (
       UPDATE "BalanceThreshold" t SET "alertedAt" = $2::timestamptz AT TIME ZONE 'UTC'
         FROM "WalletBucket" b
        WHERE t."bucketId" = $1 AND b.id = t."bucketId" AND t."alertedAt" IS NULL
          AND t.threshold > $3::bigint AND b.balance < t.threshold
       RETURNING t."organizationId", t.threshold)
     INSERT INTO "BalanceAlert" ("organizationId", bucket, threshold, balance, "requestId", "createdAt")
     SELECT "organizationId", $4::"BalanceBucket", threshold, $3::bigint, $5, $2::timestamptz AT TIME ZONE 'UTC' FROM armed
     RETURNING id, "organizationId", threshold::text AS threshold`,
    bucketId,
    at.toISOString(),
    balance.toString(),
    bucket,
    requestId,
  );
  const row = rows[0];
  if (!row) return;
  bus.publish("lowBalanceAlert", {
    id: row.id,
    organizationId: row.organizationId,
    bucket,
    threshold: row.threshold,
    balance: balance.toString(),
    requestId,
    createdAt: at.toISOString(),
  });
}

async function check(bus: EventBus, charged: ChargedBalance, bucket: BalanceBucket, requestId: string, at: Date): Promise<void> {
  const threshold = await thresholdOf(charged.bucketId);
  if (threshold.threshold === null || threshold.alerted || charged.balanceAfter >= threshold.threshold) return;
  // One attempt per instance until the cache refreshes or a re-arm is announced.
  threshold.alerted = true;
  await raise(bus, charged.bucketId, bucket, charged.balanceAfter, requestId, at);
}

/** Starts checking this instance's committed charges against their bucket's threshold. Returns stop(). */
export function watchLowBalance(bus: EventBus, onError: (error: unknown) => void): () => void {
  const stopRecorded = onRequestRecorded((event) => {
    const bucket = event.record.bucket;
    if (!event.balance || !bucket || event.record.charge <= 0n) return;
    check(bus, event.balance, bucket, event.record.requestId, event.at).catch(onError);
  });
  const stopChanged = bus.listen("balanceThresholdChanged", (e) => known.delete(e.bucketId));
  return () => {
    stopRecorded();
    stopChanged();
    known.clear();
  };
}

/**
 * After a credit to a bucket (inside its transaction): a threshold the balance is back at or above
 * is armed again. Returns whether one was; the caller announces it after the commit.
 */
export async function rearmLowBalance(tx: Tx, bucketId: string): Promise<boolean> {
  const changed = await tx.$executeRawUnsafe(
    `UPDATE "BalanceThreshold" t SET "alertedAt" = NULL
       FROM "WalletBucket" b
      WHERE t."bucketId" = $1 AND b.id = t."bucketId" AND t."alertedAt" IS NOT NULL AND b.balance >= t.threshold`,
    bucketId,
  );
  return changed > 0;
}

export function announceThresholdChanged(bucketId: string): void {
  services().events.publish("balanceThresholdChanged", { bucketId });
}

export interface SetLowBalanceThresholdInput {
  organizationId?: string | null;
  bucket: BalanceBucket;
  /** In the bucket's currency; null removes the threshold. */
  threshold: string | null;
}

/** Sets (or removes) an organization's low-balance threshold for one bucket; audited; re-arms the alert. */
export async function setLowBalanceThreshold(viewer: Viewer, input: SetLowBalanceThresholdInput): Promise<WalletBucket> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId ?? null);
  assertCanWrite(viewer, organizationId);
  const threshold = input.threshold === null ? null : parseMoney(input.threshold, "threshold");
  if (threshold !== null && threshold <= 0n) throw badInput("threshold", "must be positive (null removes it)");
  const bucket = await walletBucket(organizationId, input.bucket);
  await db.$transaction(async (tx) => {
    const before = await tx.balanceThreshold.findUnique({ where: { bucketId: bucket.id } });
    if (threshold === null) await tx.balanceThreshold.deleteMany({ where: { bucketId: bucket.id } });
    else
      await tx.balanceThreshold.upsert({
        where: { bucketId: bucket.id },
        create: { organizationId, bucketId: bucket.id, threshold },
        update: { threshold, alertedAt: null, updatedAt: new Date() },
      });
    await writeAudit(tx, viewer, {
      organizationId,
      action: "setLowBalanceThreshold",
      targetType: "WalletBucket",
      targetId: bucket.id,
      before: { bucket: input.bucket, threshold: before?.threshold ?? null },
      after: { bucket: input.bucket, threshold },
    });
  });
  announceThresholdChanged(bucket.id);
  const now = await db.walletBucket.findUniqueOrThrow({ where: { id: bucket.id } });
  // Already below: say so now rather than at the next charge.
  if (threshold !== null && now.balance < threshold) await raise(services().events, bucket.id, input.bucket, now.balance, null, new Date());
  return now;
}
