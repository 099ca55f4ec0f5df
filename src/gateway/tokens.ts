// Token counting for the worst-case reservation (prompt) and for charging streams cut short
// (generated text). gpt-tokenizer's o200k_base (GPT-4o / 4.1 / 5 / o-series) is used for every
// model: other vendors' tokenizers differ a little, which the prompt margin absorbs.
//
// Counting is linear in the text and never holds the event loop for long: BPE (quadratic in the
// length of one pre-tokenized piece) only ever runs on short pieces; a longer piece, and any
// whitespace or non-whitespace run too long for the split regex to scan cheaply, is counted as its
// UTF-8 bytes. That is a proven upper bound: o200k is a byte-level BPE, so every token covers at
// least one byte, and pieces are encoded independently.
import { countTokens } from "gpt-tokenizer";
import { O200K_TOKEN_SPLIT_REGEX } from "gpt-tokenizer/encodingParams/constants";
import { badRequest } from "./errors.ts";

/** Special-token text in user input is counted as ordinary text, never rejected. */
const ENCODE_OPTIONS = { disallowedSpecial: new Set<string>() };

/** Per-message framing of the chat format (<|start|>role<|message|>…<|end|>), as OpenAI's cookbook counts it, rounded up. */
const TOKENS_PER_MESSAGE = 4;
const TOKENS_PER_NAME = 1;
const REPLY_PRIMING = 3;

/** Longest pre-tokenized piece given to BPE (its cost grows with the square of this); longer pieces count their bytes. */
export const MAX_BPE_PIECE_CHARS = 64;
/** A run of whitespace or of non-whitespace longer than this counts its bytes without being scanned by the split regex. */
export const MAX_SCANNED_RUN_CHARS = 1024;
/** BPE runs on segments of about this many characters (cut at piece boundaries). */
const SEGMENT_CHARS = 8192;
/** Async counting gives the event loop back after this much work. */
const SLICE_MS = 8;

const utf8Bytes = (text: string) => Buffer.byteLength(text, "utf8");

/** \s of JavaScript regular expressions, by char code. */
function isSpace(c: number): boolean {
  if (c <= 0x20) return c === 0x20 || (c >= 0x09 && c <= 0x0d);
  if (c < 0xa0) return false;
  return c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000 || c === 0xfeff;
}

/**
 * Token counts of consecutive parts of `text`; their sum is at least o200k's count of the whole
 * (short segments by BPE, long runs and pieces by bytes). Each step is cheap and linear.
 */
function* textParts(text: string): Generator<number> {
  if (text.length <= MAX_BPE_PIECE_CHARS) {
    if (text) yield countTokens(text, ENCODE_OPTIONS);
    return;
  }
  const n = text.length;
  let regionStart = 0;
  let i = 0;
  while (i < n) {
    const space = isSpace(text.charCodeAt(i));
    let j = i + 1;
    while (j < n && isSpace(text.charCodeAt(j)) === space) j++;
    if (j - i > MAX_SCANNED_RUN_CHARS) {
      if (i > regionStart) yield* regionParts(text.slice(regionStart, i));
      yield utf8Bytes(text.slice(i, j));
      regionStart = j;
    }
    i = j;
  }
  if (regionStart < n) yield* regionParts(text.slice(regionStart));
}

/** A region whose runs are all short: split as o200k splits it, BPE on short pieces, bytes for long ones. */
function* regionParts(region: string): Generator<number> {
  let segmentStart = 0;
  for (const match of region.matchAll(O200K_TOKEN_SPLIT_REGEX)) {
    const at = match.index;
    const end = at + match[0].length;
    if (match[0].length > MAX_BPE_PIECE_CHARS) {
      if (at > segmentStart) yield countTokens(region.slice(segmentStart, at), ENCODE_OPTIONS);
      yield utf8Bytes(match[0]);
      segmentStart = end;
    } else if (end - segmentStart >= SEGMENT_CHARS) {
      yield countTokens(region.slice(segmentStart, end), ENCODE_OPTIONS);
      segmentStart = end;
    }
  }
  if (segmentStart < region.length) yield countTokens(region.slice(segmentStart), ENCODE_OPTIONS);
}

