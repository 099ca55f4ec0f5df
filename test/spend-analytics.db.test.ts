// spendAnalytics over GraphQL, every argument checked against sums this test computes from the rows
// it wrote (bucketed by its own formulas: fixed +8 h for Asia/Shanghai, UTC hours across the New
// York DST changes): filters, groups as objects, DAY / WEEK / MONTH / HOUR / MINUTE buckets in a
// zone, zero-filled points, top N + other, totals, failures, latency, the previous period; tenancy;
// bad input; and API.md's spendSeries call shape answering as it did.
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { rowArb, scene, stored, write, type Row, type Scene } from "./support/spend-rows.ts";
import { formatMoney, parseMoney } from "../src/money/amounts.ts";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.dispose();
});

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
type Bucket = "CREDIT" | "ROUTED";
const BUCKETS: Bucket[] = ["CREDIT", "ROUTED"];
const CURRENCY = { CREDIT: "USD", ROUTED: "CNY" } as const;
type Dimension = "KEY" | "PROJECT" | "MODEL" | "UPSTREAM_MODEL" | "ROUTE" | "CHANNEL" | "BUCKET" | "RUN" | "RUN_MODE" | "SETTLEMENT";
type Stored = ReturnType<typeof stored> & { at: number };
interface Filter {
  keyIds?: string[];
  projectIds?: string[];
  routeIds?: string[];
  channelIds?: string[];
  runIds?: string[];
  models?: string[];
  buckets?: Bucket[];
}

/** Rows as the database holds them, with their instant. */
const held = (s: Scene, base: number, rows: Row[]): Stored[] => rows.map((r) => ({ ...stored(s, r), at: base + r.at }));

const dimension = (v: Stored, d: Dimension): string | null =>
  ({
    KEY: v.keyId,
    PROJECT: v.projectId,
    MODEL: v.model,
    UPSTREAM_MODEL: v.upstreamModel,
    ROUTE: v.routeId,
    CHANNEL: v.channelId,
    BUCKET: v.bucket,
    RUN: v.runId,
    RUN_MODE: v.runMode,
    SETTLEMENT: v.bucket === "CREDIT" ? "OFFICIAL" : v.bucket === "ROUTED" ? "ROUTED" : null,
  })[d];

function matches(v: Stored, filter: Filter): boolean {
  const pairs: Array<[string[] | undefined, string | null]> = [
    [filter.keyIds, v.keyId],
    [filter.projectIds, v.projectId],
    [filter.routeIds, v.routeId],
    [filter.channelIds, v.channelId],
    [filter.runIds, v.runId],
    [filter.models, v.model],
    [filter.buckets, v.bucket],
  ];
  return pairs.every(([list, value]) => list === undefined || (value !== null && list.includes(value)));
}

interface Sums {
  spend: Record<Bucket, bigint>;
  failedCharge: Record<Bucket, bigint>;
  requests: number;
  failedRequests: number;
  promptTokens: number;
  completionTokens: number;
  cachedPromptTokens: number;
}
const zero = (): Sums => ({ spend: { CREDIT: 0n, ROUTED: 0n }, failedCharge: { CREDIT: 0n, ROUTED: 0n }, requests: 0, failedRequests: 0, promptTokens: 0, completionTokens: 0, cachedPromptTokens: 0 });
function add(s: Sums, v: Stored): void {
  if (v.failed) {
    s.failedRequests++;
    if (v.charge > 0n) s.failedCharge[v.bucket!] += v.charge;
  }
  if (!v.spends) return;
  s.spend[v.bucket!] += v.charge;
  s.requests++;
  s.promptTokens += v.prompt;
  s.completionTokens += v.completion;
  s.cachedPromptTokens += v.cached;
}
const plus = (a: Sums, b: Sums): Sums => {
  const out = zero();
  for (const x of [a, b]) {
    for (const bucket of BUCKETS) {
      out.spend[bucket] += x.spend[bucket];
      out.failedCharge[bucket] += x.failedCharge[bucket];
    }
    for (const k of ["requests", "failedRequests", "promptTokens", "completionTokens", "cachedPromptTokens"] as const) out[k] += x[k];
  }
  return out;
};

