// A key's plan per model (issue 17, point 1) and the dry run of its admission that quotes and
// estimateRun share: which channels a request would try, in order, who pays on each, every limit
// that applies with its spent / held / remaining per bucket, and what the gateway would answer now.
//
// The verdict follows the gateway's own order (src/gateway/pipeline/plan.ts, forward.ts and the
// lease grant tg_lease_grant): key status → model allowed → route → usable channels → priced
// channels → run → per channel in order: its worst case against KEY_PER_REQUEST, KEY_DAILY,
// PROJECT_DAILY, PROJECT_MONTHLY, ROUTE_DAILY, CHANNEL_DAILY, RUN_TOTAL, then the balance; a
// channel whose own daily cap refuses is skipped for the next one. Caps are judged against the
// database's counters, where headroom leased to gateway instances counts as held (API.md's
// `remaining = cap − spent − held`): near a cap a quote may refuse what an instance would still
// admit from its own lease, never the other way round. Rate limits (rpm / tpm / concurrency) are
// read from the gateway's limiter (setRateUsageSource): with Redis every instance's counts, without
// it this process's; unknown (no gateway here, Redis down) they are shown as configured, not judged.
import { db } from "../db/index.ts";
import type { ApiKey, Channel, PriceSnapshot, Route } from "../generated/prisma/client.ts";
import type { BalanceBucket, CapScope, FailedChargePolicy } from "../generated/prisma/enums.ts";
import { canRead, type Viewer } from "../auth/index.ts";
import { notFound } from "../errors.ts";
import { RUN_WINDOW, windowFor } from "../money/windows.ts";
import { organizationZone } from "../orgs/time-zone.ts";
import { effectiveCap } from "../budgets/index.ts";
import { holdable } from "../money/index.ts";
import { bucketOf, pricedNowWhere, PRICE_ORDER } from "../routing/index.ts";

/** A money limit: a cap scope, or the bucket's available balance. */
export type LimitKind = CapScope | "BALANCE";

export interface PlanLimit {
  kind: LimitKind;
  /** The key, project, route, channel or run the cap belongs to; null for the balance. */
  scopeId: string | null;
  bucket: BalanceBucket;
  /** Start of the window counted (day or month of the organization's zone; the epoch for a run's total); null for the per-request maximum and the balance. */
  windowStart: Date | null;
  /** The enforced cap (a cap set in the other bucket only caps this one at zero); for BALANCE the bucket's balance. null = uncapped. */
  limit: bigint | null;
  spent: bigint;
  /** In flight, including headroom leased to gateway instances. */
  held: bigint;
  /** limit − spent − held, never below zero; null when uncapped. For KEY_PER_REQUEST the maximum itself. */
  remaining: bigint | null;
}

export interface PlanChannel {
  /** 0-based position in the route's priority order. */
  position: number;
  role: "PRIMARY" | "BACKUP";
  channel: Channel;
  bucket: BalanceBucket;
  /** The snapshot in force now (or the one a quote pinned); null = unpriced, never called. */
  price: PriceSnapshot | null;
  /** Whether a request of this key tries it (in this order, among the tried ones). */
  tried: boolean;
  /** Why it is not tried, when it is not. */
  notTried: string | null;
}

export interface KeyRateLimitValues {
  rpmLimit: number | null;
  tpmLimit: number | null;
  maxConcurrent: number | null;
  /** Sliding counts of the last 60 s and requests in flight, as the limiter counts them; null when it has no such limit or cannot say. */
  requestsLastMinute: number | null;
  tokensLastMinute: number | null;
  inFlight: number | null;
}

export interface RateUsage {
  requests: number;
  tokens: number;
  inFlight: number;
}

let rateUsage: ((keyId: string) => Promise<RateUsage | null>) | null = null;

/** The gateway registers its limiter's reader here (the domain knows no gateway); returns the unregistration. */
export function setRateUsageSource(source: (keyId: string) => Promise<RateUsage | null>): () => void {
  rateUsage = source;
  return () => {
    if (rateUsage === source) rateUsage = null;
  };
}