/** An upper bound of o200k's token count of `text`, synchronously (generated text, short strings). */
export function countText(text: string): number {
  let n = 0;
  for (const part of textParts(text)) n += part;
  return n;
}

/** Adds up token bounds of many texts, yielding the event loop every few milliseconds. */
export class TokenCounter {
  total = 0;
  private sliceStart = performance.now();

  async text(text: string): Promise<void> {
    for (const part of textParts(text)) {
      this.total += part;
      if (performance.now() - this.sliceStart > SLICE_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        this.sliceStart = performance.now();
      }
    }
  }

  add(tokens: number): void {
    this.total += tokens;
  }
}

// ---------------------------------------------------------------------------
// Parts that are not text: images are bounded by OpenAI's published rules for the upstream model
// and the part's own `detail` (and size, when the image is inline); parts nothing bounds (audio,
// files) take the route's configured maximum, or are refused.

/** An image part of a request, as far as its cost is concerned. */
export interface ImagePart {
  detail: "low" | "high" | "auto";
  /** Pixel size, when the image is inline (a data: URL) and its header could be read. */
  size: { width: number; height: number } | null;
}

interface TileRule {
  kind: "tiles";
  base: number;
  tile: number;
}
interface PatchRule {
  kind: "patches";
  multiplier: number;
}
type ImageRule = TileRule | PatchRule;

/** OpenAI's image token rules by upstream model (first match wins; names compared in lower case). */
const IMAGE_RULES: Array<[RegExp, ImageRule]> = [
  [/gpt-4\.1-mini|gpt-5-mini/, { kind: "patches", multiplier: 1.62 }],
  [/gpt-4\.1-nano|gpt-5-nano/, { kind: "patches", multiplier: 2.46 }],
  [/o4-mini/, { kind: "patches", multiplier: 1.72 }],
  [/gpt-4o-mini/, { kind: "tiles", base: 2833, tile: 5667 }],
  [/computer-use/, { kind: "tiles", base: 65, tile: 129 }],
  [/(^|\/)o[13]\b|(^|\/)o[13]-/, { kind: "tiles", base: 75, tile: 150 }],
  [/gpt-5/, { kind: "tiles", base: 70, tile: 140 }],
  [/gpt-4o|gpt-4\.1|gpt-4\.5|gpt-4-turbo|gpt-4-vision|chatgpt-4o/, { kind: "tiles", base: 85, tile: 170 }],
];
/** Patch models: at most 1,536 32-px patches per image. */
const MAX_PATCHES = 1536;
/** High detail: at most 8 tiles of 512 px (fit in 2048², shortest side at most 768). */
const MAX_TILES = 8;
/** A model without a known rule: the dearest known rule's worst case (gpt-4o-mini, high detail, 8 tiles). */
export const UNKNOWN_MODEL_IMAGE_TOKENS = 2833 + 5667 * MAX_TILES;

function tiles(size: ImagePart["size"]): number {
  if (!size) return MAX_TILES;
  let { width: w, height: h } = size;
  const longest = Math.max(w, h);
  if (longest > 2048) {
    w = Math.ceil((w * 2048) / longest);
    h = Math.ceil((h * 2048) / longest);
  }
  const shortest = Math.min(w, h);
  if (shortest > 768) {
    w = Math.ceil((w * 768) / shortest);
    h = Math.ceil((h * 768) / shortest);
  }
  return Math.min(MAX_TILES, Math.ceil(w / 512) * Math.ceil(h / 512));
}

/** The most one image part can bill on `upstreamModel`. */
export function imageTokens(image: ImagePart, upstreamModel: string): number {
  const name = upstreamModel.toLowerCase();
  const rule = IMAGE_RULES.find(([pattern]) => pattern.test(name))?.[1];
  if (!rule) return UNKNOWN_MODEL_IMAGE_TOKENS;
  if (rule.kind === "patches") return Math.ceil(MAX_PATCHES * rule.multiplier);
  if (image.detail === "low") return rule.base;
  return rule.base + rule.tile * tiles(image.size);
}

