// Hold rows: a reservation per request, reserved, settled, released and expired by one call of a
// SQL function each (prisma/functions.sql): the bucket row and every cap counter are locked in one
// fixed order and checked in the same statement. Until issue 16 this was the gateway's second
// admission path (GATEWAY_ADMISSION=holds); the gateway admits against budget leases only
// (leases.ts) now. What stays: the tests that place and settle holds through these functions (the
// accounting and concurrency suites), and the sweeper, which expires Hold rows an earlier release
// left (services.ts starts it).
import { db } from "../db/index.ts";
import { MAX_AMOUNT_MICROS } from "./amounts.ts";
import { translateDbError, utc, type Refusal, type SqlClient } from "./sql.ts";
import { capWindow, type ZoneState } from "./windows.ts";

export interface ReserveInput {
  requestId: string;
  bucketId: string;
  amount: bigint;
  keyId: string;
  projectId: string;
  routeId?: string | null;
  runId?: string | null;
  /** The channel the request will be sent to: counts against its CHANNEL_DAILY cap. */
  channelId?: string | null;
  now?: Date;
  /** The organization's zone: the day and month windows the hold counts in (default UTC). */
  zone?: ZoneState;
  ttlMs: number;
}

export type ReserveResult = { ok: true; holdId: string } | { ok: false; refusal: Refusal };

/** The day and month window starts a hold placed at `now` counts in. */
const holdWindows = (input: ReserveInput, now: Date): [string, string] => [utc(capWindow("DAY", now, input.zone).start), utc(capWindow("MONTH", now, input.zone).start)];

/** Places a hold if the bucket and every cap (key, project, route, channel, run) admit it; otherwise writes nothing. */
export async function reserve(input: ReserveInput, client: SqlClient = db): Promise<ReserveResult> {
  if (input.amount < 0n || input.amount > MAX_AMOUNT_MICROS) throw new RangeError("reservation amount out of range");
  const rows = await client
    .$queryRawUnsafe<{ hold_id: string | null; refusal: string | null }[]>(
      `SELECT hold_id, refusal FROM tg_reserve($1, $2, $3::bigint, $4, $5, $6, $7, $8::timestamptz AT TIME ZONE 'UTC', $9::int, $10,
                                               $11::timestamptz AT TIME ZONE 'UTC', $12::timestamptz AT TIME ZONE 'UTC')`,
      input.requestId,
      input.bucketId,
      input.amount.toString(),
      input.keyId,
      input.projectId,
      input.routeId ?? null,
      input.runId ?? null,
      utc(input.now ?? new Date()),
      input.ttlMs,
      input.channelId ?? null,
      ...holdWindows(input, input.now ?? new Date()),
    )
    .catch(translateDbError);
  const row = rows[0]!;
  if (row.hold_id) return { ok: true, holdId: row.hold_id };
  return { ok: false, refusal: row.refusal as Refusal };
}

export interface Resolution {
  ledgerEntryId: string | null;
  charged: bigint;
  balanceAfter: bigint;
}

async function resolveHold(
  holdId: string,
  charge: bigint,
  status: "SETTLED" | "RELEASED" | "EXPIRED",
  links: { receiptId?: string | null; failedRequestId?: string | null; now?: Date },
  client: SqlClient,
): Promise<Resolution> {
  const rows = await client
    .$queryRawUnsafe<{ ledger_entry_id: string | null; charged: bigint; balance_after: bigint }[]>(
      `SELECT ledger_entry_id, charged, balance_after FROM tg_resolve_hold($1, $2::bigint, $3::"HoldStatus", $4, $5, $6::timestamptz AT TIME ZONE 'UTC')`,
      holdId,
      charge.toString(),
      status,
      links.receiptId ?? null,
      links.failedRequestId ?? null,
      utc(links.now ?? new Date()),
    )
    .catch(translateDbError);
  const row = rows[0]!;
  return { ledgerEntryId: row.ledger_entry_id, charged: BigInt(row.charged), balanceAfter: BigInt(row.balance_after) };
}

/** Turns a hold into the actual charge (capped at the hold), writes the CHARGE entry linked to the receipt, releases the rest. */
export function settle(holdId: string, charge: bigint, links: { receiptId?: string | null; now?: Date } = {}, client: SqlClient = db): Promise<Resolution> {
  return resolveHold(holdId, charge, "SETTLED", links, client);
}

/** Drops a hold, optionally charging part of it (a failed request under its key's charge policy). */
export function release(holdId: string, charge = 0n, links: { failedRequestId?: string | null; now?: Date } = {}, client: SqlClient = db): Promise<Resolution> {
  return resolveHold(holdId, charge, "RELEASED", links, client);
}

/** Releases holds whose TTL passed: a crashed process never locks budget for longer than the TTL. */
export async function expireHolds(now = new Date(), client: SqlClient = db): Promise<number> {
  const rows = await client.$queryRawUnsafe<{ n: number }[]>(`SELECT tg_expire_holds($1::timestamptz AT TIME ZONE 'UTC') AS n`, utc(now));
  return Number(rows[0]!.n);
}

/** Runs expireHolds on an interval; returns a stop function. */
export function startHoldSweeper(intervalMs: number, onError: (e: unknown) => void): () => void {
  const timer = setInterval(() => {
    expireHolds().catch(onError);
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
