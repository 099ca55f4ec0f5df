// The passthrough through the official OpenAI SDK against a fake upstream: charges in the header,
// the receipt and the ledger agree with price × usage to the micro-unit; key, model and balance
// refusals; streaming with and without include_usage; embeddings; models; bad input.
import http from "node:http";
import { describe, expect, it } from "vitest";
import { APIError } from "openai";
import { DEFAULT_TEXT, fakePromptTokens } from "./support/fake-upstream.ts";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { apiKey, route, world } from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { changeKeyStatus } from "../src/keys/index.ts";
import { cancelRun, startRun } from "../src/runs/index.ts";
import { formatMoney, parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";
import { countTokens } from "gpt-tokenizer";

const h = useGatewayHarness();

const price = (input: string, output: string) => ({ inputPerMillion: parseMoney(input, "in"), outputPerMillion: parseMoney(output, "out") });

/** A funded org, a key, and a one-channel route for `model` on the fake upstream. */
async function setup(options: Parameters<typeof world>[0] = {}, prices: [string, string] = ["2.5", "10.333333"]) {
  const w = await world(options);
  const model = uid("gpt-test");
  const upstreamModel = uid("up");
  const r = await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: h.fake.url, upstreamModel, price: prices }]);
  return { ...w, model, upstreamModel, route: r.route, channels: r.channels, price: price(...prices), client: h.gw.client(w.secret) };
}

async function expectApiError(promise: Promise<unknown>, status: number, code: string): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  const api = error as APIError;
  expect(api.status).toBe(status);
  expect(api.code).toBe(code);
  expect(api.requestID).toBeTruthy();
  return api;
}

async function failedRequest(requestId: string) {
  return h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId } });
}

