// Upstream failures: fallback to the backup channel, 4xx passthrough without retry, the retry
// ceiling, hangs and stalls (timeouts), streams cut mid-way, and clients that hang up.
import http from "node:http";
import { describe, expect, it } from "vitest";
import { APIError } from "openai";
import { DEFAULT_TEXT } from "./support/fake-upstream.ts";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import type { FailedChargePolicy } from "../src/generated/prisma/enums.ts";
import { formatMoney, parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";

const FIRST_BYTE_MS = 600;
const IDLE_MS = 600;

const h = useGatewayHarness({ UPSTREAM_FIRST_BYTE_TIMEOUT_MS: String(FIRST_BYTE_MS), UPSTREAM_IDLE_TIMEOUT_MS: String(IDLE_MS), UPSTREAM_TOTAL_TIMEOUT_MS: "20000" });

const price = (input: string, output: string) => ({ inputPerMillion: parseMoney(input, "in"), outputPerMillion: parseMoney(output, "out") });

async function setup(policy: FailedChargePolicy = "NEVER", extra: { retryCeiling?: number } = {}) {
  const w = await world({ key: { failedChargePolicy: policy, ...extra } });
  const model = uid("gpt");
  const primary = uid("primary");
  const backup = uid("backup");
  const r = await route(w.viewer, w.org.id, model, [
    { name: "primary", baseUrl: h.fake.url, upstreamModel: primary, price: ["3", "12"] },
    { name: "backup", baseUrl: h.fake.url, upstreamModel: backup, price: ["5", "20"] },
  ]);
  return { ...w, model, primary, backup, route: r.route, channels: r.channels, client: h.gw.client(w.secret) };
}

async function caught(promise: Promise<unknown>): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

async function waitForFailure(keyId: string) {
  for (let i = 0; i < 200; i++) {
    const found = await h.database.prisma.failedRequest.findFirst({ where: { keyId }, include: { ledgerEntry: true } });
    if (found) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error("no FailedRequest recorded");
}

describe("fallback", () => {
  it("primary 500 → the backup answers; the receipt says fallback and which channel; NEVER: the failed attempt costs nothing", async () => {
    const s = await setup("NEVER");
    h.fake.set(s.primary, { type: "status", status: 500 });
    const before = await walletBucket(s.org.id, "CREDIT");
    const { data, response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "fall back" }], max_tokens: 40 }).withResponse();
    const requestId = response.headers.get("x-request-id")!;
    expect(response.headers.get("x-tokengate-upstream-model")).toBe(s.backup);
    expect(response.headers.get("x-tokengate-channel")).toBe("backup");
    const expected = requestCharge(price("5", "20"), data.usage!.prompt_tokens, data.usage!.completion_tokens);
    expect(response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));

    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId } });
    const backupChannel = s.channels.find((c) => c.name === "backup")!;
    expect(receipt).toMatchObject({ fallback: true, attempts: 2, channelId: backupChannel.id, channelRole: "BACKUP", upstreamModel: s.backup, charge: expected });
    // The backup has another price: its worst case was held anew after the first hold was dropped
    // uncharged. The request's one charge is the receipt's.
    const charges = await h.database.prisma.ledgerEntry.findMany({ where: { organizationId: s.org.id, kind: "CHARGE" } });
    expect(charges.map((e) => [e.amount, e.receiptId])).toEqual([[-expected, receipt.id]]);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    // Both holds are resolved: once idle nothing is held (on leases, once the leases went back).
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
    expect(h.fake.requests.filter((r) => r.model === s.primary)).toHaveLength(1);
  });

  it("a 429 and a refused connection also fall back", async () => {
    const w = await world();
    const model = uid("gpt");
    const good = uid("good");
    await route(w.viewer, w.org.id, model, [
      { name: "dead", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: uid("dead"), price: ["1", "1"] },
      { name: "limited", baseUrl: h.fake.url, upstreamModel: `limited-${good}`, price: ["1", "1"] },
      { name: "good", baseUrl: h.fake.url, upstreamModel: good, price: ["1", "1"] },
    ]);
    h.fake.set(`limited-${good}`, { type: "status", status: 429 });
    const { response } = await h.gw
      .client(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "x" }], max_tokens: 5 })
      .withResponse();
    expect(response.headers.get("x-tokengate-channel")).toBe("good");
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(receipt.attempts).toBe(3);
  });

  it("a 4xx caused by the request is passed back and never retried", async () => {
    const s = await setup("PROMPT_TOKENS");
    const upstreamError = { error: { message: "context too long", type: "invalid_request_error", code: "context_length_exceeded", param: "messages" } };
    h.fake.set(s.primary, { type: "status", status: 400, body: upstreamError });
    const error = await caught(s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "too long" }], max_tokens: 5 }));
    expect(error.status).toBe(400);
    expect(error.code).toBe("context_length_exceeded");
    expect(h.fake.requests.filter((r) => r.model === s.backup)).toHaveLength(0);
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
    expect(failed).toMatchObject({ cause: "BAD_REQUEST", httpStatus: 400, upstreamStatus: 400, attempts: 1 });
    // PROMPT_TOKENS: the prompt the upstream received is charged.
    expect(failed.charge).toBe(tokenCharge(failed.promptTokens, parseMoney("3", "in")));
  });

  it("the retry ceiling bounds the attempts: ceiling 0 → the backup is never tried, 502", async () => {
    const s = await setup("NEVER", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "status", status: 503 });
    const error = await caught(s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }));
    expect(error.status).toBe(502);
    expect(error.code).toBe("upstream_error");
    expect(h.fake.requests.filter((r) => r.model === s.backup)).toHaveLength(0);
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", httpStatus: 502, upstreamStatus: 503, attempts: 1, charge: 0n });
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("a key without backup routes only uses the primary", async () => {
    const w = await world({ key: { backupRoutes: false } });
    const model = uid("gpt");
    const primary = uid("primary");
    await route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: h.fake.url, upstreamModel: primary, price: ["1", "1"] },
      { name: "backup", baseUrl: h.fake.url, upstreamModel: uid("backup"), price: ["1", "1"] },
    ]);
    h.fake.set(primary, { type: "status", status: 500 });
    const error = await caught(h.gw.client(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }));
    expect(error.status).toBe(502);
  });
});

