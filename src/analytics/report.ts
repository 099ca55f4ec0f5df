// Spend analytics a chart can draw as they come (spendAnalytics): receipts and failed requests of one
// organization, filtered, grouped by any of ten dimensions, bucketed by minute / hour / day / week /
// month in an IANA time zone, every series zero-filled; the top N groups by spend and the rest as one
// "other" series; totals; failures beside spend; latency percentiles; the previous period.
//
// Where the numbers come from: the spend rollups (by UTC hour and UTC day; read through their Live
// views, each rollup plus the sums its triggers queued and no fold has moved in yet, so exact at
// every moment: prisma/functions.sql, "Spend rollups"; the narrowest one that holds the report's groups and filters: by
// model, by key and project, or every dimension) wherever they are exact for the request — every bucket boundary
// inside the range on a UTC hour (whole-hour zones, HOUR and longer intervals) or, for the daily
// rollup, on a UTC midnight — and the raw rows for the rest (MINUTE, half-hour zones, partial hours
// at the ends of the range). Latency percentiles cannot be summed, so they are always computed from
// the raw receipts, and only for ranges of up to LATENCY_MAX_SPAN_MS.
//
// Cost is bounded before any row is read: the range per interval, the bucket count, and (after one
// query for the groups' totals, before the points are read) points × series ≤ MAX_CELLS.
import { directSql } from "../db/index.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { badInput } from "../errors.ts";
import { planRanges } from "./index.ts";
import { bucketStarts, DAY_MS, HOUR_MS, type SeriesInterval } from "./zones.ts";

export const SPEND_DIMENSIONS = ["KEY", "PROJECT", "MODEL", "UPSTREAM_MODEL", "ROUTE", "CHANNEL", "BUCKET", "RUN", "RUN_MODE", "SETTLEMENT"] as const;
export type SpendDimension = (typeof SPEND_DIMENSIONS)[number];
export const BUCKETS = ["CREDIT", "ROUTED"] as const satisfies readonly BalanceBucket[];

/** Per-dimension SQL over the spend source `s` (and the run `r`, joined only for RUN_MODE). */
const DIMENSION_SQL: Record<SpendDimension, string> = {
  KEY: `s."keyId"`,
  PROJECT: `s."projectId"`,
  MODEL: `s."requestedModel"`,
  UPSTREAM_MODEL: `s."upstreamModel"`,
  ROUTE: `s."routeId"`,
  CHANNEL: `s."channelId"`,
  BUCKET: `s.bucket::text`,
  RUN: `s."runId"`,
  RUN_MODE: `r.mode::text`,
  // A channel's settlement decides its bucket one to one (OFFICIAL → CREDIT, ROUTED → ROUTED), so the
  // bucket a request was charged in is the settlement it ran under, whatever the channel says today.
  SETTLEMENT: `CASE s.bucket WHEN 'CREDIT' THEN 'OFFICIAL' WHEN 'ROUTED' THEN 'ROUTED' END`,
};

export interface SpendFilter {
  keyIds?: readonly string[] | null;
  projectIds?: readonly string[] | null;
  routeIds?: readonly string[] | null;
  channelIds?: readonly string[] | null;
  runIds?: readonly string[] | null;
  /** Requested (catalog) models. */
  models?: readonly string[] | null;
  buckets?: readonly BalanceBucket[] | null;
}
const FILTER_SQL: Record<keyof SpendFilter, string> = {
  keyIds: `s."keyId"`,
  projectIds: `s."projectId"`,
  routeIds: `s."routeId"`,
  channelIds: `s."channelId"`,
  runIds: `s."runId"`,
  models: `s."requestedModel"`,
  buckets: `s.bucket::text`,
};
export const MAX_FILTER_VALUES = 1000;

export interface SpendReportInput {
  organizationId: string;
  from: Date;
  to: Date;
  interval: SeriesInterval;
  /** An IANA zone already checked (checkTimeZone). */
  timeZone: string;
  groupBy: readonly SpendDimension[];
  /** Null: no condition. An empty list matches nothing. */
  filter?: SpendFilter | null;
  /** Keep this many groups by spend, the rest summed into one "other" series; null: every group. */
  top?: number | null;
  /** Whose spend ranks the groups (buckets are never summed together); ties: the other bucket, requests, failures, then the group's values (code-unit order of their JSON). */
  rankBucket?: BalanceBucket;
  /** Sums of the period of the same length immediately before `from`. */
  compare?: boolean;
  /** Compute latency percentiles (a scan of raw receipts): only when asked for. Default true. */
  latency?: boolean;
}