describe("charging", () => {
  it("a non-stream call: header, receipt and ledger agree with price × usage; the wallet dropped by exactly that", async () => {
    const s = await setup();
    const before = await walletBucket(s.org.id, "CREDIT");
    const { data, response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "Say hello to the gateway" }], max_tokens: 50 }).withResponse();
    expect(data.choices[0]!.message.content).toBe(DEFAULT_TEXT);
    const usage = data.usage!;
    const expected = requestCharge(s.price, usage.prompt_tokens, usage.completion_tokens);
    expect(expected).toBeGreaterThan(0n);

    const requestId = response.headers.get("x-request-id")!;
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
    expect(response.headers.get("x-tokengate-currency")).toBe("USD");
    expect(response.headers.get("x-tokengate-bucket")).toBe("CREDIT");
    expect(response.headers.get("x-tokengate-route")).toBe(s.route.id);
    expect(response.headers.get("x-tokengate-upstream-model")).toBe(s.upstreamModel);

    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });
    expect(receipt.charge).toBe(expected);
    expect(receipt).toMatchObject({
      organizationId: s.org.id,
      keyId: s.key.id,
      projectId: s.project.id,
      runId: null,
      routeId: s.route.id,
      channelId: s.channels[0]!.id,
      requestedModel: s.model,
      upstreamModel: s.upstreamModel,
      endpoint: "/v1/chat/completions",
      channelRole: "PRIMARY",
      fallback: false,
      attempts: 1,
      bucket: "CREDIT",
      currency: "USD",
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      stream: false,
      status: 200,
    });
    expect(receipt.latencyMs).toBeGreaterThanOrEqual(0);
    const snapshot = await h.database.prisma.priceSnapshot.findUniqueOrThrow({ where: { id: receipt.priceSnapshotId } });
    expect(snapshot.channelId).toBe(s.channels[0]!.id);
    expect(receipt.ledgerEntry!.amount).toBe(-expected);
    expect(receipt.ledgerEntry!.kind).toBe("CHARGE");

    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    expect(after.balance).toBe(receipt.ledgerEntry!.balanceAfter);
    // Nothing stays held once the gateway is idle (on leases: once its leased headroom went back).
    await leasesReturned(h);
    expect(await walletBucket(s.org.id, "CREDIT")).toMatchObject({ balance: after.balance, held: 0n });

    // Unknown fields pass through; the model is rewritten; the upstream saw no stream options.
    const seen = h.fake.requests.filter((r) => r.model === s.upstreamModel);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.body!.max_tokens).toBe(50);
    expect(seen[0]!.body!.stream_options).toBeUndefined();
  });

  it("rounds each token kind up to the micro-unit", async () => {
    // 7 prompt tokens × 0.333333 / 1e6 → 2.333331 → 3 micros; 5 × 0.1 → 0.5 → 1 micro.
    const s = await setup({}, ["0.333333", "0.1"]);
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: 7, completion_tokens: 5 } });
    const { response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "round me" }], max_tokens: 10 }).withResponse();
    expect(response.headers.get("x-tokengate-charge")).toBe("0.000004");
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(receipt.charge).toBe(4n);
  });

  it("a streamed call with include_usage: the usage chunk reaches the client and matches the receipt", async () => {
    const s = await setup();
    const before = await walletBucket(s.org.id, "CREDIT");
    const { data: stream, response } = await s.client.chat.completions
      .create({ model: s.model, messages: [{ role: "user", content: "Stream to me" }], stream: true, stream_options: { include_usage: true }, max_tokens: 64 })
      .withResponse();
    let text = "";
    const usages = [];
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) usages.push(chunk.usage);
    }
    expect(text).toBe(DEFAULT_TEXT);
    expect(usages).toHaveLength(1);
    const expected = requestCharge(s.price, usages[0]!.prompt_tokens, usages[0]!.completion_tokens);
    const requestId = response.headers.get("x-request-id")!;
    expect(response.headers.get("x-tokengate-bucket")).toBe("CREDIT");
    expect(response.headers.get("x-tokengate-upstream-model")).toBe(s.upstreamModel);
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });
    expect(receipt.stream).toBe(true);
    expect(receipt.charge).toBe(expected);
    expect(receipt.ledgerEntry!.amount).toBe(-expected);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    const seen = h.fake.requests.find((r) => r.model === s.upstreamModel)!;
    expect(seen.body!.stream_options).toEqual({ include_usage: true });
  });

  it("a streamed call without include_usage is still charged from the upstream's usage chunk, which the client never sees", async () => {
    const s = await setup();
    const messages = [{ role: "user" as const, content: "Stream without usage please" }];
    const { data: stream, response } = await s.client.chat.completions.create({ model: s.model, messages, stream: true, max_tokens: 64 }).withResponse();
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.usage ?? null).toBeNull();
    }
    expect(chunks).toBeGreaterThan(3);
    const seen = h.fake.requests.find((r) => r.model === s.upstreamModel)!;
    expect(seen.body!.stream_options).toEqual({ include_usage: true }); // forced upstream
    const expected = requestCharge(s.price, fakePromptTokens({ messages }), countTokens(DEFAULT_TEXT));
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! }, include: { ledgerEntry: true } });
    expect(receipt.charge).toBe(expected);
    expect(receipt.charge).toBeGreaterThan(0n);
    expect(receipt.ledgerEntry!.amount).toBe(-expected);
  });

  it("a stream reports its final charge in an SSE comment before [DONE] and as an HTTP trailer", async () => {
    const s = await setup();
    const body = JSON.stringify({ model: s.model, messages: [{ role: "user", content: "trailers" }], stream: true, max_tokens: 64 });
    const { text, trailers, headers } = await new Promise<{ text: string; trailers: http.IncomingHttpHeaders; headers: http.IncomingHttpHeaders }>((resolve, reject) => {
      const req = http.request(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" } }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ text, trailers: res.trailers, headers: res.headers }));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(body);
    });
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: String(headers["x-request-id"]) } });
    const charge = formatMoney(receipt.charge);
    expect(headers["content-type"]).toContain("text/event-stream");
    expect(trailers["x-tokengate-charge"]).toBe(charge);
    expect(text).toContain(`: tokengate-charge=${charge} currency=USD\n\ndata: [DONE]\n\n`);
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
  });

  it("embeddings are charged for their input tokens", async () => {
    const s = await setup({}, ["0.02", "0"]);
    const input = ["The quick brown fox", "jumps over the lazy dog"];
    const { data, response } = await s.client.embeddings.create({ model: s.model, input }).withResponse();
    expect(data.data).toHaveLength(2);
    const expected = tokenCharge(data.usage.prompt_tokens, s.price.inputPerMillion);
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! }, include: { ledgerEntry: true } });
    expect(receipt).toMatchObject({ endpoint: "/v1/embeddings", promptTokens: data.usage.prompt_tokens, completionTokens: 0, charge: expected });
    expect(receipt.ledgerEntry?.amount ?? 0n).toBe(-expected);
  });

  it("a routed-balance channel settles in the ROUTED bucket and its currency", async () => {
    const w = await world({ routed: "50" });
    const model = uid("routed");
    const upstreamModel = uid("up");
    await route(w.viewer, w.org.id, model, [{ name: "cheap", baseUrl: h.fake.url, upstreamModel, settlement: "ROUTED", price: ["1", "2"] }]);
    const { response } = await h.gw
      .client(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 20 })
      .withResponse();
    expect(response.headers.get("x-tokengate-bucket")).toBe("ROUTED");
    expect(response.headers.get("x-tokengate-currency")).toBe("CNY");
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(receipt.bucket).toBe("ROUTED");
    const routed = await walletBucket(w.org.id, "ROUTED");
    expect(routed.balance).toBe(50_000_000n - receipt.charge);
  });
});

