// The organization's time zone (issue 18, point 4): caps reset at local midnight on both admission
// paths (holds and leases), across DST (23- and 25-hour days); a change takes effect at a window
// boundary; spendToday, plans, budget alerts, CSV export days and spend series follow the zone.
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, startTestServer, token } from "./support/graphql.ts";
import { parseCsv } from "./support/csv.ts";
import { reserve } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { LeasePool, type AdmitInput, type LeaseHold } from "../src/money/leases.ts";
import { capWindow, ZONE_CHANGE_MARGIN_MS, zoneChangePendingUntil, type ZoneState } from "../src/money/windows.ts";
import { directSql } from "../src/db/index.ts";
import { setKeyCaps } from "../src/keys/index.ts";

const h = useGatewayHarness();

const zone = (timeZone: string): ZoneState => ({ timeZone, previousTimeZone: null, timeZoneChangedAt: null });
const at = (iso: string) => new Date(iso);

const SET_ZONE = `mutation($org: ID, $zone: String!) {
  setOrganizationTimeZone(organizationId: $org, timeZone: $zone) { id timeZone timeZoneChange { from to changedAt completeAt } }
}`;

/** Sets the zone as a committed change long past (no transition running): windows are the zone's own. */
async function settledZone(organizationId: string, timeZone: string) {
  await h.database.prisma.organization.update({ where: { id: organizationId }, data: { timeZone, previousTimeZone: null, timeZoneChangedAt: null } });
}

