// Issue 17, point 3: runs with a lifecycle. startRun takes a model and a label; a run ends COMPLETED
// (finishRun), EXHAUSTED (a request refused on its cap) or CANCELLED; its cap can be changed
// (audited; an exhausted run the new cap leaves room in is active again); totals, its ledger
// entries, a root runs connection and a run filter on the ledger. Through the real passthrough.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { type APIError } from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { codes, gql, gqlOk, startTestServer, token } from "./support/graphql.ts";
import { formatMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function until(check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const START = `mutation($input: StartRunInput!) { startRun(input: $input) { id status model label mode } }`;

/** A world with a route whose requests cost 110 µ each (10 + 10 tokens at 1 / 10 per million… × 1e6 / 1e6). */
async function runWorld() {
  const w = await f.world({ credit: "10" });
  const model = `rl-${w.org.id.slice(-6)}`;
  await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: `${model}-up`, price: ["1", "10"] }]);
  fake.set(`${model}-up`, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
  const admin = await token("ORG_ADMIN", w.org.id);
  const send = (runId: string, maxTokens = 10) =>
    new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000, defaultHeaders: { "x-run-id": runId } }).chat.completions
      .create({ model, messages: [{ role: "user", content: "step" }], max_tokens: maxTokens })
      .then(
        () => ({ ok: true as const }),
        (e: APIError) => ({ ok: false as const, status: e.status, code: e.code, message: e.message }),
      );
  return { ...w, model, admin, send };
}

