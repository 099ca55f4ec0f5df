// A fake OpenAI-compatible upstream: a real node:http server (in the test process, or in its own
// process for the benchmark) that answers chat completions and legacy text completions (JSON, or
// SSE with a usage chunk when asked), the Responses API (JSON, or its typed SSE events ending in
// response.completed with the usage) and embeddings, and fails on demand per upstream model: an HTTP status, a hang, a stream
// cut mid-way or stalled, no usage. It records every request, including whether it was aborted.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { countTokens } from "gpt-tokenizer";

export type Behavior =
  | {
      type: "ok";
      /** The generated text; streamed one word per chunk. */
      text?: string;
      /** Fixed usage instead of counting tokens. */
      usage?: { prompt_tokens: number; completion_tokens: number };
      /** Token classes and cost reported with the usage, in each API's own shape (chat / completions: *_tokens_details; responses: input_ / output_tokens_details). */
      details?: UsageDetails;
      /** Leave usage out (an upstream that ignores stream_options.include_usage). */
      noUsage?: boolean;
      /** Delay before answering (non-stream) / between stream chunks. */
      delayMs?: number;
      /** Stream: keep the response open after `data: [DONE]` (never end it). */
      holdOpen?: boolean;
    }
  | { type: "status"; status: number; body?: unknown }
  /** An error whose message echoes the request's Authorization and Host headers (as some upstreams and proxies do). */
  | { type: "echo"; status: number; shape?: "openai" | "text" }
  | { type: "hang" }
  /** Stream: send `afterChunks` content chunks, then destroy the socket. */
  | { type: "cut"; afterChunks: number; delayMs?: number }
  /** Stream: send `afterChunks` content chunks, then go silent (idle timeout). */
  | { type: "stall"; afterChunks: number }
  /**
   * An answer whose content is `bytes` long, written cheaply from one reused buffer. Non-stream: a
   * JSON body (with Content-Length unless `chunked`), `usage` at its end unless `noUsage`. Stream: one
   * content event that long (no separator until it ends), then the finish, usage and [DONE] events.
   */
  | { type: "huge"; bytes: number; usage?: { prompt_tokens: number; completion_tokens: number }; noUsage?: boolean; chunked?: boolean }
  /** Responses API stream: `afterChunks` text deltas, then response.failed (with usage when given), then the end. */
  | { type: "response-failed"; afterChunks: number; usage?: { prompt_tokens: number; completion_tokens: number } };

export interface UsageDetails {
  cached_tokens?: number;
  cache_write_tokens?: number;
  reasoning_tokens?: number;
  /** usage.cost, as OpenRouter reports it. */
  cost?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown> | null;
  model: string | null;
  stream: boolean;
  /** The connection closed before the response was complete (the gateway aborted). */
  aborted: boolean;
  finished: boolean;
}

