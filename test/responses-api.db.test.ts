// The Responses API (POST /v1/responses) and legacy text completions (POST /v1/completions)
// through the same pipeline as chat completions, driven by the clients users have: the official
// `openai` SDK's responses.create (JSON and stream) and completions.create, and the Vercel AI SDK's
// default provider (`openai(model)` calls the Responses API). Against the fake upstream (a real
// HTTP server): text and usage arrive as the upstream sent them, one receipt each with the exact
// charge (header, receipt, ledger, wallet), fallback, caps (402), a client hang-up, bad input and
// the stateful sub-resources (404 in OpenAI's shape).
import { describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";
import { DEFAULT_TEXT, fakeCompletionPromptTokens, fakeResponsesPromptTokens } from "./support/fake-upstream.ts";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { worstCase } from "../src/money/charges.ts";
import { formatMoney, parseMoney, requestCharge } from "../src/money/amounts.ts";
import { countTokens } from "gpt-tokenizer";
import { promptBound } from "../src/gateway/tokens.ts";
import { exportCsv } from "../src/exports/index.ts";
import { gqlOk, token } from "./support/graphql.ts";

const h = useGatewayHarness();
const PRICES: [string, string] = ["2.5", "10.333333"];
const PRICE = { inputPerMillion: parseMoney(PRICES[0], "in"), outputPerMillion: parseMoney(PRICES[1], "out") };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function setup(options: Parameters<typeof world>[0] = {}, backup = false) {
  const w = await world(options);
  const model = uid("gpt-resp");
  const upstreamModel = uid("up");
  const backupModel = uid("up-backup");
  const channels = [{ name: "primary", baseUrl: h.fake.url, upstreamModel, price: PRICES }];
  if (backup) channels.push({ name: "backup", baseUrl: h.fake.url, upstreamModel: backupModel, price: PRICES });
  const r = await route(w.viewer, w.org.id, model, channels);
  return { ...w, model, upstreamModel, backupModel, route: r.route, channels: r.channels, client: h.gw.client(w.secret) };
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
  return api;
}

const receiptOf = (requestId: string) => h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });

async function onlyRecord(keyId: string) {
  for (let i = 0; i < 200; i++) {
    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId }, include: { ledgerEntry: true } });
    const failed = await h.database.prisma.failedRequest.findMany({ where: { keyId }, include: { ledgerEntry: true } });
    if (receipts.length + failed.length > 0) return { receipts, failed };
    await sleep(25);
  }
  throw new Error("nothing recorded");
}

