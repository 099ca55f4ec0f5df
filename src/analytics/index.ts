// Spend series for dashboards (API.md's spendSeries, UTC, one dimension; spendAnalytics in
// ./report.ts is the chartable one): receipts plus charged failed requests, grouped in SQL.
// Their charges are exactly the ledger's CHARGE entries (each links to one of them; tested).
// Whole UTC days (for DAY and MONTH series) and whole hours are read from "SpendRollupDailyLive" and
// "SpendRollupHourlyLive" (each rollup plus the sums its triggers queued and no fold has moved into it
// yet: prisma/functions.sql, "Spend rollups"); only the partial hours at the ends of a range that
// does not start or end on the hour are read from the raw rows.
import { db } from "../db/index.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { badInput } from "../errors.ts";

export interface SpendPoint {
  bucketStart: Date;
  group: string;
  bucket: BalanceBucket;
  spend: bigint;
  requests: number;
  promptTokens: number;
  completionTokens: number;
  /** Token classes inside the totals (receipts only: failed requests record none). */
  cachedPromptTokens: number;
  cacheWriteTokens: number;
  audioPromptTokens: number;
  reasoningTokens: number;
  audioCompletionTokens: number;
}

export interface SpendSeriesInput {
  organizationId: string;
  from: Date;
  to: Date;
  interval: keyof typeof TRUNC;
  groupBy: keyof typeof GROUP_COLUMN;
  keyId?: string | null;
  projectId?: string | null;
}

const GROUP_COLUMN = { KEY: `"keyId"`, PROJECT: `"projectId"`, MODEL: `"requestedModel"`, ROUTE: `"routeId"`, BUCKET: `bucket::text` } as const;
const TRUNC = { MINUTE: "minute", HOUR: "hour", DAY: "day", WEEK: "week", MONTH: "month" } as const;
const MAX_POINTS_SPAN_MS = { MINUTE: 2 * 86_400_000, HOUR: 31 * 86_400_000, DAY: 3 * 366 * 86_400_000, WEEK: 20 * 366 * 86_400_000, MONTH: 20 * 366 * 86_400_000 } as const;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

type Row = {
  bucket_start: Date;
  grp: string | null;
  bucket: BalanceBucket;
  spend: bigint;
  requests: bigint;
  prompt: bigint;
  completion: bigint;
  cached: bigint;
  cache_write: bigint;
  audio_prompt: bigint;
  reasoning: bigint;
  audio_completion: bigint;
};

/** The token-class columns, in the order every part of the spend source selects them. */
const CLASS_COLUMNS = `"cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens"`;

type Range = [from: number, to: number];

/** Where each part of [from, to) is read: whole days (if allowed), whole hours, and raw rows for the rest. */
export function planRanges(from: number, to: number, useDays: boolean): { days: Range[]; hours: Range[]; raw: Range[] } {
  const plan = { days: [] as Range[], hours: [] as Range[], raw: [] as Range[] };
  const split = (a: number, b: number, unit: number, whole: Range[], rest: (a: number, b: number) => void) => {
    const first = Math.ceil(a / unit) * unit;
    const last = Math.floor(b / unit) * unit;
    if (first >= last) return rest(a, b);
    whole.push([first, last]);
    if (a < first) rest(a, first);
    if (last < b) rest(last, b);
  };
  const byHours = (a: number, b: number) => split(a, b, HOUR_MS, plan.hours, (x, y) => void plan.raw.push([x, y]));
  if (useDays) split(from, to, DAY_MS, plan.days, byHours);
  else byHours(from, to);
  return plan;
}