describe("timeouts", () => {
  it("an upstream that hangs → 504 within the configured timeout, and the upstream request is aborted", async () => {
    const s = await setup("NEVER", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "hang" });
    const started = Date.now();
    const error = await caught(s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hang" }], max_tokens: 5 }));
    const elapsed = Date.now() - started;
    expect(error.status).toBe(504);
    expect(error.code).toBe("upstream_timeout");
    expect(elapsed).toBeGreaterThanOrEqual(FIRST_BYTE_MS);
    expect(elapsed).toBeLessThan(FIRST_BYTE_MS + 4_000);
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.primary && r.aborted));
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
    expect(failed).toMatchObject({ cause: "UPSTREAM_TIMEOUT", httpStatus: 504, attempts: 1, charge: 0n });
  });

  it("a hanging primary falls back to the backup after the timeout", async () => {
    const s = await setup("NEVER");
    h.fake.set(s.primary, { type: "hang" });
    const { response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "hang" }], max_tokens: 5, stream: true }).withResponse();
    expect(response.headers.get("x-tokengate-channel")).toBe("backup");
  });

  it("a stream that stalls mid-way ends with an error event and a FailedRequest (UPSTREAM_TIMEOUT, estimated)", async () => {
    const s = await setup("FULL_USAGE", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "stall", afterChunks: 3 });
    const stream = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "stall" }], max_tokens: 50, stream: true });
    let text = "";
    const error = await (async () => {
      try {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(error).toBeInstanceOf(APIError);
    expect(text.length).toBeGreaterThan(0);
    const failed = await waitForFailure(s.key.id);
    expect(failed).toMatchObject({ cause: "UPSTREAM_TIMEOUT", estimated: true });
    expect(failed.completionTokens).toBeGreaterThan(0);
    expect(failed.charge).toBe(requestCharge(price("3", "12"), failed.promptTokens, failed.completionTokens));
  });
});

