// After a request settles or fails: tell dashboards what it cost and where its key and project
// now stand (read from the same counters the caps use), and announce budget thresholds crossed.
// Call only after the transaction that charged it has committed.
import { directSql } from "../db/index.ts";
import type { BalanceBucket, CapScope } from "../generated/prisma/enums.ts";
import { windowFor, type ZoneState } from "../money/windows.ts";
import { organizationZone } from "../orgs/time-zone.ts";
import type { EventBus, RequestView, ScopeStanding, SpendEvent } from "../events/index.ts";
import { onRequestRecorded, type CounterState } from "../money/index.ts";

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
  runId?: string | null;
  channelId?: string | null;
  /** What a view shows of the request (the gateway builds it from its record and the names it holds). */
  view?: RequestView | null;
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

/** The cap windows a request touched: key, project (day, month), route, run, channel. */
function windowsOf(o: SpendOutcome, now: Date, zone: ZoneState): Array<{ scope: CapScope; scopeId: string; window: Date; required: boolean }> {
  const wanted: Array<[CapScope, string | null | undefined, boolean]> = [
    ["KEY_DAILY", o.keyId, true],
    ["PROJECT_DAILY", o.projectId, true],
    ["PROJECT_MONTHLY", o.projectId, true],
    ["ROUTE_DAILY", o.routeId, true],
    ["RUN_TOTAL", o.runId, false],
    ["CHANNEL_DAILY", o.channelId, false],
  ];
  return wanted.flatMap(([scope, scopeId, required]) => (scopeId ? [{ scope, scopeId, window: windowFor(scope, now, zone), required }] : []));
}

/** The windows a request touched, with spent / held / cap, in one query. */
async function scopeStates(o: SpendOutcome, now: Date, zone: ZoneState): Promise<ScopeRow[]> {
  const present = windowsOf(o, now, zone);
  const rows = await directSql().$queryRawUnsafe<Array<{ scope: CapScope; scope_id: string; spent: string | null; held: string | null; cap: string | null }>>(
    `SELECT w.scope, w.scope_id, c.spent::text, c.held::text, tg_effective_cap(w.scope, w.scope_id, $2::"BalanceBucket")::text AS cap
       FROM jsonb_to_recordset($1::jsonb) AS w(scope "CapScope", scope_id text, window_start timestamptz)
       LEFT JOIN "SpendCounter" c ON c.scope = w.scope AND c."scopeId" = w.scope_id AND c.bucket = $2::"BalanceBucket"
                                 AND c."windowStart" = (w.window_start AT TIME ZONE 'UTC')`,
    // JSON rather than array parameters: the driver adapters disagree on how arrays are sent.
    JSON.stringify(present.map((p) => ({ scope: p.scope, scope_id: p.scopeId, window_start: p.window.toISOString() }))),
    o.bucket,
  );
  return (
    rows
      .map((r) => ({
        scope: r.scope,
        scope_id: r.scope_id,
        window_start: present.find((p) => p.scope === r.scope)!.window,
        spent: BigInt(r.spent ?? 0),
        held: BigInt(r.held ?? 0),
        cap: r.cap === null ? null : BigInt(r.cap),
      }))
      // A run or channel without a counter and without a cap says nothing a view needs.
      .filter((r) => present.find((p) => p.scope === r.scope)!.required || r.cap !== null || r.spent > 0n)
  );
}

const remaining = (s: ScopeRow | undefined): string | null => {
  if (!s || s.cap === null) return null;
  const left = s.cap - s.spent - s.held;
  return (left > 0n ? left : 0n).toString();
};

/**
 * The request's windows as the batch that committed it left them (the lease path's writer returns
 * every counter it changed), or null when a required one is missing (then they are read).
 */
function knownStates(o: SpendOutcome, now: Date, zone: ZoneState, known: readonly CounterState[]): ScopeRow[] | null {
  const rows: ScopeRow[] = [];
  for (const w of windowsOf(o, now, zone)) {
    const c = known.find((k) => k.scope === w.scope && k.scopeId === w.scopeId && k.bucket === o.bucket && k.windowStart.getTime() === w.window.getTime());
    if (!c) {
      if (w.required) return null;
      continue;
    }
    rows.push({ scope: w.scope, scope_id: w.scopeId, window_start: c.windowStart, spent: c.spent, held: c.held, cap: c.cap });
  }
  return rows;
}

const standing = (s: ScopeRow, bucket: BalanceBucket): ScopeStanding => ({
  scope: s.scope as ScopeStanding["scope"],
  scopeId: s.scope_id,
  bucket,
  windowStart: s.window_start.toISOString(),
  spent: s.spent.toString(),
  held: s.held.toString(),
  cap: s.cap === null ? null : s.cap.toString(),
  remaining: remaining(s),
});

/** Project names by id, as this instance last read them (a view shows them; read once per project per TTL). */
const projectNames = new Map<string, { name: string; until: number }>();
const PROJECT_NAME_TTL_MS = 60_000;