const asGql = (s: Sums, buckets: Bucket[]) => ({
  spend: buckets.map((bucket) => ({ bucket, amount: { amount: formatMoney(s.spend[bucket]), currency: CURRENCY[bucket] } })),
  failedCharge: buckets.map((bucket) => ({ bucket, amount: { amount: formatMoney(s.failedCharge[bucket]) } })),
  requests: s.requests,
  failedRequests: s.failedRequests,
  promptTokens: s.promptTokens,
  completionTokens: s.completionTokens,
  cachedPromptTokens: s.cachedPromptTokens,
});
const SUMS = `spend { bucket amount { amount currency } } failedCharge { bucket amount { amount } } requests failedRequests promptTokens completionTokens cachedPromptTokens`;
const GROUP = `group { key { id name } project { id } route { id } channel { id } run { id } model upstreamModel bucket runMode settlement }`;
const REPORT = `source timeZone buckets bucketStarts groupCount latencyUnavailable totals { ${SUMS} } previous { from to totals { ${SUMS} } }
  series { other groupCount ${GROUP} total { ${SUMS} } previous { ${SUMS} } points { bucketStart ${SUMS} } }`;

function asGroup(s: Scene, values: Partial<Record<Dimension, string | null>>) {
  const id = (d: Dimension) => values[d] ?? null;
  return {
    key: id("KEY") ? { id: id("KEY"), name: s.keys.find((k) => k.id === id("KEY"))!.name } : null,
    project: id("PROJECT") ? { id: id("PROJECT") } : null,
    route: id("ROUTE") ? { id: id("ROUTE") } : null,
    channel: id("CHANNEL") ? { id: id("CHANNEL") } : null,
    run: id("RUN") ? { id: id("RUN") } : null,
    model: id("MODEL"),
    upstreamModel: id("UPSTREAM_MODEL"),
    bucket: id("BUCKET"),
    runMode: id("RUN_MODE"),
    settlement: id("SETTLEMENT"),
  };
}

