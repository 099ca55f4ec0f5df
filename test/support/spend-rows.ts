// Spend rows written straight into Receipt / FailedRequest (as the batch writer's statements do: one
// row per statement or many per statement), for the rollup and analytics suites: a scene of keys in
// two projects, routes with a CREDIT primary and a ROUTED backup channel, and runs of two modes.
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { db } from "../../src/db/index.ts";
import type { RunMode } from "../../src/generated/prisma/enums.ts";
import type { TestDatabase } from "./db.ts";
import * as f from "./fixtures.ts";

export interface Scene {
  orgId: string;
  viewer: Awaited<ReturnType<typeof f.world>>["viewer"];
  keys: Array<{ id: string; projectId: string; name: string }>;
  routes: Array<{ id: string; model: string; channels: Array<{ id: string; upstreamModel: string; snapshotId: string }> }>;
  runs: Array<{ id: string; mode: RunMode }>;
}

export async function scene(database: TestDatabase): Promise<Scene> {
  const w = await f.world({ routed: "100" });
  const second = await f.project(w.viewer, w.org.id);
  const k2 = (await f.apiKey(w.viewer, second.id)).apiKey;
  const k3 = (await f.apiKey(w.viewer, w.project.id)).apiKey;
  const routes: Scene["routes"] = [];
  for (const model of ["model-a", "model-b"]) {
    const r = await f.route(w.viewer, w.org.id, `${model}-${randomUUID().slice(0, 6)}`, [
      { name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: `${model}-up`, settlement: "OFFICIAL", price: ["1", "2"], priority: 0 },
      { name: "backup", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: `${model}-alt`, settlement: "ROUTED", price: ["1", "2"], priority: 1 },
    ]);
    const channels = [];
    for (const c of r.channels) {
      const snapshot = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: c.id } });
      channels.push({ id: c.id, upstreamModel: c.upstreamModel, snapshotId: snapshot.id });
    }
    routes.push({ id: r.route.id, model: r.route.model, channels });
  }
  const keys = [w.key, k2, k3].map((k) => ({ id: k.id, projectId: k.projectId, name: k.name }));
  const runs = [];
  for (const mode of ["QUICK", "DEEP"] as const) {
    const run = await db.run.create({ data: { organizationId: w.org.id, keyId: keys[0]!.id, projectId: keys[0]!.projectId, mode } });
    runs.push({ id: run.id, mode });
  }
  return { orgId: w.org.id, viewer: w.viewer, keys, routes, runs };
}

export interface Row {
  failed: boolean;
  key: number;
  route: number;
  channel: number;
  /** Index into the scene's runs, or none. */
  run: number | null;
  /** Failed requests may have no key or route (refused before routing). */
  anonymous: boolean;
  bucket: "CREDIT" | "ROUTED";
  /** A failed request that charged nothing may still name its channel's bucket. */
  uncharged: "bucket" | "none";
  charge: number;
  prompt: number;
  completion: number;
  cached: number;
  latencyMs: number;
  /** Milliseconds after the writer's base. */
  at: number;
}

export const rowArb = (spanMs: number): fc.Arbitrary<Row> =>
  fc.record({
    failed: fc.boolean(),
    key: fc.integer({ min: 0, max: 2 }),
    route: fc.integer({ min: 0, max: 1 }),
    channel: fc.integer({ min: 0, max: 1 }),
    run: fc.option(fc.integer({ min: 0, max: 1 }), { nil: null }),
    anonymous: fc.boolean(),
    bucket: fc.constantFrom("CREDIT" as const, "ROUTED" as const),
    uncharged: fc.constantFrom("bucket" as const, "none" as const),
    charge: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5_000_000 })),
    prompt: fc.integer({ min: 0, max: 100_000 }),
    completion: fc.integer({ min: 0, max: 100_000 }),
    cached: fc.integer({ min: 0, max: 1000 }),
    latencyMs: fc.integer({ min: 1, max: 20_000 }),
    at: fc.integer({ min: 0, max: spanMs - 1 }),
  });

