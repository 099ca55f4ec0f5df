// A client that hangs up is charged what the upstream bills (the prompt and what was generated),
// whatever the key's failed-request policy (here the default, NEVER): mid-stream, just before the
// usage chunk, and after a non-stream answer started. A raw HTTP client hangs up at precise points
// of an upstream scripted step by step.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";

const h = useGatewayHarness();
const PRICE = { inputPerMillion: parseMoney("3", "in"), outputPerMillion: parseMoney("12", "out") };
const USAGE = { prompt_tokens: 12, completion_tokens: 345 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An upstream that answers step by step; each step waits for the test to open its gate. */
class ScriptedUpstream {
  server!: http.Server;
  url = "";
  /** What the upstream has sent so far, per upstream model. */
  readonly progress = new Map<string, string>();
  private readonly gates = new Map<string, () => void>();
  private readonly waiting = new Map<string, Promise<void>>();

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      let raw = "";
      req.on("data", (c: Buffer) => (raw += c.toString()));
      req.on("end", () => void this.answer(JSON.parse(raw) as { model: string; stream?: boolean }, res).catch(() => res.destroy()));
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
  }

  gate(model: string): void {
    this.waiting.set(model, new Promise<void>((resolve) => this.gates.set(model, resolve)));
  }

  open(model: string): void {
    this.gates.get(model)?.();
  }

  async reached(model: string, step: string): Promise<void> {
    for (let i = 0; i < 400 && this.progress.get(model) !== step; i++) await sleep(10);
    expect(this.progress.get(model)).toBe(step);
  }

  private async answer(body: { model: string; stream?: boolean }, res: http.ServerResponse): Promise<void> {
    const model = body.model;
    const chunk = (extra: Record<string, unknown>) => `data: ${JSON.stringify({ id: "x", object: "chat.completion.chunk", created: 1, model, ...extra })}\n\n`;
    if (body.stream) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }], usage: null }));
      for (const word of ["one", " two", " three"]) res.write(chunk({ choices: [{ index: 0, delta: { content: word }, finish_reason: null }], usage: null }));
      res.write(chunk({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage: null }));
      this.progress.set(model, "finished");
      await this.waiting.get(model);
      res.write(chunk({ choices: [], usage: { ...USAGE, total_tokens: USAGE.prompt_tokens + USAGE.completion_tokens } }));
      res.end("data: [DONE]\n\n");
      this.progress.set(model, "ended");
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.flushHeaders();
    this.progress.set(model, "headers");
    await this.waiting.get(model);
    res.end(
      JSON.stringify({
        id: "x",
        object: "chat.completion",
        created: 1,
        model,
        choices: [{ index: 0, message: { role: "assistant", content: "one two three" }, finish_reason: "stop" }],
        usage: { ...USAGE, total_tokens: USAGE.prompt_tokens + USAGE.completion_tokens },
      }),
    );
    this.progress.set(model, "ended");
  }
}

const scripted = new ScriptedUpstream();
beforeAll(() => scripted.start());
afterAll(() => new Promise<void>((r) => scripted.server.close(() => r())));

async function setup(baseUrl: () => string) {
  const w = await world(); // default failed-request policy: NEVER
  expect(w.key.failedChargePolicy).toBe("NEVER");
  const model = uid("gpt");
  const upstreamModel = uid("up");
  await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl: baseUrl(), upstreamModel, price: ["3", "12"] }]);
  return { ...w, model, upstreamModel };
}

