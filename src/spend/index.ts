// After a request settles or fails: tell dashboards what it cost and where its key and project
// now stand (read from the same counters the caps use), and announce budget thresholds crossed.
// Call only after the transaction that charged it has committed.
import { directSql } from "../db/index.ts";
import type { BalanceBucket, CapScope } from "../generated/prisma/enums.ts";
import { dayStart, monthStart } from "../accounting/index.ts";
import { events, type SpendEvent } from "../events/index.ts";
import type { CounterState } from "../requests/index.ts";

export const ALERT_THRESHOLDS = [50, 80, 100] as const;

/** Thresholds known to be recorded already (their unique row exists), per window and cap. */
const alerted = new Set<string>();

export interface SpendOutcome {
  organizationId: string;
  projectId: string;
  keyId: string;
  routeId: string | null;
  requestId: string;
  bucket: BalanceBucket;
  charge: bigint;
  status: SpendEvent["status"];
  receiptId?: string | null;
  now?: Date;
}

interface ScopeRow {
  scope: CapScope;
  scope_id: string;
  window_start: Date;
  spent: bigint;
  held: bigint;
  cap: bigint | null;
}

/** The windows a request touched, with spent / held / cap, in one query. */
async function scopeStates(o: SpendOutcome, now: Date): Promise<ScopeRow[]> {
  const day = dayStart(now);
  const month = monthStart(now);
  const wanted: Array<[CapScope, string | null, Date]> = [
    ["KEY_DAILY", o.keyId, day],
    ["PROJECT_DAILY", o.projectId, day],
    ["PROJECT_MONTHLY", o.projectId, month],
    ["ROUTE_DAILY", o.routeId, day],
  ];
  const present = wanted.filter((w): w is [CapScope, string, Date] => w[1] !== null);
  const rows = await directSql().$queryRawUnsafe<Array<{ scope: CapScope; scope_id: string; spent: string | null; held: string | null; cap: string | null }>>(
    `SELECT w.scope, w.scope_id, c.spent::text, c.held::text, tg_effective_cap(w.scope, w.scope_id, $2::"BalanceBucket")::text AS cap
       FROM jsonb_to_recordset($1::jsonb) AS w(scope "CapScope", scope_id text, window_start timestamptz)
       LEFT JOIN "SpendCounter" c ON c.scope = w.scope AND c."scopeId" = w.scope_id AND c.bucket = $2::"BalanceBucket"
                                 AND c."windowStart" = (w.window_start AT TIME ZONE 'UTC')`,
    // JSON rather than array parameters: the driver adapters disagree on how arrays are sent.
    JSON.stringify(present.map(([scope, scope_id, window]) => ({ scope, scope_id, window_start: window.toISOString() }))),
    o.bucket,
  );
  return rows.map((r) => ({
    scope: r.scope,
    scope_id: r.scope_id,
    window_start: present.find((p) => p[0] === r.scope)![2],
    spent: BigInt(r.spent ?? 0),
    held: BigInt(r.held ?? 0),
    cap: r.cap === null ? null : BigInt(r.cap),
  }));
}

const remaining = (s: ScopeRow | undefined): string | null => {
  if (!s || s.cap === null) return null;
  const left = s.cap - s.spent - s.held;
  return (left > 0n ? left : 0n).toString();
};

/**
 * The request's windows as the batch that committed it left them (the lease path's writer returns
 * every counter it changed), or null when one is missing (then they are read).
 */
function knownStates(o: SpendOutcome, now: Date, known: readonly CounterState[]): ScopeRow[] | null {
  const day = dayStart(now).getTime();
  const month = monthStart(now).getTime();
  const wanted: Array<[CapScope, string | null, number]> = [
    ["KEY_DAILY", o.keyId, day],
    ["PROJECT_DAILY", o.projectId, day],
    ["PROJECT_MONTHLY", o.projectId, month],
    ["ROUTE_DAILY", o.routeId, day],
  ];
  const rows: ScopeRow[] = [];
  for (const [scope, scopeId, window] of wanted) {
    if (scopeId === null) continue;
    const c = known.find((k) => k.scope === scope && k.scopeId === scopeId && k.bucket === o.bucket && k.windowStart.getTime() === window);
    if (!c) return null;
    rows.push({ scope, scope_id: scopeId, window_start: c.windowStart, spent: c.spent, held: c.held, cap: c.cap });
  }
  return rows;
}

/** Announces a settled / failed request; `known` (counters as its batch committed them) spares the read. */
export async function announceSpend(o: SpendOutcome, known?: readonly CounterState[] | null): Promise<void> {
  const now = o.now ?? new Date();
  const states = (known && knownStates(o, now, known)) || (await scopeStates(o, now));
  const key = states.find((s) => s.scope === "KEY_DAILY");
  const project = states.find((s) => s.scope === "PROJECT_DAILY");
  events.publish("spend", {
    organizationId: o.organizationId,
    projectId: o.projectId,
    keyId: o.keyId,
    requestId: o.requestId,
    bucket: o.bucket,
    charge: o.charge.toString(),
    keySpendToday: (key?.spent ?? 0n).toString(),
    keyRemainingToday: remaining(key),
    projectSpendToday: (project?.spent ?? 0n).toString(),
    projectRemainingToday: remaining(project),
    status: o.status,
    at: now.toISOString(),
  });
  if (o.receiptId) {
    events.publish("receiptCreated", { organizationId: o.organizationId, projectId: o.projectId, keyId: o.keyId, receiptId: o.receiptId });
  }
  if (o.charge > 0n) await announceThresholds(o, states);
}

/** Each threshold of each capped window is announced once: the unique row decides, across instances. */
async function announceThresholds(o: SpendOutcome, states: ScopeRow[]): Promise<void> {
  for (const s of states) {
    if (s.cap === null || s.cap === 0n) continue;
    for (const threshold of ALERT_THRESHOLDS) {
      if (s.spent * 100n < BigInt(threshold) * s.cap) continue;
      // Once a threshold's row exists (ours or another instance's), asking again every request is a wasted write.
      const memo = `${s.scope}|${s.scope_id}|${o.bucket}|${s.window_start.toISOString()}|${threshold}|${s.cap}`;
      if (alerted.has(memo)) continue;
      const inserted = await directSql().$queryRawUnsafe<Array<{ id: string }>>(
        `INSERT INTO "BudgetAlert" ("organizationId", scope, "scopeId", bucket, "windowStart", threshold, spent, cap)
         VALUES ($1, $2::"CapScope", $3, $4::"BalanceBucket", $5::timestamptz AT TIME ZONE 'UTC', $6, $7::bigint, $8::bigint)
         ON CONFLICT DO NOTHING RETURNING id`,
        o.organizationId,
        s.scope,
        s.scope_id,
        o.bucket,
        s.window_start.toISOString(),
        threshold,
        s.spent.toString(),
        s.cap.toString(),
      );
      if (alerted.size >= 10_000) alerted.clear();
      alerted.add(memo);
      if (inserted.length === 0) continue;
      events.publish("budgetAlert", {
        organizationId: o.organizationId,
        projectId: s.scope === "ROUTE_DAILY" ? null : o.projectId,
        scope: s.scope,
        scopeId: s.scope_id,
        bucket: o.bucket,
        threshold,
        spent: s.spent.toString(),
        cap: s.cap.toString(),
        windowStart: s.window_start.toISOString(),
      });
    }
  }
}