/** What a row is, as the database holds it (for computing expectations in tests). */
export function stored(s: Scene, r: Row) {
  const k = s.keys[r.key]!;
  const rt = s.routes[r.route]!;
  const ch = rt.channels[r.channel]!;
  const anonymous = r.failed && r.anonymous;
  const charged = !r.failed || r.charge > 0;
  const bucket = r.failed ? (r.charge > 0 || (!anonymous && r.uncharged === "bucket") ? r.bucket : null) : r.bucket;
  return {
    failed: r.failed,
    keyId: anonymous ? null : k.id,
    projectId: anonymous ? null : k.projectId,
    routeId: anonymous ? null : rt.id,
    channelId: anonymous ? null : ch.id,
    runId: anonymous || r.run === null ? null : s.runs[r.run]!.id,
    runMode: anonymous || r.run === null ? null : s.runs[r.run]!.mode,
    model: anonymous ? null : rt.model,
    upstreamModel: r.failed ? null : ch.upstreamModel,
    bucket,
    charge: BigInt(r.charge),
    /** Counted as spend: receipts, and failed requests with a charge. */
    spends: charged,
    prompt: r.prompt,
    completion: r.completion,
    cached: r.failed ? 0 : Math.min(r.cached, r.prompt),
    latencyMs: r.failed ? null : r.latencyMs,
    snapshotId: ch.snapshotId,
  };
}

/** Writes rows as one multi-row INSERT per table (a batch) — or, with batch = false, one statement per row. */
export async function write(database: TestDatabase, s: Scene, base: number, rows: Row[], batch: boolean): Promise<void> {
  const chunks = batch ? [rows] : rows.map((r) => [r]);
  for (const chunk of chunks) {
    const receipts = chunk.filter((r) => !r.failed);
    const failed = chunk.filter((r) => r.failed);
    if (receipts.length) {
      const params: unknown[] = [];
      const values = receipts.map((r) => {
        const v = stored(s, r);
        params.push(
          randomUUID(),
          s.orgId,
          v.keyId,
          v.projectId,
          v.runId,
          v.routeId,
          v.channelId,
          v.model,
          v.upstreamModel,
          v.bucket,
          v.bucket === "CREDIT" ? "USD" : "CNY",
          r.prompt,
          r.completion,
          v.cached,
          v.snapshotId,
          String(r.charge),
          r.latencyMs,
          new Date(base + r.at).toISOString(),
        );
        const n = params.length - 18;
        const p = (i: number) => `$${n + i}`;
        return `(${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}, ${p(5)}, ${p(6)}, ${p(7)}, ${p(8)}, ${p(9)}, '/v1/chat/completions', 'PRIMARY', false, 1,
                 ${p(10)}::"BalanceBucket", ${p(11)}, ${p(12)}::int, ${p(13)}::int, ${p(14)}::int, ${p(15)}, ${p(16)}::bigint, ${p(17)}::int, 200,
                 ${p(18)}::timestamptz AT TIME ZONE 'UTC')`;
      });
      await database.sql.query(
        `INSERT INTO "Receipt" ("requestId", "organizationId", "keyId", "projectId", "runId", "routeId", "channelId", "requestedModel", "upstreamModel",
           endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "cachedPromptTokens", "priceSnapshotId", charge,
           "latencyMs", status, "createdAt") VALUES ${values.join(", ")}`,
        params,
      );
    }
    if (failed.length) {
      const params: unknown[] = [];
      const values = failed.map((r) => {
        const v = stored(s, r);
        params.push(
          randomUUID(),
          s.orgId,
          v.keyId,
          v.projectId,
          v.runId,
          v.routeId,
          v.channelId,
          v.model,
          v.bucket,
          v.bucket ? (v.bucket === "CREDIT" ? "USD" : "CNY") : null,
          r.prompt,
          r.completion,
          String(r.charge),
          new Date(base + r.at).toISOString(),
        );
        const n = params.length - 14;
        const p = (i: number) => `$${n + i}`;
        return `(${p(1)}, ${p(2)}, ${p(3)}, ${p(4)}, ${p(5)}, ${p(6)}, ${p(7)}, ${p(8)}, '/v1/chat/completions', 'UPSTREAM_ERROR', 'boom', 502,
                 ${p(9)}::"BalanceBucket", ${p(10)}, ${p(11)}::int, ${p(12)}::int, ${p(13)}::bigint, ${p(14)}::timestamptz AT TIME ZONE 'UTC')`;
      });
      await database.sql.query(
        `INSERT INTO "FailedRequest" ("requestId", "organizationId", "keyId", "projectId", "runId", "routeId", "channelId", "requestedModel", endpoint, cause, message,
           "httpStatus", bucket, currency, "promptTokens", "completionTokens", charge, "createdAt") VALUES ${values.join(", ")}`,
        params,
      );
    }
  }
}