async function rateLimitsOf(key: Pick<ApiKey, "id" | "rpmLimit" | "tpmLimit" | "maxConcurrent">): Promise<KeyRateLimitValues> {
  const limited = key.rpmLimit !== null || key.tpmLimit !== null || key.maxConcurrent !== null;
  const usage = limited && rateUsage ? await rateUsage(key.id) : null;
  return {
    rpmLimit: key.rpmLimit,
    tpmLimit: key.tpmLimit,
    maxConcurrent: key.maxConcurrent,
    requestsLastMinute: usage && key.rpmLimit !== null ? usage.requests : null,
    tokensLastMinute: usage && key.tpmLimit !== null ? usage.tokens : null,
    inFlight: usage && key.maxConcurrent !== null ? usage.inFlight : null,
  };
}

export interface KeyModelPlan {
  keyId: string;
  model: string;
  /** A request for this model would be served if within its limits. */
  callable: boolean;
  /** Why it is not (empty when callable). */
  reasons: string[];
  route: Route | null;
  channels: PlanChannel[];
  /** Tried channels pay from more than one bucket: a fallback can switch bucket. */
  fallbackSwitchesBucket: boolean;
  limits: PlanLimit[];
  rateLimits: KeyRateLimitValues;
  retryCeiling: number;
  /** 1 + retryCeiling: upstream attempts at most (a channel skipped on its own cap is not an attempt). */
  maxAttempts: number;
  failedChargePolicy: FailedChargePolicy;
  runId: string | null;
  /** The viewer may read the organization (wallet, channel names); false for a project viewer. */
  organizationReader: boolean;
}

/** What the gateway would answer (its OpenAI error code and HTTP status), decided by the same rules. */
export interface Refusal {
  code: string;
  httpStatus: number;
  message: string;
  /** For budget_exceeded: the cap that refuses. */
  capScope: CapScope | null;
}

const refusal = (code: string, httpStatus: number, message: string, capScope: CapScope | null = null): Refusal => ({ code, httpStatus, message, capScope });

/** The gateway's codes (src/gateway/errors.ts); the quote tests check they match a real request's. */
export const REFUSALS = {
  keyPaused: () => refusal("key_paused", 403, "the key is paused"),
  keyRevoked: () => refusal("key_revoked", 401, "the key is revoked"),
  keyExpired: () => refusal("invalid_api_key", 401, "the key has expired"),
  modelNotAllowed: (model: string, why = "the key may not call it") => refusal("model_not_allowed", 403, `model ${model}: ${why}`),
  modelNotFound: (model: string) => refusal("model_not_found", 404, `no route serves model ${model}`),
  routeUnavailable: (model: string) => refusal("route_unavailable", 503, `the route of ${model} has no enabled channel`),
  priceUnknown: (model: string) => refusal("price_unknown", 503, `no channel of ${model} this key may use has a price`),
  runNotFound: (runId: string) => refusal("run_not_found", 404, `run ${runId} does not exist or does not belong to this key`),
  runPaused: () => refusal("run_paused", 402, "the run is paused"),
  runCancelled: (status: string) => refusal("run_cancelled", 402, `the run is ${status.toLowerCase()}`),
  rateLimited: (limit: "rpm" | "tpm" | "concurrent") =>
    refusal("rate_limit_exceeded", 429, limit === "concurrent" ? "the key's requests in flight are at maxConcurrent" : `the key's ${limit} limit leaves no room in the last 60 s`),
  budgetExceeded: (scope: CapScope) => refusal("budget_exceeded", 402, `the worst case would exceed ${scope}`, scope),
  insufficientBalance: (bucket: BalanceBucket) => refusal("insufficient_balance", 402, `the ${bucket} balance does not cover the worst case`),
} as const;

