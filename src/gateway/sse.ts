// Server-sent events from the upstream: split into events, passed through as they came, with the
// usage chunk picked out (and hidden from clients that did not ask for it), `data: [DONE]` held
// back (the gateway sends it after the receipt is written), and the generated text kept so a
// stream cut short can be charged from what was streamed.
import { StringDecoder } from "node:string_decoder";

export interface Usage {
  /** All prompt (input) tokens, every prompt class included. */
  promptTokens: number;
  /** All generated (output) tokens, reasoning and audio included. */
  completionTokens: number;
  /** Of promptTokens: read from the upstream's prompt cache. */
  cachedPromptTokens?: number;
  /** Of promptTokens: written to the upstream's prompt cache. */
  cacheWriteTokens?: number;
  /** Of promptTokens: audio. */
  audioPromptTokens?: number;
  /** Of completionTokens: reasoning. */
  reasoningTokens?: number;
  /** Of completionTokens: audio. */
  audioCompletionTokens?: number;
  /** What the upstream said the request cost (`usage.cost`), as a plain decimal string. */
  upstreamCost?: string;
  /** A reported count was above MAX_USAGE_TOKENS and is stored clamped to it. */
  clamped?: boolean;
}

/**
 * The largest token count a record stores (the int columns' maximum). No real request comes near
 * it; a count above it is absurd, so it is clamped and the charge capped at the reservation.
 */
export const MAX_USAGE_TOKENS = 2_147_483_647;

function tokenCount(v: unknown): number | null {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) return null;
  return v;
}

const field = (v: unknown, name: string): unknown => (v && typeof v === "object" ? (v as Record<string, unknown>)[name] : undefined);

/** A class count inside a total: malformed or absent is 0 (the tokens are then charged at their total's price), never above the total. */
function classCount(total: number, ...candidates: unknown[]): number {
  for (const c of candidates) {
    const n = tokenCount(c);
    if (n !== null) return Math.min(n, total);
  }
  return 0;
}

const DECIMAL_COST = /^\d{1,20}(\.\d{1,20})?$/;

/** `usage.cost` as a plain decimal string (a number the way JSON wrote it, without exponent), or undefined when absent or not a non-negative number. */
export function upstreamCostText(v: unknown): string | undefined {
  if (typeof v === "string") return DECIMAL_COST.test(v.trim()) ? v.trim() : undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) return undefined;
  const text = String(v);
  const e = /^(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!e) return text;
  // 1.2e-7 → 0.00000012; 1e+21 → 1000000000000000000000
  const digits = e[1]! + (e[2] ?? "");
  const point = e[1]!.length + Number(e[3]);
  if (point <= 0) return `0.${"0".repeat(-point)}${digits}`.replace(/0+$/, "");
  return point >= digits.length ? digits + "0".repeat(point - digits.length) : `${digits.slice(0, point)}.${digits.slice(point)}`;
}

/**
 * Reads `usage` from an OpenAI response or chunk, in the Chat / Completions shape (`prompt_tokens`,
 * `completion_tokens`, `*_tokens_details`) or the Responses shape (`input_tokens`, `output_tokens`,
 * `input_tokens_details` / `output_tokens_details`); null when absent or malformed (not a
 * non-negative integer: then the gateway counts for itself). Token classes: cached prompt tokens
 * (`cached_tokens`, or DeepSeek's `prompt_cache_hit_tokens`), cache writes (`cache_write_tokens`,
 * as OpenRouter reports them), audio (`audio_tokens`) and reasoning (`reasoning_tokens`);
 * each at most its total. Counts above MAX_USAGE_TOKENS are clamped and flagged, never stored as
 * they came (they would overflow the token columns).
 */
