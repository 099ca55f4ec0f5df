// CSV exports of receipts, the ledger and failed requests: which rows a viewer may export, their
// columns, and the rows themselves as an async stream that never holds more than one batch.
// PostgreSQL streams each query from a server-side cursor; PGlite (no cursor API outside a
// transaction, and a transaction would lock out the gateway for the whole export) reads bounded
// keyset pages on an indexed order, so other queries run between pages.
import { stringify } from "csv-stringify/sync";
import { currentDatabase, type Database } from "../db/index.ts";
import { isPlatform, type Viewer } from "../auth/index.ts";
import { badInput, forbidden, notFound } from "../errors.ts";
import { formatMoney } from "../money/amounts.ts";
import { localMidnight } from "../analytics/zones.ts";

export const EXPORT_KINDS = ["receipts", "ledger", "failed-requests", "audit"] as const;
export type ExportKind = (typeof EXPORT_KINDS)[number];

export interface ExportFilter {
  from?: Date;
  to?: Date;
  /** A bare date (YYYY-MM-DD) for from / to: local midnight of the organization's zone, resolved by exportDaysIn. */
  fromDay?: string;
  toDay?: string;
  keyId?: string;
  projectId?: string;
  routeId?: string;
  /** Requests sent with this run id (x-run-id), and their charges. */
  runId?: string;
  model?: string;
  /** Platform tokens only (others always export their own organization). */
  organizationId?: string;
}

const FILTER_PARAMS = ["from", "to", "keyId", "projectId", "routeId", "runId", "model", "organizationId"] as const;
// ISO 8601 date or date-time; a date-time without an offset is taken as UTC, a bare date as local midnight of the organization's zone.
const ISO_8601 = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(Z|[+-]\d{2}(?::?\d{2})?)?)?$/i;

function parseInstant(name: string, value: string): Date {
  const match = ISO_8601.exec(value);
  const hasTime = match && value.length > 10;
  const date = match ? new Date(hasTime && !match[1] ? `${value}Z` : value) : null;
  // A bare date that does not exist (2026-02-31) must not roll over to another day: compare it back.
  const valid = date !== null && !Number.isNaN(date.getTime()) && (hasTime || date.toISOString().slice(0, 10) === value);
  if (!valid) {
    throw badInput(name, `must be an ISO 8601 date or date-time (e.g. 2026-11-01 or 2026-11-01T00:00:00Z), got ${JSON.stringify(value.slice(0, 40))}`);
  }
  return date;
}

/** The filter with bare-date bounds as instants: local midnight of those days in `zone` (the organization's). */
export function exportDaysIn(filter: ExportFilter, zone: string): ExportFilter {
  const resolved: ExportFilter = { ...filter };
  for (const [day, bound] of [
    ["fromDay", "from"],
    ["toDay", "to"],
  ] as const) {
    const value = filter[day];
    if (!value) continue;
    const [y, m, d] = value.split("-").map(Number) as [number, number, number];
    resolved[bound] = new Date(localMidnight(y, m, d, zone));
    delete resolved[day];
  }
  if (resolved.from && resolved.to && resolved.from >= resolved.to) throw badInput("to", "must be after from");
  return resolved;
}

/** The filter from a URL's query parameters; unknown, repeated or empty parameters are refused. */
export function parseExportFilter(params: URLSearchParams): ExportFilter {
  const filter: ExportFilter = {};
  for (const name of new Set(params.keys())) {
    if (!(FILTER_PARAMS as readonly string[]).includes(name)) {
      throw badInput(name.slice(0, 40), `unknown parameter (allowed: ${FILTER_PARAMS.join(", ")})`);
    }
    const values = params.getAll(name);
    if (values.length > 1) throw badInput(name, "given more than once");
    const value = values[0]!.trim();
    if (!value) throw badInput(name, "must not be empty");
    if (value.length > 200) throw badInput(name, "too long");
    if (name === "from" || name === "to") {
      const instant = parseInstant(name, value);
      if (value.length === 10) filter[name === "from" ? "fromDay" : "toDay"] = value;
      else filter[name] = instant;
    } else filter[name as Exclude<(typeof FILTER_PARAMS)[number], "from" | "to">] = value;
  }
  if (filter.from && filter.to && filter.from >= filter.to) throw badInput("to", "must be after from");
  return filter;
}

