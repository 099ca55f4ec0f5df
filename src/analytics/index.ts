// Spend series for dashboards: receipts plus charged failed requests, grouped in SQL.
// Their charges are exactly the ledger's CHARGE entries (each links to one of them; tested).
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

const GROUP_COLUMN = { KEY: `"keyId"`, PROJECT: `"projectId"`, MODEL: `"requestedModel"`, ROUTE: `"routeId"`, BUCKET: `bucket::text` } as const;
const TRUNC = { HOUR: "hour", DAY: "day", MONTH: "month" } as const;
const MAX_POINTS_SPAN_MS = { HOUR: 31 * 86_400_000, DAY: 3 * 366 * 86_400_000, MONTH: 20 * 366 * 86_400_000 } as const;

export async function spendSeries(input: {
  organizationId: string;
  from: Date;
  to: Date;
  interval: keyof typeof TRUNC;
  groupBy: keyof typeof GROUP_COLUMN;
  keyId?: string | null;
  projectId?: string | null;
}): Promise<SpendPoint[]> {
  if (input.from >= input.to) throw badInput("to", "must be after from");
  if (input.to.getTime() - input.from.getTime() > MAX_POINTS_SPAN_MS[input.interval]) {
    throw badInput("from", `range too long for ${input.interval} interval`);
  }
  const group = GROUP_COLUMN[input.groupBy];
  const rows = await db.$queryRawUnsafe<
    { bucket_start: Date; grp: string | null; bucket: BalanceBucket; spend: bigint; requests: bigint; prompt: bigint; completion: bigint }[]
  >(
    `WITH spend AS (
       SELECT "createdAt", "keyId", "projectId", "routeId", "requestedModel", bucket, charge, "promptTokens", "completionTokens"
         FROM "Receipt" WHERE "organizationId" = $1 AND "createdAt" >= $2::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $3::timestamptz AT TIME ZONE 'UTC'
       UNION ALL
       SELECT "createdAt", "keyId", "projectId", "routeId", "requestedModel", bucket, charge, "promptTokens", "completionTokens"
         FROM "FailedRequest" WHERE "organizationId" = $1 AND bucket IS NOT NULL AND charge > 0
          AND "createdAt" >= $2::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $3::timestamptz AT TIME ZONE 'UTC'
     )
     SELECT date_trunc('${TRUNC[input.interval]}', "createdAt") AS bucket_start, ${group} AS grp, bucket,
            SUM(charge)::bigint AS spend, COUNT(*)::bigint AS requests,
            SUM("promptTokens")::bigint AS prompt, SUM("completionTokens")::bigint AS completion
       FROM spend
      WHERE ($4::text IS NULL OR "keyId" = $4) AND ($5::text IS NULL OR "projectId" = $5)
      GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
    input.organizationId,
    input.from.toISOString(),
    input.to.toISOString(),
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