/** The report this test expects, from the rows alone: `starts` are the bucket starts (the test's own formula). */
function expected(s: Scene, rows: Stored[], q: { from: number; to: number; starts: number[]; groupBy: Dimension[]; filter?: Filter; top?: number; rankBy?: Bucket; compare?: boolean }) {
  const buckets = q.filter?.buckets ? BUCKETS.filter((b) => q.filter!.buckets!.includes(b)) : BUCKETS;
  const groups = new Map<string, { values: Partial<Record<Dimension, string | null>>; total: Sums; points: Sums[] }>();
  const keyOf = (v: Stored) => JSON.stringify(q.groupBy.map((d) => dimension(v, d)));
  for (const v of rows) {
    if (v.at < q.from || v.at >= q.to || !matches(v, q.filter ?? {})) continue;
    const key = keyOf(v);
    let g = groups.get(key);
    if (!g) {
      g = { values: Object.fromEntries(q.groupBy.map((d) => [d, dimension(v, d)])), total: zero(), points: q.starts.map(() => zero()) };
      groups.set(key, g);
    }
    add(g.total, v);
    let i = q.starts.length - 1;
    while (q.starts[i]! > v.at) i--;
    add(g.points[i]!, v);
  }
  const rank = (x: Sums) => (q.rankBy === "ROUTED" ? [x.spend.ROUTED, x.spend.CREDIT] : [x.spend.CREDIT, x.spend.ROUTED]).concat(BigInt(x.requests), BigInt(x.failedRequests));
  const cmp = (a: Sums, b: Sums) => {
    const [ra, rb] = [rank(a), rank(b)];
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return ra[i]! > rb[i]! ? -1 : 1;
    return 0;
  };
  // Last tie-break: the group's values, as PostgreSQL's json_build_array prints them, in code-unit order.
  const printed = (g: { values: Partial<Record<Dimension, string | null>> }) => `[${q.groupBy.map((d) => (g.values[d] == null ? "null" : JSON.stringify(g.values[d]))).join(", ")}]`;
  const ranked = [...groups.entries()].sort(([, a], [, b]) => cmp(a.total, b.total) || (printed(a) < printed(b) ? -1 : printed(a) > printed(b) ? 1 : 0));
  const top = q.top ?? ranked.length;
  const shown = ranked.slice(0, top);
  const rest = ranked.slice(top);
  const previousOf = (keys: Set<string> | null) => {
    const sums = zero();
    for (const v of rows) {
      if (v.at < 2 * q.from - q.to || v.at >= q.from || !matches(v, q.filter ?? {})) continue;
      if (keys === null || keys.has(keyOf(v))) add(sums, v);
    }
    return sums;
  };
  const shownKeys = new Set(shown.map(([k]) => k));
  const series = shown.map(([key, g]) => ({
    other: false,
    groupCount: 1,
    group: asGroup(s, g.values),
    total: asGql(g.total, buckets),
    previous: q.compare ? asGql(previousOf(new Set([key])), buckets) : null,
    points: g.points.map((p, i) => ({ bucketStart: new Date(q.starts[i]!).toISOString(), ...asGql(p, buckets) })),
  }));
  if (rest.length) {
    const previousRest = zero();
    for (const v of rows) {
      if (v.at >= 2 * q.from - q.to && v.at < q.from && matches(v, q.filter ?? {}) && !shownKeys.has(keyOf(v))) add(previousRest, v);
    }
    series.push({
      other: true,
      groupCount: rest.length,
      group: null as unknown as ReturnType<typeof asGroup>,
      total: asGql(
        rest.reduce((a, [, g]) => plus(a, g.total), zero()),
        buckets,
      ),
      previous: q.compare ? asGql(previousRest, buckets) : null,
      points: q.starts.map((t, i) => ({
        bucketStart: new Date(t).toISOString(),
        ...asGql(
          rest.reduce((a, [, g]) => plus(a, g.points[i]!), zero()),
          buckets,
        ),
      })),
    });
  }
  const totals = ranked.reduce((a, [, g]) => plus(a, g.total), zero());
  return {
    buckets,
    bucketStarts: q.starts.map((t) => new Date(t).toISOString()),
    groupCount: ranked.length,
    totals: asGql(totals, buckets),
    /** Raw sums, for the micro-unit check of top N + other against the total. */
    rawTotals: totals,
    previous: q.compare ? { from: new Date(2 * q.from - q.to).toISOString(), to: new Date(q.from).toISOString(), totals: asGql(previousOf(null), buckets) } : null,
    series,
  };
}

const report = (secret: string, input: Record<string, unknown>) =>
  gqlOk<{ spendAnalytics: Record<string, unknown> & { series: Array<Record<string, unknown>> } }>(secret, `query($input: SpendAnalyticsInput!) { spendAnalytics(input: $input) { ${REPORT} } }`, {
    input,
  }).then((d) => d.spendAnalytics);

/** Asia/Shanghai is UTC+8 all year (no DST since 1991): local midnight is 16:00 UTC. */
const SHANGHAI = 8 * HOUR;
const FROM = Date.UTC(2026, 5, 1) - SHANGHAI;