/** The spend rows of one organization ($1) in the planned ranges, as (at, dimensions, sums). */
function spendSource(plan: ReturnType<typeof planRanges>, params: unknown[]): string {
  const ranges = (column: string, list: Range[]) =>
    list
      .map(([a, b]) => {
        params.push(new Date(a).toISOString(), new Date(b).toISOString());
        return `(${column} >= $${params.length - 1}::timestamptz AT TIME ZONE 'UTC' AND ${column} < $${params.length}::timestamptz AT TIME ZONE 'UTC')`;
      })
      .join(" OR ");
  const parts: string[] = [];
  if (plan.raw.length) {
    parts.push(`SELECT "createdAt" AS at, "keyId", "projectId", "routeId", "requestedModel", bucket, charge,
                       1 AS requests, "promptTokens", "completionTokens", ${CLASS_COLUMNS}
                  FROM "Receipt" WHERE "organizationId" = $1 AND (${ranges(`"createdAt"`, plan.raw)})`);
    parts.push(`SELECT "createdAt", "keyId", "projectId", "routeId", "requestedModel", bucket, charge,
                       1, "promptTokens", "completionTokens", 0, 0, 0, 0, 0
                  FROM "FailedRequest" WHERE "organizationId" = $1 AND bucket IS NOT NULL AND charge > 0 AND (${ranges(`"createdAt"`, plan.raw)})`);
  }
  for (const [table, column, list] of [
    ["SpendRollupHourly", "hour", plan.hours],
    ["SpendRollupDaily", "day", plan.days],
  ] as const) {
    if (!list.length) continue;
    parts.push(`SELECT "${column}" AS at, "keyId", "projectId", "routeId", "requestedModel", bucket, spend AS charge,
                       requests, "promptTokens", "completionTokens", ${CLASS_COLUMNS}
                  FROM "${table}Live" WHERE "organizationId" = $1 AND (${ranges(`"${column}"`, list)})`);
  }
  return parts.join(" UNION ALL ");
}

function validate(input: SpendSeriesInput): void {
  if (input.from >= input.to) throw badInput("to", "must be after from");
  if (input.to.getTime() - input.from.getTime() > MAX_POINTS_SPAN_MS[input.interval]) {
    throw badInput("from", `range too long for ${input.interval} interval`);
  }
}

async function run(input: SpendSeriesInput, plan: ReturnType<typeof planRanges>): Promise<SpendPoint[]> {
  const group = GROUP_COLUMN[input.groupBy];
  const params: unknown[] = [input.organizationId];
  const source = spendSource(plan, params);
  params.push(input.keyId ?? null, input.projectId ?? null);
  const [key, project] = [`$${params.length - 1}`, `$${params.length}`];
  // A rollup row's requests may sum to zero after its rows were deleted: such groups do not exist.
  const rows = await db.$queryRawUnsafe<Row[]>(
    `SELECT date_trunc('${TRUNC[input.interval]}', at) AS bucket_start, ${group} AS grp, bucket,
            SUM(charge)::bigint AS spend, SUM(requests)::bigint AS requests,
            SUM("promptTokens")::bigint AS prompt, SUM("completionTokens")::bigint AS completion,
            SUM("cachedPromptTokens")::bigint AS cached, SUM("cacheWriteTokens")::bigint AS cache_write, SUM("audioPromptTokens")::bigint AS audio_prompt,
            SUM("reasoningTokens")::bigint AS reasoning, SUM("audioCompletionTokens")::bigint AS audio_completion
       FROM (${source}) spend
      WHERE (${key}::text IS NULL OR "keyId" = ${key}) AND (${project}::text IS NULL OR "projectId" = ${project})
      GROUP BY 1, 2, 3 HAVING SUM(requests) > 0 ORDER BY 1, 2, 3`,
    ...params,
  );
  return rows.map((r) => ({
    bucketStart: new Date(r.bucket_start),
    group: r.grp ?? "(none)",
    bucket: r.bucket,
    spend: BigInt(r.spend),
    requests: Number(r.requests),
    promptTokens: Number(r.prompt),
    completionTokens: Number(r.completion),
    cachedPromptTokens: Number(r.cached),
    cacheWriteTokens: Number(r.cache_write),
    audioPromptTokens: Number(r.audio_prompt),
    reasoningTokens: Number(r.reasoning),
    audioCompletionTokens: Number(r.audio_completion),
  }));
}

export async function spendSeries(input: SpendSeriesInput): Promise<SpendPoint[]> {
  validate(input);
  // Minutes are finer than the rollups: raw rows only. UTC weeks (Monday first) are whole UTC days.
  if (input.interval === "MINUTE") return spendSeriesFromRawRows(input);
  return run(input, planRanges(input.from.getTime(), input.to.getTime(), input.interval !== "HOUR"));
}

/** The same series from a scan of the raw rows: the reference the rollups are tested and benched against. */
export async function spendSeriesFromRawRows(input: SpendSeriesInput): Promise<SpendPoint[]> {
  validate(input);
  return run(input, { days: [], hours: [], raw: [[input.from.getTime(), input.to.getTime()]] });
}
