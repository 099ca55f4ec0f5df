// Request history (receipts, failed requests), the audit trail and spend series for dashboards.
import type { GraphQLResolveInfo, SelectionSetNode } from "graphql";
import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { isPlatform, resolveOrganizationId, tenancyWhere, type Viewer } from "../auth/index.ts";
import { spendSeries, type SpendPoint } from "../analytics/index.ts";
import { forbidden } from "../errors.ts";
import { RequestFilter, requestWhere, timeRange } from "./filters.ts";
import { MoneyRef, moneyOf } from "../schema/types/common.ts";
import { viewerOf } from "./viewer.ts";
import { BalanceBucket } from "../generated/prisma/enums.ts";
import { AuditActionEnum, AuditEntryConnection, AuditEntryOrder, AuditTargetTypeEnum } from "../schema/types/audit-entry.ts";
import { ReceiptConnection, ReceiptOrder } from "../schema/types/receipt.ts";
import { FailedRequestConnection, FailedRequestOrder } from "../schema/types/failed-request.ts";
import { SpendAnalyticsInput, SpendAnalyticsRef, SpendInterval } from "../schema/types/spend-analytics.ts";
import { spendReport, type SpendFilter } from "../analytics/report.ts";
import { checkTimeZone } from "../analytics/zones.ts";

