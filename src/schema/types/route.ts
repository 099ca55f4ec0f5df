import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { BudgetStatusRef, MoneyRef, budgetMoney, NEWEST_FIRST } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

builder.prismaObject("Route", {
  interfaces: [NodeRef],
  description: "A catalog model clients request, and the channels that serve it in priority order.",
  authScopes: (r) => ({ owns: { organizationId: r.organizationId } }),
  fields: (t) => {
    const bucketArg = { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default CREDIT." }) };
    return {
      id: t.exposeID("id"),
      model: t.exposeString("model"),
      defaultMaxTokens: t.exposeInt("defaultMaxTokens", { description: "Output bound reserved for requests without max_tokens." }),
      maxUnboundedPartTokens: t.exposeInt("maxUnboundedPartTokens", { nullable: true, description: "Prompt tokens reserved per audio / file part; null: such parts are refused (400 unsupported_content)." }),
      channels: t.relation("channels", {
        args: { includeDisabled: t.arg.boolean({ required: false }) },
        query: (args) => ({
          where: args.includeDisabled ? {} : { enabled: true },
          orderBy: [{ priority: "asc" }, { createdAt: "asc" }],
        }),
      }),
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r.id, bucket ?? "CREDIT", "cap") }),
      spendToday: t.field({ type: MoneyRef, args: bucketArg,
        resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r.id, bucket ?? "CREDIT", "spent") }),
      remainingToday: t.field({ type: MoneyRef, nullable: true, args: bucketArg,
        resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r.id, bucket ?? "CREDIT", "remaining") }),
      budgets: t.field({
        type: [BudgetStatusRef],
        resolve: (r, _args, ctx) => Promise.all((["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget("ROUTE_DAILY", r.id, b))),
      }),
      receipts: t.relatedConnection("receipts", NEWEST_FIRST),
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      updatedAt: t.expose("updatedAt", { type: "DateTime" }),
    };
  },
});