type KeyType = "text" | "timestamp" | "bigint";

/** One ordered query: the rows of one export come from one or more of these, in order. */
interface Phase {
  /** FROM and joins. */
  from: string;
  /** ANDed; `$n` placeholders, numbered from 1, refer to `params`. */
  conditions: string[];
  params: unknown[];
  /** The order, unique per row, and the keyset PGlite pages on (expressions that are never NULL). */
  keys: Array<{ expr: string; type: KeyType }>;
}

interface ExportSpec {
  columns: string[];
  /** Select-list expressions, one per column, aliased c0…cN. */
  select: string[];
  /** Columns holding micro-unit amounts, formatted as decimal strings. */
  money: Set<string>;
  /** Free-text columns whose formula-like values are neutralized. */
  text: Set<string>;
  /** The rows of one organization (filter.organizationId is always set for platform viewers). */
  phases(viewer: Viewer, filter: ExportFilter): Phase[];
  /** Rows of no organization, exported to platform viewers after every organization's. */
  unowned?(filter: ExportFilter): Phase;
}

const PLATFORM: Viewer = { tokenId: "", role: "PLATFORM_ADMIN", organizationId: null, projectId: null, label: "" };

const iso = (column: string) => `to_char(${column}, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** The organization / project every row must belong to, after the viewer's tenancy and the filter. */
function scope(viewer: Viewer, filter: ExportFilter, projectScoped: boolean): { organizationId?: string; projectId?: string } {
  if (isPlatform(viewer)) return { organizationId: filter.organizationId, projectId: filter.projectId };
  // As in GraphQL, another tenant's ids answer like unknown ones (their existence is not this token's business).
  if (filter.organizationId && filter.organizationId !== viewer.organizationId) throw notFound("organization", filter.organizationId);
  if (viewer.role === "PROJECT_VIEWER") {
    if (!projectScoped) throw forbidden("project viewers cannot export the wallet ledger");
    if (filter.projectId && filter.projectId !== viewer.projectId) throw notFound("project", filter.projectId);
    return { organizationId: viewer.organizationId ?? "", projectId: viewer.projectId ?? "" };
  }
  return { organizationId: viewer.organizationId ?? "", projectId: filter.projectId };
}

/** WHERE conditions shared by receipts and failed requests (table alias t). */
function requestConditions(viewer: Viewer, filter: ExportFilter): { conditions: string[]; params: unknown[] } {
  const s = scope(viewer, filter, true);
  const conditions: string[] = [];
  const params: unknown[] = [];
  const add = (sql: (n: string) => string, value: unknown) => {
    params.push(value);
    conditions.push(sql(`$${params.length}`));
  };
  if (s.organizationId !== undefined) add((n) => `t."organizationId" = ${n}`, s.organizationId);
  if (s.projectId !== undefined) add((n) => `t."projectId" = ${n}`, s.projectId);
  if (filter.keyId) add((n) => `t."keyId" = ${n}`, filter.keyId);
  if (filter.routeId) add((n) => `t."routeId" = ${n}`, filter.routeId);
  if (filter.runId) add((n) => `t."runId" = ${n}`, filter.runId);
  if (filter.model) add((n) => `t."requestedModel" = ${n}`, filter.model);
  if (filter.from) add((n) => `t."createdAt" >= ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.from.toISOString());
  if (filter.to) add((n) => `t."createdAt" < ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.to.toISOString());
  return { conditions, params };
}

// Within one organization (an equality condition), so each keyset page is a range scan of the
// (organizationId, createdAt) index; id breaks ties between rows of the same millisecond.
const BY_TIME: Phase["keys"] = [
  { expr: `t."createdAt"`, type: "timestamp" },
  { expr: `t.id`, type: "text" },
];

/** The upstream's own text is for admins: viewers get the column empty (the same columns for every token). */
const failedRequestsFrom = (viewer: Viewer) =>
  `"FailedRequest" t LEFT JOIN "FailedRequestUpstreamMessage" u ON u."requestId" = t."requestId" AND ${viewer.role === "PLATFORM_ADMIN" || viewer.role === "ORG_ADMIN" ? "true" : "false"}`;

/** The audit trail: who changed what, with the before / after JSON (admins only, like GraphQL's auditEntries). */
function auditPhase(filter: ExportFilter, organizationId: string | null): Phase {
  for (const name of ["keyId", "projectId", "routeId", "runId", "model"] as const) {
    if (filter[name]) throw badInput(name, "is not a filter of the audit export (it has from, to and organizationId)");
  }
  const conditions: string[] = [];
  const params: unknown[] = [];
  const add = (sql: (n: string) => string, value: unknown) => {
    params.push(value);
    conditions.push(sql(`$${params.length}`));
  };
  if (organizationId === null) conditions.push(`t."organizationId" IS NULL`);
  else add((n) => `t."organizationId" = ${n}`, organizationId);
  if (filter.from) add((n) => `t."createdAt" >= ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.from.toISOString());
  if (filter.to) add((n) => `t."createdAt" < ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.to.toISOString());
  return { from: `"AuditEntry" t`, conditions, params, keys: BY_TIME };
}

/**
 * A request's attempt path in one compact field, its steps joined by ">": `role:status` when the
 * status says why (answered, 5xx, 429, 401 / 403, 404, another 4xx), else `role:cause`, e.g.
 * `primary:503>backup:200` or `primary:connect_error>backup:timeout`. Empty when no path was recorded.
 */
const attemptPathCsv = `(SELECT string_agg(lower(s->>'role') || ':' ||
    CASE WHEN s->>'cause' IN ('ANSWERED', 'UPSTREAM_5XX', 'RATE_LIMITED', 'UPSTREAM_AUTH', 'UPSTREAM_NOT_FOUND', 'REJECTED') AND jsonb_typeof(s->'status') = 'number'
         THEN s->>'status' ELSE lower(s->>'cause') END, '>' ORDER BY p.n)
  FROM jsonb_array_elements(t."attemptPath") WITH ORDINALITY AS p(s, n))`;

const SPECS: Record<ExportKind, ExportSpec> = {
  receipts: {
    columns: [
      "createdAt",
      "id",
      "requestId",
      "organizationId",
      "projectId",
      "keyId",
      "runId",
      "routeId",
      "channelId",
      "requestedModel",
      "upstreamModel",
      "endpoint",
      "channelRole",
      "fallback",
      "attempts",
      "stream",
      "status",
      "latencyMs",
      "bucket",
      "promptTokens",
      "completionTokens",
      "cachedPromptTokens",
      "cacheWriteTokens",
      "audioPromptTokens",
      "reasoningTokens",
      "audioCompletionTokens",
      "charge",
      "currency",
      "priceSnapshotId",
      "upstreamCost",
      "attemptPath",
    ],
    select: [
      iso(`t."createdAt"`),
      "t.id",
      `t."requestId"`,
      `t."organizationId"`,
      `t."projectId"`,
      `t."keyId"`,
      `t."runId"`,
      `t."routeId"`,
      `t."channelId"`,
      `t."requestedModel"`,
      `t."upstreamModel"`,
      "t.endpoint",
      `t."channelRole"::text`,
      "t.fallback::text",
      "t.attempts::text",
      "t.stream::text",
      "t.status::text",
      `t."latencyMs"::text`,
      "t.bucket::text",
      `t."promptTokens"::text`,
      `t."completionTokens"::text`,
      `t."cachedPromptTokens"::text`,
      `t."cacheWriteTokens"::text`,
      `t."audioPromptTokens"::text`,
      `t."reasoningTokens"::text`,
      `t."audioCompletionTokens"::text`,
      "t.charge::text",
      "t.currency",
      `t."priceSnapshotId"`,
      `t."upstreamCost"`,
      attemptPathCsv,
    ],
    money: new Set(["charge"]),
    text: new Set(["requestedModel", "upstreamModel", "upstreamCost"]),
    phases: (viewer, filter) => {
      const { conditions, params } = requestConditions(viewer, filter);
      return [{ from: `"Receipt" t`, conditions, params, keys: BY_TIME }];
    },
  },
  "failed-requests": {
    columns: [
      "createdAt",
      "id",
      "requestId",
      "organizationId",
      "projectId",
      "keyId",
      "runId",
      "routeId",
      "channelId",
      "requestedModel",
      "endpoint",
      "cause",
      "capScope",
      "message",
      "httpStatus",
      "upstreamStatus",
      "attempts",
      "estimated",
      "bucket",
      "promptTokens",
      "completionTokens",
      "charge",
      "currency",
      "upstreamMessage",
      "attemptPath",
    ],
    select: [
      iso(`t."createdAt"`),
      "t.id",
      `t."requestId"`,
      `t."organizationId"`,
      `t."projectId"`,
      `t."keyId"`,
      `t."runId"`,
      `t."routeId"`,
      `t."channelId"`,
      `t."requestedModel"`,
      "t.endpoint",
      "t.cause::text",
      `t."capScope"::text`,
      "t.message",
      `t."httpStatus"::text`,
      `t."upstreamStatus"::text`,
      "t.attempts::text",
      "t.estimated::text",
      "t.bucket::text",
      `t."promptTokens"::text`,
      `t."completionTokens"::text`,
      "t.charge::text",
      "t.currency",
      "u.message",
      attemptPathCsv,
    ],
    money: new Set(["charge"]),
    text: new Set(["requestedModel", "message", "upstreamMessage"]),
    phases: (viewer, filter) => {
      const { conditions, params } = requestConditions(viewer, filter);
      return [{ from: failedRequestsFrom(viewer), conditions, params, keys: BY_TIME }];
    },
    // Requests refused before a key was known (a bad secret) belong to no organization.
    unowned: (filter) => {
      const { conditions, params } = requestConditions(PLATFORM, { ...filter, organizationId: undefined });
      return { from: failedRequestsFrom(PLATFORM), conditions: [...conditions, `t."organizationId" IS NULL`], params, keys: BY_TIME };
    },
  },
  ledger: {
    columns: [
      "sequence",
      "createdAt",
      "id",
      "organizationId",
      "bucket",
      "kind",
      "amount",
      "balanceAfter",
      "currency",
      "idempotencyKey",
      "memo",
      "requestId",
      "receiptId",
      "failedRequestId",
      "keyId",
      "projectId",
      "routeId",
      "model",
      "actorTokenId",
    ],
    select: [
      "t.sequence::text",
      iso(`t."createdAt"`),
      "t.id",
      `t."organizationId"`,
      "b.bucket::text",
      "t.kind::text",
      "t.amount::text",
      `t."balanceAfter"::text`,
      "b.currency",
      `t."idempotencyKey"`,
      "t.memo",
      `COALESCE(r."requestId", f."requestId")`,
      `t."receiptId"`,
      `t."failedRequestId"`,
      `COALESCE(r."keyId", f."keyId")`,
      `COALESCE(r."projectId", f."projectId")`,
      `COALESCE(r."routeId", f."routeId")`,
      `COALESCE(r."requestedModel", f."requestedModel")`,
      `t."actorTokenId"`,
    ],
    money: new Set(["amount", "balanceAfter"]),
    text: new Set(["idempotencyKey", "memo", "model"]),
    phases: (viewer, filter) => {
      const s = scope(viewer, filter, false);
      const conditions: string[] = [];
      const params: unknown[] = [];
      const add = (sql: (n: string) => string, value: unknown) => {
        params.push(value);
        conditions.push(sql(`$${params.length}`));
      };
      if (s.organizationId !== undefined) add((n) => `t."organizationId" = ${n}`, s.organizationId);
      // Charges belong to a key, project, route and model through their receipt or failed request;
      // top-ups and adjustments to none, so such a filter leaves them out.
      if (s.projectId !== undefined) add((n) => `COALESCE(r."projectId", f."projectId") = ${n}`, s.projectId);
      if (filter.keyId) add((n) => `COALESCE(r."keyId", f."keyId") = ${n}`, filter.keyId);
      if (filter.routeId) add((n) => `COALESCE(r."routeId", f."routeId") = ${n}`, filter.routeId);
      if (filter.runId) add((n) => `COALESCE(r."runId", f."runId") = ${n}`, filter.runId);
      if (filter.model) add((n) => `COALESCE(r."requestedModel", f."requestedModel") = ${n}`, filter.model);
      if (filter.from) add((n) => `t."createdAt" >= ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.from.toISOString());
      if (filter.to) add((n) => `t."createdAt" < ${n}::timestamptz AT TIME ZONE 'UTC'`, filter.to.toISOString());
      return [
        {
          from: `"LedgerEntry" t JOIN "WalletBucket" b ON b.id = t."bucketId"
                 LEFT JOIN "Receipt" r ON r.id = t."receiptId" LEFT JOIN "FailedRequest" f ON f.id = t."failedRequestId"`,
          conditions,
          params,
          // The ledger's own write order.
          keys: [{ expr: "t.sequence", type: "bigint" }],
        },
      ];
    },
  },
  audit: {
    columns: ["createdAt", "id", "organizationId", "actorTokenId", "actor", "action", "targetType", "targetId", "before", "after"],
    select: [iso(`t."createdAt"`), "t.id", `t."organizationId"`, `t."actorTokenId"`, "t.actor", "t.action", `t."targetType"`, `t."targetId"`, "t.before::text", "t.after::text"],
    money: new Set(),
    // Labels, names and memos inside the JSON were typed by admins.
    text: new Set(["actor", "before", "after"]),
    phases: (viewer, filter) => {
      if (viewer.role === "PROJECT_VIEWER") throw forbidden("project viewers cannot export the audit trail");
      return [auditPhase(filter, scope(viewer, filter, false).organizationId ?? null)];
    },
    // Platform actions (an organization created, a platform token issued) belong to no organization.
    unowned: (filter) => auditPhase(filter, null),
  },
};

