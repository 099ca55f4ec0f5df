// CSV exports over a real HTTP server: RFC 4180 quoting, money as decimal strings with a currency
// column, GraphQL's tenancy, every filter, clear errors, and a 100k-row export in flat memory.
import { randomUUID } from "node:crypto";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { parseCsv } from "./support/csv.ts";
import { startTestServer, token } from "./support/graphql.ts";
import { walletBucket } from "../src/money/ledger.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
const t: Record<string, string> = {};

interface Csv {
  status: number;
  headers: Headers;
  rows: Array<Record<string, string>>;
  json?: { error: { message: string; type: string; code: string; param: string | null } };
}

async function exportCsv(path: string, authToken: string | null, params: Record<string, string> = {}): Promise<Csv> {
  const url = new URL(`${server.url}/exports/${path}`);
  for (const [k, v] of Object.entries(params)) url.searchParams.append(k, v);
  const response = await fetch(url, { headers: authToken ? { authorization: `Bearer ${authToken}` } : {} });
  const body = await response.text();
  if (!response.headers.get("content-type")?.startsWith("text/csv")) {
    return { status: response.status, headers: response.headers, rows: [], json: JSON.parse(body) as Csv["json"] };
  }
  const [header, ...records] = parseCsv(body);
  return { status: response.status, headers: response.headers, rows: records.map((r) => Object.fromEntries(header!.map((h, i) => [h, r[i]!]))) };
}

const NASTY = 'gpt, "quoted"\nsecond line\r\nthird';

type World = Awaited<ReturnType<typeof f.world>> & {
  key2: { id: string; projectId: string };
  routes: Array<{ id: string; channelId: string; snapshotId: string }>;
};
let a: World;
let b: World;

async function setUp(): Promise<World> {
  const w = await f.world({ credit: "50", routed: "70" });
  const project2 = await f.project(w.viewer, w.org.id);
  const key2 = (await f.apiKey(w.viewer, project2.id)).apiKey;
  const routes: World["routes"] = [];
  for (const model of ["m-one", "m-two"]) {
    const r = await f.route(w.viewer, w.org.id, `${model}-${randomUUID().slice(0, 6)}`, [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: model, price: ["1", "2"] }]);
    const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    routes.push({ id: r.route.id, channelId: r.channels[0]!.id, snapshotId: snapshot.id });
  }
  return { ...w, key2: { id: key2.id, projectId: key2.projectId }, routes };
}

async function receipt(w: World, opts: { key?: 1 | 2; route?: 0 | 1; model: string; charge: bigint; bucket?: "CREDIT" | "ROUTED"; at: string }) {
  const key = opts.key === 2 ? w.key2 : { id: w.key.id, projectId: w.key.projectId };
  const route = w.routes[opts.route ?? 0]!;
  const bucket = opts.bucket ?? "CREDIT";
  const [row] = await database.sql.query<{ id: string; requestId: string }>(
    `INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
       endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge,
       "latencyMs", status, "createdAt")
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'up', '/v1/chat/completions', 'PRIMARY', false, 1, $8::"BalanceBucket", $9, 11, 22, $10, $11::bigint,
       5, 200, $12::timestamptz AT TIME ZONE 'UTC') RETURNING id, "requestId"`,
    [randomUUID(), w.org.id, key.id, key.projectId, route.id, route.channelId, opts.model, bucket, bucket === "CREDIT" ? "USD" : "CNY", route.snapshotId, opts.charge.toString(), opts.at],
  );
  // Its CHARGE entry (the ledger accepts inserts; balanceAfter is not what these tests check).
  const b = await walletBucket(w.org.id, bucket);
  await database.sql.query(
    `INSERT INTO "LedgerEntry" ("organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey", memo, "receiptId", "createdAt")
     VALUES ($1, $2, 'CHARGE', $3::bigint, 0, $4, $5, $6, $7::timestamptz AT TIME ZONE 'UTC')`,
    [w.org.id, b.id, (-opts.charge).toString(), `test:${randomUUID()}`, NASTY, row!.id, opts.at],
  );
  return row!;
}

