// Time buckets in an IANA time zone, computed from the zone's rules (Intl, i.e. ICU's tz data), so a
// local day is 23 or 25 hours across a DST change and a local hour in a half-hour zone starts at :30
// UTC. The bucket starts are handed to SQL as thresholds (width_bucket), so the database never needs
// its own tz data and both databases bucket identically.
import { badInput } from "../errors.ts";

export type SeriesInterval = "MINUTE" | "HOUR" | "DAY" | "WEEK" | "MONTH";

const MINUTE_MS = 60_000;
export const HOUR_MS = 60 * MINUTE_MS;
export const DAY_MS = 24 * HOUR_MS;

const formatters = new Map<string, Intl.DateTimeFormat>();
function formatter(zone: string): Intl.DateTimeFormat {
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formatters.set(zone, f);
  }
  return f;
}

/** The IANA name of `zone` as the tz data spells it; BAD_USER_INPUT for anything else (offsets like "+08:00" included: a zone has rules, an offset has none). */
export function checkTimeZone(zone: string, field = "timeZone"): string {
  if (!/^[A-Za-z][A-Za-z0-9_+-]*(\/[A-Za-z0-9_+-]+)*$/.test(zone) || zone.length > 64) {
    throw badInput(field, `"${zone}" is not an IANA time zone name (e.g. "Asia/Shanghai", "UTC")`);
  }
  try {
    return new Intl.DateTimeFormat("en-US", { timeZone: zone }).resolvedOptions().timeZone;
  } catch {
    throw badInput(field, `unknown time zone "${zone}" (an IANA name, e.g. "Asia/Shanghai", "UTC")`);
  }
}

/** The local wall clock at instant t, as milliseconds of a UTC date with the same fields (seconds precision). */
function wallAt(t: number, zone: string): number {
  const parts: Record<string, number> = {};
  for (const p of formatter(zone).formatToParts(new Date(t))) if (p.type !== "literal") parts[p.type] = Number(p.value);
  return Date.UTC(parts.year!, parts.month! - 1, parts.day!, parts.hour!, parts.minute!, parts.second!);
}

/** The zone's offset from UTC at instant t, in ms. */
export function offsetAt(t: number, zone: string): number {
  const whole = Math.floor(t / 1000) * 1000;
  return wallAt(whole, zone) - whole;
}

/** The first instant in (lo, hi] whose offset differs from lo's (a transition is known to lie there); to the second. */
function transitionIn(lo: number, hi: number, zone: string): number {
  const before = offsetAt(lo, zone);
  let a = Math.floor(lo / 1000);
  let b = Math.ceil(hi / 1000);
  while (b - a > 1) {
    const mid = Math.floor((a + b) / 2);
    if (offsetAt(mid * 1000, zone) === before) a = mid;
    else b = mid;
  }
  return b * 1000;
}

/** The earliest instant whose local wall clock reads `wall` or later (a wall time skipped by DST maps to the jump). */
function instantOfWall(wall: number, zone: string): number {
  // Offsets are within ±14 h and transitions are months apart: a day either side sees the offsets before and after.
  const before = offsetAt(wall - DAY_MS, zone);
  const after = offsetAt(wall + DAY_MS, zone);
  const valid = [wall - before, wall - after].filter((t) => t + offsetAt(t, zone) === wall);
  if (valid.length) return Math.min(...valid);
  return transitionIn(wall - after, wall - before, zone);
}

const calendarStart = (wall: number, interval: "DAY" | "WEEK" | "MONTH"): number => {
  const d = new Date(wall);
  const [y, m, day] = [d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()];
  if (interval === "MONTH") return Date.UTC(y, m, 1);
  if (interval === "DAY") return Date.UTC(y, m, day);
  // ISO weeks: Monday first.
  return Date.UTC(y, m, day - ((d.getUTCDay() + 6) % 7));
};
const calendarNext = (wall: number, interval: "DAY" | "WEEK" | "MONTH"): number => {
  const d = new Date(wall);
  if (interval === "MONTH") return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + (interval === "DAY" ? 1 : 7));
};

/**
 * The local calendar day, ISO week or month that holds instant t in `zone`, as [start, end) instants:
 * local midnight to the next (23 or 25 hours across a DST change; the first instant after midnight
 * when DST skips it).
 */
export function periodAt(t: number, interval: "DAY" | "WEEK" | "MONTH", zone: string): { start: number; end: number } {
  const wall = calendarStart(wallAt(t, zone), interval);
  return { start: instantOfWall(wall, zone), end: instantOfWall(calendarNext(wall, interval), zone) };
}

/** Local midnight of calendar date y-m-d (month 1-12) in `zone`: the day's first instant. */
export function localMidnight(year: number, month: number, day: number, zone: string): number {
  return instantOfWall(Date.UTC(year, month - 1, day), zone);
}

const UNIT_MS = { MINUTE: MINUTE_MS, HOUR: HOUR_MS } as const;
const mod = (a: number, n: number) => ((a % n) + n) % n;

/**
 * The starts of the buckets that cover [from, to) in `zone`, ascending; the first is the start of the
 * bucket holding `from` (it may be before `from`). Minutes and hours are those of the local clock
 * (a 25-hour day has 25 hourly buckets, a 23-hour day 23); days, weeks (Monday first) and months
 * start at local midnight, or at the first instant after it when DST skips midnight.
 */
export function bucketStarts(from: number, to: number, interval: SeriesInterval, zone: string, maxBuckets: number): number[] {
  const starts: number[] = [];
  const push = (t: number) => {
    if (starts.length >= maxBuckets) throw badInput("interval", `more than ${maxBuckets} ${interval} buckets: narrow the range or use a longer interval`);
    starts.push(t);
  };
  if (interval === "MINUTE" || interval === "HOUR") {
    const unit = UNIT_MS[interval];
    let offset = offsetAt(from, zone);
    push(from - mod(from + offset, unit));
    // Regions of one offset (at most a day each, found with two lookups): their local hours or minutes
    // are evenly spaced; a transition ends a region early and starts a bucket (the local clock jumps).
    for (let t = from; t < to; ) {
      const horizon = Math.min(to, t + DAY_MS);
      const end = offsetAt(horizon, zone) === offset ? horizon : transitionIn(t, horizon, zone);
      for (let n = t - mod(t + offset, unit) + unit; n < end; n += unit) push(n);
      if (end >= to) break;
      const changed = offsetAt(end, zone) !== offset;
      if ((changed || mod(end + offset, unit) === 0) && end > starts[starts.length - 1]!) push(end);
      offset = offsetAt(end, zone);
      t = end;
    }
    return starts;
  }
  let wall = calendarStart(wallAt(from, zone), interval);
  const first = instantOfWall(wall, zone);
  push(first);
  let offset = wall - first;
  for (;;) {
    wall = calendarNext(wall, interval);
    // Days and weeks: no transition between two boundaries when the offset is the same at both (one lookup).
    const guess = wall - offset;
    const next = interval !== "MONTH" && offsetAt(guess, zone) === offset ? guess : instantOfWall(wall, zone);
    if (next >= to) break;
    if (next > starts[starts.length - 1]!) push(next);
    offset = wall - next;
  }
  return starts;
}
