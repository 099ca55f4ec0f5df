// The record every passthrough request ends with: a Receipt or a FailedRequest (charged per the
// key's failed-request policy) written with its charge by the batched writer (recordBatch), and the
// Hold-row variants (recordReceipt / recordFailure: a record in the transaction that resolves its
// Hold row), which the tests still use. Listeners hear about each record after it committed (the
// server bridges them to GraphQL subscriptions).
import { randomUUID } from "node:crypto";
import { directSql } from "../db/index.ts";
import type { BalanceBucket, CapScope, ChannelRole, FailureCause } from "../generated/prisma/enums.ts";
import { translateDbError } from "./sql.ts";
import { capAtHold } from "./charges.ts";
import { chargeBatchParams, RECORD_BATCH_SQL, type ChargeLease, type ChargeRow } from "./leases.ts";
import { storable } from "../text.ts";
import { storedPath, type AttemptStep } from "../requests/attempts.ts";

export interface ReceiptInput {
  requestId: string;
  organizationId: string;
  keyId: string;
  projectId: string;
  runId: string | null;
  routeId: string;
  channelId: string;
  requestedModel: string;
  upstreamModel: string;
  endpoint: string;
  channelRole: ChannelRole;
  fallback: boolean;
  attempts: number;
  bucket: BalanceBucket;
  currency: string;
  promptTokens: number;
  completionTokens: number;
  /** Token classes inside the totals (default 0): cached / cache-write / audio prompt tokens, reasoning / audio completion tokens. */
  cachedPromptTokens?: number;
  cacheWriteTokens?: number;
  audioPromptTokens?: number;
  reasoningTokens?: number;
  audioCompletionTokens?: number;
  /** What the upstream said the request cost (usage.cost), as a decimal string; default null. */
  upstreamCost?: string | null;
  priceSnapshotId: string;
  charge: bigint;
  stream: boolean;
  latencyMs: number;
  status: number;
  /** Usage above the reservation (or absurd): charged at the reservation. Default false. */
  usageExceededReservation?: boolean;
  /** Every upstream attempt, in order, the answered one last (src/requests/attempts.ts). Default: none. */
  attemptPath?: readonly AttemptStep[];
}

export interface FailedRequestInput {
  requestId: string;
  organizationId: string | null;
  keyId: string | null;
  projectId: string | null;
  runId: string | null;
  routeId: string | null;
  channelId: string | null;
  requestedModel: string | null;
  endpoint: string;
  cause: FailureCause;
  capScope: CapScope | null;
  message: string;
  /** What the upstream itself said (redacted), for organization admins; stored beside the record. */
  upstreamMessage?: string | null;
  httpStatus: number;
  upstreamStatus: number | null;
  attempts: number;
  bucket: BalanceBucket | null;
  currency: string | null;
  promptTokens: number;
  completionTokens: number;
  priceSnapshotId: string | null;
  charge: bigint;
  estimated: boolean;
  /** Every upstream attempt, in order (src/requests/attempts.ts). Default: none. */
  attemptPath?: readonly AttemptStep[];
}

export interface HoldRef {
  id: string;
  amount: bigint;
}

/** The bucket a committed charge debited and its ledger balance after it (absent when nothing was charged, or the writer did not say). */
export interface ChargedBalance {
  bucketId: string;
  balanceAfter: bigint;
}

export type RecordedRequest =
  | { kind: "receipt"; id: string; record: ReceiptInput; at: Date; balance?: ChargedBalance }
  | { kind: "failure"; id: string; record: FailedRequestInput; at: Date; balance?: ChargedBalance };

type Listener = (event: RecordedRequest) => void;
const listeners = new Set<Listener>();

