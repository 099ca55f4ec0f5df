import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { LedgerKind } from "../../generated/prisma/enums.ts";

export const LedgerEntryRef = builder.prismaObject("LedgerEntry", {
  interfaces: [NodeRef],
  description: "An immutable movement of one bucket's balance. Corrections are new entries.",
  authScopes: (e) => ({ owns: { organizationId: e.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    bucket: t.relation("bucket"),
    kind: t.field({ type: LedgerKind, resolve: (e) => e.kind }),
    amount: t.field({
      type: MoneyRef,
      description: "Signed: top-ups positive, charges negative.",
      select: { bucket: { select: { bucket: true } } },
      resolve: (e) => moneyOf(e.amount, e.bucket.bucket),
    }),
    balanceAfter: t.field({
      type: MoneyRef,
      select: { bucket: { select: { bucket: true } } },
      resolve: (e) => moneyOf(e.balanceAfter, e.bucket.bucket),
    }),
    idempotencyKey: t.string({
      nullable: true,
      description: "The key a top-up or adjustment was posted with (null for charges).",
      resolve: (e) => (e.idempotencyKey.startsWith("client:") ? e.idempotencyKey.slice("client:".length) : null),
    }),
    memo: t.exposeString("memo", { nullable: true }),
    receipt: t.relation("receipt", { nullable: true }),
    failedRequest: t.relation("failedRequest", { nullable: true }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

/** CREATED_AT sorts by the ledger's sequence: the order entries were posted in. */
export const LedgerEntryOrder = listOrder<Prisma.LedgerEntryOrderByWithRelationInput>()("LedgerEntry", { CREATED_AT: (d) => ({ sequence: d }) }, () => [], { field: "CREATED_AT", direction: "DESC" });
export const LedgerEntryConnection = builder.connectionObject({ type: LedgerEntryRef, name: "LedgerEntryConnection" }, { name: "LedgerEntryEdge" });
