import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canRead, isPlatform, tenancyWhere, type Viewer } from "../auth/index.ts";
import { timeRange } from "./filters.ts";
import { RunConnection, RunOrder } from "../schema/types/run.ts";
import { cancelRun, changeRunPause, estimateRun, finishRun, setRunCap, startRun, type RunEstimate } from "../runs/index.ts";
import { notFound } from "../errors.ts";
import { BalanceBucket, FailedChargePolicy, RunMode, RunStatus, Settlement } from "../generated/prisma/enums.ts";
import { BudgetStatusRef, MoneyRef, moneyOf, moneyOrNull } from "../schema/types/common.ts";
import type { EstimatePoint as RunEstimatePoint } from "../runs/prediction.ts";
import { viewerOf } from "./viewer.ts";
import { PlanLimitRef, shownLimits } from "../schema/types/key-plan.ts";

const RunEstimateBasis = builder.enumType("RunEstimateBasis", {
  description: "Where an estimate's calls, tokens and cost come from.",
  values: {
    HISTORY: { description: "The project's latest finished (COMPLETED) runs of this mode started for this model (at least 5)." },
    HISTORY_ANY_MODEL: { description: "Fewer than 5 of those: the project's latest finished runs of this mode, whatever their model (at least 5)." },
    PROFILE: { description: "Too little history: the mode's built-in profile (calls and tokens per call)." },
  } as const,
});

const RunSecondsBasis = builder.enumType("RunSecondsBasis", {
  description: "Where an estimate's runtime comes from.",
  values: {
    HISTORY: { description: "The sampled runs' wall time, from their first request's start to their last answer." },
    ROUTE_LATENCY: { description: "The profile's calls × the p50 latency of the channel's recent receipts (at least 5 in the last 7 days)." },
    PROFILE: { description: "The profile's calls × its fixed seconds per call." },
  } as const,
});

const RunEstimatePointRef = builder.objectRef<RunEstimatePoint & { bucket: BalanceBucket | null }>("RunEstimatePoint").implement({
  description: "One percentile of a run. Each number is its own percentile over the sampled runs (an observed run's value); for PROFILE, the profile's low / typical / high calls.",
  fields: (t) => ({
    calls: t.exposeInt("calls", { description: "Answered model calls." }),
    promptTokens: t.field({ type: "Count", resolve: (p) => p.promptTokens }),
    completionTokens: t.field({ type: "Count", resolve: (p) => p.completionTokens }),
    seconds: t.float({ description: "Wall time, to the millisecond.", resolve: (p) => p.milliseconds / 1000 }),
    cost: t.field({
      type: MoneyRef,
      nullable: true,
      description: "At the current price of the channel the key would use (not what past runs were charged); null without a usable channel.",
      resolve: (p) => (p.bucket ? moneyOf(p.cost, p.bucket) : null),
    }),
  }),
});