export interface FakeUpstream {
  /** Base URL in the OpenAI SDK convention, e.g. http://127.0.0.1:1234/v1 */
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** Sets the behavior for an upstream model name (persisting until reset). */
  set(model: string, behavior: Behavior): void;
  reset(): void;
  /** Waits until `predicate` holds for the recorded requests (polls; throws after timeoutMs). */
  waitFor(predicate: (requests: RecordedRequest[]) => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export const DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog while the gateway counts every token";

const tokenCache = new Map<string, number>();
function tokens(text: string): number {
  let n = tokenCache.get(text);
  if (n === undefined) {
    n = countTokens(text, { disallowedSpecial: new Set() });
    if (tokenCache.size < 10_000) tokenCache.set(text, n);
  }
  return n;
}

/** Prompt tokens the way OpenAI counts chat prompts (3 per message + 3 priming): never more than the gateway reserves. */
export function fakePromptTokens(body: Record<string, unknown>): number {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  let n = 3;
  for (const m of messages as Array<{ content?: unknown }>) {
    n += 3;
    if (typeof m?.content === "string") n += tokens(m.content);
    else if (Array.isArray(m?.content)) for (const p of m.content as Array<{ text?: unknown }>) if (typeof p?.text === "string") n += tokens(p.text);
  }
  return n;
}

/** Prompt tokens of a Responses API request, counted the way the gateway's bound covers (3 per message + 3). */
export function fakeResponsesPromptTokens(body: Record<string, unknown>): number {
  let n = 3;
  if (typeof body.instructions === "string") n += 3 + tokens(body.instructions);
  const input = body.input;
  if (typeof input === "string") return n + 3 + tokens(input);
  for (const item of Array.isArray(input) ? (input as Array<{ content?: unknown }>) : []) {
    n += 3;
    if (typeof item?.content === "string") n += tokens(item.content);
    else if (Array.isArray(item?.content)) for (const p of item.content as Array<{ text?: unknown }>) if (typeof p?.text === "string") n += tokens(p.text);
  }
  return n;
}

/** Prompt tokens of a legacy completions request. */
export function fakeCompletionPromptTokens(body: Record<string, unknown>): number {
  const prompt = body.prompt;
  if (typeof prompt === "string") return tokens(prompt);
  if (!Array.isArray(prompt)) return 0;
  if (typeof prompt[0] === "number") return prompt.length;
  return prompt.reduce<number>((n, p) => n + (typeof p === "string" ? tokens(p) : Array.isArray(p) ? p.length : 0), 0);
}

/** Usage in the Chat / Completions shape, with its details. */
function chatUsage(u: { prompt_tokens: number; completion_tokens: number }, d: UsageDetails | undefined): Record<string, unknown> {
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.prompt_tokens + u.completion_tokens,
    ...(d
      ? {
          prompt_tokens_details: { cached_tokens: d.cached_tokens ?? 0, audio_tokens: 0, ...(d.cache_write_tokens !== undefined ? { cache_write_tokens: d.cache_write_tokens } : {}) },
          completion_tokens_details: { reasoning_tokens: d.reasoning_tokens ?? 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
          ...(d.cost !== undefined ? { cost: d.cost } : {}),
        }
      : {}),
  };
}

/** Usage in the Responses API's shape. */
function responsesUsage(u: { prompt_tokens: number; completion_tokens: number }, d: UsageDetails | undefined): Record<string, unknown> {
  return {
    input_tokens: u.prompt_tokens,
    input_tokens_details: { cached_tokens: d?.cached_tokens ?? 0 },
    output_tokens: u.completion_tokens,
    output_tokens_details: { reasoning_tokens: d?.reasoning_tokens ?? 0 },
    total_tokens: u.prompt_tokens + u.completion_tokens,
    ...(d?.cost !== undefined ? { cost: d.cost } : {}),
  };
}

function embeddingTokens(input: unknown): number {
  if (typeof input === "string") return tokens(input);
  if (Array.isArray(input)) return input.reduce<number>((n, x) => n + (typeof x === "string" ? tokens(x) : Array.isArray(x) ? x.length : 1), 0);
  return 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startFakeUpstream(options: { port?: number; host?: string } = {}): Promise<FakeUpstream> {
  const behaviors = new Map<string, Behavior>();
  const requests: RecordedRequest[] = [];
  const sockets = new Set<import("node:net").Socket>();
  let counter = 0;

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let body: Record<string, unknown> | null = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
      } catch {
        body = null;
      }
      const path = (req.url ?? "/").split("?")[0]!;
      const record: RecordedRequest = {
        method: req.method ?? "GET",
        path,
        headers: req.headers,
        body,
        model: typeof body?.model === "string" ? body.model : null,
        stream: body?.stream === true,
        aborted: false,
        finished: false,
      };
      requests.push(record);
      res.on("close", () => {
        if (!res.writableFinished) record.aborted = true;
      });
      res.on("finish", () => {
        record.finished = true;
      });
      void answer(req, res, record).catch(() => res.destroy());
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.keepAliveTimeout = 60_000;

  async function answer(req: http.IncomingMessage, res: http.ServerResponse, record: RecordedRequest): Promise<void> {
    const body = record.body;
    const behavior: Behavior = (record.model && behaviors.get(record.model)) || { type: "ok" };
    if (!body) return json(res, 400, { error: { message: "invalid JSON", type: "invalid_request_error", code: null, param: null } });
    if (behavior.type === "hang") return; // never answer; the gateway must time out and abort
    if (behavior.type === "echo") {
      const echoed = `invalid credentials: Authorization: ${req.headers.authorization ?? "(none)"}; Host: ${req.headers.host ?? "(none)"}`;
      if (behavior.shape === "text") {
        res.writeHead(behavior.status, { "content-type": "text/plain" });
        res.end(echoed);
        return;
      }
      return json(res, behavior.status, { error: { message: echoed, type: "invalid_request_error", code: "echo", param: null } });
    }
    if (behavior.type === "status") {
      return json(res, behavior.status, behavior.body ?? { error: { message: `fake upstream failure ${behavior.status}`, type: "server_error", code: null, param: null } });
    }
    const id = `fake-${++counter}`;
    const created = Math.floor(Date.now() / 1000);
    if (behavior.type === "huge") return huge(res, record, behavior, id, created);

    if (record.path.endsWith("/embeddings")) {
      const inputs = Array.isArray(body.input) ? body.input : [body.input];
      const promptTokens = behavior.type === "ok" && behavior.usage ? behavior.usage.prompt_tokens : embeddingTokens(body.input);
      return json(res, 200, {
        object: "list",
        model: record.model,
        data: inputs.map((_, index) => ({ object: "embedding", index, embedding: [0.01 * (index + 1), -0.02, 0.03, 0.04] })),
        usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
      });
    }
    if (record.path.endsWith("/responses")) return responses(res, record, body, behavior, id, created);
    if (record.path.endsWith("/completions") && !record.path.endsWith("/chat/completions")) return completions(res, record, body, behavior, id, created);
    if (!record.path.endsWith("/chat/completions")) return json(res, 404, { error: { message: "unknown path", type: "invalid_request_error", code: null, param: null } });

    const text = behavior.type === "ok" && behavior.text !== undefined ? behavior.text : DEFAULT_TEXT;
    const words = text.split(/(?= )/);
    const usage = chatUsage(
      behavior.type === "ok" && behavior.usage ? behavior.usage : { prompt_tokens: fakePromptTokens(body), completion_tokens: tokens(text) },
      behavior.type === "ok" ? behavior.details : undefined,
    );
    const delayMs = (behavior.type === "ok" || behavior.type === "cut") && behavior.delayMs ? behavior.delayMs : 0;

    if (!record.stream) {
      if (delayMs) await sleep(delayMs);
      const payload: Record<string, unknown> = {
        id,
        object: "chat.completion",
        created,
        model: record.model,
        choices: [{ index: 0, message: { role: "assistant", content: text, refusal: null }, logprobs: null, finish_reason: "stop" }],
      };
      if (!(behavior.type === "ok" && behavior.noUsage)) payload.usage = usage;
      return json(res, 200, payload);
    }

    const includeUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true && !(behavior.type === "ok" && behavior.noUsage);
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const chunk = (delta: Record<string, unknown>, finish: string | null) =>
      `data: ${JSON.stringify({
        id,
        object: "chat.completion.chunk",
        created,
        model: record.model,
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
        ...(includeUsage ? { usage: null } : {}),
      })}\n\n`;
    const write = async (s: string) => {
      if (res.destroyed) throw new Error("gone");
      if (!res.write(s)) await new Promise<void>((r) => res.once("drain", r));
    };
    await write(chunk({ role: "assistant", content: "" }, null));
    for (let i = 0; i < words.length; i++) {
      if (behavior.type === "cut" && i === behavior.afterChunks) {
        await sleep(Math.max(delayMs, 20)); // let what was written reach the gateway first
        res.socket?.destroy();
        return;
      }
      if (behavior.type === "stall" && i === behavior.afterChunks) return; // silence
      if (delayMs) await sleep(delayMs);
      await write(chunk({ content: words[i] }, null));
    }
    await write(chunk({}, "stop"));
    if (includeUsage) await write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: record.model, choices: [], usage })}\n\n`);
    await write("data: [DONE]\n\n");
    if (behavior.type === "ok" && behavior.holdOpen) return;
    res.end();
  }

  const writer = (res: http.ServerResponse) => async (s: string) => {
    if (res.destroyed) throw new Error("gone");
    if (!res.write(s)) await new Promise<void>((r) => res.once("drain", r));
  };

  /** POST /v1/responses: a Response object, or its typed events (created … output_text.delta … completed with the usage). */
  async function responses(res: http.ServerResponse, record: RecordedRequest, body: Record<string, unknown>, behavior: Behavior, id: string, created: number): Promise<void> {
    const ok = behavior.type === "ok" ? behavior : null;
    const text = ok?.text ?? DEFAULT_TEXT;
    const words = text.split(/(?= )/);
    const counted = { prompt_tokens: fakeResponsesPromptTokens(body), completion_tokens: tokens(text) };
    const usage = ok?.noUsage ? null : responsesUsage(ok?.usage ?? ((behavior.type === "response-failed" && behavior.usage) || counted), ok?.details);
    const delayMs = (behavior.type === "ok" || behavior.type === "cut") && behavior.delayMs ? behavior.delayMs : 0;
    const respId = `resp_${id}`;
    const msgId = `msg_${id}`;
    const message = (status: string, content: string | null) => ({
      id: msgId,
      type: "message",
      status,
      role: "assistant",
      content: content === null ? [] : [{ type: "output_text", text: content, annotations: [], logprobs: [] }],
    });
    const response = (status: string, output: unknown[], u: unknown) => ({
      id: respId,
      object: "response",
      created_at: created,
      status,
      background: false,
      error: null,
      incomplete_details: null,
      instructions: body.instructions ?? null,
      max_output_tokens: body.max_output_tokens ?? null,
      model: record.model,
      output,
      parallel_tool_calls: true,
      previous_response_id: null,
      reasoning: { effort: null, summary: null },
      service_tier: "default",
      store: false,
      temperature: 1,
      text: { format: { type: "text" } },
      tool_choice: "auto",
      tools: [],
      top_p: 1,
      truncation: "disabled",
      usage: u,
      user: null,
      metadata: {},
    });
    if (!record.stream) {
      if (delayMs) await sleep(delayMs);
      return json(res, 200, response("completed", [message("completed", text)], usage));
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const write = writer(res);
    let seq = 0;
    const event = (type: string, payload: Record<string, unknown>) => write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...payload })}\n\n`);
    await event("response.created", { response: response("in_progress", [], null) });
    await event("response.in_progress", { response: response("in_progress", [], null) });
    await event("response.output_item.added", { output_index: 0, item: message("in_progress", null) });
    await event("response.content_part.added", { item_id: msgId, output_index: 0, content_index: 0, part: { type: "output_text", text: "", annotations: [] } });
    for (let i = 0; i < words.length; i++) {
      if (behavior.type === "cut" && i === behavior.afterChunks) {
        await sleep(Math.max(delayMs, 20));
        res.socket?.destroy();
        return;
      }
      if (behavior.type === "stall" && i === behavior.afterChunks) return;
      if (behavior.type === "response-failed" && i === behavior.afterChunks) {
        await event("response.failed", {
          response: { ...response("failed", [], behavior.usage ? usage : null), error: { code: "server_error", message: "The model failed to generate a response." } },
        });
        return void res.end();
      }
      if (delayMs) await sleep(delayMs);
      await event("response.output_text.delta", { item_id: msgId, output_index: 0, content_index: 0, delta: words[i], logprobs: [] });
    }
    await event("response.output_text.done", { item_id: msgId, output_index: 0, content_index: 0, text, logprobs: [] });
    await event("response.content_part.done", { item_id: msgId, output_index: 0, content_index: 0, part: { type: "output_text", text, annotations: [] } });
    await event("response.output_item.done", { output_index: 0, item: message("completed", text) });
    await event("response.completed", { response: response("completed", [message("completed", text)], usage) });
    if (ok?.holdOpen) return;
    res.end();
  }

  /** POST /v1/completions (legacy): a text_completion, or its chunks (usage chunk when asked) and [DONE]. */
  async function completions(res: http.ServerResponse, record: RecordedRequest, body: Record<string, unknown>, behavior: Behavior, id: string, created: number): Promise<void> {
    const ok = behavior.type === "ok" ? behavior : null;
    const text = ok?.text ?? DEFAULT_TEXT;
    const words = text.split(/(?= )/);
    const usage = chatUsage(ok?.usage ?? { prompt_tokens: fakeCompletionPromptTokens(body), completion_tokens: tokens(text) }, ok?.details);
    const delayMs = (behavior.type === "ok" || behavior.type === "cut") && behavior.delayMs ? behavior.delayMs : 0;
    const cmplId = `cmpl-${id}`;
    if (!record.stream) {
      if (delayMs) await sleep(delayMs);
      const payload: Record<string, unknown> = { id: cmplId, object: "text_completion", created, model: record.model, choices: [{ text, index: 0, logprobs: null, finish_reason: "stop" }] };
      if (!ok?.noUsage) payload.usage = usage;
      return json(res, 200, payload);
    }
    const includeUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true && !ok?.noUsage;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const write = writer(res);
    const chunk = (t: string, finish: string | null) =>
      `data: ${JSON.stringify({ id: cmplId, object: "text_completion", created, model: record.model, choices: [{ text: t, index: 0, logprobs: null, finish_reason: finish }] })}\n\n`;
    for (let i = 0; i < words.length; i++) {
      if (behavior.type === "cut" && i === behavior.afterChunks) {
        await sleep(Math.max(delayMs, 20));
        res.socket?.destroy();
        return;
      }
      if (behavior.type === "stall" && i === behavior.afterChunks) return;
      if (delayMs) await sleep(delayMs);
      await write(chunk(words[i]!, null));
    }
    await write(chunk("", "stop"));
    if (includeUsage) await write(`data: ${JSON.stringify({ id: cmplId, object: "text_completion", created, model: record.model, choices: [], usage })}\n\n`);
    await write("data: [DONE]\n\n");
    res.end();
  }

  async function huge(res: http.ServerResponse, record: RecordedRequest, b: Extract<Behavior, { type: "huge" }>, id: string, created: number): Promise<void> {
    const usage = b.usage ?? { prompt_tokens: 10, completion_tokens: 1000 };
    const usageJson = JSON.stringify({ ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens });
    // The content ends with an escaped look-alike of a usage object: only the real one may be read.
    const decoy = '\\"usage\\": {\\"prompt_tokens\\": 999999, \\"completion_tokens\\": 999999}';
    const write = async (s: string | Buffer) => {
      if (res.destroyed) throw new Error("gone");
      if (!res.write(s)) await new Promise<void>((r) => res.once("drain", r));
    };
    const filler = async () => {
      const block = Buffer.alloc(Math.min(1024 * 1024, b.bytes), "a");
      for (let left = b.bytes; left > 0; left -= block.length) await write(left >= block.length ? block : block.subarray(0, left));
      await write(decoy);
    };
    if (!record.stream) {
      const head = `{"id":"${id}","object":"chat.completion","created":${created},"model":${JSON.stringify(record.model)},"choices":[{"index":0,"message":{"role":"assistant","content":"`;
      const tail = `"},"logprobs":null,"finish_reason":"stop"}]${b.noUsage ? "" : `,"usage":${usageJson}`},"system_fingerprint":"fp_fake"}`;
      const length = Buffer.byteLength(head) + b.bytes + Buffer.byteLength(decoy) + Buffer.byteLength(tail);
      res.writeHead(200, { "content-type": "application/json", ...(b.chunked ? {} : { "content-length": length }) });
      await write(head);
      await filler();
      return void res.end(tail);
    }
    const event = (payload: Record<string, unknown>) => `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: record.model, ...payload })}\n\n`;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    await write(event({ choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }], usage: null }));
    await write(event({ choices: [{ index: 0, delta: { content: "Before the flood" }, finish_reason: null }], usage: null }));
    await write(`data: {"id":"${id}","object":"chat.completion.chunk","created":${created},"choices":[{"index":0,"delta":{"content":"`);
    await filler();
    await write(`"},"finish_reason":null}],"usage":null}\n\n`);
    await write(event({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage: null }));
    if (!b.noUsage) await write(`data: {"id":"${id}","object":"chat.completion.chunk","created":${created},"choices":[],"usage":${usageJson}}\n\n`);
    res.end("data: [DONE]\n\n");
  }

  function json(res: http.ServerResponse, status: number, payload: unknown): void {
    const data = JSON.stringify(payload);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
    res.end(data);
  }

  await new Promise<void>((resolve) => server.listen(options.port ?? 0, options.host ?? "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    port,
    requests,
    set: (model, behavior) => void behaviors.set(model, behavior),
    reset: () => {
      behaviors.clear();
      requests.length = 0;
    },
    async waitFor(predicate, timeoutMs = 5_000) {
      const until = Date.now() + timeoutMs;
      while (!predicate(requests)) {
        if (Date.now() > until) throw new Error("fake upstream: condition not met in time");
        await sleep(20);
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