async function projectName(projectId: string): Promise<string | null> {
  const hit = projectNames.get(projectId);
  if (hit && hit.until > Date.now()) return hit.name;
  const rows = await directSql().$queryRawUnsafe<Array<{ name: string }>>(`SELECT name FROM "Project" WHERE id = $1`, projectId);
  if (!rows[0]) return null;
  if (projectNames.size >= 10_000) projectNames.clear();
  projectNames.set(projectId, { name: rows[0].name, until: Date.now() + PROJECT_NAME_TTL_MS });
  return rows[0].name;
}

/**
 * What the writer committed for each request (id, time, charge as settled), until its event is
 * built: the view then shows exactly the stored row. Bounded: the oldest is dropped.
 */
const committed = new Map<string, { id: string; at: Date; charge: bigint }>();
onRequestRecorded((event) => {
  if (committed.size >= 10_000) committed.delete(committed.keys().next().value!);
  committed.set(event.record.requestId, { id: event.id, at: event.at, charge: event.record.charge });
});

function asCommitted(view: RequestView): RequestView {
  const row = committed.get(view.requestId);
  if (!row) return view;
  committed.delete(view.requestId);
  return { ...view, id: row.id, createdAt: row.at.toISOString(), charge: row.charge.toString() };
}

/** Forget a project's name (after a rename); the next event reads it again. */
export function forgetProjectName(projectId: string): void {
  projectNames.delete(projectId);
}

/** Announces a settled / failed request on `events`; `known` (counters as its batch committed them) spares the read. */
export async function announceSpend(events: Pick<EventBus, "publish">, o: SpendOutcome, known?: readonly CounterState[] | null): Promise<void> {
  const now = o.now ?? new Date();
  const zone = await organizationZone(o.organizationId);
  const states = (known && knownStates(o, now, zone, known)) || (await scopeStates(o, now, zone));
  const key = states.find((s) => s.scope === "KEY_DAILY");
  const project = states.find((s) => s.scope === "PROJECT_DAILY");
  const view = o.view ? { ...asCommitted(o.view), projectName: o.view.projectName ?? (await projectName(o.projectId).catch(() => null)) } : null;
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
    routeId: o.routeId,
    runId: o.runId ?? null,
    channelId: o.channelId ?? null,
    promptTokens: view?.promptTokens ?? 0,
    completionTokens: view?.completionTokens ?? 0,
    latencyMs: view?.latencyMs ?? null,
    scopes: states.map((s) => standing(s, o.bucket)),
  });
  if (o.receiptId) {
    events.publish("receiptCreated", { organizationId: o.organizationId, projectId: o.projectId, keyId: o.keyId, receiptId: o.receiptId, view: view?.kind === "receipt" ? view : null });
  } else if (view?.kind === "failure") {
    events.publish("failedRequestCreated", { organizationId: o.organizationId, projectId: o.projectId, keyId: o.keyId, failedRequestId: view.id, view });
  }
  if (o.charge > 0n) await announceThresholds(events, o, states, now);
}

/** Each threshold of each capped window is announced once: the unique row decides, across instances. */
async function announceThresholds(events: Pick<EventBus, "publish">, o: SpendOutcome, states: ScopeRow[], now: Date): Promise<void> {
  for (const s of states) {
    if (s.cap === null || s.cap === 0n) continue;
    for (const threshold of ALERT_THRESHOLDS) {
      if (s.spent * 100n < BigInt(threshold) * s.cap) continue;
      // Once a threshold's row exists (ours or another instance's), asking again every request is a wasted write.
      const memo = `${s.scope}|${s.scope_id}|${o.bucket}|${s.window_start.toISOString()}|${threshold}|${s.cap}`;
      if (alerted.has(memo)) continue;
      const projectId = s.scope === "ROUTE_DAILY" || s.scope === "CHANNEL_DAILY" ? null : o.projectId;
      const inserted = await directSql().$queryRawUnsafe<Array<{ id: string }>>(
        `INSERT INTO "BudgetAlert" ("organizationId", "projectId", scope, "scopeId", bucket, "windowStart", threshold, spent, cap, "createdAt")
         VALUES ($1, $10, $2::"CapScope", $3, $4::"BalanceBucket", $5::timestamptz AT TIME ZONE 'UTC', $6, $7::bigint, $8::bigint, $9::timestamptz AT TIME ZONE 'UTC')
         ON CONFLICT DO NOTHING RETURNING id`,
        o.organizationId,
        s.scope,
        s.scope_id,
        o.bucket,
        s.window_start.toISOString(),
        threshold,
        s.spent.toString(),
        s.cap.toString(),
        now.toISOString(),
        projectId,
      );
      if (alerted.size >= 10_000) alerted.clear();
      alerted.add(memo);
      if (inserted.length === 0) continue;
      events.publish("budgetAlert", {
        id: inserted[0]!.id,
        createdAt: now.toISOString(),
        organizationId: o.organizationId,
        projectId,
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