const RunEstimateRef = builder.objectRef<RunEstimate>("RunEstimate").implement({
  description: "The pre-flight check for a run: what it will likely cost, which balance and route pay, and whether the key, balance and caps allow it.",
  fields: (t) => {
    const inBucket = (pick: (e: RunEstimate) => bigint | null) => t.field({ type: MoneyRef, nullable: true, resolve: (e: RunEstimate) => (e.bucket ? moneyOrNull(pick(e), e.bucket) : null) });
    return {
      keyId: t.exposeID("keyId"),
      model: t.exposeString("model"),
      mode: t.field({ type: RunMode, resolve: (e) => e.mode }),
      allowed: t.exposeBoolean("allowed"),
      reasons: t.exposeStringList("reasons", { description: "Why the run would be refused or cut short (empty when allowed)." }),
      bucket: t.field({ type: BalanceBucket, nullable: true, resolve: (e) => e.bucket }),
      settlement: t.field({ type: Settlement, nullable: true, resolve: (e) => e.settlement }),
      channelName: t.exposeString("channelName", { nullable: true, description: "null for project viewer tokens (they cannot read routes)." }),
      upstreamModel: t.exposeString("upstreamModel", { nullable: true }),
      backupAvailable: t.exposeBoolean("backupAvailable"),
      estimatedCallsMin: t.exposeInt("estimatedCallsMin", { description: "p10.calls." }),
      estimatedCallsMax: t.exposeInt("estimatedCallsMax", { description: "p90.calls." }),
      estimatedSecondsMin: t.exposeInt("estimatedSecondsMin", { description: "p10.seconds rounded down." }),
      estimatedSecondsMax: t.exposeInt("estimatedSecondsMax", { description: "p90.seconds rounded up." }),
      costMin: inBucket((e) => e.costMin),
      costMax: inBucket((e) => e.costMax),
      minimumRecommendedBalance: t.field({
        type: MoneyRef,
        nullable: true,
        description: "costMax plus one more call as dear as the dearest one the estimate knows (the profile's call, or the sampled runs' dearest at the current price).",
        resolve: (e) => (e.bucket ? moneyOrNull(e.minimumRecommendedBalance, e.bucket) : null),
      }),
      basis: t.field({ type: RunEstimateBasis, resolve: (e) => e.basis }),
      basisRunCount: t.exposeInt("basisRunCount", { description: "The finished runs the estimate learned from (0 for PROFILE)." }),
      secondsBasis: t.field({ type: RunSecondsBasis, resolve: (e) => e.secondsBasis }),
      latencySampleCount: t.exposeInt("latencySampleCount", { description: "The receipts the per-call latency came from (0 unless secondsBasis is ROUTE_LATENCY)." }),
      secondsPerCall: t.float({ nullable: true, description: "Seconds per call used with the profile's calls; null when the runtime is the sampled runs' own.", resolve: (e) => e.secondsPerCall }),
      p10: t.field({ type: RunEstimatePointRef, resolve: (e) => ({ ...e.p10, bucket: e.bucket }) }),
      p50: t.field({ type: RunEstimatePointRef, resolve: (e) => ({ ...e.p50, bucket: e.bucket }) }),
      p90: t.field({ type: RunEstimatePointRef, resolve: (e) => ({ ...e.p90, bucket: e.bucket }) }),
      warnings: t.exposeStringList("warnings", { description: "What the user should know that does not refuse the run, e.g. an available balance below minimumRecommendedBalance (empty when none)." }),
      available: t.field({
        type: MoneyRef,
        nullable: true,
        description: "The bucket's available balance; null for project viewer tokens (they cannot read the wallet).",
        resolve: (e) => (e.bucket ? moneyOrNull(e.available, e.bucket) : null),
      }),
      keyDaily: t.field({ type: BudgetStatusRef, nullable: true, resolve: (e) => e.keyDaily }),
      limits: t.field({
        type: [PlanLimitRef],
        description: "Every limit a call on the first channel is held against, in the order admission checks them (BALANCE not for project viewers).",
        resolve: (e, _args, ctx) => shownLimits(e.limits, viewerOf(ctx).role !== "PROJECT_VIEWER"),
      }),
      bindingLimits: t.field({
        type: [PlanLimitRef],
        description: "The caps that refuse the run or may cut it short: remaining below costMax (KEY_PER_REQUEST: below one call's estimate). A cap below costMin is also in reasons.",
        resolve: (e, _args, ctx) => shownLimits(e.bindingLimits, viewerOf(ctx).role !== "PROJECT_VIEWER"),
      }),
      retryCeiling: t.exposeInt("retryCeiling"),
      failedChargePolicy: t.field({ type: FailedChargePolicy, resolve: (e) => e.failedChargePolicy }),
    };
  },
});

const EstimateRunInput = builder.inputType("EstimateRunInput", {
  fields: (t) => ({
    keyId: t.id({ required: true }),
    model: t.string({ required: true }),
    mode: t.field({ type: RunMode, required: true }),
  }),
});

const StartRunInput = builder.inputType("StartRunInput", {
  fields: (t) => ({
    keyId: t.id({ required: true }),
    mode: t.field({ type: RunMode, required: true }),
    cap: t.field({ type: "Decimal", required: false, description: "Total the run may spend, in the cap bucket's currency." }),
    capBucket: t.field({ type: BalanceBucket, required: false, description: "Default: the key's primary bucket." }),
    model: t.string({ required: false, description: "The catalog model the run is for (a route must serve it and the key may call it)." }),
    label: t.string({ required: false, description: "A free label (at most 200 characters), e.g. the agent's task." }),
  }),
});

const SetRunCapInput = builder.inputType("SetRunCapInput", {
  fields: (t) => ({
    runId: t.id({ required: true }),
    cap: t.field({ type: "Decimal", required: false, description: "The run's total cap in the bucket's currency; null removes it." }),
    bucket: t.field({ type: BalanceBucket, required: false, description: "Default: the key's primary bucket." }),
  }),
});