/** Sends a request with a raw HTTP client that hangs up when `hangUp` says so (given what it received), or when the test calls `destroy`. */
function rawRequest(secret: string, body: Record<string, unknown>, hangUp: (received: string) => boolean = () => false) {
  const req = http.request(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" } });
  const closed = new Promise<void>((resolve) => {
    req.on("error", () => resolve());
    req.on("close", () => resolve());
    req.on("response", (res) => {
      let received = "";
      res.on("data", (c: Buffer) => {
        received += c.toString();
        if (hangUp(received)) req.destroy();
      });
      res.on("error", () => resolve());
    });
  });
  req.end(JSON.stringify(body));
  return { destroy: () => req.destroy(), closed };
}

async function recorded(keyId: string) {
  for (let i = 0; i < 300; i++) {
    const receipt = await h.database.prisma.receipt.findFirst({ where: { keyId }, include: { ledgerEntry: true } });
    const failed = await h.database.prisma.failedRequest.findFirst({ where: { keyId }, include: { ledgerEntry: true } });
    if (receipt || failed) return { receipt, failed };
    await sleep(25);
  }
  throw new Error("nothing recorded");
}

describe("a client that hangs up is charged what the upstream bills, whatever the policy (NEVER here)", () => {
  it("mid-stream: the prompt and the streamed text are charged (counted, estimated), and the upstream is aborted", async () => {
    const s = await setup(() => h.fake.url);
    h.fake.set(s.upstreamModel, { type: "ok", delayMs: 80, text: " one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen" });
    const before = await walletBucket(s.org.id, "CREDIT");
    let events = 0;
    const client = rawRequest(s.secret, { model: s.model, messages: [{ role: "user", content: "leave early" }], max_tokens: 50, stream: true }, (received) => {
      events = received.split('"content":"').length - 1;
      return events >= 4;
    });
    await client.closed;
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.upstreamModel && r.aborted));
    const { receipt, failed } = await recorded(s.key.id);
    expect(receipt).toBeNull();
    expect(failed).toMatchObject({ cause: "CLIENT_CLOSED", estimated: true, attempts: 1 });
    expect(failed!.completionTokens).toBeGreaterThanOrEqual(3);
    expect(failed!.completionTokens).toBeLessThan(16);
    const expected = requestCharge(PRICE, failed!.promptTokens, failed!.completionTokens);
    expect(expected).toBeGreaterThan(0n);
    expect(failed!.charge).toBe(expected);
    expect(failed!.ledgerEntry!.amount).toBe(-expected);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("just before the usage chunk: the gateway reads on for the upstream's usage and charges it exactly (Receipt, status 499)", async () => {
    const s = await setup(() => scripted.url);
    scripted.gate(s.upstreamModel);
    const before = await walletBucket(s.org.id, "CREDIT");
    let requestId: string | null = null;
    const req = http.request(`${h.gw.url}/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${s.secret}`, "content-type": "application/json" } });
    const closed = new Promise<void>((resolve) => {
      req.on("error", () => resolve());
      req.on("close", () => resolve());
      req.on("response", (res) => {
        requestId = String(res.headers["x-request-id"]);
        let received = "";
        res.on("data", (c: Buffer) => {
          received += c.toString();
          if (received.includes('"finish_reason":"stop"')) req.destroy(); // hang up right after the last content, before usage
        });
        res.on("error", () => resolve());
      });
    });
    req.end(JSON.stringify({ model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 1000, stream: true }));
    await closed;
    await sleep(500); // the gateway has seen the client go
    scripted.open(s.upstreamModel);
    const { receipt, failed } = await recorded(s.key.id);
    expect(failed).toBeNull();
    expect(receipt).toMatchObject({ requestId, status: 499, promptTokens: USAGE.prompt_tokens, completionTokens: USAGE.completion_tokens });
    const expected = requestCharge(PRICE, USAGE.prompt_tokens, USAGE.completion_tokens);
    expect(receipt!.charge).toBe(expected);
    expect(receipt!.ledgerEntry!.amount).toBe(-expected);
    const after = await walletBucket(s.org.id, "CREDIT");
    expect(before.balance - after.balance).toBe(expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("just before the usage chunk, and the usage never comes: after the grace the prompt and the streamed text are charged (counted, estimated)", async () => {
    const s = await setup(() => scripted.url);
    scripted.gate(s.upstreamModel); // never opened
    const client = rawRequest(s.secret, { model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 1000, stream: true }, (received) => received.includes('"finish_reason":"stop"'));
    await client.closed;
    const { receipt, failed } = await recorded(s.key.id);
    expect(receipt).toBeNull();
    expect(failed).toMatchObject({ cause: "CLIENT_CLOSED", estimated: true, completionTokens: 3 });
    const expected = requestCharge(PRICE, failed!.promptTokens, 3);
    expect(failed!.charge).toBe(expected);
    expect(failed!.ledgerEntry!.amount).toBe(-expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("non-stream, after the upstream started answering: its answer is read to the end and its full usage charged (Receipt, status 499)", async () => {
    const s = await setup(() => scripted.url);
    scripted.gate(s.upstreamModel);
    const client = rawRequest(s.secret, { model: s.model, messages: [{ role: "user", content: "hi" }], max_tokens: 1000 });
    await scripted.reached(s.upstreamModel, "headers");
    await sleep(150); // the upstream's headers reached the gateway
    client.destroy();
    await client.closed;
    await sleep(500); // the gateway has seen the client go
    scripted.open(s.upstreamModel);
    const { receipt, failed } = await recorded(s.key.id);
    expect(failed).toBeNull();
    expect(receipt).toMatchObject({ status: 499, promptTokens: USAGE.prompt_tokens, completionTokens: USAGE.completion_tokens, stream: false });
    const expected = requestCharge(PRICE, USAGE.prompt_tokens, USAGE.completion_tokens);
    expect(receipt!.charge).toBe(expected);
    expect(receipt!.ledgerEntry!.amount).toBe(-expected);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });

  it("non-stream, before the upstream answered: the upstream call is aborted and the prompt is charged (estimated)", async () => {
    const s = await setup(() => h.fake.url);
    h.fake.set(s.upstreamModel, { type: "ok", delayMs: 3_000 });
    const client = rawRequest(s.secret, { model: s.model, messages: [{ role: "user", content: "bye" }], max_tokens: 5 });
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.upstreamModel));
    client.destroy();
    await h.fake.waitFor((rs) => rs.some((r) => r.model === s.upstreamModel && r.aborted));
    const { failed } = await recorded(s.key.id);
    expect(failed).toMatchObject({ cause: "CLIENT_CLOSED", completionTokens: 0, estimated: true });
    expect(failed!.charge).toBe(tokenCharge(failed!.promptTokens, PRICE.inputPerMillion));
    expect(failed!.charge).toBeGreaterThan(0n);
    await leasesReturned(h);
    expect((await walletBucket(s.org.id, "CREDIT")).held).toBe(0n);
  });
});
