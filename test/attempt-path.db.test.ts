// The path of every request (issue 17, point 5): through the real gateway (openai SDK, a fake
// upstream that is a real HTTP server), each receipt and failed request lists its attempts in order
// — channel, role, upstream status, cause, latency, charged — read back through GraphQL, the CSV
// exports and receiptCreated (from the event, no read per subscriber).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APIError } from "openai";
import OpenAI from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { gqlOk, token, wsClient } from "./support/graphql.ts";
import { freePort } from "./support/net.ts";
import { loadConfig } from "../src/config.ts";
import { startServer, type RunningServer } from "../src/server.ts";
import { servicesWith } from "../src/installed.ts";
import type { FailedChargePolicy } from "../src/generated/prisma/enums.ts";
import { formatMoney, parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";

const FIRST_BYTE_MS = 600;
const IDLE_MS = 600;
const MAX_RESPONSE_BYTES = 64 * 1024;

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
/** Prisma's statements (GraphQL reads), for the batching and live checks. */
let statements: string[] = [];

beforeAll(async () => {
  database = await createTestDatabase({ onQuery: (sql) => statements.push(sql) });
  fake = await startFakeUpstream();
  server = await startServer(
    servicesWith({
      ...loadConfig({
        LOG_LEVEL: "silent",
        UPSTREAM_CONNECT_TIMEOUT_MS: "2000",
        UPSTREAM_FIRST_BYTE_TIMEOUT_MS: String(FIRST_BYTE_MS),
        UPSTREAM_IDLE_TIMEOUT_MS: String(IDLE_MS),
        UPSTREAM_TOTAL_TIMEOUT_MS: "20000",
        UPSTREAM_MAX_RESPONSE_BYTES: String(MAX_RESPONSE_BYTES),
      }),
      port: 0,
      host: "127.0.0.1",
    }),
    { quiet: true },
  );
});
afterAll(async () => {
  await server?.close();
  await fake?.close();
  await database?.dispose();
});

const price = (input: string, output: string) => ({ inputPerMillion: parseMoney(input, "in"), outputPerMillion: parseMoney(output, "out") });
const client = (secret: string) => new OpenAI({ apiKey: secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000 });

/** A world with a route of the given channels (each its own upstream model on the fake), and an org admin token. */
async function setup(channels: Array<{ name: string; price: [string, string]; baseUrl?: string }>, key: { failedChargePolicy?: FailedChargePolicy; retryCeiling?: number } = {}) {
  const w = await world({ key });
  const model = uid("gpt");
  const upstream = Object.fromEntries(channels.map((c) => [c.name, uid(c.name)]));
  const r = await route(
    w.viewer,
    w.org.id,
    model,
    channels.map((c) => ({ name: c.name, baseUrl: c.baseUrl ?? fake.url, upstreamModel: upstream[c.name]!, price: c.price })),
  );
  const id = Object.fromEntries(r.channels.map((c) => [c.name, c.id]));
  return { ...w, model, upstream, id, route: r.route, openai: client(w.secret), admin: await token("ORG_ADMIN", w.org.id) };
}

const PATH = `attemptPath { position channelId channel { id name } role upstreamStatus cause latencyMs charged }`;
const RECEIPT = `query($id: String!) { receipts(filter: { requestId: $id }) { edges { node { id attempts fallback channelRole status latencyMs charge { amount currency } ledgerEntry { amount { amount } } ${PATH} } } } }`;
const FAILED = `query($id: String!) { failedRequests(filter: { requestId: $id }) { edges { node { id cause httpStatus upstreamStatus attempts promptTokens charge { amount currency } ledgerEntry { amount { amount } } ${PATH} } } } }`;

interface Step {
  position: number;
  channelId: string;
  channel: { id: string; name: string } | null;
  role: string;
  upstreamStatus: number | null;
  cause: string;
  latencyMs: number;
  charged: boolean;
}

async function receiptOf(admin: string, requestId: string) {
  const data = await gqlOk(admin, RECEIPT, { id: requestId });
  expect(data.receipts.edges).toHaveLength(1);
  return data.receipts.edges[0].node as {
    attempts: number;
    fallback: boolean;
    channelRole: string;
    latencyMs: number;
    charge: { amount: string; currency: string };
    ledgerEntry: { amount: { amount: string } } | null;
    attemptPath: Step[];
  };
}

async function failureOf(admin: string, requestId: string) {
  for (let i = 0; i < 200; i++) {
    const data = await gqlOk(admin, FAILED, { id: requestId });
    if (data.failedRequests.edges.length === 1) {
      return data.failedRequests.edges[0].node as {
        cause: string;
        httpStatus: number;
        upstreamStatus: number | null;
        attempts: number;
        promptTokens: number;
        charge: { amount: string };
        ledgerEntry: { amount: { amount: string } } | null;
        attemptPath: Step[];
      };
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no failed request ${requestId}`);
}

async function caught(promise: Promise<unknown>): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

/** The step as GraphQL shows it, latency aside (checked apart). */
const step = (position: number, channelId: string, name: string, role: string, upstreamStatus: number | null, cause: string, charged: boolean) => ({
  position,
  channelId,
  channel: { id: channelId, name },
  role,
  upstreamStatus,
  cause,
  charged,
});
const withoutLatency = (path: Step[]) => path.map(({ latencyMs: _latency, ...rest }) => rest);

describe("receipts list their attempts", () => {
  it("primary 503, backup 200: two steps with statuses, causes, roles; only the answered one is charged, to the micro-unit", async () => {
    const s = await setup([
      { name: "primary", price: ["3", "12"] },
      { name: "backup", price: ["5", "20"] },
    ]);
    fake.set(s.upstream.primary!, { type: "status", status: 503 });
    fake.set(s.upstream.backup!, { type: "ok", delayMs: 400 });
    const { data, response } = await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "fall back" }], max_tokens: 40 }).withResponse();
    const requestId = response.headers.get("x-request-id")!;
    const expected = requestCharge(price("5", "20"), data.usage!.prompt_tokens, data.usage!.completion_tokens);
    expect(expected).toBeGreaterThan(0n);

    const r = await receiptOf(s.admin, requestId);
    expect(r).toMatchObject({ attempts: 2, fallback: true, channelRole: "BACKUP", charge: { amount: formatMoney(expected), currency: "USD" } });
    expect(r.ledgerEntry?.amount.amount).toBe(formatMoney(-expected));
    expect(withoutLatency(r.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", 503, "UPSTREAM_5XX", false), step(2, s.id.backup!, "backup", "BACKUP", 200, "ANSWERED", true)]);
    // Each attempt's own time: the backup's 400 ms delay is in its step; the two steps do not overlap
    // (their sum is within the request's time, so the primary's holds none of the backup's).
    const [first, second] = r.attemptPath;
    expect(second!.latencyMs).toBeGreaterThanOrEqual(390);
    // (each is rounded to a whole millisecond on its own: 1 ms each of slack)
    expect(first!.latencyMs + second!.latencyMs).toBeLessThanOrEqual(r.latencyMs + 2);
  });

  it("a streamed answer after a 429: RATE_LIMITED, then ANSWERED; the header's charge is the receipt's", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "2"] },
      { name: "backup", price: ["2", "4"] },
    ]);
    fake.set(s.upstream.primary!, { type: "status", status: 429 });
    const { data: stream, response } = await s.openai.chat.completions
      .create({ model: s.model, messages: [{ role: "user", content: "stream" }], max_tokens: 30, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    let usage: { prompt_tokens: number; completion_tokens: number } | null = null;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    const expected = requestCharge(price("2", "4"), usage!.prompt_tokens, usage!.completion_tokens);
    const r = await receiptOf(s.admin, response.headers.get("x-request-id")!);
    expect(r.charge.amount).toBe(formatMoney(expected));
    expect(withoutLatency(r.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", 429, "RATE_LIMITED", false), step(2, s.id.backup!, "backup", "BACKUP", 200, "ANSWERED", true)]);
  });

  it("a primary that never answers: TIMEOUT with no upstream status, after the first-byte timeout; the backup answers", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "1"] },
      { name: "backup", price: ["1", "1"] },
    ]);
    fake.set(s.upstream.primary!, { type: "hang" });
    const { response } = await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hang" }], max_tokens: 5 }).withResponse();
    const r = await receiptOf(s.admin, response.headers.get("x-request-id")!);
    expect(withoutLatency(r.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", null, "TIMEOUT", false), step(2, s.id.backup!, "backup", "BACKUP", 200, "ANSWERED", true)]);
    expect(r.attemptPath[0]!.latencyMs).toBeGreaterThanOrEqual(FIRST_BYTE_MS - 5);
    expect(r.attemptPath[0]!.latencyMs).toBeLessThan(FIRST_BYTE_MS + 3_000);
  });
});

describe("failed requests list every attempt", () => {
  it("every channel fails (500, 429, 502): three steps in order; PROMPT_TOKENS charges the last one only, to the micro-unit", async () => {
    const s = await setup(
      [
        { name: "primary", price: ["3", "12"] },
        { name: "backup-a", price: ["4", "16"] },
        { name: "backup-b", price: ["7", "28"] },
      ],
      { failedChargePolicy: "PROMPT_TOKENS", retryCeiling: 2 },
    );
    fake.set(s.upstream.primary!, { type: "status", status: 500 });
    fake.set(s.upstream["backup-a"]!, { type: "status", status: 429 });
    fake.set(s.upstream["backup-b"]!, { type: "status", status: 502 });
    const error = await caught(s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "all down" }], max_tokens: 5 }));
    expect(error.status).toBe(502);
    const f = await failureOf(s.admin, error.requestID!);
    expect(f).toMatchObject({ cause: "UPSTREAM_ERROR", httpStatus: 502, upstreamStatus: 502, attempts: 3 });
    // The policy charge is the last attempt's prompt at the last channel's input price.
    const expected = tokenCharge(f.promptTokens, parseMoney("7", "in"));
    expect(expected).toBeGreaterThan(0n);
    expect(f.charge.amount).toBe(formatMoney(expected));
    expect(f.ledgerEntry?.amount.amount).toBe(formatMoney(-expected));
    expect(withoutLatency(f.attemptPath)).toEqual([
      step(1, s.id.primary!, "primary", "PRIMARY", 500, "UPSTREAM_5XX", false),
      step(2, s.id["backup-a"]!, "backup-a", "BACKUP", 429, "RATE_LIMITED", false),
      step(3, s.id["backup-b"]!, "backup-b", "BACKUP", 502, "UPSTREAM_5XX", true),
    ]);
  });

  it("a refused connection, then a 4xx the request caused: CONNECT_ERROR (no status), REJECTED 400; NEVER charges none", async () => {
    const closed = await freePort();
    const s = await setup(
      [
        { name: "primary", price: ["1", "1"], baseUrl: `http://127.0.0.1:${closed}/v1` },
        { name: "backup", price: ["1", "1"] },
      ],
      { failedChargePolicy: "NEVER" },
    );
    fake.set(s.upstream.backup!, { type: "status", status: 400, body: { error: { message: "bad messages", type: "invalid_request_error", code: "invalid_value", param: "messages" } } });
    const error = await caught(s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }));
    expect(error.status).toBe(400);
    const f = await failureOf(s.admin, error.requestID!);
    expect(f).toMatchObject({ cause: "BAD_REQUEST", attempts: 2, charge: { amount: "0.000000" }, ledgerEntry: null });
    expect(withoutLatency(f.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", null, "CONNECT_ERROR", false), step(2, s.id.backup!, "backup", "BACKUP", 400, "REJECTED", false)]);
  });

  it("an attempt that ends the request after its answer started: a cut stream NETWORK_ERROR, a stall TIMEOUT, both with status 200; FULL_USAGE charges that step", async () => {
    for (const [behavior, cause] of [
      [{ type: "cut", afterChunks: 3 }, "NETWORK_ERROR"],
      [{ type: "stall", afterChunks: 3 }, "TIMEOUT"],
    ] as const) {
      const s = await setup(
        [
          { name: "primary", price: ["3", "12"] },
          { name: "backup", price: ["3", "12"] },
        ],
        { failedChargePolicy: "FULL_USAGE" },
      );
      fake.set(s.upstream.primary!, behavior);
      const stream = await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "cut" }], max_tokens: 50, stream: true }).withResponse();
      const error = await (async () => {
        try {
          for await (const _chunk of stream.data) void _chunk;
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(error).toBeInstanceOf(APIError);
      const f = await failureOf(s.admin, stream.response.headers.get("x-request-id")!);
      // Not retried on the backup: the answer had started reaching the client.
      expect(f.attempts).toBe(1);
      expect(f.charge.amount).not.toBe("0.000000");
      expect(withoutLatency(f.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", 200, cause, true)]);
    }
  });

  it("an answer over the relay limit: RESPONSE_TOO_LARGE, charged as billed, not retried", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "1"] },
      { name: "backup", price: ["1", "1"] },
    ]);
    fake.set(s.upstream.primary!, { type: "huge", bytes: MAX_RESPONSE_BYTES * 2, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    const error = await caught(s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "huge" }], max_tokens: 2000 }));
    expect(error.status).toBe(502);
    const f = await failureOf(s.admin, error.requestID!);
    expect(f.charge.amount).toBe(formatMoney(requestCharge(price("1", "1"), 10, 1000)));
    expect(withoutLatency(f.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", 200, "RESPONSE_TOO_LARGE", true)]);
  });

  it("a client that hangs up during the backup's attempt: UPSTREAM_5XX, then CLIENT_CLOSED with no upstream status, charged for the prompt it sent", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "1"] },
      { name: "backup", price: ["1", "1"] },
    ]);
    fake.set(s.upstream.primary!, { type: "status", status: 503 });
    fake.set(s.upstream.backup!, { type: "hang" });
    const controller = new AbortController();
    const sent = s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "bye" }], max_tokens: 5 }, { signal: controller.signal });
    await fake.waitFor((rs) => rs.some((r) => r.model === s.upstream.backup));
    controller.abort();
    await sent.catch(() => undefined);
    const query = `query($k: ID) { failedRequests(filter: { keyId: $k }) { edges { node { cause attempts promptTokens charge { amount } ${PATH} } } } }`;
    let edges: Array<{ node: { cause: string; attempts: number; promptTokens: number; charge: { amount: string }; attemptPath: Step[] } }> = [];
    for (let i = 0; i < 200 && !edges.length; i++) {
      edges = (await gqlOk(s.admin, query, { k: s.key.id })).failedRequests.edges;
      if (!edges.length) await new Promise((r) => setTimeout(r, 25));
    }
    expect(edges).toHaveLength(1);
    expect(edges[0]!.node).toMatchObject({ cause: "CLIENT_CLOSED", attempts: 2 });
    // A hang-up once the upstream has the request is charged whatever the key's policy (README: the passthrough): on its last step.
    const expected = requestCharge(price("1", "1"), edges[0]!.node.promptTokens, 0);
    expect(expected).toBeGreaterThan(0n);
    expect(edges[0]!.node.charge.amount).toBe(formatMoney(expected));
    expect(withoutLatency(edges[0]!.node.attemptPath)).toEqual([
      step(1, s.id.primary!, "primary", "PRIMARY", 503, "UPSTREAM_5XX", false),
      step(2, s.id.backup!, "backup", "BACKUP", null, "CLIENT_CLOSED", true),
    ]);
  });

  it("a request refused before any attempt has an empty path", async () => {
    const s = await setup([{ name: "primary", price: ["1", "1"] }]);
    const error = await caught(s.openai.chat.completions.create({ model: uid("unknown"), messages: [{ role: "user", content: "x" }], max_tokens: 5 }));
    expect(error.status).toBe(404);
    const f = await failureOf(s.admin, error.requestID!);
    expect(f.attempts).toBe(0);
    expect(f.attemptPath).toEqual([]);
  });
});