describe("POST /v1/responses with the openai SDK", () => {
  it("JSON: the text and the upstream's usage arrive; header, receipt, ledger and wallet agree with price × usage to the micro-unit; unknown fields pass through", async () => {
    const s = await setup();
    const before = await walletBucket(s.org.id, "CREDIT");
    const { data, response } = await s.client.responses
      .create({
        model: s.model,
        instructions: "Be brief.",
        input: "Say hello to the gateway",
        max_output_tokens: 64,
        some_future_field: { kept: true },
      } as OpenAI.Responses.ResponseCreateParamsNonStreaming)
      .withResponse();
    expect(data.output_text).toBe(DEFAULT_TEXT);
    const prompt = fakeResponsesPromptTokens({ instructions: "Be brief.", input: "Say hello to the gateway" });
    expect(data.usage).toMatchObject({ input_tokens: prompt, output_tokens: countTokens(DEFAULT_TEXT) });
    const expected = requestCharge(PRICE, prompt, countTokens(DEFAULT_TEXT));
    expect(expected).toBeGreaterThan(0n);
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
    expect(response.headers.get("x-tokengate-bucket")).toBe("CREDIT");
    expect(response.headers.get("x-tokengate-upstream-model")).toBe(s.upstreamModel);

    const receipt = await receiptOf(response.headers.get("x-request-id")!);
    expect(receipt).toMatchObject({
      endpoint: "/v1/responses",
      stream: false,
      promptTokens: prompt,
      completionTokens: countTokens(DEFAULT_TEXT),
      cachedPromptTokens: 0,
      reasoningTokens: 0,
      upstreamCost: null,
      charge: expected,
      status: 200,
    });
    expect(receipt.ledgerEntry!.amount).toBe(-expected);
    expect(before.balance - (await walletBucket(s.org.id, "CREDIT")).balance).toBe(expected);

    const upstream = h.fake.requests.find((r) => r.model === s.upstreamModel)!;
    expect(upstream.path).toBe("/v1/responses");
    expect(upstream.body).toMatchObject({ model: s.upstreamModel, input: "Say hello to the gateway", max_output_tokens: 64, some_future_field: { kept: true } });
    // A Responses API request is not given chat's stream_options.
    expect(upstream.body!.stream_options).toBeUndefined();
  });

  it("stream: the typed events arrive in order, usage from response.completed; one receipt with the exact charge; the charge comment precedes response.completed and no [DONE] is added", async () => {
    const s = await setup();
    const stream = await s.client.responses.create({ model: s.model, input: [{ role: "user", content: "Stream to me" }], max_output_tokens: 64, stream: true });
    const types: string[] = [];
    let text = "";
    let usage: OpenAI.Responses.ResponseUsage | undefined;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") usage = event.response.usage;
    }
    expect(text).toBe(DEFAULT_TEXT);
    expect(types[0]).toBe("response.created");
    expect(types.at(-1)).toBe("response.completed");
    const prompt = fakeResponsesPromptTokens({ input: [{ role: "user", content: "Stream to me" }] });
    expect(usage).toMatchObject({ input_tokens: prompt, output_tokens: countTokens(DEFAULT_TEXT) });
    const { receipts, failed } = await onlyRecord(s.key.id);
    expect(failed).toHaveLength(0);
    expect(receipts).toHaveLength(1);
    expect(receipts[0]).toMatchObject({ endpoint: "/v1/responses", stream: true, promptTokens: prompt, charge: requestCharge(PRICE, prompt, countTokens(DEFAULT_TEXT)) });

    // The wire, read raw: the charge comment comes after the receipt committed, right before the held-back terminal event.
    const raw = await fetch(`${h.gw.url}/responses`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" },
      body: JSON.stringify({ model: s.model, input: "raw", stream: true, max_output_tokens: 32 }),
    });
    const body = await raw.text();
    const rawPrompt = fakeResponsesPromptTokens({ input: "raw" });
    const amount = formatMoney(requestCharge(PRICE, rawPrompt, countTokens(DEFAULT_TEXT)));
    expect(body).toContain(`: tokengate-charge=${amount} currency=USD\n\nevent: response.completed\n`);
    expect(body.trimEnd().split("\n\n").at(-1)).toMatch(/^event: response\.completed\ndata: /);
    expect(body).not.toContain("[DONE]");
  });

  it("responses.stream(): the SDK's helper assembles the final response", async () => {
    const s = await setup();
    const runner = s.client.responses.stream({ model: s.model, input: "helper", max_output_tokens: 32 });
    const final = await runner.finalResponse();
    expect(final.output_text).toBe(DEFAULT_TEXT);
    expect(final.usage?.input_tokens).toBe(fakeResponsesPromptTokens({ input: "helper" }));
  });

  it("cached and reasoning tokens: charged at the snapshot's cached price, recorded by class with the upstream's cost; visible in GraphQL, spendSeries and CSV", async () => {
    const s = await setup();
    const { setPrice } = await import("../src/routing/index.ts");
    await setPrice(s.viewer, { channelId: s.channels[0]!.id, inputPerMillion: "2.5", outputPerMillion: "10.333333", cachedInputPerMillion: "0.25" });
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 50 }, details: { cached_tokens: 900, reasoning_tokens: 20, cost: 0.00042 } });
    // A prompt long enough that the hold covers the 1,000 prompt tokens the upstream reports.
    const input = "cache me ".repeat(500);
    const { data, response } = await s.client.responses.create({ model: s.model, input, max_output_tokens: 64 }).withResponse();
    expect(data.usage).toMatchObject({ input_tokens: 1000, input_tokens_details: { cached_tokens: 900 }, output_tokens: 50, output_tokens_details: { reasoning_tokens: 20 } });
    // ceil(100 × 2.5) + ceil(900 × 0.25) + ceil(50 × 10.333333) = 250 + 225 + 517 (each kind rounded up, DESIGN's rule)
    const expected = 992n;
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
    const receipt = await receiptOf(response.headers.get("x-request-id")!);
    expect(receipt).toMatchObject({
      promptTokens: 1000,
      cachedPromptTokens: 900,
      completionTokens: 50,
      reasoningTokens: 20,
      upstreamCost: "0.00042",
      charge: expected,
      usageExceededReservation: false,
    });
    expect(receipt.ledgerEntry!.amount).toBe(-expected);

    // Every class visible: the receipt and its snapshot in GraphQL, spendSeries sums, the CSV export, /v1/models.
    const admin = await token("PLATFORM_ADMIN");
    const q = await gqlOk<{ apiKey: { receipts: { edges: Array<{ node: Record<string, unknown> }> } } }>(
      admin,
      `query($id: ID!) { apiKey(id: $id) { receipts(first: 5) { edges { node {
         promptTokens cachedPromptTokens cacheWriteTokens audioPromptTokens completionTokens reasoningTokens audioCompletionTokens upstreamCost
         charge { amount currency } priceSnapshot { inputPerMillion { amount } cachedInputPerMillion { amount } cacheWritePerMillion { amount } audioOutputPerMillion { amount } } } } } } }`,
      { id: s.key.id },
    );
    expect(q.apiKey.receipts.edges[0]!.node).toEqual({
      promptTokens: 1000,
      cachedPromptTokens: 900,
      cacheWriteTokens: 0,
      audioPromptTokens: 0,
      completionTokens: 50,
      reasoningTokens: 20,
      audioCompletionTokens: 0,
      upstreamCost: "0.00042",
      charge: { amount: "0.000992", currency: "USD" },
      priceSnapshot: { inputPerMillion: { amount: "2.500000" }, cachedInputPerMillion: { amount: "0.250000" }, cacheWritePerMillion: null, audioOutputPerMillion: null },
    });
    const from = new Date(Date.now() - 3_600_000).toISOString();
    const to = new Date(Date.now() + 3_600_000).toISOString();
    const series = await gqlOk<{ spendSeries: Array<Record<string, unknown>> }>(
      admin,
      `query($input: SpendSeriesInput!) { spendSeries(input: $input) { requests promptTokens cachedPromptTokens completionTokens reasoningTokens spend { amount } } }`,
      { input: { organizationId: s.org.id, from, to, interval: "HOUR", groupBy: "KEY", keyId: s.key.id } },
    );
    expect(series.spendSeries).toEqual([{ requests: 1, promptTokens: 1000, cachedPromptTokens: 900, completionTokens: 50, reasoningTokens: 20, spend: { amount: "0.000992" } }]);
    let csv = "";
    for await (const part of exportCsv(s.viewer, "receipts", { keyId: s.key.id })) csv += part;
    const [header, row] = csv
      .trim()
      .split(/\r?\n/)
      .map((line) => line.split(","));
    const record = Object.fromEntries(header!.map((h, i) => [h, row![i]]));
    expect(record).toMatchObject({ promptTokens: "1000", cachedPromptTokens: "900", completionTokens: "50", reasoningTokens: "20", upstreamCost: "0.00042", charge: "0.000992" });
    const models = (await s.client.models.list()).data as unknown as Array<{ id: string; pricing: Record<string, string> }>;
    expect(models.find((m) => m.id === s.model)!.pricing).toMatchObject({
      input_per_million: "2.500000",
      cached_input_per_million: "0.250000",
      cache_write_per_million: "2.500000",
      output_per_million: "10.333333",
    });
  });

  it("a snapshot without a cached price charges as before classes existed (the cached tokens are still recorded); chat completions read prompt_tokens_details", async () => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 50 }, details: { cached_tokens: 900, reasoning_tokens: 20 } });
    const input = "cache me ".repeat(500);
    const viaResponses = await s.client.responses.create({ model: s.model, input, max_output_tokens: 64 }).withResponse();
    const viaChat = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: input }], max_tokens: 64 }).withResponse();
    expect(viaChat.data.usage).toMatchObject({ prompt_tokens_details: { cached_tokens: 900 }, completion_tokens_details: { reasoning_tokens: 20 } });
    // ceil(1000 × 2.5) + ceil(50 × 10.333333): today's formula.
    const today = requestCharge(PRICE, 1000, 50);
    expect(today).toBe(3017n);
    for (const { response } of [viaResponses, viaChat]) {
      expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(today));
      expect(await receiptOf(response.headers.get("x-request-id")!)).toMatchObject({ promptTokens: 1000, cachedPromptTokens: 900, reasoningTokens: 20, charge: today });
    }
  });
});

