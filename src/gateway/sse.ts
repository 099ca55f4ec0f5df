// Server-sent events from the upstream: split into events, passed through as they came, with the
// usage chunk picked out (and hidden from clients that did not ask for it), `data: [DONE]` held
// back (the gateway sends it after the receipt is written), and the generated text kept so a
// stream cut short can be charged from what was streamed.
import { StringDecoder } from "node:string_decoder";

export interface Usage {
  promptTokens: number;
  completionTokens: number;
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

/**
 * Reads `usage` from an OpenAI response or chunk; null when absent or malformed (not a
 * non-negative integer: then the gateway counts for itself). Counts above MAX_USAGE_TOKENS are
 * clamped and flagged, never stored as they came (they would overflow the token columns).
 */
export function readUsage(value: unknown): Usage | null {
  if (!value || typeof value !== "object") return null;
  const u = value as Record<string, unknown>;
  const prompt = tokenCount(u.prompt_tokens);
  const completion = u.completion_tokens === undefined || u.completion_tokens === null ? 0 : tokenCount(u.completion_tokens);
  if (prompt === null || completion === null) return null;
  const clamped = prompt > MAX_USAGE_TOKENS || completion > MAX_USAGE_TOKENS;
  return {
    promptTokens: Math.min(prompt, MAX_USAGE_TOKENS),
    completionTokens: Math.min(completion, MAX_USAGE_TOKENS),
    ...(clamped ? { clamped } : {}),
  };
}

/** Generated text of a chat completion choice (message or delta): content, reasoning, refusal, tool-call arguments. */
export function choiceText(part: unknown, out: string[]): void {
  if (!part || typeof part !== "object") return;
  const p = part as Record<string, unknown>;
  for (const field of ["content", "reasoning_content", "reasoning", "refusal"]) {
    const v = p[field];
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

export class SseRelay {
  /** Usage reported by the upstream (the include_usage chunk), if any yet. */
  usage: Usage | null = null;
  /** The upstream sent `data: [DONE]`. */
  done = false;
  /** A choice reported its finish_reason: the generation is over, only the usage chunk and [DONE] remain. */
  finished = false;
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
    let match: RegExpExecArray | null;
    while ((match = SEPARATOR.exec(this.buffer)) !== null) {
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
    const choices = parsed.choices;
    if (Array.isArray(choices)) {
      for (const c of choices) {
        choiceText((c as { delta?: unknown } | null)?.delta, this.text);
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
}