describe("setOrganizationTimeZone", () => {
  it("is validated, audited, takes one change at a time and shows the change while it takes effect", async () => {
    const w = await f.world();
    const admin = await token("ORG_ADMIN", w.org.id);
    const viewer = await token("ORG_VIEWER", w.org.id);
    expect(codes(await gql(admin, SET_ZONE, { zone: "Mars/Olympus_Mons" }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, SET_ZONE, { zone: "+08:00" }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, SET_ZONE, { zone: "x".repeat(100) }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(viewer, SET_ZONE, { zone: "Asia/Shanghai" }))).toEqual(["FORBIDDEN"]);
    // Another organization's admin cannot see it, let alone change it.
    const other = await f.organization();
    expect(codes(await gql(await token("ORG_ADMIN", other.id), SET_ZONE, { org: w.org.id, zone: "Asia/Shanghai" }))).toEqual(["NOT_FOUND"]);

    const before = Date.now();
    const set = (await gqlOk(admin, SET_ZONE, { zone: "Asia/Shanghai" })).setOrganizationTimeZone;
    const row = await h.database.prisma.organization.findUniqueOrThrow({ where: { id: w.org.id } });
    expect(row).toMatchObject({ timeZone: "Asia/Shanghai", previousTimeZone: "UTC" });
    expect(row.timeZoneChangedAt!.getTime()).toBeGreaterThanOrEqual(before - 1);
    const completeAt = zoneChangePendingUntil(row, new Date())!;
    // The month runs on in UTC to Shanghai's next month: the later of the two transitions.
    expect(completeAt.getTime()).toBe(capWindow("MONTH", new Date(row.timeZoneChangedAt!.getTime() + ZONE_CHANGE_MARGIN_MS), zone("Asia/Shanghai")).end.getTime());
    expect(set).toEqual({
      id: w.org.id,
      timeZone: "Asia/Shanghai",
      timeZoneChange: { from: "UTC", to: "Asia/Shanghai", changedAt: row.timeZoneChangedAt!.toISOString(), completeAt: completeAt.toISOString() },
    });
    const audit = await h.database.prisma.auditEntry.findMany({ where: { targetId: w.org.id, action: "setOrganizationTimeZone" } });
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({ targetType: "Organization", before: { timeZone: "UTC" }, after: { timeZone: "Asia/Shanghai", completeAt: completeAt.toISOString() } });

    // A second change while the first still runs: CONFLICT naming when; the same zone: nothing changes.
    const second = await gql(admin, SET_ZONE, { zone: "America/New_York" });
    expect(codes(second)).toEqual(["CONFLICT"]);
    expect(second.errors![0]!.message).toContain(completeAt.toISOString());
    expect((await gqlOk(admin, SET_ZONE, { zone: "Asia/Shanghai" })).setOrganizationTimeZone.timeZone).toBe("Asia/Shanghai");
    expect(await h.database.prisma.auditEntry.count({ where: { targetId: w.org.id, action: "setOrganizationTimeZone" } })).toBe(1);

    // Once the transition is over (the change moved back 62 days), the next change is taken.
    await h.database.prisma.organization.update({ where: { id: w.org.id }, data: { timeZoneChangedAt: new Date(Date.now() - 62 * 86_400_000) } });
    const ny = (await gqlOk(admin, SET_ZONE, { zone: "America/New_York" })).setOrganizationTimeZone;
    expect(ny).toMatchObject({ timeZone: "America/New_York", timeZoneChange: { from: "Asia/Shanghai", to: "America/New_York" } });
    const read = await gqlOk(admin, `query($id: ID!) { node(id: $id) { ... on Organization { timeZone timeZoneChange { from to } } } }`, { id: w.org.id });
    expect(read.node).toEqual({ timeZone: "America/New_York", timeZoneChange: { from: "Asia/Shanghai", to: "America/New_York" } });
  });
});

/** A pool's admissions, remembered so the test can release them and give every lease back at its end. */
function admissions(pool: LeasePool) {
  const holds: LeaseHold[] = [];
  return {
    async admit(input: AdmitInput) {
      const r = await pool.admit(input);
      if (r.ok) holds.push(r.hold);
      return r;
    },
    async done() {
      for (const hold of holds) pool.release(hold);
      await pool.returnAll();
      expect(pool.snapshot().filter((l) => l.amount > 0n)).toEqual([]);
    },
  };
}

describe("caps reset at local midnight", () => {
  const SHANGHAI = zone("Asia/Shanghai");
  const NEW_YORK = zone("America/New_York");

  async function cappedKey() {
    const w = await f.world({ credit: "100" });
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1" });
    return { w, bucketId: (await walletBucket(w.org.id, "CREDIT")).id };
  }

  it("holds path: the Shanghai day is 16:00–16:00 UTC; New York's November day has 25 hours", async () => {
    const { w, bucketId } = await cappedKey();
    const hold = (amount: bigint, now: string, z: ZoneState) => reserve({ requestId: randomUUID(), bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000, now: at(now), zone: z });
    expect((await hold(1_000_000n, "2031-03-10T15:59:59Z", SHANGHAI)).ok).toBe(true);
    expect(await hold(1n, "2031-03-10T15:59:59.999Z", SHANGHAI)).toEqual({ ok: false, refusal: "KEY_DAILY" });
    // 16:00 UTC is midnight in Shanghai: a new day, the whole cap again.
    expect((await hold(1_000_000n, "2031-03-10T16:00:00Z", SHANGHAI)).ok).toBe(true);
    // Still the same Shanghai day at UTC midnight (08:00 local): a UTC day would have reset here.
    expect(await hold(1n, "2031-03-11T00:00:01Z", SHANGHAI)).toEqual({ ok: false, refusal: "KEY_DAILY" });
    const counters = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id }, orderBy: { windowStart: "asc" } });
    expect(counters.map((c) => [c.windowStart.toISOString(), c.held])).toEqual([
      ["2031-03-09T16:00:00.000Z", 1_000_000n],
      ["2031-03-10T16:00:00.000Z", 1_000_000n],
    ]);

    // New York, 1 November 2026 (clocks go back): local midnight to midnight is 04:00 → 05:00 UTC the next day.
    const ny = await cappedKey();
    const nyHold = (amount: bigint, now: string) =>
      reserve({ requestId: randomUUID(), bucketId: ny.bucketId, amount, keyId: ny.w.key.id, projectId: ny.w.project.id, ttlMs: 60_000, now: at(now), zone: NEW_YORK });
    expect((await nyHold(1_000_000n, "2026-11-01T04:00:00Z")).ok).toBe(true);
    // 23:59 on 1 November in New York is 04:59 UTC on the 2nd: the 25th hour of the same day.
    expect(await nyHold(1n, "2026-11-02T04:59:59Z")).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect((await nyHold(1_000_000n, "2026-11-02T05:00:00Z")).ok).toBe(true);
    const nyCounters = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: ny.w.key.id }, orderBy: { windowStart: "asc" } });
    expect(nyCounters.map((c) => c.windowStart.toISOString())).toEqual(["2026-11-01T04:00:00.000Z", "2026-11-02T05:00:00.000Z"]);
    // And the project's month is New York's November, an hour longer than 30 days.
    const month = await h.database.prisma.spendCounter.findMany({ where: { scope: "PROJECT_MONTHLY", scopeId: ny.w.project.id } });
    expect(month.map((c) => [c.windowStart.toISOString(), c.held])).toEqual([["2026-11-01T04:00:00.000Z", 2_000_000n]]);
  });

  it("leases path: leases are of the local day, and the 23-hour March day in New York ends an hour early", async () => {
    const { w, bucketId } = await cappedKey();
    let clock = Date.parse("2026-03-08T05:00:00Z"); // midnight, 8 March, New York (EST)
    const pool = admissions(new LeasePool(directSql(), { instanceId: randomUUID(), ttlMs: 60_000, chunk: (need) => need, clock: () => clock }));
    const input = { bucketId, keyId: w.key.id, projectId: w.project.id, zone: NEW_YORK };
    expect((await pool.admit({ ...input, amount: 1_000_000n })).ok).toBe(true);
    clock = Date.parse("2026-03-09T03:59:59Z"); // 23:59:59 EDT: still the 8th, which had 23 hours
    expect(await pool.admit({ ...input, amount: 1n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    clock = Date.parse("2026-03-09T04:00:00Z"); // midnight EDT, the 9th
    expect((await pool.admit({ ...input, amount: 1_000_000n })).ok).toBe(true);
    const leased = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id }, orderBy: { windowStart: "asc" } });
    expect(leased.map((c) => [c.windowStart.toISOString(), c.held])).toEqual([
      ["2026-03-08T05:00:00.000Z", 1_000_000n],
      ["2026-03-09T04:00:00.000Z", 1_000_000n],
    ]);
    await pool.done();

    // Shanghai on leases: the day turns at 16:00 UTC, not at UTC midnight.
    const sh = await cappedKey();
    clock = Date.parse("2031-03-10T15:00:00Z");
    const shPool = admissions(new LeasePool(directSql(), { instanceId: randomUUID(), ttlMs: 60_000, chunk: (need) => need, clock: () => clock }));
    const shInput = { bucketId: sh.bucketId, keyId: sh.w.key.id, projectId: sh.w.project.id, zone: SHANGHAI };
    expect((await shPool.admit({ ...shInput, amount: 1_000_000n })).ok).toBe(true);
    clock = Date.parse("2031-03-10T16:00:00Z");
    expect((await shPool.admit({ ...shInput, amount: 1_000_000n })).ok).toBe(true);
    clock = Date.parse("2031-03-11T00:30:00Z");
    expect(await shPool.admit({ ...shInput, amount: 1n })).toEqual({ ok: false, refusal: "KEY_DAILY" });
    await shPool.done();
  });

  it("a change of zone keeps the current day's counter until the new zone's midnight: nothing is counted twice or escapes", async () => {
    const { w, bucketId } = await cappedKey();
    const changedAt = "2031-03-10T07:00:00Z"; // UTC → Shanghai at 15:00 Shanghai
    const changing: ZoneState = { timeZone: "Asia/Shanghai", previousTimeZone: "UTC", timeZoneChangedAt: at(changedAt) };
    const hold = (amount: bigint, now: string, z: ZoneState) => reserve({ requestId: randomUUID(), bucketId, amount, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000, now: at(now), zone: z });
    // 0.6 spent on the UTC day before the change; an instance that has not heard of it yet holds in the same window.
    expect((await hold(600_000n, "2031-03-10T06:00:00Z", zone("UTC"))).ok).toBe(true);
    expect((await hold(300_000n, "2031-03-10T07:00:30Z", zone("UTC"))).ok).toBe(true);
    // After the change the same UTC day runs on (its 0.9 counts): 0.2 more would pass the cap.
    expect(await hold(200_000n, "2031-03-10T10:00:00Z", changing)).toEqual({ ok: false, refusal: "KEY_DAILY" });
    expect((await hold(100_000n, "2031-03-10T15:59:59Z", changing)).ok).toBe(true);
    // Shanghai's midnight (16:00 UTC) starts the first Shanghai day with the whole cap.
    expect((await hold(1_000_000n, "2031-03-10T16:00:00Z", changing)).ok).toBe(true);
    expect(await hold(1n, "2031-03-11T00:00:00Z", changing)).toEqual({ ok: false, refusal: "KEY_DAILY" });
    const counters = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id }, orderBy: { windowStart: "asc" } });
    expect(counters.map((c) => [c.windowStart.toISOString(), c.held])).toEqual([
      ["2031-03-10T00:00:00.000Z", 1_000_000n],
      ["2031-03-10T16:00:00.000Z", 1_000_000n],
    ]);
  });
});