export interface SpendSums {
  spend: Record<BalanceBucket, bigint>;
  /** Of spend: what failed requests were charged (the key's failed-request policy). */
  failedCharge: Record<BalanceBucket, bigint>;
  /** Receipts plus charged failed requests (the requests that are spend), as spendSeries counts them. */
  requests: bigint;
  /** Every failed request, charged or not. */
  failedRequests: bigint;
  promptTokens: bigint;
  completionTokens: bigint;
  cachedPromptTokens: bigint;
  cacheWriteTokens: bigint;
  audioPromptTokens: bigint;
  reasoningTokens: bigint;
  audioCompletionTokens: bigint;
}

export interface Latency {
  /** Of receipts (completed requests): the upstream call plus the gateway's time, in ms. */
  p50Ms: number;
  p95Ms: number;
  receipts: number;
}

export type GroupValues = Partial<Record<SpendDimension, string | null>>;

export interface SpendReportPoint {
  start: Date;
  end: Date;
  sums: SpendSums;
  latency: Latency | null;
}

export interface SpendReportSeries {
  /** The group's dimension values (null: the "other" series). */
  group: GroupValues | null;
  /** For the "other" series: how many groups it sums. */
  groupCount: number;
  total: SpendSums;
  latency: Latency | null;
  /** The same group's sums in the previous period (compare). */
  previous: SpendSums | null;
  points: SpendReportPoint[];
}

export interface SpendReport {
  from: Date;
  to: Date;
  interval: SeriesInterval;
  timeZone: string;
  groupBy: SpendDimension[];
  /** The balance buckets money is listed in (the filter's, else both). */
  buckets: BalanceBucket[];
  /** Bucket starts: point i of every series covers [bucketStarts[i], bucketStarts[i + 1]) ∩ [from, to). */
  bucketStarts: Date[];
  series: SpendReportSeries[];
  /** Number of groups before top N. */
  groupCount: number;
  totals: SpendSums;
  latency: Latency | null;
  /** Why latency is null, when it is. */
  latencyUnavailable: string | null;
  previous: { from: Date; to: Date; totals: SpendSums } | null;
  /** Where the sums were read: ROLLUPS (wholly or mostly, raw rows for partial hours at the ends) or RAW. */
  source: "ROLLUPS" | "RAW";
}

const MAX_SPAN_MS: Record<SeriesInterval, number> = {
  MINUTE: 2 * DAY_MS,
  HOUR: 92 * DAY_MS,
  DAY: 3 * 366 * DAY_MS,
  WEEK: 10 * 366 * DAY_MS,
  MONTH: 20 * 366 * DAY_MS,
};
/** Ranges the rollups cannot answer (half-hour zones) read raw rows: at most this long. */
const RAW_MAX_SPAN_MS = 31 * DAY_MS;
export const LATENCY_MAX_SPAN_MS = 7 * DAY_MS;
export const MAX_POINTS = 10_000;
export const MAX_CELLS = 10_000;
export const MAX_TOP = 100;

type Range = [from: number, to: number];
type Plan = ReturnType<typeof planRanges>;

const SUM_COLUMNS = [
  "spend",
  "requests",
  "promptTokens",
  "completionTokens",
  "cachedPromptTokens",
  "cacheWriteTokens",
  "audioPromptTokens",
  "reasoningTokens",
  "audioCompletionTokens",
  "failedRequests",
  "failedCharge",
] as const;
const CHARGED = `(bucket IS NOT NULL AND charge > 0)`;
const ROW_COLUMNS = `"keyId", "projectId", "routeId", "channelId", "runId", "requestedModel"`;

/** The dimension columns of a spend row (every one of them a text id or name; bucket and currency are in every rollup). */
const DIMENSION_COLUMNS = ["keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel"] as const;
type DimensionColumn = (typeof DIMENSION_COLUMNS)[number];
const COLUMNS_OF_DIMENSION: Record<SpendDimension, readonly DimensionColumn[]> = {
  KEY: ["keyId"],
  PROJECT: ["projectId"],
  MODEL: ["requestedModel"],
  UPSTREAM_MODEL: ["upstreamModel"],
  ROUTE: ["routeId"],
  CHANNEL: ["channelId"],
  BUCKET: [],
  RUN: ["runId"],
  RUN_MODE: ["runId"],
  SETTLEMENT: [],
};
const COLUMNS_OF_FILTER: Record<keyof SpendFilter, readonly DimensionColumn[]> = {
  keyIds: ["keyId"],
  projectIds: ["projectId"],
  routeIds: ["routeId"],
  channelIds: ["channelId"],
  runIds: ["runId"],
  models: ["requestedModel"],
  buckets: [],
};