describe("POST /v1/responses: the pipeline's rules, as on chat completions", () => {
  it("fallback: a failing primary moves to the backup; the receipt says so", async () => {
    const s = await setup({}, true);
    h.fake.set(s.upstreamModel, { type: "status", status: 503 });
    const { data, response } = await s.client.responses.create({ model: s.model, input: "fall back", max_output_tokens: 32 }).withResponse();
    expect(data.output_text).toBe(DEFAULT_TEXT);
    expect(response.headers.get("x-tokengate-fallback")).toBe("true");
    expect(response.headers.get("x-tokengate-upstream-model")).toBe(s.backupModel);
    const receipt = await receiptOf(response.headers.get("x-request-id")!);
    expect(receipt).toMatchObject({ endpoint: "/v1/responses", fallback: true, attempts: 2, channelRole: "BACKUP", upstreamModel: s.backupModel });
    expect(receipt.charge).toBe(requestCharge(PRICE, fakeResponsesPromptTokens({ input: "fall back" }), countTokens(DEFAULT_TEXT)));
  });

  it("caps: the hold is bounded by max_output_tokens (402 budget_exceeded over the key's per-request maximum); an empty bucket is 402 insufficient_balance", async () => {
    const s = await setup({ key: { perRequestMaxCharge: "0.01" } });
    // The worst case of 1,000,000 output tokens is far over 0.01 USD: refused before the upstream is called.
    await expectApiError(s.client.responses.create({ model: s.model, input: "too big", max_output_tokens: 1_000_000 }), 402, "budget_exceeded");
    expect(h.fake.requests.some((r) => r.model === s.upstreamModel)).toBe(false);
    const failed = await h.database.prisma.failedRequest.findFirstOrThrow({ where: { keyId: s.key.id } });
    expect(failed).toMatchObject({ endpoint: "/v1/responses", cause: "BUDGET_EXCEEDED", capScope: "KEY_PER_REQUEST", httpStatus: 402, charge: 0n });
    // Just under the maximum: the worst case is prompt bound × input + max_output_tokens × output.
    const bounded = worstCase(PRICE, promptBound(3 + 4 + countTokens("small")), 500);
    expect(bounded).toBeLessThan(10_000n);
    const ok = await s.client.responses.create({ model: s.model, input: "small", max_output_tokens: 500 });
    expect(ok.output_text).toBe(DEFAULT_TEXT);

    const poor = await setup({ credit: "0" });
    await expectApiError(poor.client.responses.create({ model: poor.model, input: "no money", max_output_tokens: 32 }), 402, "insufficient_balance");
  });

  it("client hang-up mid-stream: the upstream is aborted; CLIENT_CLOSED, charged the prompt and what was streamed", async () => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", delayMs: 60, text: " one two three four five six seven eight nine ten eleven twelve thirteen fourteen" });
    const controller = new AbortController();
    const stream = await s.client.responses.create({ model: s.model, input: "leave early", max_output_tokens: 64, stream: true }, { signal: controller.signal });
    let deltas = 0;
    await (async () => {
      for await (const event of stream) {
        if (event.type === "response.output_text.delta" && ++deltas >= 3) controller.abort();
      }
    })().catch(() => undefined);
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.upstreamModel && r.aborted));
    const { receipts, failed } = await onlyRecord(s.key.id);
    expect(receipts).toHaveLength(0);
    expect(failed[0]).toMatchObject({ endpoint: "/v1/responses", cause: "CLIENT_CLOSED", estimated: true });
    expect(failed[0]!.completionTokens).toBeGreaterThanOrEqual(3);
    expect(failed[0]!.completionTokens).toBeLessThan(14);
    expect(failed[0]!.charge).toBe(requestCharge(PRICE, failed[0]!.promptTokens, failed[0]!.completionTokens));
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("an upstream that fails the response mid-stream (response.failed): the client gets the event and an error; UPSTREAM_ERROR recorded", async () => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "response-failed", afterChunks: 2 });
    const stream = await s.client.responses.create({ model: s.model, input: "fail me", max_output_tokens: 64, stream: true });
    const types: string[] = [];
    const error = await (async () => {
      for await (const event of stream) types.push(event.type);
    })().then(
      () => null,
      (e: unknown) => e,
    );
    expect(types).toContain("response.failed");
    expect(error).toBeInstanceOf(APIError);
    const { receipts, failed } = await onlyRecord(s.key.id);
    expect(receipts).toHaveLength(0);
    expect(failed[0]).toMatchObject({ endpoint: "/v1/responses", cause: "UPSTREAM_ERROR", httpStatus: 502 });
  });

  it("bad input is a 400 in OpenAI's shape naming the parameter; nothing reaches the upstream", async () => {
    const s = await setup();
    const cases: Array<[Record<string, unknown>, string, string]> = [
      [{ model: s.model, input: 5 }, "input", "invalid_type"],
      [{ model: s.model }, "input", "missing_required_parameter"],
      [{ model: s.model, input: "x", max_output_tokens: 8 }, "max_output_tokens", "integer_below_min_value"],
      [{ model: s.model, input: "x", background: true }, "background", "unsupported_value"],
      [{ model: s.model, input: [{ role: "wizard", content: "x" }] }, "input[0].role", "invalid_value"],
      [{ model: s.model, input: [{ role: "user", content: [{ type: "input_image", detail: "huge" }] }] }, "input[0].content[0].detail", "invalid_value"],
      [{ model: s.model, input: "x", temperature: 3 }, "temperature", "decimal_above_max_value"],
      [{ model: s.model, input: "x", stream: "yes" }, "stream", "invalid_type"],
    ];
    for (const [body, param, code] of cases) {
      const response = await fetch(`${h.gw.url}/responses`, { method: "POST", headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" }, body: JSON.stringify(body) });
      expect(response.status, JSON.stringify(body)).toBe(400);
      const error = ((await response.json()) as { error: { type: string; code: string; param: string } }).error;
      expect(error).toMatchObject({ type: "invalid_request_error", code, param });
    }
    // A stored context (previous_response_id) has no bound on its prompt: refused unless the route sets maxUnboundedPartTokens.
    await expectApiError(s.client.responses.create({ model: s.model, input: "more", previous_response_id: "resp_123" }), 400, "unsupported_content");
    expect(h.fake.requests.some((r) => r.model === s.upstreamModel)).toBe(false);
  });

  it("GET /v1/responses/{id} and the other stateful sub-resources: 404 unsupported_endpoint in OpenAI's shape (the SDK raises NotFoundError)", async () => {
    const s = await setup();
    const error = await expectApiError(s.client.responses.retrieve("resp_abc"), 404, "unsupported_endpoint");
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    await expectApiError(s.client.responses.cancel("resp_abc"), 404, "unsupported_endpoint");
    await expectApiError(s.client.responses.delete("resp_abc"), 404, "unsupported_endpoint");
    const items = await fetch(`${h.gw.url}/responses/resp_abc/input_items`, { headers: { authorization: `Bearer ${s.secret}` } });
    expect(items.status).toBe(404);
    expect(items.headers.get("x-request-id")).toBeTruthy();
    expect(((await items.json()) as { error: { code: string } }).error.code).toBe("unsupported_endpoint");
  });
});

