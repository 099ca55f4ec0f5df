// Runs: an agent / research job with its own cap. Requests carrying its id count against the cap
// and are refused once the run is cancelled. estimateRun is the pre-flight check users see first.
import { revokeLeases, walletBucket } from "../money/index.ts";
import { db } from "../db/index.ts";
import type { Run } from "../generated/prisma/client.ts";
import type { BalanceBucket, FailedChargePolicy, RunMode, Settlement } from "../generated/prisma/enums.ts";
import { assertCanWrite, canRead, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { budgetStatus, capAmount, capsOf, parseCapInput, setCap, type BudgetStatus } from "../budgets/index.ts";
import { badInput, conflict, notFound } from "../errors.ts";
import { primaryBucket } from "../keys/index.ts";
import { planRoute, type PlannedChannel } from "../routing/index.ts";
import { BUCKET_CURRENCY, formatMoney } from "../money/amounts.ts";
import { predictRun, type RunPrediction } from "./prediction.ts";
import { organizationZone } from "../orgs/time-zone.ts";
import { keyPlans, limitsFor, type PlanLimit } from "../keys/plan.ts";

/** Bounds of startRun's free text. */
const RUN_MODEL_MAX = 256;
const RUN_LABEL_MAX = 200;

function optionalText(value: string | null | undefined, field: string, max: number): string | null {
  if (value === null || value === undefined) return null;
  const text = value.trim();
  if (!text) return null;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this refuses
  if (text.length > max || /[\u0000-\u001f\u007f]/.test(text)) throw badInput(field, `must be at most ${max} printable characters`);
  return text;
}

export async function startRun(
  viewer: Viewer,
  input: { keyId: string; mode: RunMode; cap?: string | null; capBucket?: BalanceBucket | null; model?: string | null; label?: string | null },
): Promise<Run> {
  const key = await db.apiKey.findUnique({ where: { id: input.keyId } });
  if (!key) throw notFound("API key", input.keyId);
  assertCanWrite(viewer, key.organizationId, { what: "API key", id: key.id, projectId: key.projectId });
  if (key.status === "REVOKED") throw conflict("cannot start a run on a revoked key");
  const cap = parseCapInput(input.cap, "cap");
  const bucket = input.capBucket ?? primaryBucket(key);
  if (!key.allowedBuckets.includes(bucket)) throw badInput("capBucket", "the key may not spend from that bucket");
  const model = optionalText(input.model, "model", RUN_MODEL_MAX);
  const label = optionalText(input.label, "label", RUN_LABEL_MAX);
  if (model !== null) {
    const route = await db.route.findFirst({ where: { organizationId: key.organizationId, model }, select: { id: true } });
    if (!route) throw badInput("model", `no route serves "${model}" in this organization`);
    if (key.allowedModels.length > 0 && !key.allowedModels.includes(model)) throw badInput("model", "the key may not call this model");
  }
  return db.$transaction(async (tx) => {
    const run = await tx.run.create({ data: { organizationId: key.organizationId, keyId: key.id, projectId: key.projectId, mode: input.mode, model, label } });
    await setCap(tx, { organizationId: key.organizationId, scope: "RUN_TOTAL", scopeId: run.id, bucket }, cap);
    await writeAudit(tx, viewer, {
      organizationId: key.organizationId,
      action: "startRun",
      targetType: "Run",
      targetId: run.id,
      after: { ...run, caps: await capsOf(tx, run.id) },
    });
    return run;
  });
}

export async function cancelRun(viewer: Viewer, id: string): Promise<Run> {
  const run = await db.run.findUnique({ where: { id } });
  if (!run) throw notFound("run", id);
  assertCanWrite(viewer, run.organizationId, { what: "run", id, projectId: run.projectId });
  if (run.status === "CANCELLED") return run;
  if (run.status !== "ACTIVE" && run.status !== "PAUSED") throw conflict(`cannot cancel a ${run.status.toLowerCase()} run`);
  return db.$transaction(async (tx) => {
    // Instances stop admitting against the run's leases (a grant checks the run's status too).
    await revokeLeases(tx, "RUN_TOTAL", id, run.organizationId);
    const next = await tx.run.update({ where: { id }, data: { status: "CANCELLED", endedAt: new Date() } });
    await writeAudit(tx, viewer, {
      organizationId: run.organizationId,
      action: "cancelRun",
      targetType: "Run",
      targetId: id,
      before: { status: run.status },
      after: { status: next.status },
    });
    return next;
  });
}

/** Ends a run as COMPLETED (an explicit finish): its requests are refused from now on. Idempotent. */
export async function finishRun(viewer: Viewer, id: string): Promise<Run> {
  const run = await db.run.findUnique({ where: { id } });
  if (!run) throw notFound("run", id);
  assertCanWrite(viewer, run.organizationId, { what: "run", id, projectId: run.projectId });
  if (run.status === "COMPLETED") return run;
  if (run.status === "CANCELLED") throw conflict("cannot finish a cancelled run");
  return db.$transaction(async (tx) => {
    await revokeLeases(tx, "RUN_TOTAL", id, run.organizationId);
    const next = await tx.run.update({ where: { id }, data: { status: "COMPLETED", endedAt: run.endedAt ?? new Date() } });
    await writeAudit(tx, viewer, { organizationId: run.organizationId, action: "finishRun", targetType: "Run", targetId: id, before: { status: run.status }, after: { status: next.status } });
    return next;
  });
}

/**
 * Changes a run's cap (audited; null removes it). An EXHAUSTED run whose new cap leaves room is
 * ACTIVE again; a finished or cancelled one keeps its status.
 */
export async function setRunCap(viewer: Viewer, input: { runId: string; cap: string | null; bucket?: BalanceBucket | null }): Promise<Run> {
  const run = await db.run.findUnique({ where: { id: input.runId }, include: { key: true } });
  if (!run) throw notFound("run", input.runId);
  assertCanWrite(viewer, run.organizationId, { what: "run", id: run.id, projectId: run.projectId });
  const cap = parseCapInput(input.cap, "cap") ?? null;
  const bucket = input.bucket ?? primaryBucket(run.key);
  if (!run.key.allowedBuckets.includes(bucket)) throw badInput("bucket", "the run's key may not spend from that bucket");
  // An exhausted run admits nothing, so its spend cannot move while the cap changes (read outside the transaction).
  const spent = run.status === "EXHAUSTED" ? (await budgetStatus("RUN_TOTAL", run.id, bucket)).spent : 0n;
  const next = await db.$transaction(async (tx) => {
    const before = await capsOf(tx, run.id);
    await setCap(tx, { organizationId: run.organizationId, scope: "RUN_TOTAL", scopeId: run.id, bucket }, cap);
    const status = run.status === "EXHAUSTED" && (cap === null || spent < cap) ? "ACTIVE" : run.status;
    const updated = status === run.status ? run : await tx.run.update({ where: { id: run.id }, data: { status, endedAt: null } });
    await writeAudit(tx, viewer, {
      organizationId: run.organizationId,
      action: "setRunCap",
      targetType: "Run",
      targetId: run.id,
      before: { status: run.status, caps: before },
      after: { status, caps: await capsOf(tx, run.id) },
    });
    return updated;
  });
  return db.run.findUniqueOrThrow({ where: { id: next.id } });
}

/**
 * A request was refused on the run's cap: the run is EXHAUSTED (its requests are refused until
 * setRunCap makes room). Only an ACTIVE run changes; its leases are given back. A request whose
 * worst case is above the whole cap could never fit the run: it is refused, the run goes on.
 */
export async function markRunExhausted(runId: string, organizationId: string, bucket: BalanceBucket | null, refusedAmount: bigint | null): Promise<boolean> {
  if (bucket && refusedAmount !== null) {
    const cap = await capAmount("RUN_TOTAL", runId, bucket);
    if (cap !== null && refusedAmount > cap) return false;
  }
  return db.$transaction(async (tx) => {
    const changed = await tx.run.updateMany({ where: { id: runId, status: "ACTIVE" }, data: { status: "EXHAUSTED", endedAt: new Date() } });
    if (changed.count === 0) return false;
    await revokeLeases(tx, "RUN_TOTAL", runId, organizationId);
    return true;
  });
}

export interface RunTotals {
  requests: number;
  failures: number;
  promptTokens: bigint;
  completionTokens: bigint;
  charges: Array<{ bucket: BalanceBucket; amount: bigint }>;
  firstRequestAt: Date | null;
  lastRequestAt: Date | null;
}

/** What a run did: its receipts and failed requests, summed per bucket. Two aggregate statements. */
export async function runTotals(runId: string): Promise<RunTotals> {
  const [receipts, failures] = await Promise.all([
    db.receipt.groupBy({
      by: ["bucket"],
      where: { runId },
      _count: { _all: true },
      _sum: { charge: true, promptTokens: true, completionTokens: true },
      _min: { createdAt: true },
      _max: { createdAt: true },
    }),
    db.failedRequest.groupBy({
      by: ["bucket"],
      where: { runId },
      _count: { _all: true },
      _sum: { charge: true, promptTokens: true, completionTokens: true },
      _min: { createdAt: true },
      _max: { createdAt: true },
    }),
  ]);
  const charges = new Map<BalanceBucket, bigint>();
  let first: Date | null = null;
  let last: Date | null = null;
  let promptTokens = 0n;
  let completionTokens = 0n;
  for (const g of [...receipts, ...failures]) {
    if (g.bucket) charges.set(g.bucket, (charges.get(g.bucket) ?? 0n) + (g._sum.charge ?? 0n));
    promptTokens += BigInt(g._sum.promptTokens ?? 0);
    completionTokens += BigInt(g._sum.completionTokens ?? 0);
    if (g._min.createdAt && (!first || g._min.createdAt < first)) first = g._min.createdAt;
    if (g._max.createdAt && (!last || g._max.createdAt > last)) last = g._max.createdAt;
  }
  return {
    requests: receipts.reduce((n, g) => n + g._count._all, 0),
    failures: failures.reduce((n, g) => n + g._count._all, 0),
    promptTokens,
    completionTokens,
    charges: [...charges].map(([bucket, amount]) => ({ bucket, amount })).sort((a, b) => a.bucket.localeCompare(b.bucket)),
    firstRequestAt: first,
    lastRequestAt: last,
  };
}

const RUN_PAUSE = {
  pauseRun: { from: "ACTIVE", to: "PAUSED" },
  resumeRun: { from: "PAUSED", to: "ACTIVE" },
} as const;

/**
 * Pauses a run (its requests get 402 run_paused, from the reservation itself, so a request racing
 * the pause is refused too) or resumes it. Idempotent: pausing a paused run returns it unchanged.
 */
export async function changeRunPause(viewer: Viewer, id: string, action: keyof typeof RUN_PAUSE): Promise<Run> {
  const run = await db.run.findUnique({ where: { id } });
  if (!run) throw notFound("run", id);
  assertCanWrite(viewer, run.organizationId);
  const { from, to } = RUN_PAUSE[action];
  if (run.status === to) return run;
  if (run.status !== from) throw conflict(`cannot ${action === "pauseRun" ? "pause" : "resume"} a ${run.status.toLowerCase()} run`);
  return db.$transaction(async (tx) => {
    // Paused: instances stop admitting against the run's leases; resumed: they forget the refusal.
    await revokeLeases(tx, "RUN_TOTAL", id, run.organizationId);
    // Conditional update: a concurrent cancel wins and this one reports the conflict.
    const changed = await tx.run.updateMany({ where: { id, status: from }, data: { status: to } });
    if (changed.count === 0) throw conflict(`the run changed meanwhile; try again`);
    const next = await tx.run.findUniqueOrThrow({ where: { id } });
    await writeAudit(tx, viewer, {
      organizationId: run.organizationId,
      action,
      targetType: "Run",
      targetId: id,
      before: { status: run.status },
      after: { status: next.status },
    });
    return next;
  });
}

// The built-in profiles and the history / latency rules live in prediction.ts.
export { RUN_PROFILES } from "./prediction.ts";

/** The prediction's basis, its percentiles and runtime rule (prediction.ts), and the pre-flight verdict. */
export interface RunEstimate extends Omit<RunPrediction, "dearestCall"> {
  keyId: string;
  model: string;
  mode: RunMode;
  allowed: boolean;
  reasons: string[];
  bucket: BalanceBucket | null;
  settlement: Settlement | null;
  channelName: string | null;
  upstreamModel: string | null;
  backupAvailable: boolean;
  estimatedCallsMin: number;
  estimatedCallsMax: number;
  estimatedSecondsMin: number;
  estimatedSecondsMax: number;
  costMin: bigint;
  costMax: bigint;
  /** costMax plus one more call as dear as the dearest the estimate knows (profile or sampled runs): what the wallet should hold before starting. */
  minimumRecommendedBalance: bigint;
  available: bigint | null;
  keyDaily: BudgetStatus | null;
  /** Every limit a call on the first channel is held against (src/keys/plan.ts), in admission order. */
  limits: PlanLimit[];
  /** The limits that refuse the run or may cut it short: remaining below the largest estimate (KEY_PER_REQUEST: below one call). */
  bindingLimits: PlanLimit[];
  retryCeiling: number;
  failedChargePolicy: FailedChargePolicy;
  /** Things the user should know that do not refuse the run (e.g. a balance below minimumRecommendedBalance). */
  warnings: string[];
}

function usableChannel(channels: PlannedChannel[], key: { allowedBuckets: BalanceBucket[]; lowerCostRoutes: boolean; backupRoutes: boolean }) {
  return channels.filter((c) => key.allowedBuckets.includes(c.bucket) && (key.lowerCostRoutes || c.channel.settlement !== "ROUTED") && (key.backupRoutes || c.role === "PRIMARY"));
}

const LIMIT_TEXT: Record<Exclude<PlanLimit["kind"], "BALANCE">, string> = {
  KEY_PER_REQUEST: "the key's per-request maximum charge",
  KEY_DAILY: "the key's daily cap",
  PROJECT_DAILY: "the project's daily cap",
  PROJECT_MONTHLY: "the project's monthly cap",
  ROUTE_DAILY: "the route's daily cap",
  CHANNEL_DAILY: "the channel's daily cap",
  RUN_TOTAL: "the run's cap",
};

export async function estimateRun(viewer: Viewer, input: { keyId: string; model: string; mode: RunMode }): Promise<RunEstimate> {
  const key = await db.apiKey.findUnique({ where: { id: input.keyId } });
  if (!key) throw notFound("API key", input.keyId);
  if (!canRead(viewer, key.organizationId, key.projectId)) throw notFound("API key", input.keyId);
  const reasons: string[] = [];
  if (key.status !== "ACTIVE") reasons.push(`key is ${key.status.toLowerCase()}`);
  if (key.allowedModels.length > 0 && !key.allowedModels.includes(input.model)) reasons.push(`key may not call ${input.model}`);
  const plan = await planRoute(key.organizationId, input.model);
  if (!plan) reasons.push(`no route for model ${input.model}`);
  const usable = plan ? usableChannel(plan.channels, key) : [];
  const first = usable[0] ?? null;
  if (plan && !first) reasons.push("no channel of this route is usable with this key's buckets and route settings");
  if (first && !first.price) reasons.push("the channel has no price: requests would be refused");

  const prediction = await predictRun({ projectId: key.projectId, model: input.model, mode: input.mode, channel: first });
  const costMin = prediction.p10.cost;
  const costMax = prediction.p90.cost;
  const minimumRecommendedBalance = costMax + prediction.dearestCall;
  let available: bigint | null = null;
  let keyDaily: BudgetStatus | null = null;
  let limits: PlanLimit[] = [];
  const bindingLimits: PlanLimit[] = [];
  if (first) {
    const bucket = await walletBucket(key.organizationId, first.bucket);
    available = bucket.balance - bucket.held;
    if (available < costMin) reasons.push("the balance does not cover even the smallest estimate");
    keyDaily = await budgetStatus("KEY_DAILY", key.id, first.bucket, new Date(), await organizationZone(key.organizationId));
    // Every cap a call is held against (the balance is judged above): one that leaves less than the
    // smallest estimate refuses the run (per request: less than one call); below the largest it may cut it short.
    const [plan] = await keyPlans(viewer, key, { model: input.model });
    const channel = plan?.channels.find((c) => c.tried && c.channel.id === first.channel.id);
    limits = plan && channel ? limitsFor(plan.limits, plan, channel) : [];
    for (const limit of limits) {
      if (limit.kind === "BALANCE" || limit.remaining === null) continue;
      const perRequest = limit.kind === "KEY_PER_REQUEST";
      if (limit.remaining < (perRequest ? prediction.dearestCall : costMax)) bindingLimits.push(limit);
      // A channel's own cap only skips it while a backup is left to try.
      if (limit.kind === "CHANNEL_DAILY" && usable.length > 1) continue;
      if (limit.remaining < (perRequest ? prediction.dearestCall : costMin)) reasons.push(`${LIMIT_TEXT[limit.kind]} leaves less than ${perRequest ? "one call's estimate" : "the smallest estimate"}`);
    }
  }
  // Below the recommended minimum but above the smallest estimate: the run may start, the user is told.
  const warnings: string[] = [];
  if (first && available !== null && available >= costMin && available < minimumRecommendedBalance) {
    warnings.push(`the available balance is below the minimum recommended balance of ${formatMoney(minimumRecommendedBalance)} ${BUCKET_CURRENCY[first.bucket]}`);
  }
  // A project viewer sees its key's estimate, not the organization's wallet balance or channel names
  // (it cannot read the wallet or the routes either): those fields are null for it.
  const orgReader = viewer.role !== "PROJECT_VIEWER";
  return {
    keyId: key.id,
    model: input.model,
    mode: input.mode,
    allowed: reasons.length === 0,
    reasons,
    bucket: first?.bucket ?? null,
    settlement: first?.channel.settlement ?? null,
    channelName: orgReader ? (first?.channel.name ?? null) : null,
    upstreamModel: first?.channel.upstreamModel ?? null,
    backupAvailable: usable.length > 1,
    // min / max are the p10 / p90 (whole seconds rounded outwards, so the range holds the exact one).
    estimatedCallsMin: prediction.p10.calls,
    estimatedCallsMax: prediction.p90.calls,
    estimatedSecondsMin: Math.floor(prediction.p10.milliseconds / 1000),
    estimatedSecondsMax: Math.ceil(prediction.p90.milliseconds / 1000),
    costMin,
    costMax,
    minimumRecommendedBalance,
    available: orgReader ? available : null,
    keyDaily,
    limits,
    bindingLimits,
    retryCeiling: key.retryCeiling,
    failedChargePolicy: key.failedChargePolicy,
    basis: prediction.basis,
    basisRunCount: prediction.basisRunCount,
    secondsBasis: prediction.secondsBasis,
    latencySampleCount: prediction.latencySampleCount,
    secondsPerCall: prediction.secondsPerCall,
    p10: prediction.p10,
    p50: prediction.p50,
    p90: prediction.p90,
    warnings,
  };
}