export function readUsage(value: unknown): Usage | null {
  if (!value || typeof value !== "object") return null;
  const u = value as Record<string, unknown>;
  const responses = u.prompt_tokens === undefined && u.input_tokens !== undefined;
  const prompt = tokenCount(responses ? u.input_tokens : u.prompt_tokens);
  const rawCompletion = responses ? u.output_tokens : u.completion_tokens;
  const completion = rawCompletion === undefined || rawCompletion === null ? 0 : tokenCount(rawCompletion);
  if (prompt === null || completion === null) return null;
  const clamped = prompt > MAX_USAGE_TOKENS || completion > MAX_USAGE_TOKENS;
  const promptTokens = Math.min(prompt, MAX_USAGE_TOKENS);
  const completionTokens = Math.min(completion, MAX_USAGE_TOKENS);
  const promptDetails = responses ? u.input_tokens_details : u.prompt_tokens_details;
  const completionDetails = responses ? u.output_tokens_details : u.completion_tokens_details;
  const usage: Usage = { promptTokens, completionTokens };
  const classes: Array<[keyof Usage, number]> = [
    ["cachedPromptTokens", classCount(promptTokens, field(promptDetails, "cached_tokens"), u.prompt_cache_hit_tokens)],
    ["cacheWriteTokens", classCount(promptTokens, field(promptDetails, "cache_write_tokens"))],
    ["audioPromptTokens", classCount(promptTokens, field(promptDetails, "audio_tokens"))],
    ["reasoningTokens", classCount(completionTokens, field(completionDetails, "reasoning_tokens"))],
    ["audioCompletionTokens", classCount(completionTokens, field(completionDetails, "audio_tokens"))],
  ];
  for (const [name, n] of classes) if (n > 0) (usage as unknown as Record<string, number>)[name] = n;
  const cost = upstreamCostText(u.cost);
  if (cost !== undefined) usage.upstreamCost = cost;
  if (clamped) usage.clamped = true;
  return usage;
}

/** Generated text of a chat completion choice (message or delta): content, reasoning, refusal, tool-call arguments. */
export function choiceText(part: unknown, out: string[]): void {
  if (!part || typeof part !== "object") return;
  const p = part as Record<string, unknown>;
  for (const name of ["content", "text", "reasoning_content", "reasoning", "refusal"]) {
    const v = p[name];
    if (typeof v === "string" && v) out.push(v);
  }
  const calls = p.tool_calls;
  if (Array.isArray(calls)) {
    for (const c of calls) {
      const fn = (c as { function?: { name?: unknown; arguments?: unknown } } | null)?.function;
      if (typeof fn?.name === "string") out.push(fn.name);
      if (typeof fn?.arguments === "string") out.push(fn.arguments);
    }
  }
  const fc = p.function_call as { name?: unknown; arguments?: unknown } | undefined;
  if (fc && typeof fc === "object") {
    if (typeof fc.name === "string") out.push(fc.name);
    if (typeof fc.arguments === "string") out.push(fc.arguments);
  }
}

const SEPARATOR = /\r\n\r\n|\n\n|\r\r/g;
/** A separator is at most 4 characters: a new scan starts this far before the old end. */
const SEPARATOR_OVERLAP = 3;

/** One event (or line) of a stream longer than the limit: it is never buffered further. */
export class SseEventTooLarge extends Error {
  constructor(
    readonly limit: number,
    /** UTF-8 bytes of the unfinished event when it was dropped (what was streamed of it). */
    readonly pendingBytes: number,
  ) {
    super(`one stream event is larger than ${limit} bytes`);
    this.name = "SseEventTooLarge";
  }
}

/** Terminal events of a Responses API stream that complete the answer (it is billed and charged). */
const RESPONSE_DONE_EVENTS = new Set(["response.completed", "response.incomplete"]);
/** Terminal events of a Responses API stream that say the upstream failed it. */
const RESPONSE_FAILED_EVENTS = new Set(["response.failed", "error"]);
/** Delta events whose `delta` is base64 data, not text (never counted as text tokens). */
const BINARY_DELTAS = /audio\.delta$|partial_image/;

export class SseRelay {
  /** Usage reported by the upstream (the include_usage chunk, or the Responses API's terminal event), if any yet. */
  usage: Usage | null = null;
  /** The upstream sent `data: [DONE]` (Responses API: response.completed or response.incomplete). */
  done = false;
  /** A choice reported its finish_reason: the generation is over, only the usage chunk and [DONE] remain. */
  finished = false;
  /** Responses API: the upstream said the response failed (response.failed or an error event); passed on to the client. */
  failed = false;
  /**
   * Responses API: the terminal event (response.completed / response.incomplete), held back as
   * `data: [DONE]` is on chat streams, and sent once the receipt committed.
   */
  terminal = "";
  /** Content events passed to the client. */
  events = 0;
  private readonly text: string[] = [];
  private readonly decoder = new StringDecoder("utf8");
  private buffer = "";
  /** Where the next separator scan starts: the unfinished event before it was already scanned. */
  private scanFrom = 0;
  /** UTF-8 bytes of the unfinished event in `buffer`. */
  private pendingBytes = 0;

  /**
   * @param clientWantsUsage the client set stream_options.include_usage itself
   * @param maxEventBytes longest event kept while it is unfinished (UPSTREAM_MAX_RESPONSE_BYTES)
   */
  constructor(
    private readonly clientWantsUsage: boolean,
    private readonly maxEventBytes = Number.POSITIVE_INFINITY,
    private readonly protocol: "chat" | "responses" = "chat",
  ) {}

