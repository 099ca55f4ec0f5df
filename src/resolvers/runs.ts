import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canRead } from "../auth/index.ts";
import { cancelRun, changeRunPause, estimateRun, startRun, type RunEstimate } from "../runs/index.ts";
import { notFound } from "../errors.ts";
import { BalanceBucket, FailedChargePolicy, RunMode, Settlement } from "../generated/prisma/enums.ts";
import { BudgetStatusRef, MoneyRef, moneyOrNull } from "../schema/types/common.ts";
import { viewerOf } from "./viewer.ts";

const RunEstimateRef = builder.objectRef<RunEstimate>("RunEstimate").implement({
  description: "The pre-flight check for a run: what it will likely cost, which balance and route pay, and whether the key, balance and caps allow it.",
  fields: (t) => {
    const inBucket = (pick: (e: RunEstimate) => bigint | null) =>
      t.field({ type: MoneyRef, nullable: true, resolve: (e: RunEstimate) => (e.bucket ? moneyOrNull(pick(e), e.bucket) : null) });
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
      estimatedCallsMin: t.exposeInt("estimatedCallsMin"),
      estimatedCallsMax: t.exposeInt("estimatedCallsMax"),
      estimatedSecondsMin: t.exposeInt("estimatedSecondsMin"),
      estimatedSecondsMax: t.exposeInt("estimatedSecondsMax"),
      costMin: inBucket((e) => e.costMin),
      costMax: inBucket((e) => e.costMax),
      minimumRecommendedBalance: inBucket((e) => e.minimumRecommendedBalance),
      available: t.field({
        type: MoneyRef,
        nullable: true,
        description: "The bucket's available balance; null for project viewer tokens (they cannot read the wallet).",
        resolve: (e) => (e.bucket ? moneyOrNull(e.available, e.bucket) : null),
      }),
      keyDaily: t.field({ type: BudgetStatusRef, nullable: true, resolve: (e) => e.keyDaily }),
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
  }),
});

builder.queryFields((t) => ({
  estimateRun: t.field({
    type: RunEstimateRef,
    args: { input: t.arg({ type: EstimateRunInput, required: true }) },
    resolve: (_root, { input }, ctx) => estimateRun(viewerOf(ctx), { ...input, keyId: String(input.keyId) }),
  }),
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
