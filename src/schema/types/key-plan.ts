// A key's plan per model (ApiKey.plan) and its spend per bucket (ApiKey.spend): value types, no
// model of their own. The domain is src/keys/plan.ts. A project viewer sees its key's plan without
// the organization's parts it cannot read: channel names and ids, and the wallet's balance rows.
import { builder } from "../builder.ts";
import { BalanceBucket, ChannelRole, FailedChargePolicy, HealthState, Settlement } from "../../generated/prisma/enums.ts";
import type { PriceSnapshot } from "../../generated/prisma/client.ts";
import { MoneyRef, moneyOf, moneyOrNull } from "./common.ts";
import type { KeyModelPlan, KeyRateLimitValues, LimitKind, PlanChannel, PlanLimit } from "../../keys/plan.ts";
import type { BucketSpend } from "../../keys/spend.ts";

export const LimitKindEnum = builder.enumType("LimitKind", {
  description: "A money limit a request is held against: a cap scope (CapScope's names) or the bucket's available BALANCE.",
  values: ["KEY_PER_REQUEST", "KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "CHANNEL_DAILY", "RUN_TOTAL", "BALANCE"] as const satisfies readonly LimitKind[],
});

/** A limit and whether the viewer may see the organization's parts of it. */
export interface ShownLimit {
  limit: PlanLimit;
  organizationReader: boolean;
}

export const PlanLimitRef = builder.objectRef<ShownLimit>("PlanLimit").implement({
  description:
    "One limit in one bucket and where it stands now: limit (the enforced cap; for BALANCE the bucket's balance), spent, held (in flight, with headroom leased to gateway instances) and remaining = limit − spent − held. For KEY_PER_REQUEST the limit is the largest worst case one request may hold (spent and held are 0).",
  fields: (t) => ({
    kind: t.field({ type: LimitKindEnum, resolve: (s) => s.limit.kind }),
    scopeId: t.id({
      nullable: true,
      description: "The key, project, route, channel or run it belongs to; null for BALANCE, and a channel's id for a project viewer.",
      resolve: (s) => (s.limit.kind === "CHANNEL_DAILY" && !s.organizationReader ? null : s.limit.scopeId),
    }),
    bucket: t.field({ type: BalanceBucket, resolve: (s) => s.limit.bucket }),
    windowStart: t.field({
      type: "DateTime",
      nullable: true,
      description: "The day or month counted (of the organization's time zone); the epoch for a run's total; null for KEY_PER_REQUEST and BALANCE.",
      resolve: (s) => s.limit.windowStart,
    }),
    limit: t.field({
      type: MoneyRef,
      nullable: true,
      description: "null = no cap. A cap set in the other bucket only caps this bucket at 0.",
      resolve: (s) => moneyOrNull(s.limit.limit, s.limit.bucket),
    }),
    spent: t.field({ type: MoneyRef, resolve: (s) => moneyOf(s.limit.spent, s.limit.bucket) }),
    held: t.field({ type: MoneyRef, resolve: (s) => moneyOf(s.limit.held, s.limit.bucket) }),
    remaining: t.field({ type: MoneyRef, nullable: true, description: "null = no cap.", resolve: (s) => moneyOrNull(s.limit.remaining, s.limit.bucket) }),
  }),
});

export const PlanPriceRef = builder.objectRef<PriceSnapshot>("PlanPrice").implement({
  description: "The price snapshot a channel is charged at (per million tokens, in its bucket's currency). snapshotId is what receipts name (Receipt.priceSnapshot).",
  fields: (t) => ({
    snapshotId: t.id({ resolve: (p) => p.id }),
    bucket: t.field({ type: BalanceBucket, resolve: (p) => p.bucket }),
    inputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.inputPerMillion, p.bucket) }),
    outputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.outputPerMillion, p.bucket) }),
    cachedInputPerMillion: t.field({ type: MoneyRef, nullable: true, resolve: (p) => moneyOrNull(p.cachedInputPerMillion, p.bucket) }),
    cacheWritePerMillion: t.field({ type: MoneyRef, nullable: true, resolve: (p) => moneyOrNull(p.cacheWritePerMillion, p.bucket) }),
    audioInputPerMillion: t.field({ type: MoneyRef, nullable: true, resolve: (p) => moneyOrNull(p.audioInputPerMillion, p.bucket) }),
    audioOutputPerMillion: t.field({ type: MoneyRef, nullable: true, resolve: (p) => moneyOrNull(p.audioOutputPerMillion, p.bucket) }),
    validFrom: t.field({ type: "DateTime", resolve: (p) => p.validFrom }),
  }),
});

export interface ShownChannel {
  channel: PlanChannel;
  organizationReader: boolean;
}

