// Spend series for dashboards: receipts plus charged failed requests, grouped in SQL.
// Their charges are exactly the ledger's CHARGE entries (each links to one of them; tested).
// Whole hours are read from "SpendRollup" (hourly sums kept by triggers in the same transaction
// as the rows: prisma/migrations/20261123500000_spend_rollups); only the partial hours at either
// end of a range that does not start or end on the hour are read from the raw rows.
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
const TRUNC = { HOUR: "hour", DAY: "day", MONTH: "month" } as const;
const MAX_POINTS_SPAN_MS = { HOUR: 31 * 86_400_000, DAY: 3 * 366 * 86_400_000, MONTH: 20 * 366 * 86_400_000 } as const;
const HOUR_MS = 3_600_000;

type Row = { bucket_start: Date; grp: string | null; bucket: BalanceBucket; spend: bigint; requests: bigint; prompt: bigint; completion: bigint };

// Raw spend rows (receipts and charged failed requests) of one organization with createdAt in
// any of the given [from, to) ranges: $2/$3 and $4/$5 (ISO strings, UTC).
const RAW_SPEND = `
  SELECT "createdAt" AS at, "keyId", "projectId", "routeId", "requestedModel", bucket, charge,
         1 AS requests, "promptTokens", "completionTokens"
    FROM "Receipt" WHERE "organizationId" = $1 AND (
         ("createdAt" >= $2::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $3::timestamptz AT TIME ZONE 'UTC')
      OR ("createdAt" >= $4::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $5::timestamptz AT TIME ZONE 'UTC'))
  UNION ALL
  SELECT "createdAt", "keyId", "projectId", "routeId", "requestedModel", bucket, charge,
         1, "promptTokens", "completionTokens"
    FROM "FailedRequest" WHERE "organizationId" = $1 AND bucket IS NOT NULL AND charge > 0 AND (
         ("createdAt" >= $2::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $3::timestamptz AT TIME ZONE 'UTC')
      OR ("createdAt" >= $4::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $5::timestamptz AT TIME ZONE 'UTC'))`;

// Whole hours in [$6, $7) from the rollups.
const ROLLUP_SPEND = `
  SELECT hour AS at, "keyId", "projectId", "routeId", "requestedModel", bucket, spend AS charge,
         requests, "promptTokens", "completionTokens"
    FROM "SpendRollup"
   WHERE "organizationId" = $1 AND hour >= $6::timestamptz AT TIME ZONE 'UTC' AND hour < $7::timestamptz AT TIME ZONE 'UTC'`;

function validate(input: SpendSeriesInput): void {
  if (input.from >= input.to) throw badInput("to", "must be after from");
  if (input.to.getTime() - input.from.getTime() > MAX_POINTS_SPAN_MS[input.interval]) {
    throw badInput("from", `range too long for ${input.interval} interval`);
  }
}

async function run(input: SpendSeriesInput, source: string, params: string[]): Promise<SpendPoint[]> {
  const group = GROUP_COLUMN[input.groupBy];
  // A rollup row's requests may sum to zero after its rows were deleted: such groups do not exist.
  const rows = await db.$queryRawUnsafe<Row[]>(
    `SELECT date_trunc('${TRUNC[input.interval]}', at) AS bucket_start, ${group} AS grp, bucket,
            SUM(charge)::bigint AS spend, SUM(requests)::bigint AS requests,
            SUM("promptTokens")::bigint AS prompt, SUM("completionTokens")::bigint AS completion
       FROM (${source}) spend
      WHERE ($${params.length + 2}::text IS NULL OR "keyId" = $${params.length + 2})
        AND ($${params.length + 3}::text IS NULL OR "projectId" = $${params.length + 3})
      GROUP BY 1, 2, 3 HAVING SUM(requests) > 0 ORDER BY 1, 2, 3`,
    input.organizationId,
    ...params,
    input.keyId ?? null,
    input.projectId ?? null,
  );
  return rows.map((r) => ({
    bucketStart: new Date(r.bucket_start),
    group: r.grp ?? "(none)",
    bucket: r.bucket,
    spend: BigInt(r.spend),
    requests: Number(r.requests),
    promptTokens: Number(r.prompt),
    completionTokens: Number(r.completion),
  }));
}

export async function spendSeries(input: SpendSeriesInput): Promise<SpendPoint[]> {
  validate(input);
  const from = input.from.getTime();
  const to = input.to.getTime();
  const firstWholeHour = Math.ceil(from / HOUR_MS) * HOUR_MS;
  const lastWholeHour = Math.floor(to / HOUR_MS) * HOUR_MS;
  const iso = (ms: number) => new Date(ms).toISOString();
  if (firstWholeHour >= lastWholeHour) {
    // No whole hour inside the range: raw rows only (the second raw range is empty).
    return run(input, RAW_SPEND, [iso(from), iso(to), iso(to), iso(to)]);
  }
  return run(input, `${RAW_SPEND} UNION ALL ${ROLLUP_SPEND}`, [
    iso(from), iso(firstWholeHour), iso(lastWholeHour), iso(to), iso(firstWholeHour), iso(lastWholeHour),
  ]);
}

/** The same series from a scan of the raw rows: the reference the rollups are tested and benched against. */
export async function spendSeriesFromRawRows(input: SpendSeriesInput): Promise<SpendPoint[]> {
  validate(input);
  const iso = (d: Date) => d.toISOString();
  return run(input, RAW_SPEND, [iso(input.from), iso(input.to), iso(input.to), iso(input.to)]);
}