describe("streams cut short", () => {
  it("an upstream that never ends its response after [DONE] still completes the request", async () => {
    const s = await setup("NEVER", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "ok", holdOpen: true });
    const { data: stream, response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "open" }], max_tokens: 50, stream: true }).withResponse();
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    expect(text).toBe(DEFAULT_TEXT);
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(receipt.charge).toBeGreaterThan(0n);
  });

  it("a stream cut mid-way → FailedRequest charged per policy (FULL_USAGE) from the streamed text, flagged estimated", async () => {
    const s = await setup("FULL_USAGE", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "cut", afterChunks: 4, delayMs: 5 });
    const before = await walletBucket(s.org.id, "CREDIT");
    const { data: stream, response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "cut me" }], max_tokens: 50, stream: true }).withResponse();
    let text = "";
    let thrown: unknown = null;
    try {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(APIError);
    expect(text).toBe(DEFAULT_TEXT.split(/(?= )/).slice(0, 4).join(""));
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! }, include: { ledgerEntry: true } });
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", estimated: true, attempts: 1, upstreamStatus: 200 });
    expect(failed.completionTokens).toBe(4);
    const expected = requestCharge(price("3", "12"), failed.promptTokens, failed.completionTokens);
    expect(failed.charge).toBe(expected);
    expect(failed.ledgerEntry!.amount).toBe(-expected);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("with policy NEVER a cut stream costs nothing, but is still recorded as estimated", async () => {
    const s = await setup("NEVER", { retryCeiling: 0 });
    h.fake.set(s.primary, { type: "cut", afterChunks: 2 });
    const stream = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "cut" }], max_tokens: 50, stream: true });
    await expect(
      (async () => {
        for await (const _ of stream) void _;
      })(),
    ).rejects.toBeInstanceOf(APIError);
    const failed = await waitForFailure(s.key.id);
    expect(failed).toMatchObject({ cause: "UPSTREAM_ERROR", estimated: true, charge: 0n });
    expect(failed.ledgerEntry).toBeNull();
  });

  it("a client that disconnects mid-stream aborts the upstream request and is charged per policy (CLIENT_CLOSED)", async () => {
    const s = await setup("FULL_USAGE");
    h.fake.set(s.primary, { type: "ok", delayMs: 80, text: " one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen" });
    const stream = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "leave early" }], max_tokens: 50, stream: true });
    let received = 0;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content) received++;
      if (received === 3) break; // the SDK aborts the request
    }
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.primary && r.aborted));
    const failed = await waitForFailure(s.key.id);
    expect(failed).toMatchObject({ cause: "CLIENT_CLOSED", estimated: true, attempts: 1 });
    expect(failed.completionTokens).toBeGreaterThanOrEqual(3);
    expect(failed.completionTokens).toBeLessThan(16);
    const expected = requestCharge(price("3", "12"), failed.promptTokens, failed.completionTokens);
    expect(failed.charge).toBe(expected);
    expect(failed.ledgerEntry!.amount).toBe(-expected);
    expect(h.fake.requests.filter((r) => r.model === s.backup)).toHaveLength(0);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("a client that disconnects before the answer aborts the upstream call too (PROMPT_TOKENS)", async () => {
    const s = await setup("PROMPT_TOKENS");
    h.fake.set(s.primary, { type: "ok", delayMs: 3_000 });
    await new Promise<void>((resolve) => {
      const req = http.request(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" } });
      req.on("error", () => resolve());
      req.end(JSON.stringify({ model: s.model, messages: [{ role: "user", content: "bye" }], max_tokens: 5 }));
      setTimeout(() => {
        req.destroy();
        resolve();
      }, 300);
    });
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.primary && r.aborted));
    const failed = await waitForFailure(s.key.id);
    expect(failed).toMatchObject({ cause: "CLIENT_CLOSED", completionTokens: 0 });
    expect(failed.charge).toBe(tokenCharge(failed.promptTokens, parseMoney("3", "in")));
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });
});

