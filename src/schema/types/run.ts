import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { BudgetStatusRef, NEWEST_FIRST } from "./common.ts";
import { RunMode, RunStatus } from "../../generated/prisma/enums.ts";

builder.prismaObject("Run", {
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
    receipts: t.relatedConnection("receipts", NEWEST_FIRST),
    failedRequests: t.relatedConnection("failedRequests", NEWEST_FIRST),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    endedAt: t.expose("endedAt", { type: "DateTime", nullable: true }),
  }),
});