describe("two instances across a change, one not told yet", () => {
  it("lease the same window until the margin has passed, so the cap holds across both", async () => {
    const w = await f.world({ credit: "100" });
    await setKeyCaps(w.viewer, { keyId: w.key.id, dailyCap: "1" });
    const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
    // Changed UTC → Shanghai 2 minutes before UTC midnight: the anchor (change + 10 min) is in the next UTC day.
    const changing: ZoneState = { timeZone: "Asia/Shanghai", previousTimeZone: "UTC", timeZoneChangedAt: at("2031-03-10T23:58:00Z") };
    let clock = Date.parse("2031-03-10T23:59:00Z");
    const told = admissions(new LeasePool(directSql(), { instanceId: randomUUID(), ttlMs: 60_000, chunk: (need) => need, clock: () => clock }));
    const stale = admissions(new LeasePool(directSql(), { instanceId: randomUUID(), ttlMs: 60_000, chunk: (need) => need, clock: () => clock }));
    const input = { bucketId, keyId: w.key.id, projectId: w.project.id };
    let admitted = 0n;
    const admit = async (pool: ReturnType<typeof admissions>, z: ZoneState, amount: bigint) => {
      const r = await pool.admit({ ...input, zone: z, amount });
      if (r.ok) admitted += amount;
      return r.ok;
    };
    // Before UTC midnight both count in the UTC day of the 10th.
    expect(await admit(told, changing, 600_000n)).toBe(true);
    expect(await admit(stale, zone("UTC"), 600_000n)).toBe(false);
    expect(await admit(stale, zone("UTC"), 400_000n)).toBe(true);
    // After UTC midnight, within the margin: the told instance keeps the UTC day of the 11th (the anchor's) until
    // Shanghai's midnight at 16:00 UTC; the stale one computes the same window start, so both share one counter.
    clock = Date.parse("2031-03-11T00:03:00Z");
    expect(await admit(told, changing, 700_000n)).toBe(true);
    expect(await admit(stale, zone("UTC"), 400_000n)).toBe(false);
    expect(await admit(stale, zone("UTC"), 300_000n)).toBe(true);
    const counters = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id }, orderBy: { windowStart: "asc" } });
    expect(counters.map((c) => [c.windowStart.toISOString(), c.held])).toEqual([
      ["2031-03-10T00:00:00.000Z", 1_000_000n],
      ["2031-03-11T00:00:00.000Z", 1_000_000n],
    ]);
    expect(admitted).toBe(2_000_000n); // one cap per window, never more
    await told.done();
    await stale.done();
  });
});

