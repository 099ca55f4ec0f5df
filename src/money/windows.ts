// The windows a cap counts in: a day or a month of the organization's time zone. Every counter,
// lease, hold, alert and "spent today" is keyed by its window's start, so this is the one place a
// window is decided; everything else passes the organization's ZoneState and an instant.
//
// A change of zone takes effect at a window boundary, so no spend is counted twice or escapes a
// window: the window of the old zone that holds the anchor (change + ZONE_CHANGE_MARGIN_MS) keeps
// its start and its counter, and ends at the new zone's first boundary after the anchor (so that one
// day or month is shorter or longer than usual, by less than a day or a month); the new zone's
// windows start there. The margin covers instances that have not yet heard of the change (they cache
// the zone for seconds): until the anchor they compute the old zone's windows, whose start is the
// same. A second change is refused (CONFLICT) until both transitions (day, month) have ended.
import type { CapScope } from "../generated/prisma/enums.ts";
import { periodAt } from "../analytics/zones.ts";

export interface ZoneState {
  /** IANA name; windows follow it from its transition's end on. */
  timeZone: string;
  /** The zone before the last change, while its transition may still be running. */
  previousTimeZone: string | null;
  timeZoneChangedAt: Date | null;
}

export const UTC_ZONE: ZoneState = { timeZone: "UTC", previousTimeZone: null, timeZoneChangedAt: null };
/** How long after a zone change instances may still compute windows in the old zone. */
export const ZONE_CHANGE_MARGIN_MS = 10 * 60_000;
export const RUN_WINDOW = new Date(0);

export type WindowKind = "DAY" | "MONTH";
export interface CapWindow {
  start: Date;
  end: Date;
}

function plainPeriod(t: number, kind: WindowKind, zone: string): { start: number; end: number } {
  if (zone === "UTC") {
    const d = new Date(t);
    if (kind === "DAY") {
      const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
      return { start, end: start + 86_400_000 };
    }
    return { start: Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1), end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) };
  }
  return periodAt(t, kind, zone);
}

/** The old zone's window a change keeps, and where it ends: the new zone's first boundary after the anchor. */
function transition(kind: WindowKind, zone: ZoneState): { start: number; end: number } | null {
  if (!zone.previousTimeZone || !zone.timeZoneChangedAt) return null;
  const anchor = zone.timeZoneChangedAt.getTime() + ZONE_CHANGE_MARGIN_MS;
  return { start: plainPeriod(anchor, kind, zone.previousTimeZone).start, end: plainPeriod(anchor, kind, zone.timeZone).end };
}

// Instants of one window repeat for a day or a month: keep the last answer per zone and kind.
const recent = new Map<string, { start: number; end: number }>();

/** The day or month window of `zone` that holds `now`. */
export function capWindow(kind: WindowKind, now: Date, zone: ZoneState = UTC_ZONE): CapWindow {
  const t = now.getTime();
  const memoKey = `${kind}|${zone.timeZone}|${zone.previousTimeZone ?? ""}|${zone.timeZoneChangedAt?.getTime() ?? ""}`;
  const hit = recent.get(memoKey);
  if (hit && hit.start <= t && t < hit.end) return { start: new Date(hit.start), end: new Date(hit.end) };
  const changing = transition(kind, zone);
  let period: { start: number; end: number };
  if (!changing || t >= changing.end) period = plainPeriod(t, kind, zone.timeZone);
  else if (t >= changing.start) period = changing;
  else period = plainPeriod(t, kind, zone.previousTimeZone!);
  if (recent.size > 10_000) recent.clear();
  recent.set(memoKey, period);
  return { start: new Date(period.start), end: new Date(period.end) };
}

/** The window start a scope's counter is kept under. */
export function windowFor(scope: CapScope, now: Date, zone: ZoneState = UTC_ZONE): Date {
  switch (scope) {
    case "PROJECT_MONTHLY":
      return capWindow("MONTH", now, zone).start;
    case "RUN_TOTAL":
      return RUN_WINDOW;
    default:
      return capWindow("DAY", now, zone).start;
  }
}

/** When a zone change's transitions (day and month) have both ended; null when none is running at `now`. */
export function zoneChangePendingUntil(zone: ZoneState, now: Date): Date | null {
  const ends = (["DAY", "MONTH"] as const).map((kind) => transition(kind, zone)?.end ?? 0);
  const until = Math.max(...ends);
  return until > now.getTime() ? new Date(until) : null;
}