describe("reading paths", () => {
  it("a page of receipts names every attempt's channel with one statement, whatever its size", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "1"] },
      { name: "backup", price: ["1", "1"] },
    ]);
    fake.set(s.upstream.primary!, { type: "status", status: 500 });
    // Three: a fourth failure would leave the primary DOWN (skipped, no step).
    for (let i = 0; i < 3; i++) await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: `n${i}` }], max_tokens: 5 });
    const page = `query($first: Int!, $k: ID) { receipts(first: $first, filter: { keyId: $k }) { edges { node { id attemptPath { channel { id name } } } } } }`;
    const channelReads = async (first: number) => {
      statements = [];
      const data = await gqlOk(s.admin, page, { first, k: s.key.id });
      expect(data.receipts.edges).toHaveLength(first);
      for (const e of data.receipts.edges) expect(e.node.attemptPath.map((a: Step) => a.channel!.name)).toEqual(["primary", "backup"]);
      if (process.env.SHOW_SQL) console.log(statements.filter((q) => q.includes(`"Channel"`)));
      return statements.filter((q) => q.includes(`"Channel"`)).length;
    };
    expect(await channelReads(1)).toBe(1);
    expect(await channelReads(3)).toBe(1);
  });

  it("CSV exports carry a compact attemptPath column", async () => {
    const closed = await freePort();
    const s = await setup(
      [
        { name: "primary", price: ["1", "1"], baseUrl: `http://127.0.0.1:${closed}/v1` },
        { name: "backup-a", price: ["1", "1"] },
        { name: "backup-b", price: ["1", "1"] },
      ],
      { retryCeiling: 2 },
    );
    fake.set(s.upstream["backup-a"]!, { type: "status", status: 503 });
    const { response } = await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "csv" }], max_tokens: 5 }).withResponse();
    fake.set(s.upstream["backup-b"]!, { type: "status", status: 500 });
    const error = await caught(s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "csv fail" }], max_tokens: 5 }));
    await failureOf(s.admin, error.requestID!);
    const read = async (kind: string) => {
      const res = await fetch(`${server.url}/exports/${kind}.csv?keyId=${s.key.id}`, { headers: { authorization: `Bearer ${s.admin}` } });
      expect(res.status).toBe(200);
      const [header, ...rows] = (await res.text()).trim().split("\r\n");
      const columns = header!.split(",");
      expect(columns.at(-1)).toBe("attemptPath");
      return rows.map((row) => {
        const cells = row.split(",");
        return { requestId: cells[columns.indexOf("requestId")], attemptPath: cells[columns.indexOf("attemptPath")] };
      });
    };
    expect(await read("receipts")).toEqual([{ requestId: response.headers.get("x-request-id"), attemptPath: "primary:connect_error>backup:503>backup:200" }]);
    expect(await read("failed-requests")).toEqual([{ requestId: error.requestID, attemptPath: "primary:connect_error>backup:503>backup:500" }]);
  });

  it("receiptCreated carries the path in its event: no read of the receipt or its channels per event (a field outside the view is read)", async () => {
    const s = await setup([
      { name: "primary", price: ["1", "1"] },
      { name: "backup", price: ["1", "1"] },
    ]);
    fake.set(s.upstream.primary!, { type: "status", status: 502 });
    const ws = wsClient(server, s.admin);
    const listen = (selection: string) => {
      const received: Array<Record<string, unknown>> = [];
      const dispose = ws.subscribe<{ receiptCreated: Record<string, unknown> }>(
        { query: `subscription($k: ID) { receiptCreated(keyId: $k) { requestId ${selection} } }`, variables: { k: s.key.id } },
        { next: (v) => (v.errors ? received.push({ errors: v.errors }) : received.push(v.data!.receiptCreated)), error: (e) => received.push({ error: String(e) }), complete: () => undefined },
      );
      return { received, dispose };
    };
    const one = async (selection: string) => {
      const sub = listen(selection);
      await new Promise((r) => setTimeout(r, 300));
      statements = [];
      const { response } = await s.openai.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "live" }], max_tokens: 5 }).withResponse();
      const requestId = response.headers.get("x-request-id")!;
      for (let i = 0; i < 200 && !sub.received.length; i++) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 100));
      const reads = statements.filter((q) => /FROM "public"\."Receipt"|"public"\."Channel"\."id" IN/.test(q)).length;
      sub.dispose();
      expect(sub.received).toHaveLength(1);
      expect(sub.received[0]!.requestId).toBe(requestId);
      return { event: sub.received[0]!, reads, requestId };
    };
    try {
      const live = await one(PATH);
      expect(live.reads).toBe(0);
      const stored = await receiptOf(s.admin, live.requestId);
      expect(live.event.attemptPath).toEqual(stored.attemptPath);
      expect(withoutLatency(stored.attemptPath)).toEqual([step(1, s.id.primary!, "primary", "PRIMARY", 502, "UPSTREAM_5XX", false), step(2, s.id.backup!, "backup", "BACKUP", 200, "ANSWERED", true)]);
      // The control: a field the event does not carry is read (once per event), so the count above could fail.
      const control = await one(`priceSnapshot { id } ${PATH}`);
      expect(control.reads).toBeGreaterThan(0);
    } finally {
      await ws.dispose();
    }
  });
});