describe("the Vercel AI SDK's default provider (openai(model) calls /v1/responses)", () => {
  it("generateText and streamText: the text, the upstream's usage, one receipt each with the exact charge", async () => {
    const s = await setup();
    const openai = createOpenAI({ apiKey: s.secret, baseURL: h.gw.url });
    const generated = await generateText({ model: openai(s.model), prompt: "Hello from the AI SDK", maxOutputTokens: 100, maxRetries: 0 });
    expect(generated.text).toBe(DEFAULT_TEXT);
    const upstream = h.fake.requests.filter((r) => r.model === s.upstreamModel);
    expect(upstream.map((r) => r.path)).toEqual(["/v1/responses"]);
    const prompt = fakeResponsesPromptTokens(upstream[0]!.body!);
    expect(generated.usage.inputTokens).toBe(prompt);
    expect(generated.usage.outputTokens).toBe(countTokens(DEFAULT_TEXT));

    const streamed = streamText({ model: openai(s.model), prompt: "Stream from the AI SDK", maxOutputTokens: 100, maxRetries: 0 });
    expect(await streamed.text).toBe(DEFAULT_TEXT);
    const usage = await streamed.usage;
    const second = h.fake.requests.filter((r) => r.model === s.upstreamModel)[1]!;
    expect(second.path).toBe("/v1/responses");
    expect(second.stream).toBe(true);
    expect(usage.inputTokens).toBe(fakeResponsesPromptTokens(second.body!));
    expect(usage.outputTokens).toBe(countTokens(DEFAULT_TEXT));

    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: s.key.id }, orderBy: { createdAt: "asc" } });
    expect(receipts).toHaveLength(2);
    expect(receipts.map((r) => [r.endpoint, r.stream])).toEqual([
      ["/v1/responses", false],
      ["/v1/responses", true],
    ]);
    expect(receipts[0]!.charge).toBe(requestCharge(PRICE, prompt, countTokens(DEFAULT_TEXT)));
    expect(receipts[1]!.charge).toBe(requestCharge(PRICE, fakeResponsesPromptTokens(second.body!), countTokens(DEFAULT_TEXT)));
  });
});