  /**
   * Feeds upstream bytes; returns the text to pass to the client now (complete events only).
   * Throws SseEventTooLarge when the unfinished event outgrows the limit (memory stays bounded).
   */
  push(chunk: Buffer): string {
    this.buffer += this.decoder.write(chunk);
    let out = "";
    let start = 0;
    // Only new text is scanned (a gigantic event would otherwise be rescanned on every chunk).
    SEPARATOR.lastIndex = this.scanFrom;
    for (let match = SEPARATOR.exec(this.buffer); match !== null; match = SEPARATOR.exec(this.buffer)) {
      const event = this.buffer.slice(start, match.index);
      start = match.index + match[0].length;
      out += this.relayEvent(event);
    }
    if (start === 0) {
      this.pendingBytes += chunk.length;
    } else {
      this.buffer = this.buffer.slice(start);
      // What is left came after a separator in the new text: counting it costs about one chunk.
      this.pendingBytes = Buffer.byteLength(this.buffer, "utf8");
    }
    this.scanFrom = Math.max(0, this.buffer.length - SEPARATOR_OVERLAP);
    if (this.pendingBytes > this.maxEventBytes) {
      const pendingBytes = this.pendingBytes;
      this.buffer = "";
      this.scanFrom = 0;
      this.pendingBytes = 0;
      throw new SseEventTooLarge(this.maxEventBytes, pendingBytes);
    }
    return out;
  }

  /** The upstream ended: a last event without its blank line still counts. */
  end(): string {
    this.buffer += this.decoder.end();
    const rest = this.buffer;
    this.buffer = "";
    this.scanFrom = 0;
    this.pendingBytes = 0;
    return rest.trim() ? this.relayEvent(rest) : "";
  }

  /** Everything the model generated so far, for estimating tokens when no usage was reported. */
  generatedText(): string {
    return this.text.join("");
  }

  private relayEvent(event: string): string {
    if (this.done) return "";
    if (!event.trim()) return "";
    let data: string | null = null;
    for (const line of event.split(/\r\n|\n|\r/)) {
      if (line.startsWith("data:")) {
        const value = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
        data = data === null ? value : `${data}\n${value}`;
      }
    }
    if (data === null) return `${event}\n\n`; // comments, retry:, event: without data
    if (data.trim() === "[DONE]") {
      this.done = true;
      return "";
    }
    let parsed: Record<string, unknown> | null = null;
    try {
      const value = JSON.parse(data) as unknown;
      if (value && typeof value === "object") parsed = value as Record<string, unknown>;
    } catch {
      return `${event}\n\n`; // not ours to judge: pass it on
    }
    if (!parsed) return `${event}\n\n`;
    if (this.protocol === "responses") return this.responseEvent(event, parsed);
    const choices = parsed.choices;
    if (Array.isArray(choices)) {
      for (const c of choices) {
        // Chat chunks carry a delta; text completion chunks carry their text on the choice itself.
        const choice = c as { delta?: unknown; text?: unknown } | null;
        if (typeof choice?.text === "string") this.text.push(choice.text);
        choiceText(choice?.delta, this.text);
        if ((c as { finish_reason?: unknown } | null)?.finish_reason) this.finished = true;
      }
    }
    const usage = readUsage(parsed.usage);
    if (usage) {
      this.usage = usage;
      if (!this.clientWantsUsage) {
        // The usage-only chunk we forced is hidden; a chunk carrying both content and usage loses the usage.
        if (!Array.isArray(choices) || choices.length === 0) return "";
        const { usage: _hidden, ...rest } = parsed;
        this.events++;
        return `data: ${JSON.stringify(rest)}\n\n`;
      }
    }
    this.events++;
    return `${event}\n\n`;
  }

  /** One typed event of a Responses API stream: passed on as it came, its text kept, its terminal event held back. */
  private responseEvent(event: string, parsed: Record<string, unknown>): string {
    const type = typeof parsed.type === "string" ? parsed.type : "";
    if (type.endsWith(".delta") && typeof parsed.delta === "string" && !BINARY_DELTAS.test(type)) this.text.push(parsed.delta);
    const response = parsed.response as { usage?: unknown } | undefined;
    if (RESPONSE_DONE_EVENTS.has(type)) {
      const usage = readUsage(response?.usage);
      if (usage) this.usage = usage;
      this.done = true;
      this.finished = true;
      this.terminal = `${event}\n\n`;
      return "";
    }
    if (RESPONSE_FAILED_EVENTS.has(type)) {
      const usage = readUsage(response?.usage);
      if (usage) this.usage = usage;
      this.failed = true;
    }
    this.events++;
    return `${event}\n\n`;
  }
}