describe("internal errors", () => {
  it("an unexpected error after the reservation is a 500 in OpenAI's shape, recorded, and the hold is released", async () => {
    const s = await setup("FULL_USAGE");
    // A credential that cannot be decrypted fails inside the gateway, after the hold was placed.
    await h.database.prisma.channel.updateMany({ where: { routeId: s.route.id }, data: { apiKeyCiphertext: "not-a-ciphertext" } });
    const res = await fetch(`${h.gw.url}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" },
      body: JSON.stringify({ model: s.model, messages: [{ role: "user", content: "boom" }], max_tokens: 5 }),
    });
    expect(res.status).toBe(500);
    const body = (await res.json()) as { error: { type: string; code: string; message: string } };
    expect(body.error).toMatchObject({ type: "server_error", code: "internal_error" });
    expect(body.error.message).not.toMatch(/cipher|decrypt|stack/i);
    const requestId = res.headers.get("x-request-id")!;
    expect(await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId } })).toMatchObject({ httpStatus: 500, charge: 0n, cause: "INTERNAL_ERROR" });
    expect(await h.database.prisma.ledgerEntry.count({ where: { organizationId: s.org.id, kind: "CHARGE" } })).toBe(0);
    // Released: on leases a hold left in memory would keep its leases in use, and held above 0.
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });
});

describe("channel health and live spend", () => {
  it("a primary that keeps failing goes DOWN and is skipped while it cools down", async () => {
    const s = await setup("NEVER");
    h.fake.set(s.primary, { type: "status", status: 502 });
    for (let i = 0; i < 3; i++) {
      const { response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }).withResponse();
      expect(response.headers.get("x-tokengate-channel")).toBe("backup");
    }
    expect(h.fake.requests.filter((r) => r.model === s.primary)).toHaveLength(3);
    // The state change is stored in the background: wait for it.
    let state = "";
    for (let i = 0; i < 100 && state !== "DOWN"; i++) {
      state = (await h.database.prisma.channel.findFirstOrThrow({ where: { routeId: s.route.id, name: "primary" } })).health;
      if (state !== "DOWN") await new Promise((r) => setTimeout(r, 20));
    }
    expect(state).toBe("DOWN");
    const { response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }).withResponse();
    expect(response.headers.get("x-tokengate-channel")).toBe("backup");
    expect(response.headers.get("x-tokengate-attempts")).toBe("1");
    expect(h.fake.requests.filter((r) => r.model === s.primary)).toHaveLength(3); // skipped
  });

  it("every settled or failed request is announced on the spend topic", async () => {
    const { events } = await import("./support/services.ts");
    const s = await setup("NEVER");
    const seen: Array<{ requestId: string; status: string; charge: string }> = [];
    const iterator = events.subscribe("spend")[Symbol.asyncIterator]();
    const collecting = (async () => {
      for (;;) {
        const next = await iterator.next();
        if (next.done) return;
        if (next.value.keyId === s.key.id) seen.push(next.value);
      }
    })();
    const { response } = await s.client.chat.completions.create({ model: s.model, messages: [{ role: "user", content: "x" }], max_tokens: 5 }).withResponse();
    const refused = await caught(s.client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }));
    for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    await iterator.return?.();
    await collecting;
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: response.headers.get("x-request-id")! } });
    expect(seen).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ requestId: receipt.requestId, status: "SETTLED", charge: receipt.charge.toString() }),
        expect.objectContaining({ requestId: refused.requestID, status: "FAILED", charge: "0" }),
      ]),
    );
  });
});