/** A spend rollup: its table, the column of its grain, and the dimension columns it keeps. */
interface Rollup {
  table: string;
  at: "hour" | "day";
  columns: readonly DimensionColumn[];
}
/**
 * Per grain, narrowest first (the last keeps every column): a report reads the first rollup that keeps
 * every column its groups and filters use. A narrow rollup has one row per (time, its columns, bucket,
 * currency): a day of 200 keys x 3 models is ~400 rows by key and an hour ~20 by model, against ~1,400
 * a day and ~650 an hour in the wide ones.
 */
const ROLLUPS: Record<"hour" | "day", readonly Rollup[]> = {
  hour: [
    { table: "SpendRollupHourlyByModel", at: "hour", columns: ["requestedModel", "upstreamModel"] },
    { table: "SpendRollupHourly", at: "hour", columns: DIMENSION_COLUMNS },
  ],
  day: [
    { table: "SpendRollupDailyByKey", at: "day", columns: ["keyId", "projectId"] },
    { table: "SpendRollupDaily", at: "day", columns: DIMENSION_COLUMNS },
  ],
};
const isWide = (rollup: Rollup) => rollup.columns === DIMENSION_COLUMNS;

export interface RollupChoice {
  hour: string;
  day: string;
  /**
   * Whether whole days are read by day. Not when the hourly rollup is narrow and the daily one wide:
   * the narrow rollup's 24 hours hold fewer rows than the wide day (a model has no daily rollup of its
   * own; a day of 20 models by hour is ~480 rows against ~1,400).
   */
  days: boolean;
}

/** The rollups that hold what a report groups and filters by. */
export function rollupsFor(groupBy: readonly SpendDimension[], filter: SpendFilter | null | undefined): RollupChoice {
  const needed = new Set<DimensionColumn>(groupBy.flatMap((d) => COLUMNS_OF_DIMENSION[d]));
  for (const name of Object.keys(COLUMNS_OF_FILTER) as Array<keyof SpendFilter>) {
    if (filter?.[name] !== null && filter?.[name] !== undefined) for (const c of COLUMNS_OF_FILTER[name]) needed.add(c);
  }
  const pick = (list: readonly Rollup[]) => list.find((r) => [...needed].every((c) => r.columns.includes(c)))!;
  const [hour, day] = [pick(ROLLUPS.hour), pick(ROLLUPS.day)];
  return { hour: hour.table, day: day.table, days: !(isWide(day) && !isWide(hour)) };
}
const ROLLUP_BY_TABLE = new Map([...ROLLUPS.hour, ...ROLLUPS.day].map((r) => [r.table, r]));

/** Receipts and failed requests of one organization ($1) in the planned ranges, one row per (time, dimensions) with the sums. */
function source(plan: Plan, rollups: RollupChoice, params: unknown[]): string {
  const ranges = (column: string, list: Range[]) =>
    list
      .map(([a, b]) => {
        params.push(new Date(a).toISOString(), new Date(b).toISOString());
        return `(${column} >= $${params.length - 1}::timestamptz AT TIME ZONE 'UTC' AND ${column} < $${params.length}::timestamptz AT TIME ZONE 'UTC')`;
      })
      .join(" OR ");
  const parts: string[] = [];
  if (plan.raw.length) {
    parts.push(`SELECT "createdAt" AS at, ${ROW_COLUMNS}, "upstreamModel", bucket, charge AS spend, 1 AS requests, "promptTokens", "completionTokens",
                       "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", 0 AS "failedRequests", 0::bigint AS "failedCharge"
                  FROM "Receipt" WHERE "organizationId" = $1 AND (${ranges(`"createdAt"`, plan.raw)})`);
    // Every failed request is a failure; a charged one is also spend (as in the rollups).
    parts.push(`SELECT "createdAt", ${ROW_COLUMNS}, NULL, bucket, CASE WHEN ${CHARGED} THEN charge ELSE 0 END, CASE WHEN ${CHARGED} THEN 1 ELSE 0 END,
                       CASE WHEN ${CHARGED} THEN "promptTokens" ELSE 0 END, CASE WHEN ${CHARGED} THEN "completionTokens" ELSE 0 END, 0, 0, 0, 0, 0,
                       1, CASE WHEN ${CHARGED} THEN charge ELSE 0 END
                  FROM "FailedRequest" WHERE "organizationId" = $1 AND (${ranges(`"createdAt"`, plan.raw)})`);
  }
  for (const [table, list] of [
    [rollups.hour, plan.hours],
    [rollups.day, plan.days],
  ] as const) {
    if (!list.length) continue;
    const rollup = ROLLUP_BY_TABLE.get(table)!;
    // Columns a narrow rollup does not keep are read as NULL: nothing groups or filters by them.
    const columns = DIMENSION_COLUMNS.map((c) => (rollup.columns.includes(c) ? `"${c}"` : `NULL::text AS "${c}"`)).join(", ");
    // The Live view: the rollup plus what is pending for it (not folded yet), exact between folds.
    parts.push(`SELECT "${rollup.at}" AS at, ${columns}, bucket, ${SUM_COLUMNS.map((c) => `"${c}"`).join(", ")}
                  FROM "${table}Live" WHERE "organizationId" = $1 AND (${ranges(`"${rollup.at}"`, list)})`);
  }
  return parts.join(" UNION ALL ");
}