/** Reads the pixel size from the header of an inline PNG or JPEG image (data: URL); null if unknown (then the worst case is reserved). */
export function inlineImageSize(url: string): ImagePart["size"] {
  const match = /^data:image\/[a-z+.-]+;base64,/i.exec(url);
  if (!match) return null;
  // The header is near the start: decode only a bounded prefix (JPEG frames may follow metadata).
  const head = Buffer.from(url.slice(match[0].length, match[0].length + 87_384), "base64");
  const known = (width: number, height: number) => (width > 0 && height > 0 ? { width, height } : null);
  if (head.length >= 24 && head.readUInt32BE(0) === 0x89504e47 && head.toString("latin1", 12, 16) === "IHDR") {
    return known(head.readUInt32BE(16), head.readUInt32BE(20));
  }
  if (head.length >= 4 && head[0] === 0xff && head[1] === 0xd8) {
    let at = 2;
    while (at + 9 < head.length) {
      if (head[at] !== 0xff) return null;
      const marker = head[at + 1]!;
      const length = head.readUInt16BE(at + 2);
      // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return known(head.readUInt16BE(at + 7), head.readUInt16BE(at + 5));
      }
      at += 2 + length;
    }
  }
  return null;
}

/** What a prompt is made of, before the upstream model is known. */
export interface PromptCount {
  /** Text, framing and definitions (tools, functions, schemas). */
  text: number;
  images: ImagePart[];
  /** Parts nothing in the request bounds (audio, files). */
  unboundedParts: number;
  /** What the unbounded parts are and where they are, for the refusal when the route bounds none (default: audio or file content in 'messages'). */
  unbounded?: { what: string; param: string };
}

function imagePart(p: Record<string, unknown>): ImagePart {
  const image = p.image_url as { url?: unknown; detail?: unknown } | undefined;
  const detail = image?.detail === "low" || image?.detail === "high" ? image.detail : "auto";
  const url = typeof image?.url === "string" ? image.url : "";
  return { detail, size: detail === "low" ? null : inlineImageSize(url) };
}

async function countContent(content: unknown, counter: TokenCounter, count: PromptCount): Promise<void> {
  if (content == null) return;
  if (typeof content === "string") return counter.text(content);
  if (!Array.isArray(content)) return counter.text(JSON.stringify(content));
  for (const part of content) {
    if (typeof part === "string") {
      await counter.text(part);
      continue;
    }
    if (!part || typeof part !== "object") continue;
    const p = part as Record<string, unknown>;
    if (typeof p.text === "string") await counter.text(p.text);
    else if (typeof p.refusal === "string") await counter.text(p.refusal);
    else if (p.type === "image_url") count.images.push(imagePart(p));
    else count.unboundedParts++;
  }
}

/** Prompt of a chat completion request: messages with their framing, tool / function / schema definitions, images, unbounded parts. */
export async function countChatPrompt(body: Record<string, unknown>): Promise<PromptCount> {
  const messages = body.messages;
  if (!Array.isArray(messages)) throw badRequest("'messages' must be an array of messages.", "messages");
  const counter = new TokenCounter();
  const count: PromptCount = { text: 0, images: [], unboundedParts: 0 };
  counter.add(REPLY_PRIMING);
  for (const m of messages) {
    if (!m || typeof m !== "object") throw badRequest("Each message must be an object.", "messages");
    const msg = m as Record<string, unknown>;
    counter.add(TOKENS_PER_MESSAGE);
    await countContent(msg.content, counter, count);
    if (typeof msg.role === "string") await counter.text(msg.role);
    if (typeof msg.name === "string") {
      counter.add(TOKENS_PER_NAME);
      await counter.text(msg.name);
    }
    if (typeof msg.tool_call_id === "string") await counter.text(msg.tool_call_id);
    if (msg.tool_calls != null) await counter.text(JSON.stringify(msg.tool_calls));
    if (msg.function_call != null) await counter.text(JSON.stringify(msg.function_call));
    if (msg.audio != null) count.unboundedParts++;
  }
  for (const field of ["tools", "functions", "response_format", "tool_choice", "prediction"] as const) {
    const v = body[field];
    if (v != null && typeof v === "object") await counter.text(JSON.stringify(v));
  }
  count.text = counter.total;
  return count;
}