export function exportColumns(kind: ExportKind): string[] {
  return SPECS[kind].columns;
}

/** Rows per keyset page on PGlite: bounded memory, and other queries run between pages. */
export const EXPORT_PAGE_ROWS = 1_000;
const PAGE_SLICE_ROWS = 100;

type RawRow = Record<string, string | null>;
/** One row's values in select-list order: the spec's columns, then (PGlite pages only) the keys. */
type RowValues = unknown[];

function phaseQuery(spec: ExportSpec, phase: Phase, after: Array<string | null> | null, limit: number | null, withKeys: boolean): { text: string; params: unknown[] } {
  const params = [...phase.params];
  const keys = withKeys ? phase.keys.map((k, i) => `${k.expr}::text AS k${i}`) : [];
  const select = [...spec.select.map((e, i) => `${e} AS c${i}`), ...keys].join(", ");
  const conditions = [...phase.conditions];
  const order = phase.keys.map((k) => k.expr).join(", ");
  if (after) {
    const placeholders = phase.keys.map((k, i) => {
      params.push(after[i]);
      return `$${params.length}::${k.type}`;
    });
    conditions.push(`(${order}) > (${placeholders.join(", ")})`);
  }
  const where = conditions.length ? ` WHERE ${conditions.join(" AND ")}` : "";
  return { text: `SELECT ${select} FROM ${phase.from}${where} ORDER BY ${order}${limit ? ` LIMIT ${limit}` : ""}`, params };
}