function filterSql(filter: SpendFilter | null | undefined, params: unknown[]): string {
  const conditions: string[] = [];
  for (const name of Object.keys(FILTER_SQL) as Array<keyof SpendFilter>) {
    const values = filter?.[name];
    if (values === null || values === undefined) continue;
    params.push(JSON.stringify(values));
    conditions.push(`${FILTER_SQL[name]} = ANY(ARRAY(SELECT jsonb_array_elements_text($${params.length}::jsonb)))`);
  }
  return conditions.length ? `WHERE ${conditions.join(" AND ")}` : "";
}

const sumsSql = (alias: string) => SUM_COLUMNS.map((c) => `SUM(${alias}."${c}")::text AS "${c}"`).join(", ");
type SumRow = { bucket: BalanceBucket | null } & Record<(typeof SUM_COLUMNS)[number], string>;

export const zeroSums = (): SpendSums => ({
  spend: { CREDIT: 0n, ROUTED: 0n },
  failedCharge: { CREDIT: 0n, ROUTED: 0n },
  requests: 0n,
  failedRequests: 0n,
  promptTokens: 0n,
  completionTokens: 0n,
  cachedPromptTokens: 0n,
  cacheWriteTokens: 0n,
  audioPromptTokens: 0n,
  reasoningTokens: 0n,
  audioCompletionTokens: 0n,
});
const COUNT_FIELDS = [
  "requests",
  "failedRequests",
  "promptTokens",
  "completionTokens",
  "cachedPromptTokens",
  "cacheWriteTokens",
  "audioPromptTokens",
  "reasoningTokens",
  "audioCompletionTokens",
] as const;

function addRow(into: SpendSums, row: SumRow): void {
  if (row.bucket) {
    into.spend[row.bucket] += BigInt(row.spend);
    into.failedCharge[row.bucket] += BigInt(row.failedCharge);
  }
  for (const f of COUNT_FIELDS) into[f] += BigInt(row[f]);
}
export function addSums(into: SpendSums, other: SpendSums): SpendSums {
  for (const b of BUCKETS) {
    into.spend[b] += other.spend[b];
    into.failedCharge[b] += other.failedCharge[b];
  }
  for (const f of COUNT_FIELDS) into[f] += other[f];
  return into;
}
function subtractSums(from: SpendSums, other: SpendSums): SpendSums {
  for (const b of BUCKETS) {
    from.spend[b] -= other.spend[b];
    from.failedCharge[b] -= other.failedCharge[b];
  }
  for (const f of COUNT_FIELDS) from[f] -= other[f];
  return from;
}
const isEmpty = (s: SpendSums) => s.requests === 0n && s.failedRequests === 0n && BUCKETS.every((b) => s.spend[b] === 0n);

interface Query {
  organizationId: string;
  plan: Plan;
  groupBy: readonly SpendDimension[];
  filter: SpendFilter | null | undefined;
  rollups: RollupChoice;
}

/** FROM ... WHERE ... of a query, and its dimensions' SQL. */
function body(q: Query, params: unknown[]): { from: string; dims: string[] } {
  const src = source(q.plan, q.rollups, params);
  const where = filterSql(q.filter, params);
  const join = q.groupBy.includes("RUN_MODE") ? ` LEFT JOIN "Run" r ON r.id = s."runId"` : "";
  return { from: `FROM (${src}) s${join} ${where}`, dims: q.groupBy.map((d) => DIMENSION_SQL[d]) };
}