// ---------------------------------------------------------------------------
// Responses API: instructions + input items (messages, tool calls and their outputs, reasoning
// items), tool and output-format definitions. What the request cannot bound is an unbounded part
// (the route's maxUnboundedPartTokens each, or refused): a stored context (previous_response_id,
// conversation, a stored prompt, item references), hosted tools whose results the upstream adds
// to the input (web / file search, code interpreter, MCP, image generation), files and audio.

/** Hosted tools whose results the upstream feeds back into the input: their input tokens are unbounded. */
const HOSTED_TOOLS = /^(web_search|web_search_preview|web_search_preview_2025_03_11|file_search|code_interpreter|mcp|image_generation)/;

async function countResponseContent(content: unknown, counter: TokenCounter, count: PromptCount): Promise<void> {
  if (content == null) return;
  if (typeof content === "string") return counter.text(content);
  if (!Array.isArray(content)) return counter.text(JSON.stringify(content));
  for (const part of content) {
    if (!part || typeof part !== "object") continue;
    const p = part as Record<string, unknown>;
    if (typeof p.text === "string") await counter.text(p.text);
    else if (typeof p.refusal === "string") await counter.text(p.refusal);
    else if (p.type === "input_image") {
      const detail = p.detail === "low" || p.detail === "high" ? p.detail : "auto";
      const url = typeof p.image_url === "string" ? p.image_url : "";
      count.images.push({ detail, size: detail === "low" ? null : inlineImageSize(url) });
    } else count.unboundedParts++;
  }
}

/** Prompt of a Responses API request. */
export async function countResponsesPrompt(body: Record<string, unknown>): Promise<PromptCount> {
  const counter = new TokenCounter();
  const count: PromptCount = {
    text: 0,
    images: [],
    unboundedParts: 0,
    unbounded: {
      what: "stored context (previous_response_id, conversation, prompt, item_reference), hosted tools (web or file search, code interpreter, MCP, image generation), audio or files",
      param: "input",
    },
  };
  counter.add(REPLY_PRIMING);
  if (typeof body.instructions === "string") {
    counter.add(TOKENS_PER_MESSAGE);
    await counter.text(body.instructions);
  }
  const input = body.input;
  if (typeof input === "string") {
    counter.add(TOKENS_PER_MESSAGE);
    await counter.text(input);
  } else if (Array.isArray(input)) {
    for (const item of input) {
      if (!item || typeof item !== "object") continue;
      const it = item as Record<string, unknown>;
      counter.add(TOKENS_PER_MESSAGE);
      if (it.type === "message" || (it.type === undefined && it.role !== undefined)) {
        if (typeof it.role === "string") await counter.text(it.role);
        await countResponseContent(it.content, counter, count);
      } else if (it.type === "item_reference") {
        count.unboundedParts++;
      } else if (it.type === "function_call_output" && typeof it.output !== "string") {
        await countResponseContent(it.output, counter, count);
      } else {
        // Tool calls and their outputs, reasoning items (their encrypted content is billed as input): all of their text.
        await counter.text(JSON.stringify(it));
      }
    }
  }
  for (const stored of ["previous_response_id", "conversation", "prompt"] as const) if (body[stored] != null) count.unboundedParts++;
  if (Array.isArray(body.tools)) {
    for (const tool of body.tools) if (typeof (tool as { type?: unknown } | null)?.type === "string" && HOSTED_TOOLS.test((tool as { type: string }).type)) count.unboundedParts++;
  }
  for (const field of ["tools", "text", "tool_choice"] as const) {
    const v = body[field];
    if (v != null && typeof v === "object") await counter.text(JSON.stringify(v));
  }
  count.text = counter.total;
  return count;
}

