// The value types of spendAnalytics (src/analytics/report.ts): series a chart draws as they come,
// groups as the objects themselves (loaded per operation within the viewer's tenancy).
import type { ObjectFieldBuilder } from "@pothos/core";
import { builder } from "../builder.ts";
import { BucketAmountRef } from "./live.ts";
import { BalanceBucket, RunMode, Settlement } from "../../generated/prisma/enums.ts";
import {
  BUCKETS,
  MAX_CELLS,
  MAX_TOP,
  SPEND_DIMENSIONS,
  type GroupValues,
  type Latency,
  type SpendReport,
  type SpendReportPoint,
  type SpendReportSeries,
  type SpendSums,
} from "../../analytics/report.ts";
import { viewerOf } from "../../resolvers/viewer.ts";
import { ApiKeyRef } from "./api-key.ts";
import { ProjectRef } from "./project.ts";
import { RouteRef } from "./route.ts";
import { ChannelRef } from "./channel.ts";
import { RunRef } from "./run.ts";

export const SpendInterval = builder.enumType("SpendInterval", {
  description:
    "Bucket length, in the series' time zone: local minutes and hours (a 23-hour day has 23 hourly buckets, a 25-hour day 25), days from local midnight, ISO weeks (Monday first), calendar months.",
  values: ["MINUTE", "HOUR", "DAY", "WEEK", "MONTH"] as const,
});

export const SpendDimensionEnum = builder.enumType("SpendDimension", {
  description:
    "What spend is grouped by. MODEL: the requested (catalog) model; UPSTREAM_MODEL: what the channel called (failed requests have none); SETTLEMENT: the bucket's (OFFICIAL ↔ CREDIT, ROUTED ↔ ROUTED); RUN_MODE: the run's mode (requests outside a run: null).",
  values: SPEND_DIMENSIONS,
});

export const SpendFilterInput = builder.inputType("SpendFilter", {
  description: 'Narrows spend: each list given is "any of" (at most 1000 values; an empty list is no condition); all given lists must hold. Ids of another organization match nothing.',
  fields: (t) => ({
    keyIds: t.idList({ required: false }),
    projectIds: t.idList({ required: false }),
    routeIds: t.idList({ required: false }),
    channelIds: t.idList({ required: false }),
    runIds: t.idList({ required: false }),
    models: t.stringList({ required: false, description: "Requested (catalog) models." }),
    buckets: t.field({ type: [BalanceBucket], required: false }),
  }),
});

export const SpendAnalyticsInput = builder.inputType("SpendAnalyticsInput", {
  fields: (t) => ({
    from: t.field({ type: "DateTime", required: true, description: "Inclusive." }),
    to: t.field({
      type: "DateTime",
      required: true,
      description: "Exclusive. Ranges: MINUTE ≤ 2 days, HOUR ≤ 92, DAY ≤ 3 years, WEEK ≤ 10, MONTH ≤ 20; ≤ 31 days when the zone's boundaries are not on UTC hours (read from raw rows).",
    }),
    interval: t.field({ type: SpendInterval, required: true }),
    timeZone: t.string({ required: false, description: 'IANA time zone the buckets follow (e.g. "Asia/Shanghai"). Default: the organization\'s (Organization.timeZone).' }),
    groupBy: t.field({ type: [SpendDimensionEnum], required: false, description: "Zero or more dimensions; none: one series of everything." }),
    filter: t.field({ type: SpendFilterInput, required: false }),
    top: t.int({
      required: false,
      description: `Keep the ${"`top`"} groups by spend (1–${MAX_TOP}) and sum the rest into one series with other = true. Default: every group (at most ${MAX_CELLS} points × series).`,
    }),
    rankBy: t.field({
      type: BalanceBucket,
      required: false,
      description: "Whose spend ranks groups for top (buckets are never summed). Default CREDIT; ties: the other bucket's spend, then requests, then failed requests, then the group's values.",
    }),
    compareWithPrevious: t.boolean({ required: false, description: "Also sum the period of the same length immediately before from (previous, and each series' previous)." }),
    organizationId: t.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
  }),
});