/** The group's key: a JSON array of its dimension values (columns d0, d1, ... of `t`). */
const groupKey = (dims: string[]) => `json_build_array(${dims.map((_, i) => `t.d${i}`).join(", ")})::text`;
/** The rows summed by the dimensions (d0, d1, ...) and bucket, plus `extra` leading columns: the key is built once per group, not once per row. */
const grouped = (dims: string[], from: string, extra: string[] = []) =>
  `SELECT ${[...extra, ...dims.map((d, i) => `${d} AS d${i}`), "s.bucket", ...SUM_COLUMNS.map((c) => `SUM(s."${c}") AS "${c}"`)].join(", ")}
     ${from} GROUP BY ${Array.from({ length: extra.length + dims.length + 1 }, (_, i) => i + 1).join(", ")}`;

type Groups = Map<string, { values: GroupValues; sums: SpendSums }>;

/**
 * Each group's sums over the plan (one row per group and bucket). With `points`, the same scan also
 * sums every point over all groups (GROUPING SETS), so a top-N report reads the shown groups' points
 * alone and finds "other" as the point's total less theirs, instead of sending every row through a
 * series lookup. Only valid when the points are read from the same plan.
 */
async function groupTotals(q: Query, points: { starts: number[]; from: number } | null = null): Promise<{ groups: Groups; pointTotals: SpendSums[] | null }> {
  const params: unknown[] = [q.organizationId];
  const { from, dims } = body(q, params);
  type Row = SumRow & { g: string | null; i: number | null } & Record<string, string | null>;
  let rows: Row[];
  let pointTotals: SpendSums[] | null = null;
  if (points) {
    const at = `width_bucket(s.at, ${thresholds(points.starts, points.from, params)})`;
    const perRow = `SELECT ${[...dims.map((d, i) => `${d} AS d${i}`), "s.bucket", `${at} AS i`, ...SUM_COLUMNS.map((c) => `s."${c}"`)].join(", ")} ${from}`;
    const sets = `GROUPING SETS ((${[...dims.map((_, i) => `r.d${i}`), "r.bucket"].join(", ")}), (r.i, r.bucket))`;
    rows = await directSql().$queryRawUnsafe<Row[]>(
      `SELECT CASE WHEN t.whole = 1 THEN ${groupKey(dims)} END AS g, CASE WHEN t.whole = 0 THEN t.i END AS i, ${dims.map((_, i) => `t.d${i}`).join(", ")}, t.bucket,
              ${SUM_COLUMNS.map((c) => `t."${c}"::text AS "${c}"`).join(", ")}
         FROM (SELECT GROUPING(r.i) AS whole, r.i, ${dims.map((_, i) => `r.d${i}`).join(", ")}, r.bucket, ${SUM_COLUMNS.map((c) => `SUM(r."${c}") AS "${c}"`).join(", ")}
                 FROM (${perRow}) r GROUP BY ${sets}) t`,
      ...params,
    );
    pointTotals = points.starts.map(() => zeroSums());
    for (const row of rows) if (row.i !== null) addRow(pointTotals[row.i - 1]!, row);
    rows = rows.filter((row) => row.g !== null);
  } else {
    rows = await directSql().$queryRawUnsafe<Row[]>(
      `SELECT ${groupKey(dims)} AS g, ${dims.map((_, i) => `t.d${i}`).join(", ")}${dims.length ? ", " : ""}t.bucket, ${SUM_COLUMNS.map((c) => `t."${c}"::text AS "${c}"`).join(", ")}
         FROM (${grouped(dims, from)}) t`,
      ...params,
    );
  }
  const groups: Groups = new Map();
  for (const row of rows) {
    if (row.g === null) continue;
    let entry = groups.get(row.g);
    if (!entry) {
      const values: GroupValues = {};
      q.groupBy.forEach((d, i) => {
        values[d] = row[`d${i}`] ?? null;
      });
      entry = { values, sums: zeroSums() };
      groups.set(row.g, entry);
    }
    addRow(entry.sums, row);
  }
  // A rollup row whose rows were all deleted sums to zero: such a group does not exist (and, having
  // no rows, adds nothing to any point).
  for (const [g, entry] of groups) if (isEmpty(entry.sums)) groups.delete(g);
  return { groups, pointTotals };
}

/** The SQL key of the series a row goes to: its group when shown, else NULL (the "other" series). */
function seriesKey(group: string, shown: string[] | null, params: unknown[]): string {
  if (shown === null) return group;
  params.push(JSON.stringify(shown));
  return `CASE WHEN ${group} = ANY(ARRAY(SELECT jsonb_array_elements_text($${params.length}::jsonb))) THEN ${group} END`;
}

function thresholds(starts: number[], from: number, params: unknown[]): string {
  // Rows start at `from`, which may be inside the first bucket.
  params.push(JSON.stringify([from, ...starts.slice(1)].map((t) => new Date(t).toISOString().slice(0, -1))));
  return `ARRAY(SELECT jsonb_array_elements_text($${params.length}::jsonb)::timestamp(3))`;
}