/** Called after every committed Receipt / FailedRequest (keySpend, receiptCreated, metrics…). Returns an unsubscribe function. */
export function onRequestRecorded(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function announce(event: RecordedRequest): void {
  for (const listener of listeners) {
    try {
      listener(event);
    } catch {
      // A listener never breaks the request path.
    }
  }
}

/** A charge is capped at its hold (capAtHold): what the hold did not reserve is never taken; no hold, no charge. */
export const capToHold = (charge: bigint, hold: HoldRef | null): bigint => (hold ? capAtHold(charge, hold.amount) : 0n);

// Each record is written together with the resolution of its hold in ONE statement: the row is
// inserted by a data-modifying CTE and tg_resolve_hold (the SQL function settle() / release() call)
// runs on it in the same statement, hence the same transaction. One round trip instead of four
// (BEGIN, INSERT, SELECT, COMMIT) on the hot path; the function sees the CTE's row because it runs
// its statements with a later command id of the same transaction.

const RECEIPT_COLUMNS: Array<[keyof ReceiptInput, string]> = [
  ["requestId", "text"],
  ["organizationId", "text"],
  ["keyId", "text"],
  ["projectId", "text"],
  ["runId", "text"],
  ["routeId", "text"],
  ["channelId", "text"],
  ["requestedModel", "text"],
  ["upstreamModel", "text"],
  ["endpoint", "text"],
  ["channelRole", '"ChannelRole"'],
  ["fallback", "boolean"],
  ["attempts", "int"],
  ["bucket", '"BalanceBucket"'],
  ["currency", "text"],
  ["promptTokens", "int"],
  ["completionTokens", "int"],
  ["priceSnapshotId", "text"],
  ["charge", "bigint"],
  ["stream", "boolean"],
  ["latencyMs", "int"],
  ["status", "int"],
  ["usageExceededReservation", "boolean"],
  ["cachedPromptTokens", "int"],
  ["cacheWriteTokens", "int"],
  ["audioPromptTokens", "int"],
  ["reasoningTokens", "int"],
  ["audioCompletionTokens", "int"],
  ["upstreamCost", "text"],
  ["attemptPath", "jsonb"],
];

const RECEIPT_CLASS_COLUMNS = new Set<keyof ReceiptInput>(["cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens"]);

const FAILED_COLUMNS: Array<[keyof FailedRequestInput, string]> = [
  ["requestId", "text"],
  ["organizationId", "text"],
  ["keyId", "text"],
  ["projectId", "text"],
  ["runId", "text"],
  ["routeId", "text"],
  ["channelId", "text"],
  ["requestedModel", "text"],
  ["endpoint", "text"],
  ["cause", '"FailureCause"'],
  ["capScope", '"CapScope"'],
  ["message", "text"],
  ["httpStatus", "int"],
  ["upstreamStatus", "int"],
  ["attempts", "int"],
  ["bucket", '"BalanceBucket"'],
  ["currency", "text"],
  ["promptTokens", "int"],
  ["completionTokens", "int"],
  ["priceSnapshotId", "text"],
  ["charge", "bigint"],
  ["estimated", "boolean"],
  ["attemptPath", "jsonb"],
];

function insertSql(table: string, columns: Array<[string, string]>): string {
  const names = columns.map(([c]) => `"${c}"`).join(", ");
  const values = columns.map(([, type], i) => `$${i + 1}::${type}`).join(", ");
  return `INSERT INTO "${table}" (${names}, "createdAt") VALUES (${values}, $${columns.length + 1}::timestamptz AT TIME ZONE 'UTC') RETURNING id`;
}

// PostgreSQL text cannot hold NUL, and jsonb (the batched writes) refuses lone surrogates: a client
// string that carries either (a model name, a message quoting it) is stored with U+FFFD in its place
// rather than failing the write, and with it every other record of its batch.
const param = (value: unknown): unknown => (typeof value === "bigint" ? value.toString() : value === undefined ? null : typeof value === "string" ? storable(value) : value);

// The attempt path is an array in the batches' JSON, and JSON text as a positional parameter (positional()).
const receiptParam = (record: ReceiptInput, column: keyof ReceiptInput): unknown =>
  column === "attemptPath"
    ? storedPath(record.attemptPath)
    : column === "usageExceededReservation"
      ? record.usageExceededReservation === true
      : RECEIPT_CLASS_COLUMNS.has(column)
        ? (record[column] ?? 0)
        : param(record[column]);

const failedParam = (record: FailedRequestInput, column: keyof FailedRequestInput): unknown => (column === "attemptPath" ? storedPath(record.attemptPath) : param(record[column]));

/** A value as a positional parameter: a jsonb column's array as its JSON text. */
const positional = (value: unknown): unknown => (Array.isArray(value) ? JSON.stringify(value) : value);

function recordAndResolveSql(table: string, columns: Array<[string, string]>, status: "SETTLED" | "RELEASED"): string {
  const n = columns.length;
  const links = status === "SETTLED" ? "r.id, NULL" : "NULL, r.id";
  return `WITH r AS (${insertSql(table, columns)})
SELECT r.id, s.ledger_entry_id, s.charged::text AS charged
  FROM r, LATERAL tg_resolve_hold($${n + 2}, $${n + 3}::bigint, '${status}'::"HoldStatus", ${links}, $${n + 1}::timestamptz AT TIME ZONE 'UTC') s`;
}

const RECEIPT_SETTLE_SQL = recordAndResolveSql("Receipt", RECEIPT_COLUMNS, "SETTLED");
const FAILED_RELEASE_SQL = recordAndResolveSql("FailedRequest", FAILED_COLUMNS, "RELEASED");
const FAILED_INSERT_SQL = insertSql("FailedRequest", FAILED_COLUMNS);

/**
 * What tg_resolve_hold charged, checked against what the record asked: never more; less only when
 * a late settlement (hold expired while the request ran) found the available balance short, in
 * which case the function also wrote the lower charge onto the record.
 */
function settledCharge(charged: string, asked: bigint): bigint {
  const value = BigInt(charged);
  if (value > asked || value < 0n) throw new Error(`settled ${charged}, record says ${asked}`);
  return value;
}

/** Writes the receipt and settles its hold (CHARGE ledger entry linked to it) atomically. `record.charge` must already be capped at the hold. */
export async function recordReceipt(record: ReceiptInput, hold: HoldRef, now = new Date()): Promise<{ id: string; ledgerEntryId: string | null }> {
  if (record.charge > hold.amount || record.charge < 0n) throw new RangeError("receipt charge outside its hold");
  const rows = await (
    directSql().$queryRawUnsafe(RECEIPT_SETTLE_SQL, ...RECEIPT_COLUMNS.map(([c]) => positional(receiptParam(record, c))), now.toISOString(), hold.id, record.charge.toString()) as Promise<
      Array<{ id: string; ledger_entry_id: string | null; charged: string }>
    >
  ).catch(translateDbError);
  const row = rows[0]!;
  // tg_resolve_hold charges min(charge, hold): equal here, since the charge was capped before;
  // less only in a late settlement the available balance could not cover (the row says so too).
  const charged = settledCharge(row.charged, record.charge);
  announce({ kind: "receipt", id: row.id, record: { ...record, charge: charged }, at: now });
  return { id: row.id, ledgerEntryId: row.ledger_entry_id };
}

/** The upstream messages of these failures as JSON for withUpstreamMessages (null: none has one). */
function upstreamMessagesJson(records: FailedRequestInput[]): string | null {
  const rows = records.flatMap((r) => (r.upstreamMessage ? [{ requestId: r.requestId, organizationId: r.organizationId, message: storable(r.upstreamMessage) }] : []));
  return rows.length ? JSON.stringify(rows) : null;
}

/**
 * `sql` with a data-modifying CTE in front that stores the upstream messages given as JSON in
 * parameter $n: one statement, so they commit or fail with their records (and the writer's own
 * FailedRequest insert, tg_record_batch, stays as it is).
 */
function withUpstreamMessages(sql: string, n: number): string {
  const cte = `tg_upstream AS (INSERT INTO "FailedRequestUpstreamMessage" ("requestId", "organizationId", message)
  SELECT x."requestId", x."organizationId", x.message FROM json_to_recordset($${n}::json) AS x("requestId" text, "organizationId" text, message text))`;
  return sql.startsWith("WITH ") ? `WITH ${cte}, ${sql.slice("WITH ".length)}` : `WITH ${cte}\n${sql}`;
}

/** Writes the failed request and releases its hold, charging `record.charge` (capped at the hold), atomically. */
export async function recordFailure(record: FailedRequestInput, hold: HoldRef | null, now = new Date()): Promise<{ id: string }> {
  const data = { ...record, charge: capToHold(record.charge, hold) };
  const params = FAILED_COLUMNS.map(([c]) => positional(failedParam(data, c)));
  const upstream = upstreamMessagesJson([record]);
  let id: string;
  if (!hold) {
    const values = [...params, now.toISOString()];
    const sql = upstream ? withUpstreamMessages(FAILED_INSERT_SQL, values.length + 1) : FAILED_INSERT_SQL;
    const rows = (await directSql().$queryRawUnsafe(sql, ...values, ...(upstream ? [upstream] : []))) as Array<{ id: string }>;
    id = rows[0]!.id;
  } else {
    const values = [...params, now.toISOString(), hold.id, data.charge.toString()];
    const sql = upstream ? withUpstreamMessages(FAILED_RELEASE_SQL, values.length + 1) : FAILED_RELEASE_SQL;
    const rows = await (directSql().$queryRawUnsafe(sql, ...values, ...(upstream ? [upstream] : [])) as Promise<Array<{ id: string; charged: string }>>).catch(translateDbError);
    id = rows[0]!.id;
    data.charge = settledCharge(rows[0]!.charged, data.charge);
  }
  announce({ kind: "failure", id, record: data, at: now });
  return { id };
}

// ---------------------------------------------------------------------------
// The batched writer of the lease path (issue 9): many requests' records and charges in ONE
// call of tg_record_batch (receipts / failed requests, CHARGE ledger entries with their running
// balances, the charges out of their leases into the counters and the bucket, aggregated per row).
// No Hold row: holds live in memory. Ids are made here, so nothing needs to be read back but the
// counters the batch left (for live events).

/** A spend counter as a committed batch left it (what live events announce, without reading it again). */
export interface CounterState {
  scope: CapScope;
  scopeId: string;
  bucket: BalanceBucket;
  windowStart: Date;
  spent: bigint;
  held: bigint;
  cap: bigint | null;
}

/** One request's record and the leases its charge leaves (pool.chargeLeases of its hold). */
export type BatchItem =
  | { kind: "receipt"; id?: string; record: ReceiptInput; bucketId: string; leases: ChargeLease[] }
  | { kind: "failure"; id?: string; record: FailedRequestInput; bucketId: string | null; leases: ChargeLease[] };

const jsonRow = (id: string, columns: ReadonlyArray<readonly [string, string]>, value: (column: string) => unknown): Record<string, unknown> => {
  const row: Record<string, unknown> = { id };
  for (const [c] of columns) row[c] = value(c);
  return row;
};

/**
 * Whether a record (receipt or failed request) with this item's id committed: a write whose answer
 * was lost (the connection dropped at its commit) is looked up before a retry, never written twice.
 */
export async function recordWritten(item: BatchItem): Promise<boolean> {
  if (!item.id) return false;
  const table = item.kind === "receipt" ? `"Receipt"` : `"FailedRequest"`;
  const rows = await directSql().$queryRawUnsafe<Array<{ n: number }>>(`SELECT 1 AS n FROM ${table} WHERE id = $1`, item.id);
  return rows.length > 0;
}

/**
 * Writes many receipts / failed requests and their charges atomically in one statement; announces
 * each after the commit. A failure without a bucket (refused before admission) is charged nothing.
 */
export async function recordBatch(items: BatchItem[], now = new Date()): Promise<Array<{ id: string; ledgerEntryId: string | null; counters: CounterState[] }>> {
  const ids: string[] = [];
  const ledgerIds: Array<string | null> = [];
  const receipts: Array<Record<string, unknown>> = [];
  const failures: Array<Record<string, unknown>> = [];
  const charges: ChargeRow[] = [];
  for (const item of items) {
    const id = item.id ?? randomUUID();
    ids.push(id);
    if (item.kind === "receipt") receipts.push(jsonRow(id, RECEIPT_COLUMNS, (c) => receiptParam(item.record, c as keyof ReceiptInput)));
    else failures.push(jsonRow(id, FAILED_COLUMNS, (c) => failedParam(item.record, c as keyof FailedRequestInput)));
    const charge = item.record.charge;
    if (charge < 0n) throw new RangeError("a charge must be >= 0");
    if (charge > 0n && !item.bucketId) throw new RangeError("a charge needs a bucket");
    if (!item.bucketId) {
      ledgerIds.push(null);
      continue;
    }
    const ledgerEntryId = randomUUID();
    ledgerIds.push(charge > 0n ? ledgerEntryId : null);
    charges.push({
      requestId: item.record.requestId,
      bucketId: item.bucketId,
      charge,
      receiptId: item.kind === "receipt" ? id : null,
      failedRequestId: item.kind === "failure" ? id : null,
      ledgerEntryId,
      leases: item.leases,
    });
  }
  const values = [now.toISOString(), receipts.length ? JSON.stringify(receipts) : null, failures.length ? JSON.stringify(failures) : null, ...chargeBatchParams(charges)];
  const upstream = upstreamMessagesJson(items.flatMap((item) => (item.kind === "failure" ? [item.record] : [])));
  const rows = await (
    directSql().$queryRawUnsafe(upstream ? withUpstreamMessages(RECORD_BATCH_SQL, values.length + 1) : RECORD_BATCH_SQL, ...values, ...(upstream ? [upstream] : [])) as Promise<
      Array<{
        request_id: string | null;
        ledger_entry_id: string | null;
        balance_after: string | null;
        scope: string | null;
        scope_id: string | null;
        bucket: string | null;
        window_start: string | null;
        spent: string | null;
        held: string | null;
        cap: string | null;
      }>
    >
  ).catch(translateDbError);
  const counters: CounterState[] = [];
  const balanceAfter = new Map<string, bigint>();
  for (const r of rows) {
    if (r.request_id) {
      if (r.balance_after !== null) balanceAfter.set(r.request_id, BigInt(r.balance_after));
      continue;
    }
    counters.push({
      scope: r.scope as CapScope,
      scopeId: r.scope_id!,
      bucket: r.bucket as BalanceBucket,
      windowStart: new Date(r.window_start!),
      spent: BigInt(r.spent!),
      held: BigInt(r.held!),
      cap: r.cap === null ? null : BigInt(r.cap),
    });
  }
  const results = items.map((_, i) => ({ id: ids[i]!, ledgerEntryId: ledgerIds[i]!, counters }));
  items.forEach((item, i) => {
    const after = balanceAfter.get(item.record.requestId);
    const balance = after !== undefined && item.bucketId ? { bucketId: item.bucketId, balanceAfter: after } : undefined;
    announce(item.kind === "receipt" ? { kind: "receipt", id: ids[i]!, record: item.record, at: now, balance } : { kind: "failure", id: ids[i]!, record: item.record, at: now, balance });
  });
  return results;
}