describe("spendAnalytics against the rows", () => {
  it("filters, groups as objects, Asia/Shanghai days, top N + other, totals and the previous period equal sums of the raw rows", async () => {
    const s = await scene(database);
    const admin = await token("ORG_ADMIN", s.orgId);
    const now = fc.sample(rowArb(3 * DAY), { seed: 18, numRuns: 400 });
    const before = fc.sample(rowArb(3 * DAY), { seed: 19, numRuns: 120 });
    const after = fc.sample(rowArb(DAY), { seed: 20, numRuns: 40 });
    await write(database, s, FROM, now, true);
    await write(database, s, FROM - 3 * DAY, before, true);
    await write(database, s, FROM + 3 * DAY, after, true);
    const rows = [...held(s, FROM, now), ...held(s, FROM - 3 * DAY, before), ...held(s, FROM + 3 * DAY, after)];
    const days = [FROM, FROM + DAY, FROM + 2 * DAY];
    const range = { from: new Date(FROM).toISOString(), to: new Date(FROM + 3 * DAY).toISOString(), interval: "DAY", timeZone: "Asia/Shanghai" };
    const [r0, r1] = s.routes as [Scene["routes"][number], Scene["routes"][number]];

    const cases: Array<{ groupBy: Dimension[]; filter?: Filter; top?: number; rankBy?: Bucket; compare?: boolean }> = [
      { groupBy: ["KEY", "MODEL"], top: 2, compare: true },
      { groupBy: ["KEY", "MODEL"], top: 3, rankBy: "ROUTED" },
      {
        groupBy: ["PROJECT", "CHANNEL", "RUN_MODE", "SETTLEMENT", "UPSTREAM_MODEL"],
        filter: { keyIds: [s.keys[0]!.id, s.keys[1]!.id], channelIds: [r0.channels[0]!.id, r0.channels[1]!.id, r1.channels[1]!.id] },
      },
      {
        groupBy: ["ROUTE", "RUN", "BUCKET"],
        filter: { models: [r1.model], buckets: ["ROUTED"], runIds: s.runs.map((r) => r.id), projectIds: [s.keys[0]!.projectId], routeIds: [r1.id] },
        compare: true,
      },
      { groupBy: [], top: 1 },
    ];
    for (const c of cases) {
      const want = expected(s, rows, { from: FROM, to: FROM + 3 * DAY, starts: days, ...c });
      const got = await report(admin, { ...range, groupBy: c.groupBy, filter: c.filter, top: c.top, rankBy: c.rankBy, compareWithPrevious: c.compare });
      const { rawTotals, ...shape } = want;
      expect(got, JSON.stringify(c)).toMatchObject({ source: "ROLLUPS", timeZone: "Asia/Shanghai", latencyUnavailable: null, ...shape });
      expect(got.series.length).toBe(want.series.length);
      // Non-vacuous: real money in the series, and top N + other sums to the total to the micro-unit.
      expect(rawTotals.requests).toBeGreaterThan(c.filter ? 3 : 100);
      for (const bucket of want.buckets) {
        const sum = got.series.reduce((a, x) => a + parseMoney((x.total as ReturnType<typeof asGql>).spend.find((m) => m.bucket === bucket)!.amount.amount, "amount"), 0n);
        expect(sum).toBe(rawTotals.spend[bucket]);
      }
    }
    // The top case really folded groups into other; every series has one point per local day, zeros included.
    const topped = await report(admin, { ...range, groupBy: ["KEY", "MODEL"], top: 2 });
    expect(topped.series.map((x) => x.other)).toEqual([false, false, true]);
    expect(topped.groupCount).toBe(7); // 3 keys × 2 models, and failed requests refused before routing (no key, no model)
    // Ranking by the other bucket picks other groups first (the data makes the two orders differ).
    const byRouted = await report(admin, { ...range, groupBy: ["KEY", "MODEL"], top: 2, rankBy: "ROUTED" });
    expect(JSON.stringify(byRouted.series.map((x) => x.group))).not.toBe(JSON.stringify(topped.series.map((x) => x.group)));
  });

  it("WEEK (Monday first) and MONTH buckets in Asia/Shanghai", async () => {
    const s = await scene(database);
    const admin = await token("ORG_ADMIN", s.orgId);
    const start = Date.UTC(2026, 4, 20) - SHANGHAI; // Wednesday 20 May, local midnight
    const rows = fc.sample(rowArb(40 * DAY), { seed: 21, numRuns: 200 });
    await write(database, s, start, rows, true);
    const all = held(s, start, rows);
    const localDay = (t: number) => Math.floor((t + SHANGHAI) / DAY);
    const weekStart = (t: number) => (localDay(t) - ((localDay(t) + 3) % 7)) * DAY - SHANGHAI; // 1970-01-01 was a Thursday
    const to = start + 40 * DAY;
    const weeks: number[] = [];
    for (let t = weekStart(start); t < to; t += 7 * DAY) weeks.push(t);
    expect(new Date(weeks[1]! + SHANGHAI).getUTCDay()).toBe(1);
    const months = [Date.UTC(2026, 4, 1) - SHANGHAI, Date.UTC(2026, 5, 1) - SHANGHAI];
    for (const [interval, starts] of [
      ["WEEK", weeks],
      ["MONTH", months],
    ] as const) {
      const want = expected(s, all, { from: start, to, starts, groupBy: ["BUCKET"] });
      const got = await report(admin, { from: new Date(start).toISOString(), to: new Date(to).toISOString(), interval, timeZone: "Asia/Shanghai", groupBy: ["BUCKET"] });
      const { rawTotals, ...shape } = want;
      expect(got).toMatchObject({ source: "ROLLUPS", ...shape });
      expect(rawTotals.requests).toBeGreaterThan(50);
    }
  });

  it("an America/New_York DST day has 23 hourly points (a fall-back day 25), and its DAY buckets are 24, 23 and 24 hours", async () => {
    const s = await scene(database);
    const admin = await token("ORG_ADMIN", s.orgId);
    for (const [dayStart, hours] of [
      [Date.UTC(2026, 2, 8, 5), 23],
      [Date.UTC(2026, 10, 1, 4), 25],
    ] as const) {
      // Two requests in every UTC hour of the local day, and a day either side.
      const rows: Row[] = [];
      for (let h = -24; h < hours + 24; h++) {
        for (const [i, minute] of [7, 41].entries()) {
          rows.push({
            failed: i === 1 && h % 3 === 0,
            key: h & 1 ? 1 : 0,
            route: 0,
            channel: 0,
            run: null,
            anonymous: false,
            bucket: "CREDIT",
            uncharged: "bucket",
            charge: i === 1 && h % 3 === 0 ? 0 : 1000 + h * 10 + i,
            prompt: 10,
            completion: 5,
            cached: 0,
            latencyMs: 50 + h,
            at: (h + 24) * HOUR + minute * 60_000,
          });
        }
      }
      await write(database, s, dayStart - DAY, rows, true);
      const all = held(s, dayStart - DAY, rows).filter((v) => v.at >= dayStart - DAY && v.at < dayStart + (hours + 24) * HOUR);
      const starts = Array.from({ length: hours }, (_, h) => dayStart + h * HOUR);
      const to = dayStart + hours * HOUR;
      const want = expected(s, all, { from: dayStart, to, starts, groupBy: ["KEY"] });
      const got = await report(admin, { from: new Date(dayStart).toISOString(), to: new Date(to).toISOString(), interval: "HOUR", timeZone: "America/New_York", groupBy: ["KEY"] });
      const { rawTotals, ...shape } = want;
      expect(got.bucketStarts).toHaveLength(hours);
      expect(got).toMatchObject({ source: "ROLLUPS", ...shape });
      expect(rawTotals.requests).toBeGreaterThan(hours);
    }
    // Days around the spring change: 7 March (24 h), 8 March (23 h), 9 March (24 h).
    const days = [Date.UTC(2026, 2, 7, 5), Date.UTC(2026, 2, 8, 5), Date.UTC(2026, 2, 9, 4)];
    const got = await report(admin, { from: new Date(days[0]!).toISOString(), to: new Date(Date.UTC(2026, 2, 10, 4)).toISOString(), interval: "DAY", timeZone: "America/New_York" });
    expect(got.bucketStarts).toEqual(days.map((t) => new Date(t).toISOString()));
    const points = (got.series[0]!.points as Array<{ requests: number; failedRequests: number }>).map((p) => p.requests + p.failedRequests);
    // Two requests an hour (a third of the hours' second one failed, uncharged: not spend, but a failure).
    expect(points).toEqual([48, 46, 48]);
  });

  it("MINUTE buckets and a half-hour zone read raw rows; latency p50 / p95 are the receipts' nearest-rank percentiles; beyond 7 days latency is unavailable", async () => {
    const s = await scene(database);
    const admin = await token("ORG_ADMIN", s.orgId);
    const start = Date.UTC(2026, 6, 1, 10);
    const rows = fc.sample(rowArb(2 * HOUR), { seed: 22, numRuns: 300 });
    await write(database, s, start, rows, true);
    const all = held(s, start, rows);
    const minutes = Array.from({ length: 120 }, (_, i) => start + i * 60_000);
    const want = expected(s, all, { from: start, to: start + 2 * HOUR, starts: minutes, groupBy: ["MODEL"] });
    const query = `query($input: SpendAnalyticsInput!) { spendAnalytics(input: $input) { ${REPORT} latency { p50Ms p95Ms receipts }
                     series { latency { p50Ms p95Ms receipts } points { latency { p50Ms p95Ms receipts } } } } }`;
    const got = (await gqlOk(admin, query, { input: { from: new Date(start).toISOString(), to: new Date(start + 2 * HOUR).toISOString(), interval: "MINUTE", groupBy: ["MODEL"] } })).spendAnalytics;
    const { rawTotals, ...shape } = want;
    expect(got).toMatchObject({ source: "RAW", timeZone: "UTC", ...shape });
    expect(rawTotals.requests).toBeGreaterThan(100);
    const percentiles = (values: number[]) => {
      if (!values.length) return null;
      const sorted = [...values].sort((a, b) => a - b);
      return { p50Ms: sorted[Math.ceil(0.5 * sorted.length) - 1], p95Ms: sorted[Math.ceil(0.95 * sorted.length) - 1], receipts: sorted.length };
    };
    const latencies = (pick: (v: Stored) => boolean) => percentiles(all.filter((v) => v.latencyMs !== null && pick(v)).map((v) => v.latencyMs!));
    expect(got.latency).toEqual(latencies(() => true));
    for (const series of got.series as Array<{ group: { model: string | null }; latency: unknown; points: Array<{ bucketStart: string; latency: unknown }> }>) {
      expect(series.latency).toEqual(latencies((v) => v.model === series.group.model));
      for (const p of series.points) {
        const t = Date.parse(p.bucketStart);
        expect(p.latency).toEqual(latencies((v) => v.model === series.group.model && v.at >= t && v.at < t + 60_000));
      }
    }

    // Asia/Kolkata (UTC+5:30): local hours start at :30 UTC, which the hourly rollups cannot split.
    const kolkata = [start - HOUR / 2, start + HOUR / 2, start + (3 * HOUR) / 2];
    const wantK = expected(s, all, { from: start, to: start + 2 * HOUR, starts: kolkata, groupBy: ["BUCKET", "KEY"] });
    const gotK = await report(admin, { from: new Date(start).toISOString(), to: new Date(start + 2 * HOUR).toISOString(), interval: "HOUR", timeZone: "Asia/Kolkata", groupBy: ["BUCKET", "KEY"] });
    const { rawTotals: _k, ...shapeK } = wantK;
    expect(gotK).toMatchObject({ source: "RAW", ...shapeK });

    const long = await report(admin, { from: new Date(start - 8 * DAY).toISOString(), to: new Date(start + 2 * HOUR).toISOString(), interval: "DAY" });
    expect(long.latencyUnavailable).toMatch(/7 days/);
  });
});

