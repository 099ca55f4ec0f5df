// Runs: an agent / research job with its own cap. Requests carrying its id count against the cap
// and are refused once the run is cancelled. estimateRun is the pre-flight check users see first.
import { revokeLeases } from "../accounting/leases.ts";
import { db } from "../db/index.ts";
import type { Run } from "../generated/prisma/client.ts";
import type { BalanceBucket, FailedChargePolicy, RunMode, Settlement } from "../generated/prisma/enums.ts";
import { assertCanWrite, canRead, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { budgetStatus, capsOf, parseCapInput, setCap, type BudgetStatus } from "../budgets/index.ts";
import { badInput, conflict, forbidden, notFound } from "../errors.ts";
import { primaryBucket } from "../keys/index.ts";
import { planRoute, type PlannedChannel } from "../routing/index.ts";
import { requestCharge } from "../money.ts";
import { walletBucket } from "../accounting/index.ts";

export async function startRun(
  viewer: Viewer,
  input: { keyId: string; mode: RunMode; cap?: string | null; capBucket?: BalanceBucket | null },
): Promise<Run> {
  const key = await db.apiKey.findUnique({ where: { id: input.keyId } });
  if (!key) throw notFound("API key", input.keyId);
  assertCanWrite(viewer, key.organizationId, { what: "API key", id: key.id, projectId: key.projectId });
  if (key.status === "REVOKED") throw conflict("cannot start a run on a revoked key");
  const cap = parseCapInput(input.cap, "cap");
  const bucket = input.capBucket ?? primaryBucket(key);
  if (!key.allowedBuckets.includes(bucket)) throw badInput("capBucket", "the key may not spend from that bucket");
  return db.$transaction(async (tx) => {
    const run = await tx.run.create({ data: { organizationId: key.organizationId, keyId: key.id, projectId: key.projectId, mode: input.mode } });
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

/** Typical shape of a run per mode: model calls and tokens per call (documented in the README). */
export const RUN_PROFILES: Record<RunMode, { calls: [number, number]; promptTokens: number; completionTokens: number; secondsPerCall: number }> = {
  QUICK: { calls: [2, 4], promptTokens: 2_000, completionTokens: 800, secondsPerCall: 8 },
  STANDARD: { calls: [5, 10], promptTokens: 4_000, completionTokens: 1_500, secondsPerCall: 15 },
  DEEP: { calls: [12, 30], promptTokens: 8_000, completionTokens: 3_000, secondsPerCall: 25 },
};

export interface RunEstimate {
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
  /** costMax plus one more worst-case call: what the wallet should hold before starting. */
  minimumRecommendedBalance: bigint;
  available: bigint | null;
  keyDaily: BudgetStatus | null;
  retryCeiling: number;
  failedChargePolicy: FailedChargePolicy;
}

function usableChannel(channels: PlannedChannel[], key: { allowedBuckets: BalanceBucket[]; lowerCostRoutes: boolean; backupRoutes: boolean }) {
  return channels.filter(
    (c) =>
      key.allowedBuckets.includes(c.bucket) &&
      (key.lowerCostRoutes || c.channel.settlement !== "ROUTED") &&
      (key.backupRoutes || c.role === "PRIMARY"),
  );
}

export async function estimateRun(viewer: Viewer, input: { keyId: string; model: string; mode: RunMode }): Promise<RunEstimate> {
  const key = await db.apiKey.findUnique({ where: { id: input.keyId } });
  if (!key) throw notFound("API key", input.keyId);
  if (!canRead(viewer, key.organizationId, key.projectId)) throw notFound("API key", input.keyId);
  const profile = RUN_PROFILES[input.mode];
  const reasons: string[] = [];
  if (key.status !== "ACTIVE") reasons.push(`key is ${key.status.toLowerCase()}`);
  if (key.allowedModels.length > 0 && !key.allowedModels.includes(input.model)) reasons.push(`key may not call ${input.model}`);
  const plan = await planRoute(key.organizationId, input.model);
  if (!plan) reasons.push(`no route for model ${input.model}`);
  const usable = plan ? usableChannel(plan.channels, key) : [];
  const first = usable[0] ?? null;
  if (plan && !first) reasons.push("no channel of this route is usable with this key's buckets and route settings");
  if (first && !first.price) reasons.push("the channel has no price: requests would be refused");

  const perCall = first?.price ? requestCharge(first.price, profile.promptTokens, profile.completionTokens) : 0n;
  const costMin = perCall * BigInt(profile.calls[0]);
  const costMax = perCall * BigInt(profile.calls[1]);
  const minimumRecommendedBalance = costMax + perCall;
  let available: bigint | null = null;
  let keyDaily: BudgetStatus | null = null;
  if (first) {
    const bucket = await walletBucket(key.organizationId, first.bucket);
    available = bucket.balance - bucket.held;
    if (available < costMin) reasons.push("the balance does not cover even the smallest estimate");
    keyDaily = await budgetStatus("KEY_DAILY", key.id, first.bucket);
    if (keyDaily.remaining !== null && keyDaily.remaining < costMin) reasons.push("the key's daily cap leaves less than the smallest estimate");
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
    estimatedCallsMin: profile.calls[0],
    estimatedCallsMax: profile.calls[1],
    estimatedSecondsMin: profile.calls[0] * profile.secondsPerCall,
    estimatedSecondsMax: profile.calls[1] * profile.secondsPerCall,
    costMin,
    costMax,
    minimumRecommendedBalance,
    available: orgReader ? available : null,
    keyDaily,
    retryCeiling: key.retryCeiling,
    failedChargePolicy: key.failedChargePolicy,
  };
}