/** The order the lease grant checks caps in (tg_lease_grant), after the key's per-request maximum. */
const CAP_ORDER: CapScope[] = ["KEY_PER_REQUEST", "KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "CHANNEL_DAILY", "RUN_TOTAL"];

type RoutedChannel = { channel: Channel; price: PriceSnapshot | null; bucket: BalanceBucket; role: "PRIMARY" | "BACKUP" };

/** Routes of the organization (all, or these models) with enabled channels and current prices: one statement. */
async function routesOf(organizationId: string, models: string[] | null, at: Date): Promise<Array<{ route: Route; channels: RoutedChannel[] }>> {
  const routes = await db.route.findMany({
    where: { organizationId, ...(models ? { model: { in: models } } : {}) },
    orderBy: { model: "asc" },
    include: {
      channels: {
        where: { enabled: true },
        orderBy: [{ priority: "asc" }, { createdAt: "asc" }],
        include: { priceSnapshots: { where: pricedNowWhere(at), orderBy: PRICE_ORDER, take: 1 } },
      },
    },
  });
  return routes.map(({ channels, ...route }) => ({
    route,
    channels: channels.map(({ priceSnapshots, ...channel }, i) => ({
      channel,
      price: priceSnapshots[0] ?? null,
      bucket: bucketOf(channel.settlement),
      role: i === 0 ? ("PRIMARY" as const) : ("BACKUP" as const),
    })),
  }));
}

type KeyRouteSettings = Pick<ApiKey, "allowedBuckets" | "lowerCostRoutes" | "backupRoutes">;

/** Why the key's settings close a channel to it (the rule of usableChannels in src/gateway/lookups.ts), or null. */
function closedReason(c: Pick<RoutedChannel, "bucket" | "channel" | "role">, key: KeyRouteSettings): string | null {
  if (!key.allowedBuckets.includes(c.bucket)) return `the key may not spend from ${c.bucket}`;
  if (!key.lowerCostRoutes && c.channel.settlement === "ROUTED") return "the key does not use lower-cost (ROUTED) routes";
  if (!key.backupRoutes && c.role === "BACKUP") return "the key does not use backup routes";
  return null;
}

function whyNotTried(c: RoutedChannel, key: KeyRouteSettings): string | null {
  return closedReason(c, key) ?? (c.price ? null : "the channel has no price (never called)");
}

type LimitTarget = { kind: CapScope; scopeId: string; bucket: BalanceBucket };

/** Caps and counters of every target in two statements, and the wallet's buckets in a third. */
async function readLimits(organizationId: string, targets: LimitTarget[], balances: BalanceBucket[], now: Date): Promise<PlanLimit[]> {
  const ids = [...new Set(targets.map((t) => t.scopeId))];
  const zone = await organizationZone(organizationId);
  const windows = [windowFor("KEY_DAILY", now, zone), windowFor("PROJECT_MONTHLY", now, zone), RUN_WINDOW];
  const [caps, counters, buckets] = await Promise.all([
    ids.length ? db.budgetCap.findMany({ where: { scopeId: { in: ids } } }) : Promise.resolve([]),
    ids.length ? db.spendCounter.findMany({ where: { scopeId: { in: ids }, windowStart: { in: windows } } }) : Promise.resolve([]),
    balances.length ? db.walletBucket.findMany({ where: { organizationId, bucket: { in: balances } } }) : Promise.resolve([]),
  ]);
  const limits: PlanLimit[] = targets.map((t) => {
    const cap = effectiveCap(
      caps.filter((c) => c.scopeId === t.scopeId),
      t.kind,
      t.bucket,
    );
    if (t.kind === "KEY_PER_REQUEST") return { kind: t.kind, scopeId: t.scopeId, bucket: t.bucket, windowStart: null, limit: cap, spent: 0n, held: 0n, remaining: cap };
    const windowStart = windowFor(t.kind, now, zone);
    const row = counters.find((c) => c.scope === t.kind && c.scopeId === t.scopeId && c.bucket === t.bucket && c.windowStart.getTime() === windowStart.getTime());
    const spent = row?.spent ?? 0n;
    const held = row?.held ?? 0n;
    return { kind: t.kind, scopeId: t.scopeId, bucket: t.bucket, windowStart, limit: cap, spent, held, remaining: cap === null ? null : positive(cap - spent - held) };
  });
  for (const bucket of balances) {
    const b = buckets.find((x) => x.bucket === bucket);
    const balance = b?.balance ?? 0n;
    const held = b?.held ?? 0n;
    limits.push({ kind: "BALANCE", scopeId: null, bucket, windowStart: null, limit: balance, spent: 0n, held, remaining: positive(balance - held) });
  }
  return limits;
}

const positive = (n: bigint) => (n > 0n ? n : 0n);

/** The limits a request of `key` on these channels (and run) is held against, per bucket it may pay from. */
function limitTargets(key: Pick<ApiKey, "id" | "projectId">, route: Route, tried: PlanChannel[], runId: string | null): LimitTarget[] {
  const buckets = [...new Set(tried.map((c) => c.bucket))];
  const targets: LimitTarget[] = [];
  for (const bucket of buckets) {
    targets.push({ kind: "KEY_PER_REQUEST", scopeId: key.id, bucket });
    targets.push({ kind: "KEY_DAILY", scopeId: key.id, bucket });
    targets.push({ kind: "PROJECT_DAILY", scopeId: key.projectId, bucket });
    targets.push({ kind: "PROJECT_MONTHLY", scopeId: key.projectId, bucket });
    targets.push({ kind: "ROUTE_DAILY", scopeId: route.id, bucket });
    if (runId) targets.push({ kind: "RUN_TOTAL", scopeId: runId, bucket });
  }
  for (const c of tried) targets.push({ kind: "CHANNEL_DAILY", scopeId: c.channel.id, bucket: c.bucket });
  return targets;
}

export interface PlanOptions {
  /** One model; omitted: every model the key may call. */
  model?: string | null;
  /** A run whose cap applies too (it must be this key's). */
  runId?: string | null;
  /** Price these channels with these snapshots instead of the current ones (a quote's pinned prices). */
  pinned?: PriceSnapshot[];
  now?: Date;
}

/** The key, if the viewer may read it (another tenant's key is not found). */
export async function readableKey(viewer: Viewer, keyId: string): Promise<ApiKey> {
  const key = await db.apiKey.findUnique({ where: { id: keyId } });
  if (!key || !canRead(viewer, key.organizationId, key.projectId)) throw notFound("API key", keyId);
  return key;
}

/** The plan of `key` for one model or for every model it may call. */
export async function keyPlans(viewer: Viewer, key: ApiKey, options: PlanOptions = {}): Promise<KeyModelPlan[]> {
  const now = options.now ?? new Date();
  const model = options.model?.trim() || null;
  const runId = options.runId?.trim() || null;
  if (runId) {
    const run = await db.run.findUnique({ where: { id: runId }, select: { keyId: true } });
    if (!run || run.keyId !== key.id) throw notFound("run", runId);
  }
  const organizationReader = viewer.role !== "PROJECT_VIEWER";
  const models = model ? [model] : key.allowedModels.length > 0 ? key.allowedModels : null;
  const [routes, rateLimits] = await Promise.all([routesOf(key.organizationId, models, now), rateLimitsOf(key)]);
  const plans: Array<Omit<KeyModelPlan, "limits"> & { targets: LimitTarget[] }> = [];
  for (const name of model ? [model] : (models ?? routes.map((r) => r.route.model))) {
    const routed = routes.find((r) => r.route.model === name) ?? null;
    const reasons: string[] = [];
    const allowed = key.allowedModels.length === 0 || key.allowedModels.includes(name);
    if (!allowed) reasons.push(`the key may not call ${name}`);
    if (!routed) reasons.push(`no route serves ${name}`);
    const channels: PlanChannel[] = (routed?.channels ?? []).map((c, position) => {
      const price = options.pinned?.find((p) => p.channelId === c.channel.id) ?? c.price;
      const notTried = whyNotTried({ ...c, price }, key);
      return { position, role: c.role, channel: c.channel, bucket: c.bucket, price, tried: notTried === null, notTried };
    });
    const tried = channels.filter((c) => c.tried);
    if (routed && channels.length === 0) reasons.push("the route has no enabled channel");
    else if (routed && tried.length === 0) reasons.push("no channel of the route is open to this key and priced");
    if (key.status !== "ACTIVE") reasons.push(`the key is ${key.status.toLowerCase()}`);
    else if (key.expiresAt && key.expiresAt <= now) reasons.push("the key has expired");
    plans.push({
      keyId: key.id,
      model: name,
      callable: reasons.length === 0,
      reasons,
      route: routed?.route ?? null,
      channels,
      fallbackSwitchesBucket: new Set(tried.map((c) => c.bucket)).size > 1,
      rateLimits,
      retryCeiling: key.retryCeiling,
      maxAttempts: 1 + Math.max(0, key.retryCeiling),
      failedChargePolicy: key.failedChargePolicy,
      runId,
      organizationReader,
      targets: routed ? limitTargets(key, routed.route, tried, runId) : [],
    });
  }
  const targets = plans.flatMap((p) => p.targets);
  const buckets = organizationReader ? [...new Set(plans.flatMap((p) => p.channels.filter((c) => c.tried).map((c) => c.bucket)))] : [];
  const limits = await readLimits(key.organizationId, dedupe(targets), buckets, now);
  return plans.map(({ targets: own, ...plan }) => {
    const bucketsOfPlan = new Set(plan.channels.filter((c) => c.tried).map((c) => c.bucket));
    return {
      ...plan,
      limits: limits.filter((l) => (l.kind === "BALANCE" ? bucketsOfPlan.has(l.bucket) : own.some((t) => t.kind === l.kind && t.scopeId === l.scopeId && t.bucket === l.bucket))),
    };
  });
}

function dedupe(targets: LimitTarget[]): LimitTarget[] {
  const seen = new Set<string>();
  return targets.filter((t) => {
    const k = `${t.kind}|${t.scopeId}|${t.bucket}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

export interface AdmissionVerdict {
  admitted: boolean;
  refusal: Refusal | null;
  /** The channel that would serve the request (the first tried one whose own cap admits it); null when refused before a channel. */
  channel: PlanChannel | null;
  /** Its worst case on that channel (what admission holds). */
  worstCase: bigint | null;
  /** The limit with the least headroom after the worst case (the refusing one when refused); null when nothing caps it. */
  binding: PlanLimit | null;
  /** binding.remaining − worstCase (negative: by how much it does not fit); null when uncapped. */
  headroom: bigint | null;
  /** Channels skipped because their own daily cap refuses. */
  skippedChannels: PlanChannel[];
}

/**
 * What admission would do now for a request whose worst case on a channel is `worstOf(channel)`.
 * `runStatus`: the status of the plan's run, if any. Balance rows absent (a project viewer's plan)
 * are read here too: the verdict must be the gateway's, whoever asks.
 */
export async function judgeAdmission(
  key: ApiKey,
  plan: KeyModelPlan,
  worstOf: (channel: PlanChannel) => bigint,
  /** The request's token bound (reserved prompt + output), what tpm counts; null: tpm not judged. */
  tokens: number | null,
  now = new Date(),
): Promise<AdmissionVerdict> {
  const refused = (r: Refusal, extra: Partial<AdmissionVerdict> = {}): AdmissionVerdict => ({
    admitted: false,
    refusal: r,
    channel: null,
    worstCase: null,
    binding: null,
    headroom: null,
    skippedChannels: [],
    ...extra,
  });
  if (key.status === "REVOKED") return refused(REFUSALS.keyRevoked());
  if (key.expiresAt && key.expiresAt <= now) return refused(REFUSALS.keyExpired());
  if (key.status === "PAUSED") return refused(REFUSALS.keyPaused());
  if (key.allowedModels.length > 0 && !key.allowedModels.includes(plan.model)) return refused(REFUSALS.modelNotAllowed(plan.model));
  if (!plan.route) return refused(REFUSALS.modelNotFound(plan.model));
  if (plan.channels.length === 0) return refused(REFUSALS.routeUnavailable(plan.model));
  const open = plan.channels.filter((c) => closedReason(c, key) === null);
  if (open.length === 0) return refused(REFUSALS.modelNotAllowed(plan.model, "no channel of its route is open to this key (allowed buckets, lower-cost routes, backup routes)"));
  const tried = plan.channels.filter((c) => c.tried);
  if (tried.length === 0) return refused(REFUSALS.priceUnknown(plan.model));
  if (plan.runId) {
    const run = await db.run.findUnique({ where: { id: plan.runId }, select: { keyId: true, status: true } });
    if (!run || run.keyId !== key.id) return refused(REFUSALS.runNotFound(plan.runId));
    if (run.status === "PAUSED") return refused(REFUSALS.runPaused());
    if (run.status !== "ACTIVE") return refused(REFUSALS.runCancelled(run.status));
  }
  // The limiter's order (src/gateway/rate-limit.ts): requests in flight, then rpm, then tpm.
  const rate = plan.rateLimits;
  if (rate.maxConcurrent !== null && rate.inFlight !== null && rate.inFlight >= rate.maxConcurrent) return refused(REFUSALS.rateLimited("concurrent"));
  if (rate.rpmLimit !== null && rate.requestsLastMinute !== null && rate.requestsLastMinute + 1 > rate.rpmLimit) return refused(REFUSALS.rateLimited("rpm"));
  if (rate.tpmLimit !== null && rate.tokensLastMinute !== null && tokens !== null && rate.tokensLastMinute + tokens > rate.tpmLimit) return refused(REFUSALS.rateLimited("tpm"));
  let limits = plan.limits;
  if (!limits.some((l) => l.kind === "BALANCE")) {
    limits = [...limits, ...(await readLimits(key.organizationId, [], [...new Set(tried.map((c) => c.bucket))], now))];
  }
  const skipped: PlanChannel[] = [];
  let channelRefusal: { worst: bigint; limit: PlanLimit } | null = null;
  for (const channel of tried) {
    const worst = worstOf(channel);
    if (!holdable(worst)) return refused(REFUSALS.insufficientBalance(channel.bucket), { channel, worstCase: worst, skippedChannels: skipped });
    const applying = limitsFor(limits, plan, channel);
    for (const limit of applying) {
      if (limit.remaining === null || worst <= limit.remaining) continue;
      if (limit.kind === "CHANNEL_DAILY") {
        skipped.push(channel);
        channelRefusal = { worst, limit };
        break;
      }
      const r = limit.kind === "BALANCE" ? REFUSALS.insufficientBalance(channel.bucket) : REFUSALS.budgetExceeded(limit.kind);
      return refused(r, { channel, worstCase: worst, binding: limit, headroom: limit.remaining - worst, skippedChannels: skipped });
    }
    if (skipped.at(-1) === channel) continue;
    let binding: PlanLimit | null = null;
    for (const limit of applying) if (limit.remaining !== null && (binding === null || limit.remaining < binding.remaining!)) binding = limit;
    return { admitted: true, refusal: null, channel, worstCase: worst, binding, headroom: binding ? binding.remaining! - worst : null, skippedChannels: skipped };
  }
  // Every tried channel's own daily cap refuses: the answer names CHANNEL_DAILY.
  return refused(REFUSALS.budgetExceeded("CHANNEL_DAILY"), {
    worstCase: channelRefusal!.worst,
    binding: channelRefusal!.limit,
    headroom: channelRefusal!.limit.remaining! - channelRefusal!.worst,
    skippedChannels: skipped,
  });
}

/** The limits a request on `channel` is held against, in the order admission checks them. */
export function limitsFor(limits: PlanLimit[], plan: Pick<KeyModelPlan, "keyId" | "runId" | "route">, channel: PlanChannel): PlanLimit[] {
  const ordered: PlanLimit[] = [];
  for (const kind of CAP_ORDER) {
    const scopeId = kind === "CHANNEL_DAILY" ? channel.channel.id : kind === "ROUTE_DAILY" ? plan.route?.id : kind === "RUN_TOTAL" ? plan.runId : undefined;
    const found = limits.find((l) => l.kind === kind && l.bucket === channel.bucket && (scopeId === undefined || l.scopeId === scopeId));
    if (found) ordered.push(found);
  }
  const balance = limits.find((l) => l.kind === "BALANCE" && l.bucket === channel.bucket);
  if (balance) ordered.push(balance);
  return ordered;
}
