// Attempt paths are stored with their rows, not held in memory: written through the real gateway,
// then the gateway and the database client are closed and the database opened again from its
// storage (PGlite: its data directory on disk, migrations checked at start-up; PostgreSQL: a new
// pool on the same database), and GraphQL reads back the same paths.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import type { APIError } from "openai";
import { afterAll, expect, inject, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream } from "./support/fake-upstream.ts";
import { startGateway, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { gqlOk, token } from "./support/graphql.ts";
import { openDatabase, useDatabase, type Database } from "../src/db/index.ts";
import { PGLITE_OPTIONS } from "../src/db/pglite.ts";
import { formatMoney, parseMoney, tokenCharge } from "../src/money/amounts.ts";

let tmp: string | null = null;
let server: TestDatabase | null = null;
const open: Database[] = [];

/** The first "process's" database, and how the next one opens it again from storage. */
async function storedDatabase(): Promise<{ first: Database; reopen: () => Promise<Database> }> {
  if (testDatabaseKind() === "postgres") {
    server = await createTestDatabase();
    const url = server.url!;
    return { first: await openDatabase({ databaseUrl: url, migrate: false }), reopen: () => openDatabase({ databaseUrl: url }) };
  }
  tmp = await mkdtemp(path.join(os.tmpdir(), "tokengate-attempts-"));
  // The run's migrated template, unpacked into a data directory on disk.
  const pglite = await PGlite.create(path.join(tmp, "pglite"), { loadDataDir: new Blob([await readFile(inject("pgliteTemplatePath"))]), ...PGLITE_OPTIONS });
  const dir = tmp;
  return { first: await openDatabase({ pglite, migrate: false }), reopen: () => openDatabase({ dataDir: dir }) };
}

afterAll(async () => {
  for (const d of open) await d.close().catch(() => undefined);
  await server?.dispose();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const PATHS = `query($k: ID) {
  receipts(filter: { keyId: $k }) { edges { node { requestId attempts charge { amount } attemptPath { position channel { id name } role upstreamStatus cause latencyMs charged } } } }
  failedRequests(filter: { keyId: $k }) { edges { node { requestId attempts promptTokens charge { amount } attemptPath { position channel { id name } role upstreamStatus cause latencyMs charged } } } }
}`;

it("paths written by the gateway read back the same after a restart", async () => {
  const { first, reopen } = await storedDatabase();
  open.push(first);
  useDatabase(first);
  const fake = await startFakeUpstream();
  const gw = await startGateway();
  const w = await world({ key: { failedChargePolicy: "PROMPT_TOKENS" } });
  const model = uid("gpt");
  const up = { primary: uid("primary"), backup: uid("backup") };
  const r = await route(w.viewer, w.org.id, model, [
    { name: "primary", baseUrl: fake.url, upstreamModel: up.primary, price: ["3", "12"] },
    { name: "backup", baseUrl: fake.url, upstreamModel: up.backup, price: ["5", "20"] },
  ]);
  const id = Object.fromEntries(r.channels.map((c) => [c.name, c.id]));
  const admin = await token("ORG_ADMIN", w.org.id);
  const openai = gw.client(w.secret);

  fake.set(up.primary, { type: "status", status: 503 });
  const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: "fall back" }], max_tokens: 20 }).withResponse();
  fake.set(up.backup, { type: "status", status: 500 });
  const failed = await openai.chat.completions.create({ model, messages: [{ role: "user", content: "both fail" }], max_tokens: 20 }).then(
    () => null,
    (e: unknown) => e as APIError,
  );
  expect(failed?.status).toBe(502);
  let before = await gqlOk(admin, PATHS, { k: w.key.id });
  for (let i = 0; i < 100 && before.failedRequests.edges.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    before = await gqlOk(admin, PATHS, { k: w.key.id });
  }
  await gw.close();
  await fake.close();
  await first.close();

  const second = await reopen();
  open.push(second);
  useDatabase(second);
  const after = await gqlOk(admin, PATHS, { k: w.key.id });
  expect(after).toEqual(before);

  const receipt = after.receipts.edges.map((e: { node: unknown }) => e.node);
  expect(receipt).toHaveLength(1);
  expect(receipt[0]).toMatchObject({
    requestId: response.headers.get("x-request-id"),
    attempts: 2,
    attemptPath: [
      { position: 1, channel: { id: id.primary, name: "primary" }, role: "PRIMARY", upstreamStatus: 503, cause: "UPSTREAM_5XX", charged: false },
      { position: 2, channel: { id: id.backup, name: "backup" }, role: "BACKUP", upstreamStatus: 200, cause: "ANSWERED", charged: true },
    ],
  });
  const failure = after.failedRequests.edges.map((e: { node: unknown }) => e.node);
  expect(failure).toHaveLength(1);
  expect(failure[0]).toMatchObject({
    requestId: failed!.requestID,
    attempts: 2,
    attemptPath: [
      { position: 1, channel: { id: id.primary, name: "primary" }, role: "PRIMARY", upstreamStatus: 503, cause: "UPSTREAM_5XX", charged: false },
      { position: 2, channel: { id: id.backup, name: "backup" }, role: "BACKUP", upstreamStatus: 500, cause: "UPSTREAM_5XX", charged: true },
    ],
  });
  // PROMPT_TOKENS: the last attempt's prompt at the backup's input price, to the micro-unit.
  const charged = tokenCharge(failure[0].promptTokens, parseMoney("5", "in"));
  expect(charged).toBeGreaterThan(0n);
  expect(failure[0].charge.amount).toBe(formatMoney(charged));
});
