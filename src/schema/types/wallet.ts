import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

export const WalletBalanceRef = builder.prismaObject("WalletBucket", {
  interfaces: [NodeRef],
  name: "WalletBalance",
  description: "One balance bucket: balance is the sum of its ledger entries; held is reserved by requests in flight; available = balance − held.",
  authScopes: (b) => ({ owns: { organizationId: b.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    bucket: t.field({ type: BalanceBucket, resolve: (b) => b.bucket }),
    currency: t.exposeString("currency"),
    balance: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.balance, b.bucket) }),
    held: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.held, b.bucket) }),
    available: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.balance - b.held, b.bucket) }),
    lowBalanceThreshold: t.field({
      type: MoneyRef,
      nullable: true,
      select: { lowBalance: true },
      description: "The organization's low-balance threshold (setLowBalanceThreshold); null when none is set.",
      resolve: (b) => (b.lowBalance ? moneyOf(b.lowBalance.threshold, b.bucket) : null),
    }),
    lowBalanceAlerted: t.boolean({
      select: { lowBalance: true },
      description: "A low-balance alert was raised and not yet re-armed by a credit back to the threshold.",
      resolve: (b) => b.lowBalance?.alertedAt != null,
    }),
    updatedAt: t.expose("updatedAt", { type: "DateTime" }),
  }),
});

builder.prismaObject("Wallet", {
  interfaces: [NodeRef],
  authScopes: (w) => ({ owns: { organizationId: w.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    organization: t.relation("organization"),
    balances: t.relation("buckets", { query: { orderBy: { bucket: "asc" } } }),
  }),
});