const RunFilter = builder.inputType("RunFilter", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
    keyId: t.id({ required: false }),
    projectId: t.id({ required: false }),
    status: t.field({ type: RunStatus, required: false }),
    mode: t.field({ type: RunMode, required: false }),
    model: t.string({ required: false }),
    from: t.field({ type: "DateTime", required: false, description: "Started at or after (inclusive)." }),
    to: t.field({ type: "DateTime", required: false, description: "Started before (exclusive)." }),
  }),
});

type RunFilterInput = {
  organizationId?: string | number | null;
  keyId?: string | number | null;
  projectId?: string | number | null;
  status?: RunStatus | null;
  mode?: RunMode | null;
  model?: string | null;
  from?: Date | null;
  to?: Date | null;
};

function runWhere(viewer: Viewer, filter: RunFilterInput | null | undefined) {
  const f = filter ?? {};
  const range = timeRange(f.from, f.to);
  return {
    AND: [
      isPlatform(viewer) ? (f.organizationId ? { organizationId: String(f.organizationId) } : {}) : tenancyWhere(viewer),
      {
        ...(f.keyId ? { keyId: String(f.keyId) } : {}),
        ...(f.projectId ? { projectId: String(f.projectId) } : {}),
        ...(f.status ? { status: f.status } : {}),
        ...(f.mode ? { mode: f.mode } : {}),
        ...(f.model ? { model: f.model } : {}),
        ...(range ? { createdAt: range } : {}),
      },
    ],
  };
}

builder.queryFields((t) => ({
  estimateRun: t.field({
    type: RunEstimateRef,
    args: { input: t.arg({ type: EstimateRunInput, required: true }) },
    resolve: (_root, { input }, ctx) => estimateRun(viewerOf(ctx), { ...input, keyId: String(input.keyId) }),
  }),
  runs: t.prismaConnection(
    {
      type: "Run",
      cursor: "id",
      description: "Runs, newest first by default.",
      args: { filter: t.arg({ type: RunFilter, required: false }), orderBy: t.arg({ type: RunOrder.Input, required: false, description: RunOrder.description }) },
      resolve: (query, _root, args, ctx) => db.run.findMany({ ...query, where: runWhere(viewerOf(ctx), args.filter), orderBy: RunOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.run.count({ where: runWhere(viewerOf(ctx), args.filter) }),
    },
    RunConnection,
  ),
  run: t.prismaField({
    type: "Run",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const run = await db.run.findUnique({ ...query, where: { id: String(id) } });
      if (!run || !canRead(viewerOf(ctx), run.organizationId, run.projectId)) throw notFound("run", String(id));
      return run;
    },
  }),
}));

builder.mutationFields((t) => ({
  startRun: t.prismaField({
    type: "Run",
    args: { input: t.arg({ type: StartRunInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const run = await startRun(viewerOf(ctx), { ...input, keyId: String(input.keyId) });
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
  cancelRun: t.prismaField({
    type: "Run",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const run = await cancelRun(viewerOf(ctx), String(id));
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
  finishRun: t.prismaField({
    type: "Run",
    description: "Ends a run as COMPLETED: its requests are refused from now on (402 run_cancelled). Audited; idempotent.",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const run = await finishRun(viewerOf(ctx), String(id));
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
  setRunCap: t.prismaField({
    type: "Run",
    description: "Changes a run's total cap (audited). An EXHAUSTED run the new cap leaves room in is ACTIVE again.",
    args: { input: t.arg({ type: SetRunCapInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const run = await setRunCap(viewerOf(ctx), { runId: String(input.runId), cap: input.cap ?? null, bucket: input.bucket ?? null });
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
  pauseRun: t.prismaField({
    type: "Run",
    description: "Pauses an active run: its requests get 402 run_paused until resumeRun. Audited.",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const run = await changeRunPause(viewerOf(ctx), String(id), "pauseRun");
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
  resumeRun: t.prismaField({
    type: "Run",
    description: "Resumes a paused run. Audited.",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const run = await changeRunPause(viewerOf(ctx), String(id), "resumeRun");
      return db.run.findUniqueOrThrow({ ...query, where: { id: run.id } });
    },
  }),
}));
