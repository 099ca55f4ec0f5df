import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { RequestFilter, requestFilterWhere } from "../../resolvers/filters.ts";
import { ReceiptConnection, ReceiptOrder } from "./receipt.ts";
import { FailedRequestConnection, FailedRequestOrder } from "./failed-request.ts";
import { RunConnection, RunOrder } from "./run.ts";
import { ApiKeyConnection, ApiKeyOrder } from "./api-key.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { BudgetStatusRef, MoneyRef, budgetMoney } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

export const ProjectRef = builder.prismaObject("Project", {
  interfaces: [NodeRef],
  authScopes: (p) => ({ owns: { organizationId: p.organizationId, projectId: p.id } }),
  fields: (t) => {
    const bucketArg = { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default CREDIT." }) };
    return {
      id: t.exposeID("id"),
      name: t.exposeString("name"),
      organization: t.relation("organization"),
      createdAt: t.expose("createdAt", { type: "DateTime" }),
      dailyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p, bucket ?? "CREDIT", "cap") }),
      monthlyCap: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p, bucket ?? "CREDIT", "cap") }),
      spendToday: t.field({
        type: MoneyRef,
        args: bucketArg,
        description: "Settled spend in the current day of the organization's time zone (requests in flight are in `budgets.held`).",
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p, bucket ?? "CREDIT", "spent"),
      }),
      remainingToday: t.field({
        type: MoneyRef,
        nullable: true,
        args: bucketArg,
        description: "Daily cap − spent − held; null when uncapped.",
        resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_DAILY", p, bucket ?? "CREDIT", "remaining"),
      }),
      spendThisMonth: t.field({ type: MoneyRef, args: bucketArg, resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p, bucket ?? "CREDIT", "spent") }),
      remainingThisMonth: t.field({ type: MoneyRef, nullable: true, args: bucketArg, resolve: (p, { bucket }, ctx) => budgetMoney(ctx, "PROJECT_MONTHLY", p, bucket ?? "CREDIT", "remaining") }),
      budgets: t.field({
        type: [BudgetStatusRef],
        description: "Every window of this project in both buckets.",
        resolve: (p, _args, ctx) => Promise.all((["PROJECT_DAILY", "PROJECT_MONTHLY"] as const).flatMap((scope) => (["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget(scope, p, b)))),
      }),
      apiKeys: t.relatedConnection(
        "apiKeys",
        {
          cursor: "id",
          totalCount: true,
          args: { orderBy: t.arg({ type: ApiKeyOrder.Input, required: false, description: ApiKeyOrder.description }) },
          query: (args) => ({ orderBy: ApiKeyOrder.orderBy(args.orderBy) }),
        },
        ApiKeyConnection,
      ),
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
    };
  },
});

export const ProjectOrder = listOrder<Prisma.ProjectOrderByWithRelationInput>()("Project", { CREATED_AT: (d) => ({ createdAt: d }), NAME: (d) => ({ name: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "ASC",
});
export const ProjectConnection = builder.connectionObject({ type: ProjectRef, name: "ProjectConnection" }, { name: "ProjectEdge" });