async function failed(w: World, opts: { organization: boolean; message: string; charge: bigint; at: string }) {
  await database.sql.query(
    `INSERT INTO "FailedRequest" ("requestId", "organizationId", "keyId", "projectId", "routeId", "requestedModel", endpoint, cause, message,
       "httpStatus", bucket, currency, charge, "createdAt")
     VALUES ($1, $2, $3, $4, $5, 'm-one', '/v1/chat/completions', 'UPSTREAM_ERROR', $6, 502, $7::"BalanceBucket", $8, $9::bigint,
       $10::timestamptz AT TIME ZONE 'UTC')`,
    [
      randomUUID(),
      opts.organization ? w.org.id : null,
      opts.organization ? w.key.id : null,
      opts.organization ? w.key.projectId : null,
      opts.organization ? w.routes[0]!.id : null,
      opts.message,
      opts.charge > 0n ? "CREDIT" : null,
      opts.charge > 0n ? "USD" : null,
      opts.charge.toString(),
      opts.at,
    ],
  );
}

beforeAll(async () => {
  database = await createTestDatabase();
  a = await setUp();
  b = await setUp();
  await receipt(a, { model: NASTY, charge: 1_234_567n, at: "2026-03-01T10:00:00Z" });
  await receipt(a, { key: 2, route: 1, model: "m-two", charge: 5n, bucket: "ROUTED", at: "2026-03-02T10:00:00Z" });
  await receipt(a, { model: "m-one", charge: 0n, at: "2026-03-03T10:00:00Z" });
  await receipt(b, { model: "m-one", charge: 42n, at: "2026-03-01T11:00:00Z" });
  await failed(a, { organization: true, message: `upstream said: ${NASTY}`, charge: 300n, at: "2026-03-01T12:00:00Z" });
  await failed(b, { organization: true, message: "b failed", charge: 0n, at: "2026-03-01T12:00:00Z" });
  await failed(a, { organization: false, message: "no such key", charge: 0n, at: "2026-03-01T13:00:00Z" });
  t.platform = await token("PLATFORM_ADMIN");
  t.adminA = await token("ORG_ADMIN", a.org.id);
  t.viewerB = await token("ORG_VIEWER", b.org.id);
  t.projectViewerA2 = await token("PROJECT_VIEWER", a.org.id, a.key2.projectId);
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
  await database?.dispose();
});

