// What a run will likely take, for estimateRun: from the project's finished runs of the mode when
// there are enough of them (percentiles computed in SQL over their totals), otherwise from the
// built-in profile, with its runtime from the channel's measured latency when there is one.
// Costs are always priced at the channel's *current* snapshot (not the charges the runs paid), so a
// price change shows in the next estimate. The rules are documented in README "Runs and pre-flight".
import { db } from "../db/index.ts";
import type { RunMode } from "../generated/prisma/enums.ts";
import { requestCharge, type Price } from "../money/amounts.ts";
import type { PlannedChannel } from "../routing/index.ts";

/** Finished runs a history estimate needs (of the mode and model, else of the mode across models). */
export const HISTORY_MIN_RUNS = 5;
/** The latest finished runs a history estimate reads, per sample (the query stays bounded). */
export const HISTORY_MAX_RUNS = 200;
/** Receipts of the channel a latency-based runtime needs, the most it reads, and how far back. */
export const LATENCY_MIN_SAMPLES = 5;
export const LATENCY_MAX_SAMPLES = 200;
export const LATENCY_WINDOW_MS = 7 * 24 * 3_600_000;

/** Typical shape of a run per mode: model calls and tokens per call (documented in the README). */
export const RUN_PROFILES: Record<RunMode, { calls: [number, number]; promptTokens: number; completionTokens: number; secondsPerCall: number }> = {
  QUICK: { calls: [2, 4], promptTokens: 2_000, completionTokens: 800, secondsPerCall: 8 },
  STANDARD: { calls: [5, 10], promptTokens: 4_000, completionTokens: 1_500, secondsPerCall: 15 },
  DEEP: { calls: [12, 30], promptTokens: 8_000, completionTokens: 3_000, secondsPerCall: 25 },
};

/** Where the calls, tokens and cost come from. */
export type EstimateBasis = "HISTORY" | "HISTORY_ANY_MODEL" | "PROFILE";
/** Where the runtime comes from. */
export type SecondsBasis = "HISTORY" | "ROUTE_LATENCY" | "PROFILE";

/** One percentile of a run: each number is its own percentile (the p90 cost need not be the p90-calls run's). */
export interface EstimatePoint {
  calls: number;
  promptTokens: bigint;
  completionTokens: bigint;
  /** Wall time in milliseconds. */
  milliseconds: number;
  cost: bigint;
}

export interface RunPrediction {
  basis: EstimateBasis;
  /** The finished runs the estimate learned from (0 for PROFILE). */
  basisRunCount: number;
  secondsBasis: SecondsBasis;
  /** The receipts the per-call latency came from (0 unless ROUTE_LATENCY). */
  latencySampleCount: number;
  /** Seconds per call used with the profile's calls (null for a history estimate: its runs' wall time is measured). */
  secondsPerCall: number | null;
  p10: EstimatePoint;
  p50: EstimatePoint;
  p90: EstimatePoint;
  /** The dearest single call at the current price: the profile's call, or the dearest call of the sampled runs. */
  dearestCall: bigint;
}

const ZERO_PRICE: Price = { inputPerMillion: 0n, outputPerMillion: 0n };

export async function predictRun(input: { projectId: string; model: string; mode: RunMode; channel: PlannedChannel | null }): Promise<RunPrediction> {
  const price: Price = input.channel?.price ?? ZERO_PRICE;
  const history = await runHistory(input.projectId, input.mode, input.model, price);
  const sample =
    history.sameModel && history.sameModel.runs >= HISTORY_MIN_RUNS
      ? { basis: "HISTORY" as const, row: history.sameModel }
      : history.anyModel && history.anyModel.runs >= HISTORY_MIN_RUNS
        ? { basis: "HISTORY_ANY_MODEL" as const, row: history.anyModel }
        : null;
  if (sample) {
    const { row } = sample;
    return {
      basis: sample.basis,
      basisRunCount: row.runs,
      secondsBasis: "HISTORY",
      latencySampleCount: 0,
      secondsPerCall: null,
      p10: row.points[0],
      p50: row.points[1],
      p90: row.points[2],
      dearestCall: row.dearestCall,
    };
  }
  const profile = RUN_PROFILES[input.mode];
  const latency = input.channel ? await channelLatency(input.channel.channel.routeId, input.channel.channel.id) : null;
  const measured = latency !== null && latency.samples >= LATENCY_MIN_SAMPLES;
  const msPerCall = measured ? latency.p50Ms : profile.secondsPerCall * 1000;
  const perCall = requestCharge(price, profile.promptTokens, profile.completionTokens);
  const point = (calls: number): EstimatePoint => ({
    calls,
    promptTokens: BigInt(calls * profile.promptTokens),
    completionTokens: BigInt(calls * profile.completionTokens),
    milliseconds: calls * msPerCall,
    cost: perCall * BigInt(calls),
  });
  const [low, high] = profile.calls;
  return {
    basis: "PROFILE",
    basisRunCount: 0,
    secondsBasis: measured ? "ROUTE_LATENCY" : "PROFILE",
    latencySampleCount: measured ? latency.samples : 0,
    secondsPerCall: msPerCall / 1000,
    // The profile's low / typical (the midpoint, rounded up) / high number of calls.
    p10: point(low),
    p50: point(Math.ceil((low + high) / 2)),
    p90: point(high),
    dearestCall: perCall,
  };
}

