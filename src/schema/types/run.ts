import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { RequestFilter, requestFilterWhere } from "../../resolvers/filters.ts";
import { ReceiptConnection, ReceiptOrder } from "./receipt.ts";
import { FailedRequestConnection, FailedRequestOrder } from "./failed-request.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { BudgetStatusRef } from "./common.ts";
import { BalanceBucket, RunMode, RunStatus } from "../../generated/prisma/enums.ts";
import { db } from "../../db/index.ts";
import { runTotals, type RunTotals } from "../../runs/index.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { LedgerEntryConnection } from "./ledger-entry.ts";

const RunChargeRef = builder.objectRef<{ bucket: BalanceBucket; amount: bigint }>("RunCharge").implement({
  fields: (t) => ({
    bucket: t.field({ type: BalanceBucket, resolve: (c) => c.bucket }),
    amount: t.field({ type: MoneyRef, resolve: (c) => moneyOf(c.amount, c.bucket) }),
  }),
});

const RunTotalsRef = builder.objectRef<RunTotals>("RunTotals").implement({
  fields: (t) => ({
    requests: t.field({ type: "Count", description: "Receipts (answered requests).", resolve: (x) => x.requests }),
    failures: t.field({ type: "Count", description: "Failed requests.", resolve: (x) => x.failures }),
    promptTokens: t.field({ type: "Count", resolve: (x) => x.promptTokens }),
    completionTokens: t.field({ type: "Count", resolve: (x) => x.completionTokens }),
    charges: t.field({ type: [RunChargeRef], description: "Charged per bucket (receipts and charged failures); a bucket it never spent is absent.", resolve: (x) => x.charges }),
    firstRequestAt: t.field({ type: "DateTime", nullable: true, resolve: (x) => x.firstRequestAt }),
    lastRequestAt: t.field({ type: "DateTime", nullable: true, resolve: (x) => x.lastRequestAt }),
  }),
});

/** One read of a run's totals per parent row and operation (totals and durationMs both need them). */
const totalsByRow = new WeakMap<object, Promise<RunTotals>>();
const totalsOf = (row: { id: string }): Promise<RunTotals> => {
  let hit = totalsByRow.get(row);
  if (!hit) {
    hit = runTotals(row.id);
    totalsByRow.set(row, hit);
  }
  return hit;
};

export const RunRef = builder.prismaObject("Run", {
  interfaces: [NodeRef],
  description: "An agent or research run with its own cap; requests sent with x-run-id count against it.",
  authScopes: (r) => ({ owns: { organizationId: r.organizationId, projectId: r.projectId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    key: t.relation("key"),
    project: t.relation("project"),
    mode: t.field({ type: RunMode, resolve: (r) => r.mode }),
    status: t.field({
      type: RunStatus,
      description: "ACTIVE; PAUSED (pauseRun); COMPLETED (finishRun); EXHAUSTED (a request was refused on its cap: setRunCap makes room); CANCELLED (cancelRun). Only an ACTIVE run admits requests.",
      resolve: (r) => r.status,
    }),
    model: t.exposeString("model", { nullable: true, description: "The catalog model it was started for (startRun), if given." }),
    label: t.exposeString("label", { nullable: true }),
    totals: t.field({
      type: RunTotalsRef,
      description: "What it did: requests, failures, tokens and charges per bucket, first and last request.",
      resolve: (r) => totalsOf(r),
    }),
    durationMs: t.float({
      nullable: true,
      description: "From its first request to its end (or its last request while it is open); null before any request.",
      resolve: async (r) => {
        const totals = await totalsOf(r);
        if (!totals.firstRequestAt) return null;
        const end = r.endedAt ?? totals.lastRequestAt ?? totals.firstRequestAt;
        return Math.max(0, end.getTime() - totals.firstRequestAt.getTime());
      },
    }),
    ledgerEntries: t.prismaConnection(
      {
        type: "LedgerEntry",
        cursor: "id",
        description: "The charges of its requests (receipts and charged failures), newest first.",
        resolve: (query, r) =>
          db.ledgerEntry.findMany({ ...query, where: { organizationId: r.organizationId, OR: [{ receipt: { runId: r.id } }, { failedRequest: { runId: r.id } }] }, orderBy: { sequence: "desc" } }),
        totalCount: (r) => db.ledgerEntry.count({ where: { organizationId: r.organizationId, OR: [{ receipt: { runId: r.id } }, { failedRequest: { runId: r.id } }] } }),
      },
      LedgerEntryConnection,
    ),
    budgets: t.field({
      type: [BudgetStatusRef],
      description: "The run's total cap and spend in each bucket.",
      resolve: (r, _args, ctx) => Promise.all((["CREDIT", "ROUTED"] as const).map((b) => ctx.loaders.budget("RUN_TOTAL", r, b))),
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