describe("CSV exports", () => {
  it("write RFC 4180 CSV: a header row, quoted commas, quotes and line breaks, money as decimals with a currency column", async () => {
    const csv = await exportCsv("receipts.csv", t.adminA!);
    expect(csv.status).toBe(200);
    expect(csv.headers.get("content-type")).toBe("text/csv; charset=utf-8");
    expect(csv.headers.get("content-disposition")).toMatch(/^attachment; filename="tokengate-receipts-\d{8}T\d{6}Z\.csv"$/);
    expect(csv.rows.map((r) => [r.requestedModel, r.charge, r.currency, r.bucket, r.createdAt])).toEqual([
      [NASTY, "1.234567", "USD", "CREDIT", "2026-03-01T10:00:00.000Z"],
      ["m-two", "0.000005", "CNY", "ROUTED", "2026-03-02T10:00:00.000Z"],
      ["m-one", "0.000000", "USD", "CREDIT", "2026-03-03T10:00:00.000Z"],
    ]);
    expect(csv.rows[0]).toMatchObject({ keyId: a.key.id, projectId: a.key.projectId, organizationId: a.org.id, promptTokens: "11", fallback: "false" });

    const ledger = await exportCsv("ledger.csv", t.adminA!, { to: "2026-06-01" });
    expect(ledger.rows.map((r) => [r.kind, r.amount, r.currency, r.memo, r.model])).toEqual([
      ["CHARGE", "-1.234567", "USD", NASTY, NASTY],
      ["CHARGE", "-0.000005", "CNY", NASTY, "m-two"],
      ["CHARGE", "0.000000", "USD", NASTY, "m-one"],
    ]);
    const failures = await exportCsv("failed-requests.csv", t.adminA!);
    expect(failures.rows.map((r) => [r.message, r.charge, r.currency, r.cause, r.httpStatus])).toEqual([[`upstream said: ${NASTY}`, "0.000300", "USD", "UPSTREAM_ERROR", "502"]]);
  });

  it("apply GraphQL's tenancy: an organization sees its own rows, a project viewer its project's, others 401 / 403 / 404", async () => {
    const all = await exportCsv("receipts.csv", t.platform!);
    expect(all.rows.filter((r) => [a.org.id, b.org.id].includes(r.organizationId!))).toHaveLength(4);
    expect((await exportCsv("receipts.csv", t.viewerB!)).rows.map((r) => r.charge)).toEqual(["0.000042"]);
    expect((await exportCsv("ledger.csv", t.viewerB!)).rows.map((r) => [r.kind, r.amount, r.currency])).toEqual([
      ["TOPUP", "50.000000", "USD"],
      ["TOPUP", "70.000000", "CNY"],
      ["CHARGE", "-0.000042", "USD"],
    ]);
    expect((await exportCsv("failed-requests.csv", t.viewerB!)).rows.map((r) => r.message)).toEqual(["b failed"]);
    const projectOnly = await exportCsv("receipts.csv", t.projectViewerA2!);
    expect(projectOnly.rows.map((r) => r.projectId)).toEqual([a.key2.projectId]);
    // Failures refused before any key was known belong to no organization: platform tokens only.
    expect((await exportCsv("failed-requests.csv", t.platform!)).rows.map((r) => r.message)).toContain("no such key");
    expect((await exportCsv("failed-requests.csv", t.adminA!)).rows.map((r) => r.message)).not.toContain("no such key");

    const forbidden = await exportCsv("ledger.csv", t.projectViewerA2!);
    expect(forbidden.status).toBe(403);
    expect(forbidden.json?.error.code).toBe("FORBIDDEN");
    // Another tenant's ids answer like unknown ones, as in GraphQL.
    const unknown = [await exportCsv("receipts.csv", t.projectViewerA2!, { projectId: a.key.projectId }), await exportCsv("receipts.csv", t.viewerB!, { organizationId: a.org.id })];
    for (const r of unknown) {
      expect(r.status).toBe(404);
      expect(r.json?.error.code).toBe("NOT_FOUND");
    }
    for (const bad of [null, "tgadm_not-a-real-token"]) {
      const r = await exportCsv("receipts.csv", bad);
      expect(r.status).toBe(401);
      expect(r.json?.error).toMatchObject({ code: "UNAUTHENTICATED", type: "authentication_error" });
    }
    // A filter naming another organization's key finds nothing rather than leaking.
    expect((await exportCsv("receipts.csv", t.viewerB!, { keyId: a.key.id })).rows).toEqual([]);
  });

  it("filter by from, to, keyId, projectId, routeId and model", async () => {
    const charges = async (path: string, params: Record<string, string>, column = "charge") => (await exportCsv(path, t.adminA!, params)).rows.map((r) => r[column]);
    expect(await charges("receipts.csv", { from: "2026-03-02T00:00:00Z" })).toEqual(["0.000005", "0.000000"]);
    expect(await charges("receipts.csv", { to: "2026-03-02T10:00:00Z" })).toEqual(["1.234567"]);
    expect(await charges("receipts.csv", { from: "2026-03-01T10:00:00.001Z", to: "2026-03-03" })).toEqual(["0.000005"]);
    expect(await charges("receipts.csv", { keyId: a.key2.id })).toEqual(["0.000005"]);
    expect(await charges("receipts.csv", { projectId: a.key.projectId })).toEqual(["1.234567", "0.000000"]);
    expect(await charges("receipts.csv", { routeId: a.routes[1]!.id })).toEqual(["0.000005"]);
    expect(await charges("receipts.csv", { model: NASTY })).toEqual(["1.234567"]);
    expect(await charges("receipts.csv", { model: "m-one", keyId: a.key.id, routeId: a.routes[0]!.id })).toEqual(["0.000000"]);
    // A date-time without an offset is UTC.
    expect(await charges("receipts.csv", { from: "2026-03-02T10:00:00" })).toEqual(["0.000005", "0.000000"]);

    expect(await charges("ledger.csv", { keyId: a.key2.id }, "amount")).toEqual(["-0.000005"]);
    expect(await charges("ledger.csv", { model: NASTY }, "amount")).toEqual(["-1.234567"]);
    expect(await charges("ledger.csv", { routeId: a.routes[0]!.id, to: "2026-03-02T00:00:00Z" }, "amount")).toEqual(["-1.234567"]);
    expect(await charges("ledger.csv", { projectId: a.key2.projectId }, "amount")).toEqual(["-0.000005"]);
    // Top-ups belong to no request, so they are in the unfiltered ledger only.
    expect(await charges("ledger.csv", {}, "kind")).toEqual(["TOPUP", "TOPUP", "CHARGE", "CHARGE", "CHARGE"]);

    expect(await charges("failed-requests.csv", { keyId: a.key.id })).toEqual(["0.000300"]);
    expect(await charges("failed-requests.csv", { keyId: a.key2.id })).toEqual([]);
    expect(await charges("failed-requests.csv", { model: "m-one", routeId: a.routes[0]!.id, projectId: a.key.projectId })).toEqual(["0.000300"]);
    expect(await charges("failed-requests.csv", { from: "2026-03-01T12:00:00.001Z" })).toEqual([]);
  });

  it("export the audit trail: an organization's own entries with their before / after JSON, refused to project viewers", async () => {
    const own = await exportCsv("audit.csv", t.adminA!);
    expect(own.status).toBe(200);
    expect(own.rows.length).toBeGreaterThan(0);
    expect(new Set(own.rows.map((r) => r.organizationId))).toEqual(new Set([a.org.id]));
    // Every row is one GraphQL shows, with the same action, target and JSON.
    const stored = await database.prisma.auditEntry.findMany({ where: { organizationId: a.org.id }, orderBy: [{ createdAt: "asc" }, { id: "asc" }] });
    expect(own.rows.map((r) => [r.id, r.action, r.targetType, r.targetId])).toEqual(stored.map((e) => [e.id, e.action, e.targetType, e.targetId]));
    const created = own.rows.find((r) => r.action === "createProject" && r.targetId === a.key2.projectId);
    expect(created).toBeDefined();
    expect(JSON.parse(created!.after!)).toMatchObject({ id: a.key2.projectId });
    expect(created!.before).toBe("");
    // A window: nothing in 2020.
    expect((await exportCsv("audit.csv", t.adminA!, { to: "2020-01-01" })).rows).toEqual([]);
    // The other organization's entries are not in it; platform tokens see both.
    const all = await exportCsv("audit.csv", t.platform!);
    expect(all.rows.some((r) => r.organizationId === b.org.id)).toBe(true);
    expect(all.rows.some((r) => r.organizationId === a.org.id)).toBe(true);
    const viewer = await exportCsv("audit.csv", t.projectViewerA2!);
    expect(viewer.status).toBe(403);
    expect(viewer.json?.error.code).toBe("FORBIDDEN");
    const notAFilter = await exportCsv("audit.csv", t.adminA!, { keyId: a.key.id });
    expect(notAFilter.status).toBe(400);
    expect(notAFilter.json?.error).toMatchObject({ code: "BAD_USER_INPUT", param: "keyId" });
  });

  it("refuse bad parameters with 400 and the parameter's name, and unknown paths with 404", async () => {
    const cases: Array<[Record<string, string>, string]> = [
      [{ from: "yesterday" }, "from"],
      [{ to: "2026-13-45" }, "to"],
      [{ from: "2026-03-02", to: "2026-03-01" }, "to"],
      [{ colour: "blue" }, "colour"],
      [{ keyId: "" }, "keyId"],
    ];
    for (const [params, param] of cases) {
      const r = await exportCsv("receipts.csv", t.adminA!, params);
      expect(r.status, JSON.stringify(params)).toBe(400);
      expect(r.json?.error).toMatchObject({ code: "BAD_USER_INPUT", param });
    }
    const twice = await fetch(`${server.url}/exports/receipts.csv?model=a&model=b`, { headers: { authorization: `Bearer ${t.adminA}` } });
    expect(twice.status).toBe(400);
    const missing = await fetch(`${server.url}/exports/keys.csv`, { headers: { authorization: `Bearer ${t.adminA}` } });
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe("NOT_FOUND");
  });

  it("streams 100,000 rows in flat memory, every row exactly once", async () => {
    const org = await f.organization();
    const viewer = await f.platformViewer();
    const proj = await f.project(viewer, org.id);
    const key = (await f.apiKey(viewer, proj.id)).apiKey;
    const r = await f.route(viewer, org.id, `bulk-${randomUUID().slice(0, 6)}`, [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "bulk", price: ["1", "2"] }]);
    const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[0]!.id } });
    const ROWS = 100_000;
    // Many rows share a millisecond, so the export's order must break ties by id to page correctly.
    // Foreign-key checks are skipped for this bulk set-up (replica role): the ids are known good.
    const q = (v: string) => `'${v.replace(/'/g, "''")}'`;
    await database.sql.exec(`SET session_replication_role = replica;
      INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "routeId", "channelId", "requestedModel", "upstreamModel",
         endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId", charge,
         "latencyMs", status, "createdAt")
       SELECT 'bulk-' || i, ${q(org.id)}, ${q(key.id)}, ${q(proj.id)}, ${q(r.route.id)}, ${q(r.channels[0]!.id)}, 'bulk', 'bulk',
              '/v1/chat/completions', 'PRIMARY', false, 1, 'CREDIT', 'USD', 10, 20, ${q(snapshot.id)}, i,
              5, 200, timestamp '2026-04-01' + (i / 7) * interval '1 millisecond'
         FROM generate_series(1, ${ROWS}) i;
      SET session_replication_role = DEFAULT;`);
    const adminToken = await token("ORG_ADMIN", org.id);
    global.gc?.();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    // A fresh connection (agent: false): a pooled one may have been closed by the server while idle.
    const response = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get(`${server.url}/exports/receipts.csv`, { agent: false, headers: { authorization: `Bearer ${adminToken}` } }, resolve).on("error", reject),
    );
    expect(response.statusCode).toBe(200);
    let lines = 0;
    let charges = 0n;
    let rest = "";
    const decoder = new TextDecoder();
    const seen = new Set<number>();
    let chargeColumn = -1;
    for await (const chunk of response) {
      const text = rest + decoder.decode(chunk as Buffer, { stream: true });
      const parts = text.split("\r\n");
      rest = parts.pop()!;
      for (const line of parts) {
        lines++;
        if (lines === 1) {
          chargeColumn = line.split(",").indexOf("charge");
          continue;
        }
        const fields = line.split(",");
        seen.add(Number(fields[2]!.slice("bulk-".length)));
        charges += BigInt(fields[chargeColumn]!.replace(".", ""));
      }
    }
    clearInterval(sampler);
    expect(rest).toBe("");
    expect(lines).toBe(ROWS + 1);
    expect(seen.size).toBe(ROWS);
    // Σ i micros for i = 1..ROWS.
    expect(charges).toBe((BigInt(ROWS) * BigInt(ROWS + 1)) / 2n);
    const growthMb = (peak - baseline) / 1024 / 1024;
    console.log(`[exports] ${ROWS} rows on ${database.kind}: RSS growth ${growthMb.toFixed(1)} MB`);
    expect(growthMb).toBeLessThan(50);

    // A client that goes away mid-export stops the query and frees its connection.
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${server.url}/exports/receipts.csv`, { agent: false, headers: { authorization: `Bearer ${adminToken}` } }, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", (e: NodeJS.ErrnoException) => (e.code === "ECONNRESET" ? resolve() : reject(e)));
    });
    if (database.kind === "postgres") {
      await expect
        .poll(
          async () =>
            (
              await database.sql.query<{ n: number }>(
                `SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle' AND query LIKE 'SELECT to_char%'`,
              )
            )[0]!.n,
          { timeout: 10_000, interval: 100 },
        )
        .toBe(0);
    }
    const after = await exportCsv("receipts.csv", t.viewerB!);
    expect(after.rows).toHaveLength(1);
  }, 600_000);
});
