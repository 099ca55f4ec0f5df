import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { RequestFilter, requestFilterWhere } from "../../resolvers/filters.ts";
import { ReceiptConnection, ReceiptOrder } from "./receipt.ts";
import { FailedRequestConnection, FailedRequestOrder } from "./failed-request.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { BudgetStatusRef } from "./common.ts";
import { RunMode, RunStatus } from "../../generated/prisma/enums.ts";

export const RunRef = builder.prismaObject("Run", {
  interfaces: [NodeRef],
  description: "An agent or research run with its own cap; requests sent with x-run-id count against it.",
  authScopes: (r) => ({ owns: { organizationId: r.organizationId, projectId: r.projectId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    key: t.relation("key"),
    project: t.relation("project"),
    mode: t.field({ type: RunMode, resolve: (r) => r.mode }),
    status: t.field({ type: RunStatus, resolve: (r) => r.status }),
    budgets: t.field({
      type: [BudgetStatusRef],
      description: "The run's total cap and spend in each bucket.",
      resolve: (r, _args, ctx) => Promise.all((["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget("RUN_TOTAL", r.id, b))),
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
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    endedAt: t.expose("endedAt", { type: "DateTime", nullable: true }),
  }),
});

export const RunOrder = listOrder<Prisma.RunOrderByWithRelationInput>()("Run", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], { field: "CREATED_AT", direction: "DESC" });
export const RunConnection = builder.connectionObject({ type: RunRef, name: "RunConnection" }, { name: "RunEdge" });
