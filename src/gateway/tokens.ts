// Token counting for the worst-case reservation (prompt) and for charging streams cut short
// (generated text). gpt-tokenizer's o200k_base (GPT-4o / 4.1 / 5 / o-series) is used for every
// model: other vendors' tokenizers differ a little, which the prompt margin absorbs.
import { countTokens } from "gpt-tokenizer";
import { badRequest } from "./errors.ts";

/** Special-token text in user input is counted as ordinary text, never rejected. */
const ENCODE_OPTIONS = { disallowedSpecial: new Set<string>() };

/** Per-message framing of the chat format (<|start|>role<|message|>…<|end|>), as OpenAI's cookbook counts it, rounded up. */
const TOKENS_PER_MESSAGE = 4;
const TOKENS_PER_NAME = 1;
const REPLY_PRIMING = 3;
/** An image part's worst case at detail "high" for the largest common sizes (85 + 170 × 8 tiles, rounded up). */
const TOKENS_PER_IMAGE = 1_500;
/** Audio / file parts: bounded per part (the upstream reports the real count; the charge is capped by the hold). */
const TOKENS_PER_OTHER_PART = 2_000;

export function countText(text: string): number {
  if (!text) return 0;
  return countTokens(text, ENCODE_OPTIONS);
}

function countContent(content: unknown): number {
  if (content == null) return 0;
  if (typeof content === "string") return countText(content);
  if (Array.isArray(content)) {
    let n = 0;
    for (const part of content) {
      if (typeof part === "string") n += countText(part);
      else if (part && typeof part === "object") {
        const p = part as Record<string, unknown>;
        if (typeof p.text === "string") n += countText(p.text);
        else if (typeof p.refusal === "string") n += countText(p.refusal);
        else if (p.type === "image_url" || p.image_url) n += TOKENS_PER_IMAGE;
        else n += TOKENS_PER_OTHER_PART;
      }
    }
    return n;
  }
  return countText(JSON.stringify(content));
}

/** Prompt tokens of a chat completion request: messages with their framing, plus tool / function / schema definitions. */
export function countChatPrompt(body: Record<string, unknown>): number {
  const messages = body.messages;
  if (!Array.isArray(messages)) throw badRequest("'messages' must be an array of messages.", "messages");
  let n = REPLY_PRIMING;
  for (const m of messages) {
    if (!m || typeof m !== "object") throw badRequest("Each message must be an object.", "messages");
    const msg = m as Record<string, unknown>;
    n += TOKENS_PER_MESSAGE;
    n += countContent(msg.content);
    if (typeof msg.role === "string") n += countText(msg.role);
    if (typeof msg.name === "string") n += TOKENS_PER_NAME + countText(msg.name);
    if (msg.tool_calls != null) n += countText(JSON.stringify(msg.tool_calls));
    if (msg.function_call != null) n += countText(JSON.stringify(msg.function_call));
    if (msg.audio != null) n += TOKENS_PER_OTHER_PART;
  }
  for (const field of ["tools", "functions", "response_format", "tool_choice", "prediction"] as const) {
    const v = body[field];
    if (v != null && typeof v === "object") n += countText(JSON.stringify(v));
  }
  return n;
}

/** Input tokens of an embeddings request: a string, an array of strings, or token arrays. */
export function countEmbeddingInput(body: Record<string, unknown>): number {
  const input = body.input;
  if (typeof input === "string") return countText(input);
  if (Array.isArray(input)) {
    if (input.length === 0) throw badRequest("'input' must not be empty.", "input");
    let n = 0;
    for (const item of input) {
      if (typeof item === "string") n += countText(item);
      else if (typeof item === "number") n += 1;
      else if (Array.isArray(item)) n += item.length;
      else throw badRequest("'input' must be a string, an array of strings or an array of token arrays.", "input");
    }
    return n;
  }
  throw badRequest("'input' must be a string, an array of strings or an array of token arrays.", "input");
}

/**
 * The prompt bound reserved: the count plus 10 % and 16 tokens, because the upstream's own
 * tokenizer (another vendor's, or a newer chat format) may count a little more.
 */
export function promptBound(counted: number): number {
  return counted + Math.ceil(counted / 10) + 16;
}

const MAX_OUTPUT_TOKENS = 100_000_000;

function optionalTokenLimit(body: Record<string, unknown>, field: string): number | null {
  const v = body[field];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > MAX_OUTPUT_TOKENS) {
    throw badRequest(`'${field}' must be a non-negative integer.`, field);
  }
  return v;
}

/**
 * Worst-case generated tokens: max_completion_tokens / max_tokens (the larger if both are
 * given), else the route's default, times `n` choices.
 */
export function outputBound(body: Record<string, unknown>, routeDefault: number): number {
  const a = optionalTokenLimit(body, "max_completion_tokens");
  const b = optionalTokenLimit(body, "max_tokens");
  const limit = a === null && b === null ? routeDefault : Math.max(a ?? 0, b ?? 0);
  let n = 1;
  if (body.n !== undefined && body.n !== null) {
    if (typeof body.n !== "number" || !Number.isInteger(body.n) || body.n < 1 || body.n > 128) throw badRequest("'n' must be an integer from 1 to 128.", "n");
    n = body.n;
  }
  return limit * n;
}