/** Prompts of a legacy completions request (with its suffix, once per prompt), and how many prompts it has. */
export async function countCompletionPrompt(body: Record<string, unknown>): Promise<PromptCount & { prompts: number }> {
  const counter = new TokenCounter();
  const prompt = body.prompt;
  let prompts = 1;
  if (typeof prompt === "string") await counter.text(prompt);
  else if (Array.isArray(prompt)) {
    if (prompt.length === 0) throw badRequest("'prompt' must not be empty.", "prompt");
    if (typeof prompt[0] === "number") counter.add(prompt.length);
    else {
      prompts = prompt.length;
      for (const item of prompt) {
        if (typeof item === "string") await counter.text(item);
        else if (Array.isArray(item)) counter.add(item.length);
        else throw badRequest("'prompt' must be a string, an array of strings or an array of token arrays.", "prompt");
      }
    }
  } else throw badRequest("'prompt' must be a string, an array of strings or an array of token arrays.", "prompt");
  if (typeof body.suffix === "string") {
    const suffix = new TokenCounter();
    await suffix.text(body.suffix);
    counter.add(suffix.total * prompts);
  }
  return { text: counter.total, images: [], unboundedParts: 0, prompts };
}

/** Input of an embeddings request: a string, an array of strings, or token arrays. */
export async function countEmbeddingInput(body: Record<string, unknown>): Promise<PromptCount> {
  const input = body.input;
  const counter = new TokenCounter();
  if (typeof input === "string") await counter.text(input);
  else if (Array.isArray(input)) {
    if (input.length === 0) throw badRequest("'input' must not be empty.", "input");
    for (const item of input) {
      if (typeof item === "string") await counter.text(item);
      else if (typeof item === "number") counter.add(1);
      else if (Array.isArray(item)) counter.add(item.length);
      else throw badRequest("'input' must be a string, an array of strings or an array of token arrays.", "input");
    }
  } else throw badRequest("'input' must be a string, an array of strings or an array of token arrays.", "input");
  return { text: counter.total, images: [], unboundedParts: 0 };
}

/**
 * The prompt tokens reserved on the route's channels: the text count plus 10 % and 16 tokens
 * (the upstream's own tokenizer may count a little more), each image at its worst case on the
 * dearest of the upstream models, each unbounded part at the route's maximum (or refused).
 */
export function reservedPromptTokens(count: PromptCount, upstreamModels: string[], maxUnboundedPartTokens: number | null): number {
  let n = promptBound(count.text);
  for (const image of count.images) n += Math.max(0, ...upstreamModels.map((model) => imageTokens(image, model)));
  if (count.unboundedParts > 0) {
    if (maxUnboundedPartTokens === null) {
      const unbounded = count.unbounded ?? { what: "audio or file content", param: "messages" };
      throw badRequest(
        `This route does not accept ${unbounded.what}: their cost cannot be bounded from the request, and the route sets no maxUnboundedPartTokens.`,
        unbounded.param,
        "unsupported_content",
      );
    }
    n += count.unboundedParts * maxUnboundedPartTokens;
  }
  return n;
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
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > MAX_OUTPUT_TOKENS) {
    throw badRequest(`'${field}' must be a positive integer.`, field);
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

/** Worst-case generated tokens of a Responses API request: max_output_tokens (reasoning included), else the route's default. */
export function responsesOutputBound(body: Record<string, unknown>, routeDefault: number): number {
  return optionalTokenLimit(body, "max_output_tokens") ?? routeDefault;
}

/**
 * Worst-case generated tokens of a legacy completions request: max_tokens (0 allowed: echo-only
 * scoring) or the route's default, for each of max(n, best_of) completions (best_of are generated
 * and billed) of each prompt.
 */
export function completionsOutputBound(body: Record<string, unknown>, routeDefault: number, prompts: number): number {
  const v = body.max_tokens;
  let limit = routeDefault;
  if (v !== undefined && v !== null) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > MAX_OUTPUT_TOKENS) throw badRequest("'max_tokens' must be a non-negative integer.", "max_tokens");
    limit = v;
  }
  const count = (field: string, max: number) => {
    const x = body[field];
    if (x === undefined || x === null) return 1;
    if (typeof x !== "number" || !Number.isInteger(x) || x < 1 || x > max) throw badRequest(`'${field}' must be an integer from 1 to ${max}.`, field);
    return x;
  };
  return limit * Math.max(count("n", 128), count("best_of", 20)) * prompts;
}