interface HistoryRow {
  runs: number;
  points: [EstimatePoint, EstimatePoint, EstimatePoint];
  dearestCall: bigint;
}

/** A whole numeric as text ("123", or "123.000" on some paths) → bigint. */
const integer = (text: string): bigint => BigInt(text.replace(/\.0*$/, ""));

/** "{1,2,3}" (an array cast to text: the driver adapters disagree on how arrays come back) → its three elements. */
function triple(text: string): [string, string, string] {
  const parts = text.replace(/^\{|\}$/g, "").split(",");
  if (parts.length !== 3) throw new Error(`expected three percentiles, got ${text}`);
  return parts as [string, string, string];
}

/**
 * The p10 / p50 / p90 of the project's latest finished (COMPLETED) runs of a mode, in one statement:
 * once over the runs started for this model, once over the mode's runs of any model. A run's
 * numbers are its answered requests (receipts): calls, prompt and completion tokens, wall time from
 * its first request's start (created at minus latency) to its last receipt, and their cost at
 * `price`, each receipt charged as the gateway charges it (classCharge: per token class, each
 * distinct price of a side rounded up on its own). percentile_disc picks an observed value (the
 * ⌈p·n⌉-th smallest), so every percentile is a real run's number.
 */
async function runHistory(projectId: string, mode: RunMode, model: string, price: Price): Promise<{ sameModel: HistoryRow | null; anyModel: HistoryRow | null }> {
  const rows = await db.$queryRawUnsafe<Array<{ same_model: boolean; runs: number; calls: string; prompt: string; completion: string; ms: string; cost: string; dearest: string }>>(
    `WITH latest_model AS (
       SELECT id FROM "Run" WHERE "projectId" = $1 AND mode = $2::"RunMode" AND status = 'COMPLETED' AND model = $3
        ORDER BY "createdAt" DESC LIMIT $4
     ), latest_mode AS (
       SELECT id FROM "Run" WHERE "projectId" = $1 AND mode = $2::"RunMode" AND status = 'COMPLETED'
        ORDER BY "createdAt" DESC LIMIT $4
     ), answered AS (
       SELECT rc."runId" AS run_id, rc."createdAt" AS at, rc."latencyMs" AS latency_ms,
              rc."promptTokens" AS prompt, rc."completionTokens" AS completion, k.cost
         FROM "Receipt" rc
        CROSS JOIN LATERAL (SELECT LEAST(rc."promptTokens", GREATEST(0, rc."cachedPromptTokens")) AS cached) a
        CROSS JOIN LATERAL (SELECT LEAST(rc."promptTokens" - a.cached, GREATEST(0, rc."cacheWriteTokens")) AS cache_write) b
        CROSS JOIN LATERAL (SELECT LEAST(rc."promptTokens" - a.cached - b.cache_write, GREATEST(0, rc."audioPromptTokens")) AS audio_in) c
        CROSS JOIN LATERAL (SELECT LEAST(rc."completionTokens", GREATEST(0, rc."audioCompletionTokens")) AS audio_out) d
        CROSS JOIN LATERAL (
          SELECT COALESCE(SUM(DIV(kind.tokens * kind.price + 999999, 1000000)), 0) AS cost
            FROM (SELECT v.side, v.price::numeric AS price, SUM(v.tokens)::numeric AS tokens
                    FROM (VALUES (0, COALESCE($7::bigint, $5::bigint), a.cached),
                                 (0, COALESCE($8::bigint, $5::bigint), b.cache_write),
                                 (0, COALESCE($9::bigint, $5::bigint), c.audio_in),
                                 (0, $5::bigint, rc."promptTokens" - a.cached - b.cache_write - c.audio_in),
                                 (1, COALESCE($10::bigint, $6::bigint), d.audio_out),
                                 (1, $6::bigint, rc."completionTokens" - d.audio_out)) AS v(side, price, tokens)
                   GROUP BY v.side, v.price) kind
        ) k
        WHERE rc."runId" IN (SELECT id FROM latest_model UNION SELECT id FROM latest_mode)
     ), per_run AS (
       SELECT run_id AS id, COUNT(*)::bigint AS calls, SUM(prompt)::bigint AS prompt, SUM(completion)::bigint AS completion,
              SUM(cost) AS cost, MAX(cost) AS dearest,
              ROUND(EXTRACT(EPOCH FROM MAX(at) - MIN(at - latency_ms * INTERVAL '1 millisecond')) * 1000)::bigint AS ms
         FROM answered GROUP BY run_id
     )
     SELECT s.same_model, COUNT(*)::int AS runs,
            (percentile_disc(ARRAY[0.1, 0.5, 0.9]::float8[]) WITHIN GROUP (ORDER BY p.calls))::text AS calls,
            (percentile_disc(ARRAY[0.1, 0.5, 0.9]::float8[]) WITHIN GROUP (ORDER BY p.prompt))::text AS prompt,
            (percentile_disc(ARRAY[0.1, 0.5, 0.9]::float8[]) WITHIN GROUP (ORDER BY p.completion))::text AS completion,
            (percentile_disc(ARRAY[0.1, 0.5, 0.9]::float8[]) WITHIN GROUP (ORDER BY p.ms))::text AS ms,
            (percentile_disc(ARRAY[0.1, 0.5, 0.9]::float8[]) WITHIN GROUP (ORDER BY p.cost))::text AS cost,
            MAX(p.dearest)::text AS dearest
       FROM (SELECT id, true AS same_model FROM latest_model UNION ALL SELECT id, false FROM latest_mode) s
       JOIN per_run p ON p.id = s.id
      GROUP BY s.same_model`,
    projectId,
    mode,
    model,
    HISTORY_MAX_RUNS,
    price.inputPerMillion.toString(),
    price.outputPerMillion.toString(),
    price.cachedInputPerMillion?.toString() ?? null,
    price.cacheWritePerMillion?.toString() ?? null,
    price.audioInputPerMillion?.toString() ?? null,
    price.audioOutputPerMillion?.toString() ?? null,
  );
  const parse = (r: (typeof rows)[number]): HistoryRow => {
    const [calls, prompt, completion, ms, cost] = [triple(r.calls), triple(r.prompt), triple(r.completion), triple(r.ms), triple(r.cost)];
    const point = (i: 0 | 1 | 2): EstimatePoint => ({
      calls: Number(calls[i]),
      promptTokens: BigInt(prompt[i]),
      completionTokens: BigInt(completion[i]),
      milliseconds: Number(ms[i]),
      cost: integer(cost[i]),
    });
    return { runs: Number(r.runs), points: [point(0), point(1), point(2)], dearestCall: integer(r.dearest) };
  };
  const same = rows.find((r) => r.same_model === true);
  const any = rows.find((r) => r.same_model === false);
  return { sameModel: same ? parse(same) : null, anyModel: any ? parse(any) : null };
}

/**
 * The p50 of the latencyMs of the channel's latest receipts (at most LATENCY_MAX_SAMPLES, of the
 * last LATENCY_WINDOW_MS; through the receipts' route index, so the read is bounded).
 */
async function channelLatency(routeId: string, channelId: string): Promise<{ samples: number; p50Ms: number } | null> {
  const rows = await db.$queryRawUnsafe<Array<{ samples: number; p50: number | null }>>(
    `SELECT COUNT(*)::int AS samples, percentile_disc(0.5) WITHIN GROUP (ORDER BY r."latencyMs") AS p50
       FROM (SELECT "latencyMs" FROM "Receipt"
              WHERE "routeId" = $1 AND "channelId" = $2 AND "createdAt" >= ($3::timestamptz AT TIME ZONE 'UTC')
              ORDER BY "createdAt" DESC LIMIT $4) r`,
    routeId,
    channelId,
    new Date(Date.now() - LATENCY_WINDOW_MS).toISOString(),
    LATENCY_MAX_SAMPLES,
  );
  const row = rows[0];
  if (!row || row.p50 === null) return null;
  return { samples: Number(row.samples), p50Ms: Number(row.p50) };
}