/**
 * A phase's rows as CSV text, one string per batch: a cursor's reads on PostgreSQL, keyset pages
 * on PGlite. A PGlite page is turned into its strings as soon as it arrives, before the first one
 * is handed on: rows held across the consumer's waits for the socket would survive V8's scavenges
 * and be promoted to the old generation, which grows by tens of MB before it is collected.
 */
async function* phaseCsv(database: Database, spec: ExportSpec, phase: Phase, toCsv: (rows: RowValues[]) => string): AsyncGenerator<string, void, undefined> {
  if (database.streamRowBatches) {
    const q = phaseQuery(spec, phase, null, null, false);
    for await (const batch of database.streamRowBatches(q.text, q.params)) yield toCsv(batch);
    return;
  }
  const aliases = spec.select.map((_e, i) => `c${i}`);
  let after: Array<string | null> | null = null;
  for (;;) {
    const q = phaseQuery(spec, phase, after, EXPORT_PAGE_ROWS, true);
    let page: RawRow[] | null = await database.sql.query<RawRow>(q.text, q.params);
    const full = page.length === EXPORT_PAGE_ROWS;
    const last = page[page.length - 1];
    if (full && last) after = phase.keys.map((_k, i) => last[`k${i}`] ?? null);
    // Slices the size of a cursor read, so each CSV string stays as small as PostgreSQL's.
    const texts: string[] = [];
    for (let i = 0; i < page.length; i += PAGE_SLICE_ROWS) {
      texts.push(toCsv(page.slice(i, i + PAGE_SLICE_ROWS).map((row) => aliases.map((a) => row[a] ?? null))));
    }
    page = null;
    yield* texts;
    if (!full) return;
  }
}