/** The fields of a sum, shared by totals and points. */
function sumFields<T>(t: ObjectFieldBuilder<typeof builder.$inferSchemaTypes, T>, sums: (v: T) => SpendSums, buckets: (v: T) => readonly string[]) {
  const inBuckets = (v: T, amounts: Record<string, bigint>) => BUCKETS.filter((b) => buckets(v).includes(b)).map((bucket) => ({ bucket, amount: amounts[bucket]! }));
  return {
    spend: t.field({
      type: [BucketAmountRef],
      description: "Receipts' charges plus failed requests' charges, one amount per balance bucket (zeros included).",
      resolve: (v) => inBuckets(v, sums(v).spend),
    }),
    failedCharge: t.field({ type: [BucketAmountRef], description: "Of spend: charged to failed requests (the keys' failed-request policies).", resolve: (v) => inBuckets(v, sums(v).failedCharge) }),
    requests: t.field({ type: "Count", description: "Receipts plus charged failed requests (what spend counts).", resolve: (v) => sums(v).requests }),
    failedRequests: t.field({ type: "Count", description: "Every failed request, charged or not.", resolve: (v) => sums(v).failedRequests }),
    promptTokens: t.field({ type: "Count", resolve: (v) => sums(v).promptTokens }),
    completionTokens: t.field({ type: "Count", resolve: (v) => sums(v).completionTokens }),
    cachedPromptTokens: t.field({ type: "Count", resolve: (v) => sums(v).cachedPromptTokens }),
    cacheWriteTokens: t.field({ type: "Count", resolve: (v) => sums(v).cacheWriteTokens }),
    audioPromptTokens: t.field({ type: "Count", resolve: (v) => sums(v).audioPromptTokens }),
    reasoningTokens: t.field({ type: "Count", resolve: (v) => sums(v).reasoningTokens }),
    audioCompletionTokens: t.field({ type: "Count", resolve: (v) => sums(v).audioCompletionTokens }),
  };
}

interface InReport<T> {
  value: T;
  buckets: readonly string[];
}

const SpendSumsRef = builder.objectRef<InReport<SpendSums>>("SpendSums").implement({
  description: "Sums over a period, money per balance bucket.",
  fields: (t) =>
    sumFields(
      t,
      (v) => v.value,
      (v) => v.buckets,
    ),
});

const SpendLatencyRef = builder.objectRef<Latency>("SpendLatency").implement({
  description: "Latency of completed requests (receipts), from the raw rows: exact percentiles (nearest rank).",
  fields: (t) => ({
    p50Ms: t.exposeInt("p50Ms"),
    p95Ms: t.exposeInt("p95Ms"),
    receipts: t.field({ type: "Count", resolve: (l) => l.receipts }),
  }),
});

const SpendGroupRef = builder.objectRef<GroupValues>("SpendGroup").implement({
  description: "The values of the grouped dimensions (the others are null). An object the token may not read (e.g. a route for a project viewer) is null.",
  fields: (t) => ({
    key: t.field({ type: ApiKeyRef, nullable: true, resolve: (g, _a, ctx) => (g.KEY ? ctx.loaders.visible(viewerOf(ctx)).ApiKey.load(g.KEY) : null) }),
    project: t.field({ type: ProjectRef, nullable: true, resolve: (g, _a, ctx) => (g.PROJECT ? ctx.loaders.visible(viewerOf(ctx)).Project.load(g.PROJECT) : null) }),
    route: t.field({ type: RouteRef, nullable: true, resolve: (g, _a, ctx) => (g.ROUTE ? ctx.loaders.visible(viewerOf(ctx)).Route.load(g.ROUTE) : null) }),
    channel: t.field({ type: ChannelRef, nullable: true, resolve: (g, _a, ctx) => (g.CHANNEL ? ctx.loaders.visible(viewerOf(ctx)).Channel.load(g.CHANNEL) : null) }),
    run: t.field({ type: RunRef, nullable: true, resolve: (g, _a, ctx) => (g.RUN ? ctx.loaders.visible(viewerOf(ctx)).Run.load(g.RUN) : null) }),
    model: t.string({ nullable: true, description: "The requested (catalog) model.", resolve: (g) => g.MODEL ?? null }),
    upstreamModel: t.string({ nullable: true, resolve: (g) => g.UPSTREAM_MODEL ?? null }),
    bucket: t.field({ type: BalanceBucket, nullable: true, resolve: (g) => (g.BUCKET as BalanceBucket | null | undefined) ?? null }),
    runMode: t.field({ type: RunMode, nullable: true, resolve: (g) => (g.RUN_MODE as RunMode | null | undefined) ?? null }),
    settlement: t.field({ type: Settlement, nullable: true, resolve: (g) => (g.SETTLEMENT as Settlement | null | undefined) ?? null }),
  }),
});