describe("run lifecycle", () => {
  it("startRun takes a model and a label; totals, ledger entries and the runs list say what it did; finishRun completes it", async () => {
    const w = await runWorld();
    const started = (await gqlOk(w.admin, START, { input: { keyId: w.key.id, mode: "QUICK", model: w.model, label: "  nightly eval  " } })).startRun;
    expect(started).toMatchObject({ status: "ACTIVE", model: w.model, label: "nightly eval", mode: "QUICK" });
    expect(codes(await gql(w.admin, START, { input: { keyId: w.key.id, mode: "QUICK", model: "no-such-model" } }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(w.admin, START, { input: { keyId: w.key.id, mode: "QUICK", label: "x".repeat(201) } }))).toEqual(["BAD_USER_INPUT"]);

    for (let i = 0; i < 3; i++) expect((await w.send(started.id)).ok).toBe(true);
    const receipts = await database.prisma.receipt.findMany({ where: { runId: started.id } });
    expect(receipts).toHaveLength(3);
    const charged = receipts.reduce((s, r) => s + r.charge, 0n);
    const q = `query($id: ID!) { run(id: $id) { status durationMs totals { requests failures promptTokens completionTokens charges { bucket amount { amount currency } } firstRequestAt lastRequestAt } ledgerEntries(first: 10) { totalCount edges { node { amount { amount } } } } } }`;
    const run = (await gqlOk(w.admin, q, { id: started.id })).run;
    expect(run.totals).toEqual({
      requests: 3,
      failures: 0,
      promptTokens: receipts.reduce((s, r) => s + r.promptTokens, 0),
      completionTokens: receipts.reduce((s, r) => s + r.completionTokens, 0),
      charges: [{ bucket: "CREDIT", amount: { amount: formatMoney(charged), currency: "USD" } }],
      firstRequestAt: new Date(Math.min(...receipts.map((r) => r.createdAt.getTime()))).toISOString(),
      lastRequestAt: new Date(Math.max(...receipts.map((r) => r.createdAt.getTime()))).toISOString(),
    });
    expect(run.durationMs).toBeGreaterThanOrEqual(0);
    expect(run.ledgerEntries.totalCount).toBe(3);
    // Charges are negative ledger amounts; together they are the run's charge.
    expect(run.ledgerEntries.edges.reduce((s: bigint, e: { node: { amount: { amount: string } } }) => s - BigInt(e.node.amount.amount.replace(".", "")), 0n)).toBe(charged);
    const ledger = await gqlOk(w.admin, `query($r: ID) { ledgerEntries(runId: $r) { totalCount } }`, { r: started.id });
    expect(ledger.ledgerEntries.totalCount).toBe(3);
    // The exports take the run too: its receipts, and its charges in the ledger (the top-up is no run's).
    const csv = async (kind: string) => {
      const response = await fetch(`${server.url}/exports/${kind}.csv?runId=${started.id}`, { headers: { authorization: `Bearer ${w.admin}` } });
      expect(response.status).toBe(200);
      return (await response.text()).trim().split(/\r?\n/).slice(1);
    };
    const receiptRows = await csv("receipts");
    expect(receiptRows).toHaveLength(3);
    for (const r of receipts) expect(receiptRows.some((row) => row.includes(r.id))).toBe(true);
    expect(await csv("ledger")).toHaveLength(3);
    const listed = await gqlOk(w.admin, `query($k: ID) { runs(filter: { keyId: $k, status: ACTIVE }) { totalCount edges { node { id } } } }`, { k: w.key.id });
    expect(listed.runs).toEqual({ totalCount: 1, edges: [{ node: { id: started.id } }] });

    const finished = await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: started.id });
    expect(finished.finishRun.status).toBe("COMPLETED");
    expect((await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: started.id })).finishRun.status).toBe("COMPLETED");
    const refused = await w.send(started.id);
    expect(refused).toMatchObject({ ok: false, status: 402, code: "run_cancelled" });
    expect(refused.ok === false && refused.message).toContain("completed");
    expect(codes(await gql(w.admin, `mutation($id: ID!) { cancelRun(id: $id) { status } }`, { id: started.id }))).toEqual(["CONFLICT"]);
    const audits = await database.prisma.auditEntry.findMany({ where: { targetId: started.id, action: "finishRun" } });
    expect(audits).toHaveLength(1);
    expect((await gqlOk(w.admin, `{ runs(filter: { status: COMPLETED }) { totalCount } }`)).runs.totalCount).toBe(1);
    // Another organization sees none of it.
    const stranger = await f.world();
    const theirs = await token("ORG_ADMIN", stranger.org.id);
    expect((await gqlOk(theirs, `{ runs { totalCount } }`)).runs.totalCount).toBe(0);
    expect(codes(await gql(theirs, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: started.id }))).toEqual(["NOT_FOUND"]);
  });

  it("a request refused on the run's cap exhausts the run; setRunCap (audited) makes room and it is active again", async () => {
    const w = await runWorld();
    // Room for two requests of 110 µ (a third one's worst case does not fit).
    const started = (await gqlOk(w.admin, `mutation($k: ID!) { startRun(input: { keyId: $k, mode: QUICK, cap: "0.0003" }) { id } }`, { k: w.key.id })).startRun;
    const status = async () => (await database.prisma.run.findUniqueOrThrow({ where: { id: started.id } })).status;
    // A request whose worst case is above the whole cap (1,000 output tokens: 10,000 µ) could never
    // fit this run: refused on the cap, and the run goes on.
    expect(await w.send(started.id, 1_000)).toMatchObject({ ok: false, status: 402, code: "budget_exceeded" });
    await new Promise((r) => setTimeout(r, 300));
    expect(await status()).toBe("ACTIVE");
    const outcomes = [];
    for (let i = 0; i < 4; i++) outcomes.push(await w.send(started.id));
    const firstRefusal = outcomes.findIndex((o) => !o.ok);
    expect(firstRefusal).toBeGreaterThan(0);
    expect(outcomes[firstRefusal]).toMatchObject({ status: 402, code: "budget_exceeded" });
    await until(async () => (await status()) === "EXHAUSTED");
    const later = await w.send(started.id);
    expect(later).toMatchObject({ ok: false, status: 402, code: "run_cancelled" });
    expect(later.ok === false && later.message).toContain("exhausted");
    const failed = await database.prisma.failedRequest.findMany({ where: { runId: started.id } });
    expect(failed.some((r) => r.capScope === "RUN_TOTAL")).toBe(true);
    expect((await gqlOk(w.admin, `query($id: ID!) { run(id: $id) { totals { requests failures } } }`, { id: started.id })).run.totals).toEqual({
      requests: await database.prisma.receipt.count({ where: { runId: started.id } }),
      failures: failed.length,
    });

    const raised = await gqlOk(w.admin, `mutation($id: ID!) { setRunCap(input: { runId: $id, cap: "0.01" }) { status budgets { bucket cap { amount } } } }`, { id: started.id });
    expect(raised.setRunCap.status).toBe("ACTIVE");
    expect(raised.setRunCap.budgets.find((b: { bucket: string }) => b.bucket === "CREDIT").cap.amount).toBe("0.010000");
    expect((await w.send(started.id)).ok).toBe(true);
    const audit = await database.prisma.auditEntry.findFirstOrThrow({ where: { targetId: started.id, action: "setRunCap" } });
    expect(audit.before).toMatchObject({ status: "EXHAUSTED" });
    expect(audit.after).toMatchObject({ status: "ACTIVE" });
    expect(codes(await gql(w.admin, `mutation($id: ID!) { setRunCap(input: { runId: $id, cap: "-1" }) { status } }`, { id: started.id }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(await token("ORG_VIEWER", w.org.id), `mutation($id: ID!) { setRunCap(input: { runId: $id, cap: "1" }) { status } }`, { id: started.id }))).toEqual(["FORBIDDEN"]);
  });
});