describe("spendAnalytics: tenancy and bad input", () => {
  it("another organization's ids in a filter find nothing of theirs; a project viewer sees its project only, and no route object", async () => {
    const a = await scene(database);
    const b = await scene(database);
    const rows = fc.sample(rowArb(DAY), { seed: 23, numRuns: 80 });
    await write(database, a, FROM, rows, true);
    await write(database, b, FROM, rows, true);
    const admin = await token("ORG_ADMIN", a.orgId);
    const range = { from: new Date(FROM).toISOString(), to: new Date(FROM + DAY).toISOString(), interval: "HOUR" };
    const foreign = await report(admin, { ...range, groupBy: ["KEY"], filter: { keyIds: b.keys.map((k) => k.id), routeIds: [b.routes[0]!.id] } });
    expect(foreign.series).toEqual([]);
    expect(foreign.groupCount).toBe(0);
    expect(foreign.totals).toEqual(asGql(zero(), BUCKETS));
    const mine = await report(admin, { ...range, groupBy: ["KEY", "ROUTE", "CHANNEL", "RUN", "PROJECT"] });
    const text = JSON.stringify(mine);
    for (const id of [b.orgId, ...b.keys.map((k) => k.id), ...b.routes.map((r) => r.id), ...b.runs.map((r) => r.id)]) expect(text).not.toContain(id);
    expect(mine.groupCount).toBeGreaterThan(3);

    const projectId = a.keys[1]!.projectId;
    const viewer = await token("PROJECT_VIEWER", a.orgId, projectId);
    const own = await report(viewer, { ...range, groupBy: ["KEY", "ROUTE"], filter: { projectIds: [a.keys[0]!.projectId, projectId] } });
    const expectedOwn = expected(a, held(a, FROM, rows), { from: FROM, to: FROM + DAY, starts: [FROM], groupBy: ["KEY"], filter: { projectIds: [projectId] } });
    expect(own.totals).toEqual(expectedOwn.totals);
    for (const series of own.series as Array<{ group: { key: { id: string } | null; route: unknown } }>) {
      expect(series.group.key!.id).toBe(a.keys[1]!.id);
      expect(series.group.route).toBeNull();
    }
    expect(own.series.length).toBeGreaterThan(0);
    // Another project's key: nothing.
    const other = await report(viewer, { ...range, filter: { keyIds: [a.keys[0]!.id] } });
    expect(other.series).toEqual([]);
  });

  it.each([
    ["an unknown time zone", { timeZone: "Mars/Olympus" }, "timeZone"],
    ["an offset instead of a zone", { timeZone: "+08:00" }, "timeZone"],
    ["MINUTE over more than 2 days", { interval: "MINUTE", to: "2026-06-04T00:00:00Z" }, "from"],
    ["top 0", { top: 0 }, "top"],
    ["top above 100", { top: 101 }, "top"],
    ["to before from", { to: "2026-05-01T00:00:00Z" }, "to"],
    ["points × series above 10,000", { interval: "MINUTE", to: "2026-06-02T23:00:00Z", groupBy: ["KEY", "MODEL"] }, "groupBy"],
    ["a half-hour zone over more than 31 days", { timeZone: "Asia/Kolkata", interval: "DAY", to: "2026-08-01T00:00:00Z" }, "timeZone"],
  ])("%s is BAD_USER_INPUT naming the field", async (_name, change, field) => {
    const s = await scene(database);
    await write(database, s, Date.UTC(2026, 5, 1), fc.sample(rowArb(DAY), { seed: 24, numRuns: 60 }), true);
    const admin = await token("ORG_ADMIN", s.orgId);
    const r = await gql(admin, `query($input: SpendAnalyticsInput!) { spendAnalytics(input: $input) { groupCount } }`, {
      input: { from: "2026-06-01T00:00:00Z", to: "2026-06-02T00:00:00Z", interval: "HOUR", ...change },
    });
    expect(codes(r)).toEqual(["BAD_USER_INPUT"]);
    expect(r.errors![0]!.extensions!.field).toBe(field);
  });
});

