// The ledger outside the request path: top-ups, adjustments and refunds (tg_post_entry, once per
// idempotency key), a wallet's bucket, and what a scope has spent and holds in a window.
import { db, type PrismaClient } from "../db/index.ts";
import { badInput, notFound } from "../errors.ts";
import type { BalanceBucket, CapScope, LedgerKind } from "../generated/prisma/enums.ts";
import type { LedgerEntry, WalletBucket } from "../generated/prisma/client.ts";
import { translateDbError, utc, type SqlClient } from "./sql.ts";
import { windowFor, type ZoneState } from "./windows.ts";

export interface PostEntryInput {
  bucketId: string;
  kind: Exclude<LedgerKind, "CHARGE">;
  amount: bigint;
  idempotencyKey: string;
  actorTokenId?: string | null;
  memo?: string | null;
  now?: Date;
}

/** Writes a TOPUP / ADJUSTMENT / REFUND once per idempotency key; a replay returns the first entry. */
export async function postEntry(input: PostEntryInput, client: SqlClient & Pick<PrismaClient, "ledgerEntry"> = db): Promise<{ entry: LedgerEntry; created: boolean }> {
  if (!input.idempotencyKey.trim()) throw badInput("idempotencyKey", "must not be empty");
  if (input.idempotencyKey.length > 200) throw badInput("idempotencyKey", "must be at most 200 characters");
  const rows = await client
    .$queryRawUnsafe<{ entry_id: string; created: boolean }[]>(
      `SELECT entry_id, created FROM tg_post_entry($1, $2::"LedgerKind", $3::bigint, $4, $5, $6, $7::timestamptz AT TIME ZONE 'UTC')`,
      input.bucketId,
      input.kind,
      input.amount.toString(),
      // Namespaced so client keys can never collide with the internal `hold:` keys of charges.
      `client:${input.idempotencyKey}`,
      input.actorTokenId ?? null,
      input.memo ?? null,
      utc(input.now ?? new Date()),
    )
    .catch(translateDbError);
  const row = rows[0]!;
  const entry = await client.ledgerEntry.findUniqueOrThrow({ where: { id: row.entry_id } });
  return { entry, created: row.created };
}

export async function walletBucket(organizationId: string, bucket: BalanceBucket): Promise<WalletBucket> {
  const found = await db.walletBucket.findFirst({ where: { bucket, wallet: { organizationId } } });
  if (!found) throw notFound("wallet bucket", `${organizationId}/${bucket}`);
  return found;
}

export interface ScopeSpend {
  spent: bigint;
  held: bigint;
}

/** Spent and held for one scope, bucket and window (zero when nothing was reserved yet). */
export async function scopeSpend(scope: CapScope, scopeId: string, bucket: BalanceBucket, now = new Date(), zone?: ZoneState): Promise<ScopeSpend> {
  const counter = await db.spendCounter.findUnique({
    where: { scope_scopeId_bucket_windowStart: { scope, scopeId, bucket, windowStart: windowFor(scope, now, zone) } },
  });
  return { spent: counter?.spent ?? 0n, held: counter?.held ?? 0n };
}
