// An upstream answer over UPSTREAM_MAX_RESPONSE_BYTES (issue 14, point 5). The upstream generated
// it and bills it: it is charged like an answer the client hung up on (its usage, whatever the
// key's failed-request policy — here the default NEVER — capped at the hold), refused with 502
// upstream_response_too_large, and NOT retried on the next channel (which would generate and bill
// it again). The usage is read from the end of the oversized body; without one the completion is
// charged at the request's output bound (estimated). A stream with one gigantic event is stopped
// and charged from what was streamed. The limit here is 1 MiB; the fake upstream writes 3 MiB (64 MiB
// for the stream, which the gateway stops early).
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { leasesReturned, startGateway, useGatewayHarness, uid, type TestGateway } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { worstCase } from "../src/money/charges.ts";
import { countChatPrompt, countText, reservedPromptTokens } from "../src/gateway/tokens.ts";
import { formatMoney, parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";

const LIMIT = 1024 * 1024;
const h = useGatewayHarness({ UPSTREAM_MAX_RESPONSE_BYTES: String(LIMIT) });
const PRICE = { inputPerMillion: parseMoney("3", "in"), outputPerMillion: parseMoney("12", "out") };
const HUGE = 3 * LIMIT;

/** A key (default policy NEVER) and a route with a primary and a backup channel on the fake upstream, both 3 / 12 USD. */
async function setup() {
  const w = await world();
  expect(w.key.failedChargePolicy).toBe("NEVER");
  const model = uid("huge");
  const primary = uid("up-primary");
  const backup = uid("up-backup");
  await route(w.viewer, w.org.id, model, [
    { name: "primary", baseUrl: h.fake.url, upstreamModel: primary, priority: 0, price: ["3", "12"] },
    { name: "backup", baseUrl: h.fake.url, upstreamModel: backup, priority: 1, price: ["3", "12"] },
  ]);
  return { ...w, model, primary, backup };
}

function post(secret: string, body: Record<string, unknown>, gw: TestGateway = h.gw) {
  return new Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }>((resolve, reject) => {
    const req = http.request(`${gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode!, text, headers: res.headers }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

async function failure(requestId: string) {
  return h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });
}

const asked = (model: string) => h.fake.requests.filter((r) => r.model === model);

describe("an upstream answer over the response limit", () => {
  it("non-stream: 502 upstream_response_too_large after exactly 1 attempt, charged the usage read from the body's end", async () => {
    const s = await setup();
    // Under the limit a large answer is relayed as ever.
    h.fake.set(s.primary, { type: "huge", bytes: LIMIT / 2, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    const small = await post(s.secret, { model: s.model, messages: [{ role: "user", content: "half a mebibyte" }], max_tokens: 1000 });
    expect(small.status).toBe(200);
    expect((JSON.parse(small.text) as { usage: unknown }).usage).toMatchObject({ prompt_tokens: 10, completion_tokens: 1000 });
    expect(small.headers["x-tokengate-charge"]).toBe(formatMoney(12_030n));
    h.fake.reset();

    h.fake.set(s.primary, { type: "huge", bytes: HUGE, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    h.fake.set(s.backup, { type: "huge", bytes: HUGE, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    const before = await walletBucket(s.org.id, "CREDIT");
    const body = { model: s.model, messages: [{ role: "user", content: "write a very long answer" }], max_tokens: 1000 };

    const res = await post(s.secret, body);
    const expected = requestCharge(PRICE, 10, 1000); // 10 × 3 + 1000 × 12 = 12,030 µ
    expect(expected).toBe(12_030n);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text)).toMatchObject({ error: { type: "api_error", code: "upstream_response_too_large", param: null } });
    expect(res.headers["x-should-retry"]).toBe("false");
    expect(res.headers["x-tokengate-charge"]).toBe(formatMoney(expected));
    expect(res.headers["x-tokengate-currency"]).toBe("USD");
    expect(asked(s.primary)).toHaveLength(1);
    expect(asked(s.backup)).toHaveLength(0);

    const failed = await failure(String(res.headers["x-request-id"]));
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", httpStatus: 502, upstreamStatus: 200, attempts: 1, promptTokens: 10, completionTokens: 1000, estimated: false, charge: expected });
    expect(failed.ledgerEntry!.amount).toBe(-expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).balance).toBe(before.balance - expected);
    expect(await scopeSpend("KEY_DAILY", s.key.id, "CREDIT")).toEqual({ spent: 12_030n + expected, held: 0n });
  });

  it("non-stream without Content-Length and without usage: charged at the output bound (max_tokens), estimated", async () => {
    const s = await setup();
    h.fake.set(s.primary, { type: "huge", bytes: HUGE, noUsage: true, chunked: true });
    h.fake.set(s.backup, { type: "huge", bytes: HUGE, noUsage: true, chunked: true });
    const body = { model: s.model, messages: [{ role: "user", content: "no usage in this one" }], max_tokens: 700 };

    const res = await post(s.secret, body);
    const prompt = (await countChatPrompt(body)).text;
    const expected = tokenCharge(prompt, PRICE.inputPerMillion) + tokenCharge(700, PRICE.outputPerMillion);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text).error.code).toBe("upstream_response_too_large");
    expect(res.headers["x-tokengate-charge"]).toBe(formatMoney(expected));
    expect(asked(s.primary)).toHaveLength(1);
    expect(asked(s.backup)).toHaveLength(0);
    const failed = await failure(String(res.headers["x-request-id"]));
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", attempts: 1, promptTokens: prompt, completionTokens: 700, estimated: true, charge: expected });
    expect(failed.ledgerEntry!.amount).toBe(-expected);
    await leasesReturned(h);
    expect((await scopeSpend("KEY_DAILY", s.key.id, "CREDIT")).spent).toBe(expected);
  });

  it("stream: one gigantic event stops the stream after 1 attempt, charged from what was streamed (capped at the hold)", async () => {
    const s = await setup();
    // 64 MiB, as in the issue: cheap, since the gateway stops reading after 1 MiB (the fake waits on backpressure).
    h.fake.set(s.primary, { type: "huge", bytes: 64 * LIMIT, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    h.fake.set(s.backup, { type: "huge", bytes: 64 * LIMIT, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    const body = { model: s.model, messages: [{ role: "user", content: "stream a flood" }], max_tokens: 1000, stream: true };

    const res = await post(s.secret, body);
    // The unfinished event counts a token per byte: far above the output bound, so the hold is the charge.
    const hold = worstCase(PRICE, reservedPromptTokens(await countChatPrompt(body), [s.primary], null), 1000);
    expect(res.status).toBe(200); // the first events had gone out already
    expect(res.text).toContain("Before the flood");
    expect(res.text).toContain('"code":"upstream_response_too_large"');
    expect(res.text).toContain(`: tokengate-charge=${formatMoney(hold)} currency=USD\n\n`);
    expect(res.text).not.toContain("[DONE]");
    expect(res.text.length).toBeLessThan(64 * 1024); // the flood was never passed on
    await h.fake.waitFor(() => asked(s.primary)[0]?.aborted === true); // the upstream was stopped before it sent it all
    expect(asked(s.primary)).toHaveLength(1);
    expect(asked(s.backup)).toHaveLength(0);

    const failed = await failure(String(res.headers["x-request-id"]));
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", attempts: 1, estimated: true, charge: hold });
    expect(failed.completionTokens).toBeGreaterThan(LIMIT + countText("Before the flood"));
    expect(failed.ledgerEntry!.amount).toBe(-hold);
    await leasesReturned(h);
    expect((await scopeSpend("KEY_DAILY", s.key.id, "CREDIT")).spent).toBe(hold);
  });
});

describe("the issue's case, at the default limit", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway(); // UPSTREAM_MAX_RESPONSE_BYTES unset: the default (16 MiB)
  });
  afterAll(() => gw?.close());

  it("both channels answer 65 MiB with usage 10 + 1,000: one attempt, charged 10 + 1,000 tokens, the body never kept", async () => {
    expect(gw.config.upstream.maxResponseBytes).toBe(16 * 1024 * 1024);
    const s = await setup();
    h.fake.set(s.primary, { type: "huge", bytes: 65 * LIMIT, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    h.fake.set(s.backup, { type: "huge", bytes: 65 * LIMIT, usage: { prompt_tokens: 10, completion_tokens: 1000 } });
    const rssBefore = process.memoryUsage().rss;
    const res = await post(s.secret, { model: s.model, messages: [{ role: "user", content: "the issue's request" }], max_tokens: 1000 }, gw);
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text).error.code).toBe("upstream_response_too_large");
    expect(res.headers["x-tokengate-charge"]).toBe("0.012030");
    expect(asked(s.primary)).toHaveLength(1);
    expect(asked(s.backup)).toHaveLength(0);
    const failed = await failure(String(res.headers["x-request-id"]));
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", attempts: 1, promptTokens: 10, completionTokens: 1000, estimated: false, charge: 12_030n });
    // Content-Length said 65 MiB: only the ends were kept (loosely checked: RSS is noisy, 64 MiB is not).
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(48 * 1024 * 1024);
  });
});