builder.queryFields((t) => ({
  receipts: t.prismaConnection(
    {
      type: "Receipt",
      cursor: "id",
      description: "Newest first by default.",
      args: { filter: t.arg({ type: RequestFilter, required: false }), orderBy: t.arg({ type: ReceiptOrder.Input, required: false, description: ReceiptOrder.description }) },
      resolve: (query, _root, args, ctx) => db.receipt.findMany({ ...query, where: requestWhere(viewerOf(ctx), args.filter), orderBy: ReceiptOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.receipt.count({ where: requestWhere(viewerOf(ctx), args.filter) }),
    },
    ReceiptConnection,
  ),
  failedRequests: t.prismaConnection(
    {
      type: "FailedRequest",
      cursor: "id",
      description: "Newest first by default.",
      args: { filter: t.arg({ type: RequestFilter, required: false }), orderBy: t.arg({ type: FailedRequestOrder.Input, required: false, description: FailedRequestOrder.description }) },
      resolve: (query, _root, args, ctx) => db.failedRequest.findMany({ ...query, where: requestWhere(viewerOf(ctx), args.filter), orderBy: FailedRequestOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.failedRequest.count({ where: requestWhere(viewerOf(ctx), args.filter) }),
    },
    FailedRequestConnection,
  ),
  auditEntries: t.prismaConnection(
    {
      type: "AuditEntry",
      cursor: "id",
      description: "Newest first by default.",
      args: {
        targetId: t.arg.id({ required: false }),
        action: t.arg({ type: AuditActionEnum, required: false }),
        targetType: t.arg({ type: AuditTargetTypeEnum, required: false }),
        from: t.arg({ type: "DateTime", required: false }),
        to: t.arg({ type: "DateTime", required: false }),
        orderBy: t.arg({ type: AuditEntryOrder.Input, required: false, description: AuditEntryOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.auditEntry.findMany({ ...query, where: auditWhere(viewerOf(ctx), args), orderBy: AuditEntryOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.auditEntry.count({ where: auditWhere(viewerOf(ctx), args) }),
    },
    AuditEntryConnection,
  ),
}));

function auditWhere(viewer: Viewer, args: { targetId?: string | number | null; action?: string | null; targetType?: string | null; from?: Date | null; to?: Date | null }) {
  if (viewer.role === "PROJECT_VIEWER") throw forbidden("project viewers cannot read the audit trail");
  const range = timeRange(args.from, args.to);
  return {
    ...(isPlatform(viewer) ? {} : { organizationId: tenancyWhere(viewer).organizationId }),
    ...(args.targetId ? { targetId: String(args.targetId) } : {}),
    ...(args.action ? { action: args.action } : {}),
    ...(args.targetType ? { targetType: args.targetType } : {}),
    ...(range ? { createdAt: range } : {}),
  };
}

const SpendGroupBy = builder.enumType("SpendGroupBy", { values: ["KEY", "PROJECT", "MODEL", "ROUTE", "BUCKET"] as const });

const SpendPointRef = builder.objectRef<SpendPoint>("SpendPoint").implement({
  description: "Spend of one group in one time bucket, in one balance bucket's currency (receipts and charged failures).",
  fields: (t) => ({
    bucketStart: t.expose("bucketStart", { type: "DateTime" }),
    group: t.exposeString("group"),
    bucket: t.field({ type: BalanceBucket, description: "The balance bucket the spend came from.", resolve: (p) => p.bucket }),
    spend: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.spend, p.bucket) }),
    requests: t.expose("requests", { type: "Count" }),
    promptTokens: t.expose("promptTokens", { type: "Count", description: "All prompt tokens, every class below included." }),
    completionTokens: t.expose("completionTokens", { type: "Count", description: "All generated tokens, reasoning and audio included." }),
    cachedPromptTokens: t.expose("cachedPromptTokens", { type: "Count", description: "Of promptTokens: read from the upstreams' prompt caches." }),
    cacheWriteTokens: t.expose("cacheWriteTokens", { type: "Count", description: "Of promptTokens: written to the upstreams' prompt caches." }),
    audioPromptTokens: t.expose("audioPromptTokens", { type: "Count", description: "Of promptTokens: audio." }),
    reasoningTokens: t.expose("reasoningTokens", { type: "Count", description: "Of completionTokens: reasoning." }),
    audioCompletionTokens: t.expose("audioCompletionTokens", { type: "Count", description: "Of completionTokens: audio." }),
  }),
});

const SpendSeriesInput = builder.inputType("SpendSeriesInput", {
  fields: (t) => ({
    from: t.field({ type: "DateTime", required: true }),
    to: t.field({ type: "DateTime", required: true }),
    interval: t.field({ type: SpendInterval, required: true }),
    groupBy: t.field({ type: SpendGroupBy, required: true }),
    keyId: t.id({ required: false }),
    projectId: t.id({ required: false }),
    organizationId: t.id({ required: false }),
  }),
});

builder.queryFields((t) => ({
  spendSeries: t.field({
    type: [SpendPointRef],
    args: { input: t.arg({ type: SpendSeriesInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const viewer = viewerOf(ctx);
      const organizationId = await resolveOrganizationId(viewer, input.organizationId ? String(input.organizationId) : null);
      const projectId = viewer.role === "PROJECT_VIEWER" ? viewer.projectId : input.projectId ? String(input.projectId) : null;
      return spendSeries({ ...input, organizationId, projectId, keyId: input.keyId ? String(input.keyId) : null });
    },
  }),
}));

/** The filter as the domain takes it: ids as strings, an empty list as no condition; a project viewer only ever sees its project. */
function spendFilter(viewer: Viewer, filter: Record<string, ReadonlyArray<string | number> | null | undefined> | null | undefined): SpendFilter {
  const out: Record<string, string[]> = {};
  for (const [name, values] of Object.entries(filter ?? {})) if (values?.length) out[name] = values.map(String);
  if (viewer.role === "PROJECT_VIEWER") {
    const own = viewer.projectId ?? "";
    out.projectIds = out.projectIds ? out.projectIds.filter((id) => id === own) : [own];
  }
  return out as SpendFilter;
}

/** Does the operation select a field of this name anywhere under the resolved field (fragments included)? */
function selects(info: GraphQLResolveInfo, name: string): boolean {
  const walk = (set: SelectionSetNode | undefined): boolean =>
    !!set &&
    set.selections.some((s) =>
      s.kind === "Field" ? s.name.value === name || walk(s.selectionSet) : s.kind === "InlineFragment" ? walk(s.selectionSet) : walk(info.fragments[s.name.value]?.selectionSet),
    );
  return info.fieldNodes.some((node) => walk(node.selectionSet));
}

builder.queryFields((t) => ({
  spendAnalytics: t.field({
    type: SpendAnalyticsRef,
    description: "Spend a chart draws as it comes: filtered, grouped by any dimensions, bucketed in a time zone, zero-filled, top N and other, totals, failures, latency and the previous period.",
    args: { input: t.arg({ type: SpendAnalyticsInput, required: true }) },
    resolve: async (_root, { input }, ctx, info) => {
      const viewer = viewerOf(ctx);
      const organizationId = await resolveOrganizationId(viewer, input.organizationId ? String(input.organizationId) : null);
      const timeZone = input.timeZone ? checkTimeZone(input.timeZone) : (await ctx.loaders.zones.load(organizationId)).timeZone;
      return spendReport({
        organizationId,
        from: input.from,
        to: input.to,
        interval: input.interval,
        timeZone,
        groupBy: input.groupBy ?? [],
        filter: spendFilter(viewer, input.filter),
        top: input.top ?? null,
        rankBucket: input.rankBy ?? "CREDIT",
        compare: input.compareWithPrevious ?? false,
        // Percentiles scan raw receipts: only for operations that ask for them.
        latency: selects(info, "latency"),
      });
    },
  }),
}));
