// The value types of the coalesced live streams (liveSpend, channelStats, walletBalances): built in
// memory from events (src/events/live.ts), resolved from that value, never from the database.
import { builder } from "../builder.ts";
import { MoneyRef, moneyOf, moneyOrNull } from "./common.ts";
import { BalanceBucket, CapScope, HealthState, Settlement } from "../../generated/prisma/enums.ts";
import type { ScopeStanding } from "../../events/index.ts";
import type { ChannelStats, KeyTally, SpendTick } from "../../events/live.ts";
import type { WalletBucket } from "../../generated/prisma/client.ts";
import { WalletBalanceRef } from "./wallet.ts";

type Bucket = "CREDIT" | "ROUTED";
interface BucketAmount {
  bucket: Bucket;
  amount: bigint;
}
const amounts = (m: Map<Bucket, bigint>): BucketAmount[] => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([bucket, amount]) => ({ bucket, amount }));

export const BucketAmountRef = builder.objectRef<BucketAmount>("BucketAmount").implement({
  description: "An amount in one balance bucket (buckets are never summed together).",
  fields: (t) => ({
    bucket: t.field({ type: BalanceBucket, resolve: (b) => b.bucket }),
    amount: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.amount, b.bucket) }),
  }),
});

export const ScopeStandingRef = builder.objectRef<ScopeStanding>("ScopeStanding").implement({
  description: "Where one cap window stands, as the batch that recorded the latest request left its counter: remaining = cap − spent − held.",
  fields: (t) => ({
    scope: t.field({ type: CapScope, resolve: (s) => s.scope }),
    scopeId: t.exposeID("scopeId"),
    bucket: t.field({ type: BalanceBucket, resolve: (s) => s.bucket }),
    windowStart: t.field({ type: "DateTime", resolve: (s) => new Date(s.windowStart) }),
    spent: t.field({ type: MoneyRef, resolve: (s) => moneyOf(BigInt(s.spent), s.bucket) }),
    held: t.field({ type: MoneyRef, resolve: (s) => moneyOf(BigInt(s.held), s.bucket) }),
    cap: t.field({ type: MoneyRef, nullable: true, resolve: (s) => moneyOrNull(s.cap === null ? null : BigInt(s.cap), s.bucket) }),
    remaining: t.field({ type: MoneyRef, nullable: true, resolve: (s) => moneyOrNull(s.remaining === null ? null : BigInt(s.remaining), s.bucket) }),
  }),
});

const LiveSpendKeyRef = builder.objectRef<KeyTally>("LiveSpendKey").implement({
  description: "One key's requests and spend since the previous tick.",
  fields: (t) => ({
    keyId: t.exposeID("keyId"),
    projectId: t.exposeID("projectId"),
    requests: t.expose("requests", { type: "Count" }),
    failed: t.expose("failed", { type: "Count" }),
    promptTokens: t.expose("promptTokens", { type: "Count" }),
    completionTokens: t.expose("completionTokens", { type: "Count" }),
    spend: t.field({ type: [BucketAmountRef], resolve: (k) => amounts(k.charge) }),
  }),
});

export const LiveSpendTickRef = builder.objectRef<SpendTick>("LiveSpendTick").implement({
  description:
    "What the subscribed scopes spent since the previous tick (at most one per interval, only when something happened) and where every cap window those requests touched stands now. Summing `spend` over ticks gives the spend of the period: a consumer that falls behind gets the merged ticks, never fewer numbers.",
  fields: (t) => ({
    since: t.field({ type: "DateTime", resolve: (s) => s.since }),
    at: t.field({ type: "DateTime", resolve: (s) => s.at }),
    requests: t.expose("requests", { type: "Count" }),
    settled: t.expose("settled", { type: "Count" }),
    failed: t.expose("failed", { type: "Count" }),
    promptTokens: t.expose("promptTokens", { type: "Count" }),
    completionTokens: t.expose("completionTokens", { type: "Count" }),
    spend: t.field({ type: [BucketAmountRef], resolve: (s) => amounts(s.charge) }),
    keys: t.field({ type: [LiveSpendKeyRef], resolve: (s) => s.keys }),
    scopes: t.field({ type: [ScopeStandingRef], resolve: (s) => s.scopes }),
    lastRequestAt: t.field({ type: "DateTime", nullable: true, resolve: (s) => s.lastRequestAt }),
  }),
});

const ChannelStatsRef = builder.objectRef<ChannelStats>("ChannelStats").implement({
  description: "A channel's recent outcomes on this instance (the last `windowSeconds`, at most 1,000 requests), today's spend and its health state.",
  fields: (t) => ({
    routeId: t.exposeID("routeId"),
    routeModel: t.exposeString("routeModel"),
    channelId: t.exposeID("channelId"),
    channelName: t.exposeString("channelName"),
    priority: t.exposeInt("priority"),
    settlement: t.field({ type: Settlement, resolve: (c) => c.settlement as Settlement }),
    state: t.field({ type: HealthState, resolve: (c) => c.health }),
    requests: t.exposeInt("requests"),
    failed: t.exposeInt("failed"),
    successRate: t.exposeFloat("successRate", { nullable: true, description: "Null until a request was seen." }),
    p50LatencyMs: t.exposeInt("p50LatencyMs", { nullable: true }),
    p95LatencyMs: t.exposeInt("p95LatencyMs", { nullable: true }),
    spendToday: t.field({ type: [BucketAmountRef], description: "Today's CHANNEL_DAILY counter per bucket.", resolve: (c) => amounts(c.spendToday) }),
    lastRequestAt: t.field({ type: "DateTime", nullable: true, resolve: (c) => c.lastRequestAt }),
    windowSeconds: t.exposeInt("windowSeconds"),
  }),
});

export interface ChannelStatsTick {
  at: Date;
  channels: ChannelStats[];
}

export const ChannelStatsTickRef = builder.objectRef<ChannelStatsTick>("ChannelStatsTick").implement({
  description: "Every subscribed channel's statistics; the first tick comes at once, then at most one per interval when something changed.",
  fields: (t) => ({
    at: t.field({ type: "DateTime", resolve: (s) => s.at }),
    channels: t.field({ type: [ChannelStatsRef], resolve: (s) => s.channels }),
  }),
});

export interface WalletTick {
  at: Date;
  balances: WalletBucket[];
}

export const WalletTickRef = builder.objectRef<WalletTick>("WalletTick").implement({
  description: "The organization's balances per bucket; the first tick comes at once, then at most one per interval when they changed.",
  fields: (t) => ({
    at: t.field({ type: "DateTime", resolve: (s) => s.at }),
    balances: t.field({ type: [WalletBalanceRef], resolve: (s) => s.balances }),
  }),
});