describe("spendSeries (API.md's call shape)", () => {
  it("answers as before: UTC buckets, one dimension, ids as group strings, receipts and charged failed requests only (and takes WEEK and MINUTE)", async () => {
    const s = await scene(database);
    const admin = await token("ORG_ADMIN", s.orgId);
    const start = Date.UTC(2026, 7, 1);
    const rows = fc.sample(rowArb(2 * DAY), { seed: 25, numRuns: 150 });
    await write(database, s, start, rows, true);
    const all = held(s, start, rows);
    const truncs = {
      DAY: (t: number) => Math.floor(t / DAY) * DAY,
      // 2026-08-03 is a Monday: UTC weeks start there.
      WEEK: (t: number) => Date.UTC(2026, 7, 3) + Math.floor((t - Date.UTC(2026, 7, 3)) / (7 * DAY)) * 7 * DAY,
      MINUTE: (t: number) => Math.floor(t / 60_000) * 60_000,
    };
    const cases = [
      ["DAY", "KEY"],
      ["DAY", "MODEL"],
      ["DAY", "BUCKET"],
      ["DAY", "PROJECT"],
      ["DAY", "ROUTE"],
      ["WEEK", "KEY"],
      ["MINUTE", "MODEL"],
    ] as const;
    const picks = { KEY: (v: Stored) => v.keyId, MODEL: (v: Stored) => v.model, BUCKET: (v: Stored) => v.bucket, PROJECT: (v: Stored) => v.projectId, ROUTE: (v: Stored) => v.routeId };
    for (const [interval, groupBy] of cases) {
      const pick = picks[groupBy];
      const trunc = truncs[interval];
      const want = new Map<string, { bucketStart: string; group: string; bucket: string; spend: bigint; requests: number; promptTokens: number; completionTokens: number }>();
      for (const v of all.filter((x) => x.spends)) {
        const bucketStart = new Date(trunc(v.at)).toISOString();
        const group = pick(v) ?? "(none)";
        const k = `${bucketStart}|${group}|${v.bucket}`;
        const e = want.get(k) ?? { bucketStart, group, bucket: v.bucket!, spend: 0n, requests: 0, promptTokens: 0, completionTokens: 0 };
        e.spend += v.charge;
        e.requests++;
        e.promptTokens += v.prompt;
        e.completionTokens += v.completion;
        want.set(k, e);
      }
      const got = await gqlOk<{
        spendSeries: Array<{ bucketStart: string; group: string; bucket: string; spend: { amount: string; currency: string }; requests: number; promptTokens: number; completionTokens: number }>;
      }>(
        admin,
        `{ spendSeries(input: { from: "${new Date(start).toISOString()}", to: "${new Date(start + 2 * DAY).toISOString()}", interval: ${interval}, groupBy: ${groupBy} }) { bucketStart group bucket spend { amount currency } requests promptTokens completionTokens } }`,
      );
      const order = (x: { bucketStart: string; group: string; bucket: string }) => `${x.bucketStart}|${x.group}|${x.bucket}`;
      const sorted = <T extends { bucketStart: string; group: string; bucket: string }>(list: T[]) => [...list].sort((p, q) => (order(p) < order(q) ? -1 : 1));
      expect(sorted(got.spendSeries)).toEqual(sorted([...want.values()].map((e) => ({ ...e, spend: { amount: formatMoney(e.spend), currency: CURRENCY[e.bucket as Bucket] } }))));
      expect(got.spendSeries.length).toBeGreaterThan(2);
    }
  });
});