describe("POST /v1/completions (legacy text completions)", () => {
  it("JSON and stream with the openai SDK: text, usage and the exact charge; the usage chunk only when asked", async () => {
    const s = await setup();
    const { data, response } = await s.client.completions.create({ model: s.model, prompt: "Once upon a time", max_tokens: 40 }).withResponse();
    expect(data.choices[0]!.text).toBe(DEFAULT_TEXT);
    const prompt = fakeCompletionPromptTokens({ prompt: "Once upon a time" });
    expect(data.usage).toMatchObject({ prompt_tokens: prompt, completion_tokens: countTokens(DEFAULT_TEXT) });
    const expected = requestCharge(PRICE, prompt, countTokens(DEFAULT_TEXT));
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));
    expect(await receiptOf(response.headers.get("x-request-id")!)).toMatchObject({ endpoint: "/v1/completions", stream: false, charge: expected });

    const chunks: OpenAI.Completions.Completion[] = [];
    for await (const chunk of await s.client.completions.create({ model: s.model, prompt: "Stream it", max_tokens: 40, stream: true })) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0]?.text ?? "").join("")).toBe(DEFAULT_TEXT);
    expect(chunks.some((c) => c.usage)).toBe(false);
    const upstream = h.fake.requests.filter((r) => r.model === s.upstreamModel);
    expect(upstream.map((r) => r.path)).toEqual(["/v1/completions", "/v1/completions"]);
    expect(upstream[1]!.body!.stream_options).toEqual({ include_usage: true });

    const withUsage: OpenAI.Completions.Completion[] = [];
    for await (const chunk of await s.client.completions.create({ model: s.model, prompt: "Usage too", max_tokens: 40, stream: true, stream_options: { include_usage: true } })) withUsage.push(chunk);
    expect(withUsage.at(-1)!.usage).toMatchObject({ prompt_tokens: fakeCompletionPromptTokens({ prompt: "Usage too" }) });

    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: s.key.id, stream: true } });
    expect(receipts).toHaveLength(2);
    for (const r of receipts) expect(r.charge).toBe(requestCharge(PRICE, r.promptTokens, countTokens(DEFAULT_TEXT)));
  });

  it("the output bound is max_tokens × max(n, best_of) × prompts; bad input is a 400 naming the parameter", async () => {
    const s = await setup({ key: { perRequestMaxCharge: "0.05" } });
    // 3 prompts × best_of 4 × 1,000 tokens at 10.333333/M ≈ 0.124 USD > 0.05: refused. One prompt, one completion: served.
    await expectApiError(s.client.completions.create({ model: s.model, prompt: ["a", "b", "c"], max_tokens: 1000, n: 2, best_of: 4 }), 402, "budget_exceeded");
    expect((await s.client.completions.create({ model: s.model, prompt: "a", max_tokens: 1000 })).choices[0]!.text).toBe(DEFAULT_TEXT);
    await expectApiError(s.client.completions.create({ model: s.model, prompt: [] as string[] }), 400, "empty_array");
    await expectApiError(s.client.completions.create({ model: s.model, prompt: "x", n: 3, best_of: 2 }), 400, "invalid_value");
    await expectApiError(s.client.completions.create({ model: s.model } as OpenAI.Completions.CompletionCreateParamsNonStreaming), 400, "missing_required_parameter");
  });
});
