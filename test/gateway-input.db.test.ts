// Hardening of what a client sends (issue 8, points 1, 7, 11 and the NUL part of 13): prompt
// counting cannot stall the process, absurd upstream usage is charged at the reservation and
// flagged, bodies are validated as OpenAI validates them and every billable part is bounded from
// the request's own fields, and control characters in strings that reach SQL are a 400.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_TEXT } from "./support/fake-upstream.ts";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { codes, gql, startTestServer, token } from "./support/graphql.ts";
import { route, world } from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { setRouteLimits } from "../src/routing/index.ts";
import { recordFailure } from "../src/money/writer.ts";
import { countChatPrompt, imageTokens, outputBound, reservedPromptTokens } from "../src/gateway/tokens.ts";
import type { RunningServer } from "../src/server.ts";

const h = useGatewayHarness({ MAX_BODY_BYTES: String(5 * 1024 * 1024) });

/** A funded org, a key and a one-channel route priced 1 micro per token both ways (charges read as token counts). */
async function setup(upstreamModel = uid("up")) {
  const w = await world({ credit: "1000" });
  const model = uid("gpt-test");
  const r = await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: h.fake.url, upstreamModel, price: ["1", "1"] }]);
  return { ...w, model, upstreamModel, route: r.route, client: h.gw.client(w.secret) };
}

type ErrorBody = { error: { message: string; type: string; code: string | null; param: string | null } };

