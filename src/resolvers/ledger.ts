import { builder } from "../schema/builder.ts";
import { announceThresholdChanged, rearmLowBalance } from "../budgets/low-balance.ts";
import type { EventBus } from "../events/index.ts";
import { db } from "../db/index.ts";
import { isPlatform, resolveOrganizationId } from "../auth/index.ts";
import { postEntry, walletBucket } from "../money/index.ts";
import { writeAudit } from "../audit/index.ts";
import { badInput, forbidden } from "../errors.ts";
import { parseMoney } from "../money/amounts.ts";
import { BalanceBucket, LedgerKind } from "../generated/prisma/enums.ts";
import { ledgerWhere } from "./filters.ts";
import { viewerOf } from "./viewer.ts";
import { LedgerEntryConnection, LedgerEntryOrder } from "../schema/types/ledger-entry.ts";
import type { Viewer } from "../auth/index.ts";

builder.queryFields((t) => ({
  wallet: t.prismaField({
    type: "Wallet",
    args: { organizationId: t.arg.id({ required: false }) },
    resolve: async (query, _root, args, ctx) => {
      const organizationId = await resolveOrganizationId(viewerOf(ctx), args.organizationId ? String(args.organizationId) : null);
      return db.wallet.findUniqueOrThrow({ ...query, where: { organizationId } });
    },
  }),
  ledgerEntries: t.prismaConnection(
    {
      type: "LedgerEntry",
      cursor: "id",
      description: "Newest first by default.",
      args: {
        organizationId: t.arg.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
        bucket: t.arg({ type: BalanceBucket, required: false }),
        kind: t.arg({ type: LedgerKind, required: false }),
        keyId: t.arg.id({ required: false, description: "Charges of this key." }),
        projectId: t.arg.id({ required: false }),
        routeId: t.arg.id({ required: false }),
        runId: t.arg.id({ required: false, description: "Charges of requests sent with this run id (x-run-id)." }),
        model: t.arg.string({ required: false, description: "Charges for this requested model." }),
        from: t.arg({ type: "DateTime", required: false }),
        to: t.arg({ type: "DateTime", required: false }),
        orderBy: t.arg({ type: LedgerEntryOrder.Input, required: false, description: LedgerEntryOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.ledgerEntry.findMany({ ...query, where: ledgerWhere(viewerOf(ctx), args), orderBy: LedgerEntryOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.ledgerEntry.count({ where: ledgerWhere(viewerOf(ctx), args) }),
    },
    LedgerEntryConnection,
  ),
}));

const TopUpInput = builder.inputType("TopUpInput", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Default: the default organization." }),
    bucket: t.field({ type: BalanceBucket, required: true }),
    amount: t.field({ type: "Decimal", required: true, description: "Positive, in the bucket's currency." }),
    idempotencyKey: t.string({ required: true, description: "Replaying the same key returns the same entry; the same key with another amount is a CONFLICT." }),
    memo: t.string({ required: false }),
  }),
});

const AdjustBalanceInput = builder.inputType("AdjustBalanceInput", {
  description: "A correction: a new ADJUSTMENT entry (signed). The ledger is never edited.",
  fields: (t) => ({
    organizationId: t.id({ required: false }),
    bucket: t.field({ type: BalanceBucket, required: true }),
    amount: t.field({ type: "Decimal", required: true, description: 'Signed, e.g. "-2.50".' }),
    idempotencyKey: t.string({ required: true }),
    memo: t.string({ required: true, description: "Why: shown in the ledger and the audit trail." }),
  }),
});

async function post(
  viewer: Viewer,
  events: Pick<EventBus, "publish">,
  kind: "TOPUP" | "ADJUSTMENT",
  input: { organizationId?: string | number | null; bucket: "CREDIT" | "ROUTED"; amount: string; idempotencyKey: string; memo?: string | null },
) {
  if (!isPlatform(viewer)) throw forbidden("only platform admins can move balances");
  const organizationId = await resolveOrganizationId(viewer, input.organizationId ? String(input.organizationId) : null);
  const amount = parseMoney(input.amount, "amount", { allowNegative: kind === "ADJUSTMENT" });
  if (amount === 0n) throw badInput("amount", kind === "TOPUP" ? "must be positive" : "must not be zero");
  const bucket = await walletBucket(organizationId, input.bucket);
  // The entry and its audit record commit together; a replay writes neither again.
  let rearmed = false;
  const entry = await db.$transaction(async (tx) => {
    const { entry, created } = await postEntry({ bucketId: bucket.id, kind, amount, idempotencyKey: input.idempotencyKey, actorTokenId: viewer.tokenId, memo: input.memo }, tx);
    if (created) {
      await writeAudit(tx, viewer, {
        organizationId,
        action: kind === "TOPUP" ? "topUp" : "adjustBalance",
        targetType: "LedgerEntry",
        targetId: entry.id,
        before: { balance: entry.balanceAfter - entry.amount },
        after: { entry, balance: entry.balanceAfter },
      });
      // A credit that lifts the balance back to its low-balance threshold arms the next alert.
      if (amount > 0n) rearmed = await rearmLowBalance(tx, bucket.id);
    }
    return entry;
  });
  if (rearmed) announceThresholdChanged(bucket.id);
  // Wallet streams of every instance read the new balance at their next turn.
  events.publish("walletChanged", { organizationId });
  return entry;
}

builder.mutationFields((t) => ({
  topUp: t.prismaField({
    type: "LedgerEntry",
    description: "Platform admins only.",
    args: { input: t.arg({ type: TopUpInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const entry = await post(viewerOf(ctx), ctx.events, "TOPUP", input);
      return db.ledgerEntry.findUniqueOrThrow({ ...query, where: { id: entry.id } });
    },
  }),
  adjustBalance: t.prismaField({
    type: "LedgerEntry",
    description: "Platform admins only.",
    args: { input: t.arg({ type: AdjustBalanceInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const entry = await post(viewerOf(ctx), ctx.events, "ADJUSTMENT", input);
      return db.ledgerEntry.findUniqueOrThrow({ ...query, where: { id: entry.id } });
    },
  }),
}));
