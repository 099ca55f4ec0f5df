// The day and month windows caps count in, in an organization's zone, and how a change of zone
// takes effect (src/money/windows.ts). Pure: instants in, window starts and ends out.
import { describe, expect, it } from "vitest";
import { capWindow, UTC_ZONE, windowFor, ZONE_CHANGE_MARGIN_MS, zoneChangePendingUntil, type ZoneState } from "../src/money/windows.ts";

const at = (iso: string) => new Date(iso);
const zone = (timeZone: string): ZoneState => ({ timeZone, previousTimeZone: null, timeZoneChangedAt: null });
const changed = (from: string, to: string, when: string): ZoneState => ({ timeZone: to, previousTimeZone: from, timeZoneChangedAt: at(when) });
const span = (w: { start: Date; end: Date }) => [w.start.toISOString(), w.end.toISOString()];
const HOUR = 3_600_000;

describe("cap windows in the organization's zone", () => {
  it("UTC by default: days and months from UTC midnight", () => {
    expect(span(capWindow("DAY", at("2026-12-03T23:59:59.999Z")))).toEqual(["2026-12-03T00:00:00.000Z", "2026-12-04T00:00:00.000Z"]);
    expect(span(capWindow("MONTH", at("2026-12-03T07:00:00Z"), UTC_ZONE))).toEqual(["2026-12-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z"]);
    expect(windowFor("RUN_TOTAL", at("2026-12-03T07:00:00Z")).getTime()).toBe(0);
  });

  it("Asia/Shanghai: the day starts at 16:00 UTC of the day before (a cap resets at local midnight)", () => {
    const shanghai = zone("Asia/Shanghai");
    expect(span(capWindow("DAY", at("2026-12-03T15:59:59.999Z"), shanghai))).toEqual(["2026-12-02T16:00:00.000Z", "2026-12-03T16:00:00.000Z"]);
    expect(span(capWindow("DAY", at("2026-12-03T16:00:00.000Z"), shanghai))).toEqual(["2026-12-03T16:00:00.000Z", "2026-12-04T16:00:00.000Z"]);
    expect(span(capWindow("MONTH", at("2026-11-30T16:00:00Z"), shanghai))).toEqual(["2026-11-30T16:00:00.000Z", "2026-12-31T16:00:00.000Z"]);
    expect(windowFor("KEY_DAILY", at("2026-12-03T08:00:00Z"), shanghai).toISOString()).toBe("2026-12-02T16:00:00.000Z");
    expect(windowFor("PROJECT_MONTHLY", at("2026-12-03T08:00:00Z"), shanghai).toISOString()).toBe("2026-11-30T16:00:00.000Z");
  });

  it("America/New_York across DST: a 23-hour day in March and a 25-hour day in November", () => {
    const ny = zone("America/New_York");
    const spring = capWindow("DAY", at("2026-03-08T12:00:00Z"), ny);
    expect(span(spring)).toEqual(["2026-03-08T05:00:00.000Z", "2026-03-09T04:00:00.000Z"]);
    expect(spring.end.getTime() - spring.start.getTime()).toBe(23 * HOUR);
    const fall = capWindow("DAY", at("2026-11-01T12:00:00Z"), ny);
    expect(span(fall)).toEqual(["2026-11-01T04:00:00.000Z", "2026-11-02T05:00:00.000Z"]);
    expect(fall.end.getTime() - fall.start.getTime()).toBe(25 * HOUR);
    // The month holding the change is an hour shorter / longer too.
    expect(span(capWindow("MONTH", at("2026-11-15T00:00:00Z"), ny))).toEqual(["2026-11-01T04:00:00.000Z", "2026-12-01T05:00:00.000Z"]);
    // Every instant of a day maps to that day, up to the last millisecond before the next.
    expect(capWindow("DAY", at("2026-11-02T04:59:59.999Z"), ny).start.toISOString()).toBe("2026-11-01T04:00:00.000Z");
    expect(capWindow("DAY", at("2026-11-02T05:00:00.000Z"), ny).start.toISOString()).toBe("2026-11-02T05:00:00.000Z");
  });

  it("a change keeps the current window's start and ends it at the new zone's next midnight", () => {
    // UTC → Shanghai at 07:00 UTC: the UTC day that began at 00:00 runs until Shanghai's next midnight (16:00 UTC).
    const z = changed("UTC", "Asia/Shanghai", "2026-12-03T07:00:00Z");
    expect(span(capWindow("DAY", at("2026-12-03T07:00:01Z"), z))).toEqual(["2026-12-03T00:00:00.000Z", "2026-12-03T16:00:00.000Z"]);
    expect(span(capWindow("DAY", at("2026-12-03T15:59:59.999Z"), z))).toEqual(["2026-12-03T00:00:00.000Z", "2026-12-03T16:00:00.000Z"]);
    expect(span(capWindow("DAY", at("2026-12-03T16:00:00Z"), z))).toEqual(["2026-12-03T16:00:00.000Z", "2026-12-04T16:00:00.000Z"]);
    // The month: December of UTC until Shanghai's January (16:00 UTC on the 31st).
    expect(span(capWindow("MONTH", at("2026-12-20T00:00:00Z"), z))).toEqual(["2026-12-01T00:00:00.000Z", "2026-12-31T16:00:00.000Z"]);
    expect(span(capWindow("MONTH", at("2026-12-31T16:00:00Z"), z))).toEqual(["2026-12-31T16:00:00.000Z", "2027-01-31T16:00:00.000Z"]);
    expect(zoneChangePendingUntil(z, at("2026-12-03T07:00:01Z"))?.toISOString()).toBe("2026-12-31T16:00:00.000Z");
    expect(zoneChangePendingUntil(z, at("2026-12-31T16:00:00Z"))).toBeNull();
  });

  it("Shanghai → New York: the Shanghai day runs on past its midnight to New York's", () => {
    // Changed at 10:00 Shanghai (02:00 UTC): the Shanghai day [16:00 UTC the day before, …) ends at New York's next midnight, 05:00 UTC.
    const z = changed("Asia/Shanghai", "America/New_York", "2026-12-03T02:00:00Z");
    const w = capWindow("DAY", at("2026-12-03T04:59:00Z"), z);
    expect(span(w)).toEqual(["2026-12-02T16:00:00.000Z", "2026-12-03T05:00:00.000Z"]);
    expect(span(capWindow("DAY", at("2026-12-03T05:00:00Z"), z))).toEqual(["2026-12-03T05:00:00.000Z", "2026-12-04T05:00:00.000Z"]);
  });

  it("instances that have not heard of a change yet agree on the window start until the margin has passed", () => {
    // Changed 5 minutes before UTC midnight: the anchor (change + margin) is in the next UTC day.
    const when = "2026-12-03T23:55:00Z";
    const z = changed("UTC", "Asia/Shanghai", when);
    const stale = UTC_ZONE;
    for (const t of ["2026-12-03T23:55:30Z", "2026-12-03T23:59:59.999Z", "2026-12-04T00:00:00Z", "2026-12-04T00:04:59Z"]) {
      expect(windowFor("KEY_DAILY", at(t), z).toISOString(), t).toBe(windowFor("KEY_DAILY", at(t), stale).toISOString());
    }
    expect(new Date(when).getTime() + ZONE_CHANGE_MARGIN_MS).toBe(at("2026-12-04T00:05:00Z").getTime());
    // The UTC day of the 4th (the anchor's) runs to Shanghai's next midnight, 16:00 UTC on the 4th.
    expect(span(capWindow("DAY", at("2026-12-04T10:00:00Z"), z))).toEqual(["2026-12-04T00:00:00.000Z", "2026-12-04T16:00:00.000Z"]);
  });

  it("no instant belongs to two windows and none to no window: windows tile time across a change", () => {
    for (const z of [
      changed("UTC", "Asia/Shanghai", "2026-12-03T07:00:00Z"),
      changed("America/New_York", "Asia/Shanghai", "2026-10-31T20:00:00Z"),
      changed("Asia/Shanghai", "America/New_York", "2026-03-07T12:00:00Z"),
    ]) {
      for (const kind of ["DAY", "MONTH"] as const) {
        let t = z.timeZoneChangedAt!.getTime() - 3 * 86_400_000;
        const end = t + (kind === "DAY" ? 10 : 90) * 86_400_000;
        let previous = capWindow(kind, new Date(t), z);
        while (t < end) {
          const w = capWindow(kind, new Date(t), z);
          expect(w.start.getTime()).toBeLessThanOrEqual(t);
          expect(w.end.getTime()).toBeGreaterThan(t);
          if (w.start.getTime() !== previous.start.getTime()) expect(w.start.getTime(), `${kind} ${new Date(t).toISOString()}`).toBe(previous.end.getTime());
          previous = w;
          t += 15 * 60_000;
        }
      }
    }
  });
});