const post = (secret: string, body: unknown, path = "/chat/completions", headers: Record<string, string> = {}) =>
  fetch(`${h.gw.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

/**
 * Usage far beyond any reservation: the charge is then capped at exactly what was held for the
 * request (its worst case), on both money paths (a Hold row's amount, or a hold inside leases).
 */
const ABSURD_USAGE = { prompt_tokens: 3e9, completion_tokens: 7 };
const receiptOf = (requestId: string) => h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });

/** Deterministic CJK text with no spaces or punctuation: one pre-tokenized piece. */
function cjkRun(n: number): string {
  const parts: string[] = [];
  let s = 11;
  for (let done = 0; done < n; ) {
    const k = Math.min(50_000, n - done);
    const codes = new Array<number>(k);
    for (let i = 0; i < k; i++) {
      s = (s * 1103515245 + 12345) % 2147483648;
      codes[i] = 0x4e00 + (s % 20000);
    }
    parts.push(String.fromCharCode(...codes));
    done += k;
  }
  return parts.join("");
}

describe("point 1: prompt counting never stalls the process", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(() => server?.close());

  /** Polls /healthz every 50 ms while `work` runs; returns each poll's latency. */
  async function pollHealthWhile<T>(work: Promise<T>): Promise<{ result: T; latencies: number[] }> {
    const latencies: number[] = [];
    let done = false;
    const poller = (async () => {
      while (!done) {
        const t0 = performance.now();
        const res = await fetch(`${server.url}/healthz`);
        await res.text();
        latencies.push(performance.now() - t0);
        expect(res.status).toBe(200);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      const result = await work;
      return { result, latencies };
    } finally {
      done = true;
      await poller;
    }
  }

  const body4mb = (s: { model: string }, endpoint: "chat" | "embeddings") => {
    const run = cjkRun(1_390_000); // ≈ 4.17 MB of UTF-8, under the default 4 MiB body limit
    return JSON.stringify(endpoint === "chat" ? { model: s.model, messages: [{ role: "user", content: run }], max_tokens: 5 } : { model: s.model, input: run });
  };

  it.each(["chat", "embeddings"] as const)("a 4 MB %s body of one unbroken CJK run is answered while /healthz answers within 1 s throughout", async (endpoint) => {
    const s = await setup();
    // The fake upstream reports fixed usage: it must not spend the test process's time tokenizing 4 MB.
    // Beyond any reservation, so the charge shows what was reserved.
    h.fake.set(s.upstreamModel, { type: "ok", usage: ABSURD_USAGE });
    const body = body4mb(s, endpoint);
    expect(Buffer.byteLength(body)).toBeGreaterThan(4_000_000);
    const path = endpoint === "chat" ? "/v1/chat/completions" : "/v1/embeddings";
    const started = performance.now();
    const { result, latencies } = await pollHealthWhile(
      fetch(`${server.url}${path}`, { method: "POST", headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" }, body }).then(async (r) => ({
        status: r.status,
        id: r.headers.get("x-request-id")!,
        text: await r.text(),
      })),
    );
    const elapsed = performance.now() - started;
    expect(result.status, result.text.slice(0, 300)).toBe(200);
    expect(latencies.length).toBeGreaterThanOrEqual(Math.min(3, Math.floor(elapsed / 400)));
    expect(Math.max(...latencies)).toBeLessThan(1000);
    // The reservation stayed an upper bound: the UTF-8 bytes of the run (+10 % and 16) at least.
    const receipt = await receiptOf(result.id);
    expect(receipt.usageExceededReservation).toBe(true);
    expect(receipt.charge).toBeGreaterThanOrEqual(BigInt(1_390_000 * 3));
  });
});

describe("point 7: absurd upstream usage is charged at the reservation and flagged", () => {
  it.each([false, true])("prompt_tokens 3e9 (stream: %s): 200, charged exactly the reservation, flagged, the ledger agrees", async (stream) => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", usage: ABSURD_USAGE });
    const before = await walletBucket(s.org.id, "CREDIT");
    const body = { model: s.model, messages: [{ role: "user", content: "hello" }], max_tokens: 20, stream };
    const res = await post(s.secret, body);
    const text = await res.text();
    expect(res.status, text).toBe(200);
    if (stream) expect(text).toContain("data: [DONE]");
    else expect((JSON.parse(text) as { choices: Array<{ message: { content: string } }> }).choices[0]!.message.content).toBe(DEFAULT_TEXT);
    const requestId = res.headers.get("x-request-id")!;
    const receipt = await receiptOf(requestId);
    // The reservation is what the gateway computes from the request itself, and the charge is exactly it.
    const count = await countChatPrompt(body);
    const reservation = BigInt(reservedPromptTokens(count, [s.upstreamModel], null) + outputBound(body, 4096));
    expect(receipt.charge).toBe(reservation);
    expect(receipt.usageExceededReservation).toBe(true);
    expect(receipt.promptTokens).toBe(2_147_483_647); // stored clamped, never overflowing
    expect(receipt.ledgerEntry!.amount).toBe(-receipt.charge);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(receipt.charge);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("usage within the reservation is charged as reported and not flagged", async () => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: 9, completion_tokens: 7 } });
    const res = await post(s.secret, { model: s.model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 });
    expect(res.status).toBe(200);
    const receipt = await receiptOf(res.headers.get("x-request-id")!);
    expect(receipt).toMatchObject({ charge: 16n, usageExceededReservation: false, promptTokens: 9, completionTokens: 7 });
  });

  it.each([
    ["negative", -5],
    ["fractional", 1.5],
    ["a string", "12"],
  ])("malformed usage (%s) is ignored and the request charged from counted tokens, never a 500", async (_name, bad) => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: bad as number, completion_tokens: 3 } });
    const res = await post(s.secret, { model: s.model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 });
    expect(res.status).toBe(200);
    const receipt = await receiptOf(res.headers.get("x-request-id")!);
    expect(receipt.promptTokens).toBeGreaterThan(0);
    expect(receipt.charge).toBeGreaterThan(0n);
  });

  it("the flag is exposed on the GraphQL Receipt type, with the charge", async () => {
    const s = await setup();
    h.fake.set(s.upstreamModel, { type: "ok", usage: { prompt_tokens: 3e9, completion_tokens: 1 } });
    const res = await post(s.secret, { model: s.model, messages: [{ role: "user", content: "hello" }], max_tokens: 20 });
    expect(res.status).toBe(200);
    const admin = await token("PLATFORM_ADMIN");
    const r = await gql(admin, `query($key: ID) { receipts(first: 5, filter: { keyId: $key }) { edges { node { usageExceededReservation promptTokens charge { amount } } } } }`, { key: s.key.id });
    expect(r.errors).toBeUndefined();
    const node = (r.data as { receipts: { edges: Array<{ node: { usageExceededReservation: boolean; promptTokens: number; charge: { amount: string } } }> } }).receipts.edges[0]!.node;
    expect(node.usageExceededReservation).toBe(true);
    expect(node.promptTokens).toBe(2_147_483_647);
    expect(node.charge.amount).toBe(res.headers.get("x-tokengate-charge"));
  });
});

describe("point 11: bodies are validated as OpenAI validates them", () => {
  const base = (model: string) => ({ model, messages: [{ role: "user", content: "hi" }] });
  const cases: Array<[string, (model: string) => unknown, string, string?]> = [
    ["a non-boolean stream", (m) => ({ ...base(m), stream: "yes" }), "stream", "invalid_type"],
    ["stream: 1", (m) => ({ ...base(m), stream: 1 }), "stream", "invalid_type"],
    ["max_tokens 0", (m) => ({ ...base(m), max_tokens: 0 }), "max_tokens", "integer_below_min_value"],
    ["max_completion_tokens 0", (m) => ({ ...base(m), max_completion_tokens: 0 }), "max_completion_tokens", "integer_below_min_value"],
    ["max_tokens as a string", (m) => ({ ...base(m), max_tokens: "100" }), "max_tokens", "invalid_type"],
    ["n over 128", (m) => ({ ...base(m), n: 129 }), "n", "integer_above_max_value"],
    ["temperature as a string", (m) => ({ ...base(m), temperature: "hot" }), "temperature", "invalid_type"],
    ["temperature over 2", (m) => ({ ...base(m), temperature: 3 }), "temperature", "decimal_above_max_value"],
    ["top_p negative", (m) => ({ ...base(m), top_p: -0.1 }), "top_p", "decimal_below_min_value"],
    ["empty messages", (m) => ({ model: m, messages: [] }), "messages", "empty_array"],
    ["an unknown role", (m) => ({ model: m, messages: [{ role: "wizard", content: "hi" }] }), "messages[0].role", "invalid_value"],
    ["a missing role", (m) => ({ model: m, messages: [{ content: "hi" }] }), "messages[0].role"],
    ["a user message without content", (m) => ({ model: m, messages: [{ role: "user" }] }), "messages[0].content"],
    ["content as a number", (m) => ({ model: m, messages: [{ role: "user", content: 42 }] }), "messages[0].content", "invalid_type"],
    ["an unknown part type", (m) => ({ model: m, messages: [{ role: "user", content: [{ type: "video", video: {} }] }] }), "messages[0].content[0].type", "invalid_value"],
    [
      "an image part in a system message",
      (m) => ({ model: m, messages: [{ role: "system", content: [{ type: "image_url", image_url: { url: "https://x/y.png" } }] }] }),
      "messages[0].content[0].type",
    ],
    ["a text part without text", (m) => ({ model: m, messages: [{ role: "user", content: [{ type: "text" }] }] }), "messages[0].content[0].text"],
    [
      "an image detail OpenAI does not know",
      (m) => ({ model: m, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://x/y.png", detail: "ultra" } }] }] }),
      "messages[0].content[0].image_url.detail",
    ],
    ["a tool message without tool_call_id", (m) => ({ model: m, messages: [{ role: "tool", content: "42" }] }), "messages[0].tool_call_id"],
    ["tools not an array", (m) => ({ ...base(m), tools: { type: "function" } }), "tools", "invalid_type"],
    ["stop with five sequences", (m) => ({ ...base(m), stop: ["a", "b", "c", "d", "e"] }), "stop"],
    ["stream_options.include_usage not a boolean", (m) => ({ ...base(m), stream: true, stream_options: { include_usage: "yes" } }), "stream_options.include_usage"],
    ["model as a number", () => ({ model: 5, messages: [{ role: "user", content: "hi" }] }), "model", "invalid_type"],
  ];

  it.each(cases)("%s → 400 invalid_request_error naming the param, recorded, not forwarded", async (_name, make, param, code) => {
    const s = await setup();
    const sent = h.fake.requests.length;
    const res = await post(s.secret, make(s.model));
    expect(res.status).toBe(400);
    const body = (await res.json()) as ErrorBody;
    expect(body.error.type).toBe("invalid_request_error");
    expect(body.error.param).toBe(param);
    if (code) expect(body.error.code).toBe(code);
    expect(h.fake.requests.length).toBe(sent);
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: res.headers.get("x-request-id")! } });
    expect(failed).toMatchObject({ cause: "BAD_REQUEST", httpStatus: 400, charge: 0n });
  });

  it.each([
    ["input an object", { input: { not: "valid" } }, "input"],
    ["an empty input array", { input: [] }, "input"],
    ["a negative token", { input: [1, -2, 3] }, "input"],
    ["a mixed array", { input: ["a", 5] }, "input[1]"],
    ["an empty token array", { input: [[1, 2], []] }, "input[1]"],
    ["an unknown encoding_format", { input: "x", encoding_format: "hex" }, "encoding_format"],
    ["dimensions 0", { input: "x", dimensions: 0 }, "dimensions"],
  ])("embeddings with %s → 400 naming %s", async (_name, fields, param) => {
    const s = await setup();
    const res = await post(s.secret, { model: s.model, ...fields }, "/embeddings");
    expect(res.status).toBe(400);
    expect(((await res.json()) as ErrorBody).error.param).toBe(param);
  });

  it("a body nested 100,000 levels deep (in an unknown field or in tools) is a 400, never a 500", async () => {
    const s = await setup();
    const deep = `${"[".repeat(100_000)}${"]".repeat(100_000)}`;
    for (const raw of [
      `{"model":${JSON.stringify(s.model)},"messages":[{"role":"user","content":"hi"}],"junk":${deep}}`,
      `{"model":${JSON.stringify(s.model)},"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":${deep}}}]}`,
    ]) {
      const res = await post(s.secret, raw);
      expect(res.status).toBe(400);
      expect(((await res.json()) as ErrorBody).error).toMatchObject({ type: "invalid_request_error", code: "nested_too_deeply" });
    }
  });

  it("valid requests with every part shape OpenAI accepts still pass", async () => {
    const s = await setup("gpt-4o-2024-08-06");
    const res = await post(s.secret, {
      model: s.model,
      messages: [
        { role: "developer", content: [{ type: "text", text: "be brief" }] },
        {
          role: "user",
          content: [
            { type: "text", text: "what is this?" },
            { type: "image_url", image_url: { url: "https://example.com/a.png", detail: "low" } },
          ],
          name: "ann",
        },
        { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }] },
        { role: "tool", content: "42", tool_call_id: "c1" },
      ],
      tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }],
      stream: false,
      temperature: 0.2,
      stop: "END",
      max_completion_tokens: 30,
      n: 2,
      unknown_vendor_field: { passes: true },
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(h.fake.requests.at(-1)!.body!.unknown_vendor_field).toEqual({ passes: true });
  });
});

describe("point 11: every billable part is bounded from the request's own fields", () => {
  /**
   * The amount held for a request (price 1 micro per token: the amount is the reserved token
   * count), read from its receipt: the upstream reports usage beyond any reservation, so the
   * charge is capped at exactly the hold. -1 when the request got no receipt.
   */
  async function reserved(s: Awaited<ReturnType<typeof setup>>, body: Record<string, unknown>): Promise<{ status: number; amount: bigint; text: string }> {
    h.fake.set(s.upstreamModel, { type: "ok", usage: ABSURD_USAGE });
    const res = await post(s.secret, { model: s.model, ...body });
    const text = await res.text();
    const receipt = await h.database.prisma.receipt.findUnique({ where: { requestId: res.headers.get("x-request-id")! } });
    if (receipt) expect(receipt.usageExceededReservation).toBe(true);
    return { status: res.status, amount: receipt?.charge ?? -1n, text };
  }
  const textOnly = async (messages: unknown[]) => reservedPromptTokens(await countChatPrompt({ messages }), [], null);

  it("an image at high / auto detail reserves the upstream model's worst case (8 tiles); low reserves the base", async () => {
    const image = (detail?: string) => ({ type: "image_url", image_url: { url: "https://example.com/big.png", ...(detail ? { detail } : {}) } });
    const text = { type: "text", text: "describe" };
    const s = await setup(`gpt-4o-mini-${uid("v")}`);
    const msgs = (detail?: string) => [{ role: "user", content: [text, image(detail)] }];
    const base = await textOnly([{ role: "user", content: [text] }]);
    expect((await reserved(s, { messages: msgs("high"), max_tokens: 10 })).amount).toBe(BigInt(base + 2833 + 5667 * 8 + 10));
    expect((await reserved(s, { messages: msgs(), max_tokens: 10 })).amount).toBe(BigInt(base + 2833 + 5667 * 8 + 10));
    expect((await reserved(s, { messages: msgs("low"), max_tokens: 10 })).amount).toBe(BigInt(base + 2833 + 10));
    const g = await setup(`gpt-4o-${uid("v")}`);
    expect((await reserved(g, { messages: msgs("high"), max_tokens: 10 })).amount).toBe(BigInt(base + 85 + 170 * 8 + 10));
    expect(imageTokens({ detail: "high", size: null }, "gpt-4o")).toBe(1445);
  });

  it("n multiplies the output bound", async () => {
    const s = await setup();
    const messages = [{ role: "user", content: "hi" }];
    const base = await textOnly(messages);
    expect((await reserved(s, { messages, max_tokens: 50, n: 3 })).amount).toBe(BigInt(base + 150));
  });

  it("audio and file parts are refused unless the route sets maxUnboundedPartTokens, then each reserves it", async () => {
    const s = await setup();
    const audio = { type: "input_audio", input_audio: { data: "UklGRg==", format: "wav" } };
    const file = { type: "file", file: { file_id: "file-1" } };
    const messages = [{ role: "user", content: [{ type: "text", text: "transcribe" }, audio, file] }];
    const refused = await post(s.secret, { model: s.model, messages, max_tokens: 10 });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as ErrorBody).error).toMatchObject({ code: "unsupported_content", param: "messages", type: "invalid_request_error" });

    await setRouteLimits(s.viewer, { routeId: s.route.id, maxUnboundedPartTokens: 30_000 });
    const base = await textOnly([{ role: "user", content: [{ type: "text", text: "transcribe" }] }]);
    const ok = await reserved(s, { messages, max_tokens: 10 });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.amount).toBe(BigInt(base + 2 * 30_000 + 10));
  });
});

describe("point 13: control characters in strings that reach SQL", () => {
  it("a NUL byte in model is a 400 on the model param, recorded, never a 500", async () => {
    const s = await setup();
    for (const model of [`${s.model}\u0000`, "gpt\u0000-4o", "a\u0001b", "x".repeat(300)]) {
      const res = await post(s.secret, { model, messages: [{ role: "user", content: "hi" }] });
      expect(res.status, JSON.stringify(model)).toBe(400);
      const body = (await res.json()) as ErrorBody;
      expect(body.error).toMatchObject({ type: "invalid_request_error", param: "model" });
      const failed = await h.database.prisma.failedRequest.findUnique({ where: { requestId: res.headers.get("x-request-id")! } });
      expect(failed).toMatchObject({ cause: "BAD_REQUEST", httpStatus: 400 });
    }
    const emb = await post(s.secret, { model: "e\u0000", input: "x" }, "/embeddings");
    expect(emb.status).toBe(400);
  });

  it("admin inputs that reach SQL (names, model names, allowed models) with a NUL are BAD_USER_INPUT, never an internal error", async () => {
    const s = await setup();
    const admin = await token("PLATFORM_ADMIN");
    const v = { org: s.org.id, project: s.project.id };
    for (const [query, variables] of [
      [`mutation($org: ID) { createProject(input: { organizationId: $org, name: "web\u0000" }) { id } }`, v],
      [`mutation($project: ID!) { createApiKey(input: { projectId: $project, name: "k", allowedModels: ["gpt\u0000"] }) { secret } }`, v],
      [`mutation($org: ID) { upsertRoute(input: { organizationId: $org, model: "m\u0000", channels: [{ name: "c", baseUrl: "https://example.com/v1", upstreamModel: "u" }] }) { id } }`, v],
    ] as const) {
      const r = await gql(admin, query, variables);
      expect(r.errors?.length, query).toBeGreaterThan(0);
      expect(codes(r), query).toEqual(["BAD_USER_INPUT"]);
    }
  });

  it("a record whose text carries NUL is still written (NUL stored as U+FFFD), not lost", async () => {
    const s = await setup();
    const requestId = uid("req");
    await recordFailure(
      {
        requestId,
        organizationId: s.org.id,
        keyId: s.key.id,
        projectId: s.project.id,
        runId: null,
        routeId: null,
        channelId: null,
        requestedModel: "bad\u0000model",
        endpoint: "/v1/chat/completions",
        cause: "MODEL_UNKNOWN",
        capScope: null,
        message: "The model `bad\u0000model` does not exist",
        httpStatus: 404,
        upstreamStatus: null,
        attempts: 0,
        bucket: null,
        currency: null,
        promptTokens: 0,
        completionTokens: 0,
        priceSnapshotId: null,
        charge: 0n,
        estimated: false,
      },
      null,
    );
    const row = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId } });
    expect(row.requestedModel).toBe("bad\uFFFDmodel");
  });
});
