// One malformed request neither loses its own record nor fails the batch of the others (issue 14,
// point 9). A lone UTF-16 surrogate quoted in a validation message (or a surrogate pair cut in half
// by a 40-character slice) made PostgreSQL refuse the batched write's JSON: the request's
// FailedRequest was never stored and every other record of its batch was retried one by one.
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { recordBatch, type FailedRequestInput } from "../src/money/writer.ts";

const h = useGatewayHarness();

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
type ErrorBody = { error: { message: string; type: string; code: string | null; param: string | null } };

async function setup() {
  const w = await world({ credit: "1000" });
  const model = uid("gpt-text");
  await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: h.fake.url, upstreamModel: uid("up"), price: ["1", "1"] }]);
  return { ...w, model };
}

/** Sends the body as written: `\ud800` in it is a JSON escape, a lone surrogate once parsed. */
const post = (secret: string, rawBody: string) =>
  fetch(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" }, body: rawBody });
const withRole = (model: string, roleJson: string) => `{"model":${JSON.stringify(model)},"messages":[{"role":"${roleJson}","content":"hi"}]}`;
const good = (model: string) => JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 });

const failureOf = (requestId: string) => h.database.prisma.failedRequest.findUnique({ where: { requestId } });

describe("a lone surrogate in client text", () => {
  it("in a message role: a 400 in OpenAI's shape, well-formed, and its FailedRequest is stored", async () => {
    const s = await setup();
    const response = await post(s.secret, withRole(s.model, "\\ud800evil"));
    expect(response.status).toBe(400);
    const text = await response.text();
    // Not even as a JSON escape: the echoed text is well-formed.
    expect(text).not.toMatch(/\\ud[89ab]/i);
    const body = JSON.parse(text) as ErrorBody;
    expect(body.error).toEqual({
      message: "Invalid 'messages[0].role': expected one of 'system', 'developer', 'user', 'assistant', 'tool', 'function', but got '\uFFFDevil'.",
      type: "invalid_request_error",
      code: "invalid_value",
      param: "messages[0].role",
    });
    const requestId = response.headers.get("x-request-id")!;
    const stored = await failureOf(requestId);
    expect(stored).toMatchObject({ keyId: s.key.id, organizationId: s.org.id, cause: "BAD_REQUEST", httpStatus: 400, message: body.error.message, charge: 0n });
  });

  it("a 40-character cut never splits a surrogate pair", async () => {
    const s = await setup();
    const response = await post(s.secret, withRole(s.model, `${"x".repeat(39)}\\ud83d\\ude00tail`));
    expect(response.status).toBe(400);
    const body = (await response.json()) as ErrorBody;
    expect(body.error.message.endsWith(`but got '${"x".repeat(39)}'.`)).toBe(true);
    expect(LONE_SURROGATE.test(body.error.message)).toBe(false);
    expect((await failureOf(response.headers.get("x-request-id")!))?.message).toBe(body.error.message);
  });

  it("in a batch with good requests: every record commits, and no batch is retried one by one", async () => {
    const s = await setup();
    const before = h.gw.gateway.stats().settle.fallbacks;
    const bodies = [
      ...Array.from({ length: 6 }, () => good(s.model)),
      ...Array.from({ length: 6 }, (_, i) => withRole(s.model, `nobody-${i}`)),
      withRole(s.model, "\\udc00\\ud800"),
      withRole(s.model, "\\ud800"),
    ];
    const responses = await Promise.all(bodies.map((b) => post(s.secret, b)));
    expect(responses.map((r) => r.status)).toEqual([...Array(6).fill(200), ...Array(8).fill(400)]);
    for (const r of responses) await r.arrayBuffer();
    const ids = responses.map((r) => r.headers.get("x-request-id")!);
    const receipts = await h.database.prisma.receipt.findMany({ where: { requestId: { in: ids.slice(0, 6) } } });
    expect(receipts).toHaveLength(6);
    const failures = await h.database.prisma.failedRequest.findMany({ where: { requestId: { in: ids.slice(6) } } });
    expect(failures).toHaveLength(8);
    for (const f of failures) expect(LONE_SURROGATE.test(f.message)).toBe(false);
    expect(h.gw.gateway.stats().settle.fallbacks).toBe(before);
  });

  it("straight into the batched writer: one statement stores all of them, the bad text as U+FFFD", async () => {
    const s = await setup();
    const failure = (requestId: string, text: string): FailedRequestInput => ({
      requestId,
      organizationId: s.org.id,
      keyId: s.key.id,
      projectId: s.project.id,
      runId: null,
      routeId: null,
      channelId: null,
      requestedModel: text,
      endpoint: "/v1/chat/completions",
      cause: "BAD_REQUEST",
      capScope: null,
      message: `bad: ${text}`,
      httpStatus: 400,
      upstreamStatus: null,
      attempts: 0,
      bucket: null,
      currency: null,
      promptTokens: 0,
      completionTokens: 0,
      priceSnapshotId: null,
      charge: 0n,
      estimated: false,
    });
    const ids = [randomUUID(), randomUUID(), randomUUID()];
    const texts = ["fine", "half \ud83d and \ude00 and nul \u0000", "also fine"];
    await recordBatch(ids.map((id, i) => ({ kind: "failure" as const, record: failure(id, texts[i]!), bucketId: null, leases: [] })));
    const stored = await h.database.prisma.failedRequest.findMany({ where: { requestId: { in: ids } } });
    expect(new Map(stored.map((r) => [r.requestId, r.message]))).toEqual(
      new Map([
        [ids[0]!, "bad: fine"],
        [ids[1]!, "bad: half \uFFFD and \uFFFD and nul \uFFFD"],
        [ids[2]!, "bad: also fine"],
      ]),
    );
  });
});

describe("a record the database still refuses", () => {
  it("is written again in a minimal form (our words only); the others of its batch commit", async () => {
    const s = await setup();
    // A real refusal by the database, whatever the cause: a trigger standing in for any text the
    // sanitizer did not foresee.
    await h.database.sql.query(`CREATE OR REPLACE FUNCTION test_refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.message LIKE '%refuse-me%' THEN RAISE EXCEPTION 'test: refused'; END IF; RETURN NEW; END $$`);
    await h.database.sql.query(`CREATE TRIGGER test_refuse_marked BEFORE INSERT ON "FailedRequest" FOR EACH ROW EXECUTE FUNCTION test_refuse_marked()`);
    try {
      const bodies = [withRole(s.model, "refuse-me"), ...Array.from({ length: 5 }, (_, i) => withRole(s.model, `other-${i}`)), good(s.model)];
      const responses = await Promise.all(bodies.map((b) => post(s.secret, b)));
      expect(responses.map((r) => r.status)).toEqual([400, 400, 400, 400, 400, 400, 200]);
      const first = (await responses[0]!.json()) as ErrorBody;
      // The client still gets the full answer; only the stored record is reduced.
      expect(first.error.message).toMatch(/but got 'refuse-me'/);
      const ids = responses.map((r) => r.headers.get("x-request-id")!);
      expect(await failureOf(ids[0]!)).toMatchObject({
        keyId: s.key.id,
        cause: "BAD_REQUEST",
        httpStatus: 400,
        message: "The request failed (BAD_REQUEST); its original message could not be stored.",
      });
      for (const id of ids.slice(1, 6)) expect((await failureOf(id))?.message).toMatch(/but got 'other-\d'/);
      expect(await h.database.prisma.receipt.count({ where: { requestId: ids[6]! } })).toBe(1);
    } finally {
      await h.database.sql.query(`DROP TRIGGER test_refuse_marked ON "FailedRequest"`);
    }
  });
});