describe("what follows the zone through the gateway and the API", () => {
  it("a request's counters, its budget alert, spendToday and the key's plan are of the Shanghai day", async () => {
    const w = await f.world({ credit: "100", key: { dailyCap: "0.11" } });
    await settledZone(w.org.id, "Asia/Shanghai");
    const model = uid("tz");
    const upstreamModel = uid("up");
    await f.route(w.viewer, w.org.id, model, [{ name: "p", baseUrl: h.fake.url, upstreamModel, price: ["100", "20000"] }]);
    h.fake.set(upstreamModel, { type: "ok", text: " a b c" });
    const answer = await h.gw
      .client(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 })
      .withResponse();
    const charge = (await h.database.prisma.receipt.findFirstOrThrow({ where: { requestId: answer.response.headers.get("x-request-id")! } })).charge;
    expect(charge).toBeGreaterThan(55_000n); // more than half of the 0.11 cap: the 50 % alert fires
    await leasesReturned(h);
    // Shanghai is UTC+8 all year: its day starts at 16:00 UTC of the UTC day before (computed here without the code under test).
    const EIGHT_HOURS = 8 * 3_600_000;
    const day = new Date(Math.floor((Date.now() + EIGHT_HOURS) / 86_400_000) * 86_400_000 - EIGHT_HOURS);
    const counter = await h.database.prisma.spendCounter.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id } });
    expect(counter.map((c) => [c.windowStart.toISOString(), c.spent])).toEqual([[day.toISOString(), charge]]);
    // The alert is announced after the commit, off the request path.
    let alerts: Array<{ windowStart: Date; threshold: number }> = [];
    for (let i = 0; i < 50 && alerts.length === 0; i++) {
      alerts = await h.database.prisma.budgetAlert.findMany({ where: { scope: "KEY_DAILY", scopeId: w.key.id } });
      if (!alerts.length) await new Promise((r) => setTimeout(r, 100));
    }
    expect(alerts.map((a) => [a.windowStart.toISOString(), a.threshold])).toEqual([[day.toISOString(), 50]]);

    const admin = await token("ORG_ADMIN", w.org.id);
    const read = await gqlOk(
      admin,
      `query($id: ID!, $model: String!) { apiKey(id: $id) { spendToday { amount } remainingToday { amount } plan(model: $model) { limits { kind bucket windowStart spent { amount } } } } }`,
      {
        id: w.key.id,
        model,
      },
    );
    const micros = (amount: string) => BigInt(amount.replace(".", ""));
    expect(micros(read.apiKey.spendToday.amount)).toBe(charge);
    expect(micros(read.apiKey.remainingToday.amount)).toBe(110_000n - charge);
    const keyDaily = read.apiKey.plan[0].limits.find((l: { kind: string; bucket: string }) => l.kind === "KEY_DAILY" && l.bucket === "CREDIT");
    expect(keyDaily).toMatchObject({ windowStart: day.toISOString(), spent: { amount: read.apiKey.spendToday.amount } });
  });

  it("CSV export days are local days, and spend series default to the organization's zone", async () => {
    const w = await f.world();
    await settledZone(w.org.id, "Asia/Shanghai");
    const admin = await token("ORG_ADMIN", w.org.id);
    // Two audit entries a millisecond either side of Shanghai's midnight on 3 December (16:00 UTC on the 2nd).
    await f.project(w.viewer, w.org.id);
    await f.project(w.viewer, w.org.id);
    const entries = await h.database.prisma.auditEntry.findMany({ where: { organizationId: w.org.id, action: "createProject" }, orderBy: { createdAt: "asc" } });
    const [late, early] = entries.slice(-2);
    await h.database.prisma.auditEntry.update({ where: { id: late!.id }, data: { createdAt: at("2026-12-02T15:59:59.999Z") } });
    await h.database.prisma.auditEntry.update({ where: { id: early!.id }, data: { createdAt: at("2026-12-02T16:00:00.000Z") } });
    const server = await startTestServer();
    try {
      const response = await fetch(`${server.url}/exports/audit.csv?from=2026-12-03&to=2026-12-04`, { headers: { authorization: `Bearer ${admin}` } });
      expect(response.status).toBe(200);
      const rows = parseCsv(await response.text());
      const ids = rows.slice(1).map((r) => r[rows[0]!.indexOf("id")]);
      expect(ids).toContain(early!.id);
      expect(ids).not.toContain(late!.id);
      // The same day asked as UTC instants: the entry before Shanghai's midnight is in, as it should be.
      const utc = parseCsv(await (await fetch(`${server.url}/exports/audit.csv?from=2026-12-02T15:00:00Z&to=2026-12-03T00:00:00Z`, { headers: { authorization: `Bearer ${admin}` } })).text());
      expect(utc.slice(1).map((r) => r[1])).toEqual([late!.id, early!.id]);
      // A date that does not exist is refused, not rolled over.
      const bad = await fetch(`${server.url}/exports/audit.csv?from=2026-02-31`, { headers: { authorization: `Bearer ${admin}` } });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("BAD_USER_INPUT");
    } finally {
      await server.close();
    }

    const series = await gqlOk(admin, `{ spendAnalytics(input: { from: "2026-12-01T00:00:00+08:00", to: "2026-12-03T00:00:00+08:00", interval: DAY }) { timeZone bucketStarts } }`);
    expect(series.spendAnalytics).toEqual({ timeZone: "Asia/Shanghai", bucketStarts: ["2026-11-30T16:00:00.000Z", "2026-12-01T16:00:00.000Z"] });
  });
});