const SpendAnalyticsPointRef = builder.objectRef<InReport<SpendReportPoint>>("SpendAnalyticsPoint").implement({
  description: "One bucket of one series: [bucketStart, bucketEnd) within the requested range (the first and last may be partial).",
  fields: (t) => ({
    bucketStart: t.field({ type: "DateTime", resolve: (p) => p.value.start }),
    bucketEnd: t.field({ type: "DateTime", resolve: (p) => p.value.end }),
    ...sumFields(
      t,
      (p) => p.value.sums,
      (p) => p.buckets,
    ),
    latency: t.field({ type: SpendLatencyRef, nullable: true, description: "Null: no receipts, or latency unavailable for the range.", resolve: (p) => p.value.latency }),
  }),
});

const SpendAnalyticsSeriesRef = builder.objectRef<InReport<SpendReportSeries>>("SpendAnalyticsSeries").implement({
  description: "One group over the range, a point for every bucket (zeros included).",
  fields: (t) => ({
    group: t.field({ type: SpendGroupRef, nullable: true, description: "Null for the other series.", resolve: (s) => s.value.group }),
    other: t.boolean({ description: "The groups beyond top, summed.", resolve: (s) => s.value.group === null }),
    groupCount: t.int({ description: "Groups this series sums (1, or for other how many).", resolve: (s) => s.value.groupCount }),
    total: t.field({ type: SpendSumsRef, resolve: (s) => ({ value: s.value.total, buckets: s.buckets }) }),
    latency: t.field({ type: SpendLatencyRef, nullable: true, resolve: (s) => s.value.latency }),
    previous: t.field({
      type: SpendSumsRef,
      nullable: true,
      description: "The same group in the previous period (compareWithPrevious).",
      resolve: (s) => (s.value.previous ? { value: s.value.previous, buckets: s.buckets } : null),
    }),
    points: t.field({ type: [SpendAnalyticsPointRef], resolve: (s) => s.value.points.map((value) => ({ value, buckets: s.buckets })) }),
  }),
});

const SpendPeriodRef = builder.objectRef<InReport<NonNullable<SpendReport["previous"]>>>("SpendPeriod").implement({
  fields: (t) => ({
    from: t.field({ type: "DateTime", resolve: (p) => p.value.from }),
    to: t.field({ type: "DateTime", resolve: (p) => p.value.to }),
    totals: t.field({ type: SpendSumsRef, resolve: (p) => ({ value: p.value.totals, buckets: p.buckets }) }),
  }),
});

const SpendSourceEnum = builder.enumType("SpendSource", {
  description: "ROLLUPS: the hourly / daily rollups (raw rows for partial hours at the ends). RAW: the raw rows (MINUTE, or a zone whose bucket boundaries are not on UTC hours).",
  values: ["ROLLUPS", "RAW"] as const,
});

export const SpendAnalyticsRef = builder.objectRef<SpendReport>("SpendAnalytics").implement({
  description: "Spend over a range, bucketed in a time zone: series (top N groups and other, ranked by spend), totals, failures, latency and the previous period.",
  fields: (t) => ({
    from: t.expose("from", { type: "DateTime" }),
    to: t.expose("to", { type: "DateTime" }),
    interval: t.field({ type: SpendInterval, resolve: (r) => r.interval }),
    timeZone: t.exposeString("timeZone"),
    groupBy: t.field({ type: [SpendDimensionEnum], resolve: (r) => r.groupBy }),
    buckets: t.field({ type: [BalanceBucket], description: "The balance buckets every money list holds, in this order.", resolve: (r) => r.buckets }),
    bucketStarts: t.field({ type: ["DateTime"], description: "Every series has one point per entry, in this order.", resolve: (r) => r.bucketStarts }),
    series: t.field({ type: [SpendAnalyticsSeriesRef], description: "Ranked by spend; other last.", resolve: (r) => r.series.map((value) => ({ value, buckets: r.buckets })) }),
    groupCount: t.int({ description: "Groups with spend or failures in the range (before top).", resolve: (r) => r.groupCount }),
    totals: t.field({ type: SpendSumsRef, resolve: (r) => ({ value: r.totals, buckets: r.buckets }) }),
    latency: t.field({ type: SpendLatencyRef, nullable: true, resolve: (r) => r.latency }),
    latencyUnavailable: t.string({ nullable: true, description: "Why latency is null everywhere, when it is.", resolve: (r) => r.latencyUnavailable }),
    previous: t.field({
      type: SpendPeriodRef,
      nullable: true,
      description: "compareWithPrevious: the period of the same length immediately before from.",
      resolve: (r) => (r.previous ? { value: r.previous, buckets: r.buckets } : null),
    }),
    source: t.field({ type: SpendSourceEnum, resolve: (r) => r.source }),
  }),
});