describe("key, model and balance checks", () => {
  it("pause → 403 key_paused, resume → works, revoke → 401 key_revoked; each refusal is a FailedRequest with no charge", async () => {
    const s = await setup();
    const call = () => s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 });
    await call();
    await changeKeyStatus(s.viewer, s.key.id, "pauseKey");
    const paused = await expectApiError(call(), 403, "key_paused");
    expect(await failedRequest(paused.requestID!)).toMatchObject({ cause: "KEY_PAUSED", httpStatus: 403, keyId: s.key.id, organizationId: s.org.id, charge: 0n });
    await changeKeyStatus(s.viewer, s.key.id, "resumeKey");
    await call();
    await changeKeyStatus(s.viewer, s.key.id, "revokeKey");
    const revoked = await expectApiError(call(), 401, "key_revoked");
    expect(await failedRequest(revoked.requestID!)).toMatchObject({ cause: "KEY_REVOKED", httpStatus: 401, charge: 0n });
  });

  it("a status change made elsewhere (no event reaches this process) applies within 1 s", async () => {
    const s = await setup();
    const call = () => s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 });
    await call(); // the key is now cached
    await h.database.prisma.apiKey.update({ where: { id: s.key.id }, data: { status: "REVOKED" } });
    await new Promise((r) => setTimeout(r, 1_050));
    await expectApiError(call(), 401, "key_revoked");
  });

  it("an unknown key is 401 invalid_api_key and writes no row (counted in metrics instead)", async () => {
    const client = h.gw.client("tg_not-a-real-key");
    const error = await expectApiError(client.chat.completions.create({ model: "x", messages: [{ role: "user", content: "hi" }] }), 401, "invalid_api_key");
    expect(await h.database.prisma.failedRequest.findUnique({ where: { requestId: error.requestID! } })).toBeNull();
  });

  it("a missing Authorization header is 401 invalid_api_key", async () => {
    const res = await fetch(`${h.gw.url}/chat/completions`, { method: "POST", body: "{}" });
    expect(res.status).toBe(401);
    expect(res.headers.get("x-request-id")).toBeTruthy();
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_api_key");
  });

  it("a model outside the key's allow-list is 403 model_not_allowed; an unknown model is 404 model_not_found", async () => {
    const s = await setup();
    const other = await setup();
    const restricted = await apiKey(s.viewer, s.project.id, { allowedModels: [other.model] });
    const client = h.gw.client(restricted.secret);
    const e403 = await expectApiError(client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hi" }] }), 403, "model_not_allowed");
    expect(await failedRequest(e403.requestID!)).toMatchObject({ cause: "MODEL_NOT_ALLOWED", requestedModel: s.model, charge: 0n });
    const e404 = await expectApiError(s.client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] }), 404, "model_not_found");
    expect(await failedRequest(e404.requestID!)).toMatchObject({ cause: "MODEL_UNKNOWN", httpStatus: 404 });
  });

  it("an exhausted balance is 402 insufficient_balance", async () => {
    const s = await setup({ credit: "0.000100" });
    const error = await expectApiError(s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 100 }), 402, "insufficient_balance");
    expect(await failedRequest(error.requestID!)).toMatchObject({ cause: "INSUFFICIENT_BALANCE", httpStatus: 402, charge: 0n, bucket: "CREDIT" });
    expect(h.fake.requests.some((r) => r.model === s.upstreamModel)).toBe(false);
    const bucket = await walletBucket(s.org.id, "CREDIT");
    expect(bucket).toMatchObject({ balance: 100n, held: 0n });
  });

  it("a per-request maximum below the worst case refuses with budget_exceeded (KEY_PER_REQUEST)", async () => {
    const s = await setup({ key: { perRequestMaxCharge: "0.000500" } });
    const error = await expectApiError(s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 1000 }), 402, "budget_exceeded");
    expect(await failedRequest(error.requestID!)).toMatchObject({ cause: "BUDGET_EXCEEDED", capScope: "KEY_PER_REQUEST" });
  });

  it("an unpriced channel is never called: 503 price_unknown (fail closed)", async () => {
    const w = await world();
    const model = uid("unpriced");
    const upstreamModel = uid("up");
    await route(w.viewer, w.org.id, model, [{ name: "p", baseUrl: h.fake.url, upstreamModel }]);
    const error = await expectApiError(h.gw.client(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "hi" }] }), 503, "price_unknown");
    expect(await failedRequest(error.requestID!)).toMatchObject({ cause: "PRICE_UNKNOWN", charge: 0n });
    expect(h.fake.requests.some((r) => r.model === upstreamModel)).toBe(false);
  });

  it("lists only the models the key may call, with their price", async () => {
    const s = await setup();
    const second = uid("gpt-second");
    await route(s.viewer, s.org.id, second, [{ name: "p", baseUrl: h.fake.url, upstreamModel: uid("up"), price: ["1", "2"] }]);
    const unpriced = uid("gpt-unpriced");
    await route(s.viewer, s.org.id, unpriced, [{ name: "p", baseUrl: h.fake.url, upstreamModel: uid("up") }]);
    const all = await s.client.models.list();
    const ids = all.data.map((m) => m.id).sort();
    expect(ids).toEqual([s.model, second].sort());
    const entry = all.data.find((m) => m.id === s.model) as unknown as { pricing: Record<string, string>; object: string };
    expect(entry.object).toBe("model");
    expect(entry.pricing).toMatchObject({ bucket: "CREDIT", currency: "USD", input_per_million: "2.500000", output_per_million: "10.333333" });

    const restricted = await apiKey(s.viewer, s.project.id, { allowedModels: [second] });
    const limited = await h.gw.client(restricted.secret).models.list();
    expect(limited.data.map((m) => m.id)).toEqual([second]);
    expect((await s.client.models.retrieve(second)).id).toBe(second);
    await expectApiError(h.gw.client(restricted.secret).models.retrieve(s.model), 404, "model_not_found");
  });
});

