import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { RequestFilter, requestFilterWhere } from "../../resolvers/filters.ts";
import { ReceiptConnection, ReceiptOrder } from "./receipt.ts";
import { BudgetStatusRef, MoneyRef, budgetMoney } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

export const RouteRef = builder.prismaObject("Route", {
  interfaces: [NodeRef],
  description: "A catalog model clients request, and the channels that serve it in priority order.",
  authScopes: (r) => ({ owns: { organizationId: r.organizationId } }),
  fields: (t) => {
    const bucketArg = { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default CREDIT." }) };
    return {
      id: t.exposeID("id"),
      model: t.exposeString("model"),
      defaultMaxTokens: t.exposeInt("defaultMaxTokens", { description: "Output bound reserved for requests without max_tokens." }),
      maxUnboundedPartTokens: t.exposeInt("maxUnboundedPartTokens", {
        nullable: true,
        description: "Prompt tokens reserved per audio / file part; null: such parts are refused (400 unsupported_content).",
      }),
      channels: t.relation("channels", {
        args: { includeDisabled: t.arg.boolean({ required: false }) },
        query: (args) => ({
          where: args.includeDisabled ? {} : { enabled: true },
          orderBy: [{ priority: "asc" }, { createdAt: "asc" }],
        }),
      }),
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r, bucket ?? "CREDIT", "cap") }),
      spendToday: t.field({ type: MoneyRef, args: bucketArg, resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r, bucket ?? "CREDIT", "spent") }),
      remainingToday: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (r, { bucket }, ctx) => budgetMoney(ctx, "ROUTE_DAILY", r, bucket ?? "CREDIT", "remaining") }),
      budgets: t.field({
        type: [BudgetStatusRef],
        resolve: (r, _args, ctx) => Promise.all((["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget("ROUTE_DAILY", r, b))),
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
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      updatedAt: t.expose("updatedAt", { type: "DateTime" }),
    };
  },
});