/**
 * The shown groups as a table to join rows to: each group's key and, per dimension, its value ('' for
 * NULL) and whether it is NULL, so the join is on plain equalities (a hash join) and NULL matches NULL.
 */
function shownGroupsSql(q: Query, shown: Array<{ key: string; values: GroupValues }>, params: unknown[]): string {
  const rows = shown.map(({ key, values }) => {
    const row: Record<string, string | boolean> = { g: key };
    q.groupBy.forEach((d, i) => {
      row[`v${i}`] = values[d] ?? "";
      row[`n${i}`] = values[d] === null || values[d] === undefined;
    });
    return row;
  });
  params.push(JSON.stringify(rows));
  const columns = ["g text", ...q.groupBy.flatMap((_, i) => [`v${i} text`, `n${i} boolean`])].join(", ");
  return `jsonb_to_recordset($${params.length}::jsonb) AS x(${columns})`;
}

/** Points per series; with `onlyShown`, only the shown groups' rows are read (no "other" rows). */
async function pointSums(q: Query, starts: number[], from: number, shown: Array<{ key: string; values: GroupValues }> | null, onlyShown = false) {
  const params: unknown[] = [q.organizationId];
  const { from: fromSql, dims } = body(q, params);
  const t = thresholds(starts, from, params);
  const at = `width_bucket(s.at, ${t})`;
  if (shown === null) {
    // Every group is a series: sum by the dimensions and build each key once per (point, group, bucket).
    return directSql().$queryRawUnsafe<Array<SumRow & { i: number; g: string | null }>>(
      `SELECT t.i, ${groupKey(dims)} AS g, t.bucket, ${SUM_COLUMNS.map((c) => `t."${c}"::text AS "${c}"`).join(", ")}
         FROM (${grouped(dims, fromSql, [`${at} AS i`])}) t`,
      ...params,
    );
  }
  // Top N and "other": few (point, series, bucket) cells. A row finds its series by a hash join to the
  // shown groups (no key built per row); a row of no shown group goes to "other" (g NULL).
  const on = dims.map((_, i) => `COALESCE(t.d${i}, '') = x.v${i} AND (t.d${i} IS NULL) = x.n${i}`).join(" AND ");
  const rows = `SELECT ${at} AS i, ${[...dims.map((d, i) => `${d} AS d${i}`), "s.bucket", ...SUM_COLUMNS.map((c) => `s."${c}"`)].join(", ")} ${fromSql}`;
  const groupsTable = shownGroupsSql(q, shown, params);
  return directSql().$queryRawUnsafe<Array<SumRow & { i: number; g: string | null }>>(
    `SELECT t.i, x.g, t.bucket, ${sumsSql("t")}
       FROM (${rows}) t ${onlyShown ? "JOIN" : "LEFT JOIN"} ${groupsTable} ON ${on || "true"} GROUP BY 1, 2, 3`,
    ...params,
  );
}

type LatencyRow = { i: number | null; g: string | null; by_point: number; by_series: number; p50: number; p95: number; n: string };

/** Percentiles of receipts' latency from the raw rows: per point of each series, per series, and overall. */
async function latencies(q: Query, starts: number[], from: number, to: number, shown: string[] | null) {
  const params: unknown[] = [q.organizationId];
  const join = q.groupBy.includes("RUN_MODE") ? ` LEFT JOIN "Run" r ON r.id = s."runId"` : "";
  params.push(new Date(from).toISOString(), new Date(to).toISOString());
  const src = `SELECT "createdAt" AS at, ${ROW_COLUMNS}, "upstreamModel", bucket, "latencyMs" FROM "Receipt"
                WHERE "organizationId" = $1 AND "createdAt" >= $2::timestamptz AT TIME ZONE 'UTC' AND "createdAt" < $3::timestamptz AT TIME ZONE 'UTC'`;
  const where = filterSql(q.filter, params);
  const group = `json_build_array(${q.groupBy.map((d) => DIMENSION_SQL[d]).join(", ")})::text`;
  const key = seriesKey(group, shown, params);
  const t = thresholds(starts, from, params);
  return directSql().$queryRawUnsafe<LatencyRow[]>(
    `SELECT i, g, GROUPING(i) AS by_series, GROUPING(g) AS by_point,
            percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS p50, percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95, COUNT(*)::text AS n
       FROM (SELECT width_bucket(s.at, ${t}) AS i, ${key} AS g, s."latencyMs" AS ms FROM (${src}) s${join} ${where}) x
      GROUP BY GROUPING SETS ((i, g), (g), ())`,
    ...params,
  );
}

