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
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k.id, bucket ?? primaryBucket(k), "cap") }),
      perRequestMaxCharge: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_PER_REQUEST", k.id, bucket ?? primaryBucket(k), "cap") }),
      spendToday: t.field({ type: MoneyRef, args: bucketArg, description: "Settled spend in the current UTC day.",
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k.id, bucket ?? primaryBucket(k), "spent") }),
      remainingToday: t.field({ type: MoneyRef, nullable: true, args: bucketArg, description: "Daily cap − spent − held; null when uncapped.",
        resolve: (k, { bucket }, ctx) => budgetMoney(ctx, "KEY_DAILY", k.id, bucket ?? primaryBucket(k), "remaining") }),
      budgets: t.field({
        type: [BudgetStatusRef],
        description: "Daily window of this key in each allowed bucket.",
        resolve: (k, _args, ctx) => Promise.all(k.allowedBuckets.map((b) => ctx.loaders.budget("KEY_DAILY", k.id, b))),
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
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      updatedAt: t.expose("updatedAt", { type: "DateTime" }),
    };
  },
});

export const ApiKeyOrder = listOrder<Prisma.ApiKeyOrderByWithRelationInput>()("ApiKey", { CREATED_AT: (d) => ({ createdAt: d }), NAME: (d) => ({ name: d }) }, (d) => [{ id: d }], { field: "CREATED_AT", direction: "ASC" });
export const ApiKeyConnection = builder.connectionObject({ type: ApiKeyRef, name: "ApiKeyConnection" }, { name: "ApiKeyEdge" });
