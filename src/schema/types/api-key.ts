import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { RequestFilter, requestFilterWhere } from "../../resolvers/filters.ts";
import { ReceiptConnection, ReceiptOrder } from "./receipt.ts";
import { FailedRequestConnection, FailedRequestOrder } from "./failed-request.ts";
import { RunConnection, RunOrder } from "./run.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { BudgetStatusRef, MoneyRef, budgetMoney } from "./common.ts";
import { BalanceBucket, FailedChargePolicy, KeyStatus } from "../../generated/prisma/enums.ts";
import { primaryBucket } from "../../keys/index.ts";
import { keyPlans } from "../../keys/plan.ts";
import { ledgerWhere } from "../../resolvers/filters.ts";
import { viewerOf } from "../../resolvers/viewer.ts";
import { db } from "../../db/index.ts";
import { LedgerKind } from "../../generated/prisma/enums.ts";
import { LedgerEntryConnection, LedgerEntryOrder } from "./ledger-entry.ts";
import { BucketSpendRef, KeyModelPlanRef } from "./key-plan.ts";

export const ApiKeyRef = builder.prismaObject("ApiKey", {
  interfaces: [NodeRef],
  description: "A key's whole operating surface: what it may call, which balance it spends, its caps, and what it has spent.",
  authScopes: (k) => ({ owns: { organizationId: k.organizationId, projectId: k.projectId } }),
  fields: (t) => {
    const bucketArg = { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default: the key's first allowed bucket." }) };
    return {
      id: t.exposeID("id"),
      name: t.exposeString("name"),
      prefix: t.exposeString("prefix", { description: "The start of the secret, for recognising it (the secret itself is never shown again)." }),
      last4: t.exposeString("last4"),
      status: t.field({ type: KeyStatus, resolve: (k) => k.status }),
      project: t.relation("project"),
      allowedModels: t.exposeStringList("allowedModels", { description: "Empty = every model routed for the organization." }),
      allowedBuckets: t.field({ type: [BalanceBucket], resolve: (k) => k.allowedBuckets }),
      lowerCostRoutes: t.exposeBoolean("lowerCostRoutes", { description: "May use ROUTED (lower-cost) channels." }),
      backupRoutes: t.exposeBoolean("backupRoutes", { description: "May fall back to backup channels." }),
      retryCeiling: t.exposeInt("retryCeiling"),
      failedChargePolicy: t.field({ type: FailedChargePolicy, resolve: (k) => k.failedChargePolicy }),
      expiresAt: t.expose("expiresAt", { type: "DateTime", nullable: true }),
      rpmLimit: t.exposeInt("rpmLimit", { nullable: true, description: "Requests per minute; null = no limit." }),
      tpmLimit: t.exposeInt("tpmLimit", { nullable: true, description: "Tokens (prompt + output) per minute; null = no limit." }),
      maxConcurrent: t.exposeInt("maxConcurrent", { nullable: true, description: "Requests in flight at once; null = no limit." }),
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k, bucket ?? primaryBucket(k), "cap") }),
      perRequestMaxCharge: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_PER_REQUEST", k, bucket ?? primaryBucket(k), "cap") }),
      spendToday: t.field({
        type: MoneyRef,
        args: bucketArg,
        description: "Settled spend in the current day of the organization's time zone (Organization.timeZone).",
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k, bucket ?? primaryBucket(k), "spent"),
      }),
      remainingToday: t.field({
        type: MoneyRef,
        nullable: true,
        args: bucketArg,
        description: "Daily cap − spent − held; null when uncapped.",
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k, bucket ?? primaryBucket(k), "remaining"),
      }),
      budgets: t.field({
        type: [BudgetStatusRef],
        description: "Daily window of this key in each allowed bucket.",
        resolve: (k, _args, ctx) => Promise.all(k.allowedBuckets.map((b) => ctx.loaders.budget("KEY_DAILY", k, b))),
      }),
      receipts: t.relatedConnection(
        "receipts",
        {
          cursor: "id",
          totalCount: true,
          description: "The same filter and order as the root receipts field.",
          args: { filter: t.arg({ type: RequestFilter, required: false }), orderBy: t.arg({ type: ReceiptOrder.Input, required: false, description: ReceiptOrder.description }) },
          query: (args) => ({ where: requestFilterWhere(args.filter), orderBy: ReceiptOrder.orderBy(args.orderBy) }),
        },
        ReceiptConnection,
      ),
      failedRequests: t.relatedConnection(
        "failedRequests",
        {
          cursor: "id",
          totalCount: true,
          description: "The same filter and order as the root failedRequests field.",
          args: { filter: t.arg({ type: RequestFilter, required: false }), orderBy: t.arg({ type: FailedRequestOrder.Input, required: false, description: FailedRequestOrder.description }) },
          query: (args) => ({ where: requestFilterWhere(args.filter), orderBy: FailedRequestOrder.orderBy(args.orderBy) }),
        },
        FailedRequestConnection,
      ),
      runs: t.relatedConnection(
        "runs",
        {
          cursor: "id",
          totalCount: true,
          args: { orderBy: t.arg({ type: RunOrder.Input, required: false, description: RunOrder.description }) },
          query: (args) => ({ orderBy: RunOrder.orderBy(args.orderBy) }),
        },
        RunConnection,
      ),
      plan: t.field({
        type: [KeyModelPlanRef],
        description:
          "What this key gets per model, before it spends: channels in the order tried, the bucket and price on each, every limit per bucket (spent, held, remaining), rate limits, retries and the failed-request policy. Without model: every model it may call.",
        args: {
          model: t.arg.string({ required: false, description: "One catalog model (also one it may not call: the plan then says why)." }),
          runId: t.arg.id({ required: false, description: "Include this run's cap (a run of this key)." }),
        },
        resolve: (k, args, ctx) => keyPlans(viewerOf(ctx), k, { model: args.model, runId: args.runId ? String(args.runId) : null }),
      }),
      spend: t.field({
        type: [BucketSpendRef],
        description: "Charged per bucket (both, always; never one total) over [from, to): default the current day of the organization's time zone.",
        args: { from: t.arg({ type: "DateTime", required: false }), to: t.arg({ type: "DateTime", required: false }) },
        resolve: (k, args, ctx) => ctx.loaders.keySpend.load({ keyId: k.id, organizationId: k.organizationId, from: args.from ?? null, to: args.to ?? null }),
      }),
      lastUsedAt: t.field({
        type: "DateTime",
        nullable: true,
        description: "When its latest request (answered or failed) was recorded; null if never used.",
        resolve: (k, _args, ctx) => ctx.loaders.keyLastUsed.load(k.id),
      }),
      ledgerEntries: t.prismaConnection(
        {
          type: "LedgerEntry",
          cursor: "id",
          description: "The ledger entries of this key's charges, with the root ledgerEntries' filter and order (newest first). Not for project viewer tokens (they cannot read the ledger).",
          args: {
            bucket: t.arg({ type: BalanceBucket, required: false }),
            kind: t.arg({ type: LedgerKind, required: false }),
            routeId: t.arg.id({ required: false }),
            runId: t.arg.id({ required: false }),
            model: t.arg.string({ required: false }),
            from: t.arg({ type: "DateTime", required: false }),
            to: t.arg({ type: "DateTime", required: false }),
            orderBy: t.arg({ type: LedgerEntryOrder.Input, required: false, description: LedgerEntryOrder.description }),
          },
          resolve: (query, k, args, ctx) =>
            db.ledgerEntry.findMany({
              ...query,
              where: { ...ledgerWhere(viewerOf(ctx), { ...args, keyId: k.id }), organizationId: k.organizationId },
              orderBy: LedgerEntryOrder.orderBy(args.orderBy),
            }),
          totalCount: (k, args, ctx) => db.ledgerEntry.count({ where: { ...ledgerWhere(viewerOf(ctx), { ...args, keyId: k.id }), organizationId: k.organizationId } }),
        },
        LedgerEntryConnection,
      ),
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      updatedAt: t.expose("updatedAt", { type: "DateTime" }),
    };
  },
});

export const ApiKeyOrder = listOrder<Prisma.ApiKeyOrderByWithRelationInput>()("ApiKey", { CREATED_AT: (d) => ({ createdAt: d }), NAME: (d) => ({ name: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "ASC",
});
export const ApiKeyConnection = builder.connectionObject({ type: ApiKeyRef, name: "ApiKeyConnection" }, { name: "ApiKeyEdge" });