function validate(input: SpendReportInput): void {
  if (input.from >= input.to) throw badInput("to", "must be after from");
  const span = input.to.getTime() - input.from.getTime();
  if (span > MAX_SPAN_MS[input.interval]) {
    throw badInput("from", `range too long for ${input.interval} buckets: at most ${MAX_SPAN_MS[input.interval] / DAY_MS} days`);
  }
  if (input.top !== null && input.top !== undefined && (!Number.isInteger(input.top) || input.top < 1 || input.top > MAX_TOP)) {
    throw badInput("top", `must be 1–${MAX_TOP}`);
  }
  for (const [name, values] of Object.entries(input.filter ?? {})) {
    if (Array.isArray(values) && values.length > MAX_FILTER_VALUES) throw badInput(`filter.${name}`, `at most ${MAX_FILTER_VALUES} values`);
  }
}

/** How the range's sums are read: the rollups where every bucket boundary inside it falls on their grain, raw rows otherwise. */
function planFor(input: SpendReportInput, starts: number[], rollups: RollupChoice, forceRaw: boolean): { plan: Plan; source: SpendReport["source"] } {
  const [from, to] = [input.from.getTime(), input.to.getTime()];
  const inside = starts.slice(1);
  const onHours = input.interval !== "MINUTE" && inside.every((t) => t % HOUR_MS === 0);
  const onDays = input.interval !== "MINUTE" && input.interval !== "HOUR" && inside.every((t) => t % DAY_MS === 0);
  if (onHours && !forceRaw) return { plan: planRanges(from, to, onDays && rollups.days), source: "ROLLUPS" };
  if (to - from > RAW_MAX_SPAN_MS && !forceRaw) {
    throw badInput("timeZone", `${input.interval} buckets in ${input.timeZone} are read from raw rows: at most ${RAW_MAX_SPAN_MS / DAY_MS} days`);
  }
  return { plan: { days: [], hours: [], raw: [[from, to]] }, source: "RAW" };
}

function rank(groups: Map<string, { values: GroupValues; sums: SpendSums }>, bucket: BalanceBucket): string[] {
  const other: BalanceBucket = bucket === "CREDIT" ? "ROUTED" : "CREDIT";
  const cmp = (a: bigint, b: bigint) => (a > b ? -1 : a < b ? 1 : 0);
  return [...groups.entries()]
    .sort(
      ([ga, a], [gb, b]) =>
        cmp(a.sums.spend[bucket], b.sums.spend[bucket]) ||
        cmp(a.sums.spend[other], b.sums.spend[other]) ||
        cmp(a.sums.requests, b.sums.requests) ||
        cmp(a.sums.failedRequests, b.sums.failedRequests) ||
        (ga < gb ? -1 : ga > gb ? 1 : 0),
    )
    .map(([g]) => g);
}

const toLatency = (row: LatencyRow | undefined): Latency | null => (row && row.p50 !== null ? { p50Ms: Number(row.p50), p95Ms: Number(row.p95), receipts: Number(row.n) } : null);