export const PlanChannelRef = builder.objectRef<ShownChannel>("PlanChannel").implement({
  description: "One enabled channel of the route, in priority order, and whether this key's requests try it.",
  fields: (t) => ({
    position: t.int({ description: "0-based position in the route's priority order.", resolve: (s) => s.channel.position }),
    role: t.field({ type: ChannelRole, resolve: (s) => s.channel.role }),
    channelId: t.id({ nullable: true, description: "null for project viewer tokens (they cannot read routes).", resolve: (s) => (s.organizationReader ? s.channel.channel.id : null) }),
    name: t.string({ nullable: true, description: "null for project viewer tokens.", resolve: (s) => (s.organizationReader ? s.channel.channel.name : null) }),
    settlement: t.field({ type: Settlement, resolve: (s) => s.channel.channel.settlement }),
    bucket: t.field({ type: BalanceBucket, description: "The bucket that pays for a request served here.", resolve: (s) => s.channel.bucket }),
    upstreamModel: t.string({ resolve: (s) => s.channel.channel.upstreamModel }),
    health: t.field({ type: HealthState, description: "A DOWN channel is skipped while it cools down.", resolve: (s) => s.channel.channel.health }),
    price: t.field({ type: PlanPriceRef, nullable: true, description: "The snapshot in force now; null = unpriced (never called: fail closed).", resolve: (s) => s.channel.price }),
    tried: t.boolean({ description: "Whether a request of this key tries this channel (in the order of position).", resolve: (s) => s.channel.tried }),
    notTriedBecause: t.string({ nullable: true, resolve: (s) => s.channel.notTried }),
  }),
});

export const KeyRateLimitsRef = builder.objectRef<KeyRateLimitValues>("KeyRateLimits").implement({
  description:
    "The key's rate limits (null = none; over one: 429 rate_limit_exceeded) and where it stands in them, as the gateway's limiter counts: with REDIS_URL across instances, without it in this process. A count is null when the key has no such limit or the limiter cannot say.",
  fields: (t) => ({
    rpmLimit: t.int({ nullable: true, resolve: (r) => r.rpmLimit }),
    tpmLimit: t.int({ nullable: true, resolve: (r) => r.tpmLimit }),
    maxConcurrent: t.int({ nullable: true, resolve: (r) => r.maxConcurrent }),
    requestsLastMinute: t.int({ nullable: true, description: "Sliding count of the last 60 s (what rpmLimit is checked against).", resolve: (r) => r.requestsLastMinute }),
    tokensLastMinute: t.int({ nullable: true, description: "Sliding token count of the last 60 s (what tpmLimit is checked against).", resolve: (r) => r.tokensLastMinute }),
    inFlight: t.int({ nullable: true, description: "Requests in flight now (what maxConcurrent is checked against).", resolve: (r) => r.inFlight }),
  }),
});

export const shownLimits = (limits: PlanLimit[], organizationReader: boolean): ShownLimit[] => limits.map((limit) => ({ limit, organizationReader }));

export const KeyModelPlanRef = builder.objectRef<KeyModelPlan>("KeyModelPlan").implement({
  description:
    "What a request of this key for this model gets: the channels in the order tried (primary, backups) with settlement, upstream model, price and the bucket that pays; every money limit per bucket with spent, held and remaining; rate limits; retries and the failed-request policy.",
  fields: (t) => ({
    model: t.exposeString("model"),
    callable: t.exposeBoolean("callable", { description: "A request would be served, within its limits. False: see reasons." }),
    reasons: t.exposeStringList("reasons"),
    routeId: t.id({ nullable: true, resolve: (p) => p.route?.id ?? null }),
    defaultMaxTokens: t.int({ nullable: true, description: "The output bound reserved for a request without max_tokens.", resolve: (p) => p.route?.defaultMaxTokens ?? null }),
    channels: t.field({ type: [PlanChannelRef], resolve: (p) => p.channels.map((channel) => ({ channel, organizationReader: p.organizationReader })) }),
    primaryBucket: t.field({ type: BalanceBucket, nullable: true, description: "The bucket of the first tried channel.", resolve: (p) => p.channels.find((c) => c.tried)?.bucket ?? null }),
    fallbackSwitchesBucket: t.exposeBoolean("fallbackSwitchesBucket", { description: "Tried channels pay from different buckets: a fallback can move the charge to the other bucket." }),
    limits: t.field({
      type: [PlanLimitRef],
      description:
        "Per bucket a tried channel pays from: KEY_PER_REQUEST, KEY_DAILY, PROJECT_DAILY, PROJECT_MONTHLY, ROUTE_DAILY, RUN_TOTAL (with run), and BALANCE (not for project viewers); CHANNEL_DAILY per tried channel in its bucket. Uncapped ones too (limit null).",
      resolve: (p) => shownLimits(p.limits, p.organizationReader),
    }),
    rateLimits: t.field({ type: KeyRateLimitsRef, resolve: (p) => p.rateLimits }),
    retryCeiling: t.exposeInt("retryCeiling"),
    maxAttempts: t.exposeInt("maxAttempts", { description: "1 + retryCeiling upstream attempts at most (a channel skipped on its own cap is no attempt)." }),
    failedChargePolicy: t.field({ type: FailedChargePolicy, resolve: (p) => p.failedChargePolicy }),
    runId: t.id({ nullable: true, resolve: (p) => p.runId }),
  }),
});

export const BucketSpendRef = builder.objectRef<BucketSpend>("BucketSpend").implement({
  description: "What a key spent in one bucket over a time range (receipts and charged failed requests). Buckets are never summed.",
  fields: (t) => ({
    bucket: t.field({ type: BalanceBucket, resolve: (s) => s.bucket }),
    charged: t.field({ type: MoneyRef, resolve: (s) => moneyOf(s.charged, s.bucket) }),
    requests: t.field({ type: "Count", description: "Receipts (answered requests).", resolve: (s) => s.requests }),
    failures: t.field({ type: "Count", description: "Failed requests recorded in this bucket (with or without a charge).", resolve: (s) => s.failures }),
  }),
});