describe("runs", () => {
  it("attributes a request to its run; a cancelled run is refused with run_cancelled; another key's run is 404", async () => {
    const s = await setup();
    const run = await startRun(s.viewer, { keyId: s.key.id, mode: "QUICK", cap: "5" });
    const client = h.gw.client(s.secret, { headers: { "x-run-id": run.id } });
    const { response } = await client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "run" }], max_tokens: 10 }).withResponse();
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(receipt.runId).toBe(run.id);

    const otherKey = await apiKey(s.viewer, s.project.id);
    const foreign = h.gw.client(otherKey.secret, { headers: { "x-run-id": run.id } });
    await expectApiError(foreign.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "run" }] }), 404, "run_not_found");

    await cancelRun(s.viewer, run.id);
    const error = await expectApiError(client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "run" }] }), 402, "run_cancelled");
    expect(await failedRequest(error.requestID!)).toMatchObject({ cause: "RUN_CANCELLED", runId: run.id, charge: 0n });
  });
});

describe("bad input", () => {
  const post = (secret: string, body: string, path = "/chat/completions") =>
    fetch(`${h.gw.url}${path}`, { method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" }, body });

  it("malformed JSON is a 400 in OpenAI's shape, recorded as BAD_REQUEST", async () => {
    const s = await setup();
    const res = await post(s.secret, "{not json");
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { message: string; type: string; code: string; param: unknown } };
    expect(body.error).toMatchObject({ type: "invalid_request_error", code: "invalid_json", param: null });
    expect(await failedRequest(res.headers.get("x-request-id")!)).toMatchObject({ cause: "BAD_REQUEST", httpStatus: 400 });
  });

  it("invalid fields are 400s, never 500s", async () => {
    const s = await setup();
    for (const body of [
      "[]",
      "null",
      JSON.stringify({ messages: [] }),
      JSON.stringify({ model: s.model, messages: "hello" }),
      JSON.stringify({ model: s.model, messages: [null] }),
      JSON.stringify({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: -1 }),
      JSON.stringify({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 1.5 }),
      JSON.stringify({ model: s.model, messages: [{ role: "user", content: "x" }], n: 0 }),
    ]) {
      const res = await post(s.secret, body);
      expect(res.status, body).toBe(400);
      expect(((await res.json()) as { error: { type: string } }).error.type).toBe("invalid_request_error");
    }
    const emb = await post(s.secret, JSON.stringify({ model: s.model, input: { not: "valid" } }), "/embeddings");
    expect(emb.status).toBe(400);
  });

  it("special tokens in a prompt are counted, not rejected", async () => {
    const s = await setup();
    const res = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "<|endoftext|><|im_start|>" }], max_tokens: 5 });
    expect(res.choices).toHaveLength(1);
  });

  it("a body over the limit is 413", async () => {
    const s = await setup();
    const big = JSON.stringify({ model: s.model, messages: [{ role: "user", content: "x".repeat(300 * 1024) }] });
    const res = await post(s.secret, big);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("request_too_large");
    expect(res.headers.get("x-request-id")).toBeTruthy();
  });

  it("unknown paths and methods answer in OpenAI's shape with a request id", async () => {
    const res = await fetch(`${h.gw.url}/completions/legacy`, { method: "POST", body: "{}" });
    expect(res.status).toBe(404);
    expect(res.headers.get("x-request-id")).toBeTruthy();
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unknown_url");
    const get = await fetch(`${h.gw.url}/chat/completions`);
    expect(get.status).toBe(405);
  });
});