/** The report; `forceRaw` reads every sum from the raw rows (the reference the rollups are tested against). */
export async function spendReport(input: SpendReportInput, options: { forceRaw?: boolean } = {}): Promise<SpendReport> {
  validate(input);
  const groupBy = [...new Set(input.groupBy)];
  const [from, to] = [input.from.getTime(), input.to.getTime()];
  const starts = bucketStarts(from, to, input.interval, input.timeZone, MAX_POINTS);
  const rollups = rollupsFor(groupBy, input.filter);
  const { plan, source: readFrom } = planFor(input, starts, rollups, options.forceRaw ?? false);
  const q: Query = { organizationId: input.organizationId, plan, groupBy, filter: input.filter, rollups };

  // A group's total covers the whole range: only its two ends need to be on a rollup's grain, so whole
  // UTC days inside it are read from the daily rollup even when the buckets (hours, a zone's days) are not.
  const totalsPlan = readFrom === "ROLLUPS" ? planRanges(from, to, rollups.days) : q.plan;
  // Top N reads every point's total with the groups' when both come from the same ranges (not on the
  // raw reference path: it finds "other" row by row, the oracle the property test compares against).
  const pointsWithTotals = !options.forceRaw && input.top !== null && input.top !== undefined && groupBy.length > 0 && JSON.stringify(totalsPlan) === JSON.stringify(q.plan);
  const { groups, pointTotals } = await groupTotals({ ...q, plan: totalsPlan }, pointsWithTotals ? { starts, from } : null);
  const ranked = rank(groups, input.rankBucket ?? "CREDIT");
  const top = input.top ?? null;
  const shownKeys = top !== null && ranked.length > top ? ranked.slice(0, top) : ranked;
  const hasOther = shownKeys.length < ranked.length;
  const seriesCount = shownKeys.length + (hasOther ? 1 : 0);
  if (starts.length * seriesCount > MAX_CELLS) {
    throw badInput("groupBy", `${seriesCount} series × ${starts.length} points is more than ${MAX_CELLS} cells: set top, filter, narrow the range or use a longer interval`);
  }

  const ends = [...starts.slice(1), to];
  const newPoints = () => starts.map((s, i) => ({ start: new Date(s), end: new Date(ends[i]!), sums: zeroSums(), latency: null as Latency | null }));
  const series = new Map<string | null, SpendReportSeries>();
  for (const g of shownKeys) {
    const entry = groups.get(g)!;
    series.set(g, { group: entry.values, groupCount: 1, total: entry.sums, latency: null, previous: null, points: newPoints() });
  }
  if (hasOther) {
    const total = zeroSums();
    for (const g of ranked.slice(shownKeys.length)) addSums(total, groups.get(g)!.sums);
    series.set(null, { group: null, groupCount: ranked.length - shownKeys.length, total, latency: null, previous: null, points: newPoints() });
  }

  const shownForSql = hasOther ? shownKeys : null;
  if (seriesCount > 0) {
    const shownGroups = hasOther ? shownKeys.map((key) => ({ key, values: groups.get(key)!.values })) : null;
    const otherFromTotals = hasOther && pointTotals !== null;
    for (const row of await pointSums(q, starts, from, shownGroups, otherFromTotals)) {
      const s = series.get(row.g);
      // Groups that sum to nothing were dropped above; their rows are zeros.
      if (s) addRow(s.points[row.i - 1]!.sums, row);
    }
    if (otherFromTotals) {
      // "Other" at each point: everything at that point less the shown groups.
      const other = series.get(null)!;
      other.points.forEach((point, i) => {
        point.sums = addSums(zeroSums(), pointTotals![i]!);
        for (const key of shownKeys) subtractSums(point.sums, series.get(key)!.points[i]!.sums);
      });
    }
  }

  const totals = zeroSums();
  for (const s of series.values()) addSums(totals, s.total);

  let latency: Latency | null = null;
  let latencyUnavailable: string | null = null;
  if (to - from > LATENCY_MAX_SPAN_MS) {
    latencyUnavailable = `latency percentiles are computed from raw receipts for ranges of up to ${LATENCY_MAX_SPAN_MS / DAY_MS} days`;
  } else if (seriesCount > 0 && input.latency !== false) {
    for (const row of await latencies(q, starts, from, to, shownForSql)) {
      const value = toLatency(row);
      if (row.by_point && row.by_series) latency = value;
      else if (row.by_series) {
        const s = series.get(row.g);
        if (s) s.latency = value;
      } else if (!row.by_point) {
        const s = series.get(row.g);
        if (s) s.points[row.i! - 1]!.latency = value;
      }
    }
  }

  let previous: SpendReport["previous"] = null;
  if (input.compare) {
    const span = to - from;
    const before: SpendReportInput = { ...input, from: new Date(from - span), to: new Date(from) };
    // One bucket, so only its two ends need to be on the rollups' grain.
    const prevPlan = options.forceRaw ? { days: [], hours: [], raw: [[from - span, from] as Range] } : planRanges(from - span, from, rollups.days);
    const { groups: prevGroups } = await groupTotals({ ...q, plan: prevPlan });
    const prevTotals = zeroSums();
    for (const s of series.values()) s.previous = zeroSums();
    for (const [g, entry] of prevGroups) {
      addSums(prevTotals, entry.sums);
      const s = series.get(g) ?? series.get(null);
      if (s) addSums(s.previous!, entry.sums);
    }
    previous = { from: before.from, to: before.to, totals: prevTotals };
  }

  return {
    from: input.from,
    to: input.to,
    interval: input.interval,
    timeZone: input.timeZone,
    groupBy,
    buckets: input.filter?.buckets ? BUCKETS.filter((b) => input.filter!.buckets!.includes(b)) : [...BUCKETS],
    bucketStarts: starts.map((s) => new Date(s)),
    series: [...series.values()],
    groupCount: ranked.length,
    totals,
    latency,
    latencyUnavailable,
    previous,
    source: readFrom,
  };
}