/**
 * Free text that clients or admins chose (model names, messages, memos) is prefixed with ' when it
 * starts like a spreadsheet formula (OWASP's CSV-injection rule), so opening an export cannot run
 * one. Money, ids and times are never touched: they come from us.
 */
export function neutralizeFormula(value: string): string {
  return /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
}

/** RFC 4180 from csv-stringify: CRLF record ends, a field quoted (quotes doubled) only when it needs it, NULL empty. */
const toCsvText = (records: Array<Array<string | null>>): string => stringify(records, { record_delimiter: "windows" });

/**
 * The export as CSV text (RFC 4180, CRLF record ends), one string per database batch, read as the
 * consumer pulls: the first string holds the header row and the first batch, so a query that fails
 * at once fails before anything is sent. Tenancy and filter errors are thrown before any row is read.
 * Each batch becomes one string at once, so no per-row record outlives its batch.
 */
export function exportCsv(viewer: Viewer, kind: ExportKind, filter: ExportFilter): AsyncGenerator<string, void, undefined> {
  const spec = SPECS[kind];
  const database = currentDatabase();
  if (!database) throw new Error("exports need an installed database (useDatabase)");
  const everyOrganization = isPlatform(viewer) && !filter.organizationId;
  // Tenancy errors surface here, before any row is read.
  const own = everyOrganization ? [] : spec.phases(viewer, filter);
  const width = spec.columns.length;
  // 0: as read; 1: money (micros → decimal string); 2: free text (formula-neutralized).
  const treatment = spec.columns.map((c) => (spec.money.has(c) ? 1 : spec.text.has(c) ? 2 : 0));
  const header = toCsvText([spec.columns]);
  const toCsv = (rows: RowValues[]): string => {
    const records = rows as Array<Array<string | null>>;
    for (const record of records) {
      for (let i = 0; i < width; i++) {
        const value = record[i];
        if (value == null) continue;
        if (treatment[i] === 1) record[i] = formatMoney(BigInt(value));
        else if (treatment[i] === 2) record[i] = neutralizeFormula(value);
      }
    }
    return toCsvText(records);
  };
  return (async function* () {
    let phases = own;
    if (everyOrganization) {
      // One organization after another: each is an indexed range, where one global order would sort every page.
      const organizations = await database.sql.query<{ id: string }>(`SELECT id FROM "Organization" ORDER BY id`);
      phases = organizations.flatMap((o) => spec.phases(viewer, { ...filter, organizationId: o.id }));
      if (spec.unowned) phases.push(spec.unowned(filter));
    }
    let pending: string | null = header;
    for (const phase of phases) {
      for await (const text of phaseCsv(database, spec, phase, toCsv)) {
        if (pending !== null) {
          yield pending + text;
          pending = null;
        } else yield text;
      }
    }
    if (pending !== null) yield pending;
  })();
}
