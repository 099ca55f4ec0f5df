import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { BudgetStatusRef, MoneyRef, budgetMoney, NEWEST_FIRST } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

builder.prismaObject("Project", {
  interfaces: [NodeRef],
  authScopes: (p) => ({ owns: { organizationId: p.organizationId, projectId: p.id } }),
  fields: (t) => {
    const bucketArg = { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default CREDIT." }) };
    return {
      id: t.exposeID("id"),
      name: t.exposeString("name"),
      organization: t.relation("organization"),
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p.id, bucket ?? "CREDIT", "cap") }),
      monthlyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p.id, bucket ?? "CREDIT", "cap") }),
      spendToday: t.field({ type: MoneyRef, args: bucketArg, description: "Settled spend in the current UTC day (requests in flight are in `budgets.held`).",
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p.id, bucket ?? "CREDIT", "spent") }),
      remainingToday: t.field({ type: MoneyRef, nullable: true, args: bucketArg, description: "Daily cap − spent − held; null when uncapped.",
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p.id, bucket ?? "CREDIT", "remaining") }),
      spendThisMonth: t.field({ type: MoneyRef, args: bucketArg,
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p.id, bucket ?? "CREDIT", "spent") }),
      remainingThisMonth: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p.id, bucket ?? "CREDIT", "remaining") }),
      budgets: t.field({
        type: [BudgetStatusRef],
        description: "Every window of this project in both buckets.",
        resolve: (p, _args, ctx) =>
          Promise.all(
            (["PROJECT_DAILY", "PROJECT_MONTHLY"] as const).flatMap((scope) =>
              (["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget(scope, p.id, b)),
            ),
          ),
      }),
      apiKeys: t.relatedConnection("apiKeys", { cursor: "id", totalCount: true, query: { orderBy: { createdAt: "asc" } } }),
      receipts: t.relatedConnection("receipts", NEWEST_FIRST),
      failedRequests: t.relatedConnection("failedRequests", NEWEST_FIRST),
      runs: t.relatedConnection("runs", NEWEST_FIRST),
    };
  },
});
