// Request validation as OpenAI does it: a body OpenAI would refuse for its types or ranges is a
// 400 `invalid_request_error` naming the parameter (`param`, with OpenAI's paths such as
// `messages[0].content[1].image_url.detail`) before anything is looked up, reserved or forwarded.
// Unknown fields pass through (the upstream judges them). Strings that reach SQL (`model`, the
// `x-run-id` header) must be free of control characters: PostgreSQL refuses NUL in text.
import type { Endpoint } from "./pipeline/state.ts";
import { badRequest, type GatewayError } from "./errors.ts";
import { clip } from "../text.ts";

type Json = Record<string, unknown>;

const typeName = (v: unknown): string =>
  v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : typeof v === "number" ? (Number.isInteger(v) ? "an integer" : "a decimal") : `a ${typeof v}`;

const invalidType = (param: string, expected: string, v: unknown): GatewayError =>
  badRequest(`Invalid type for '${param}': expected ${expected}, but got ${typeName(v)} instead.`, param, "invalid_type");
const invalidValue = (param: string, message: string, code = "invalid_value"): GatewayError => badRequest(`Invalid '${param}': ${message}`, param, code);

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
const present = (v: unknown) => v !== undefined && v !== null;

// C0 / C1 controls, DEL, and lone surrogates (not representable in the database's UTF-8 text).
// eslint-disable-next-line no-control-regex
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this pattern refuses
const UNSAFE_TEXT = /[\u0000-\u001f\u007f-\u009f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
/** Longest model name accepted (catalog names are at most 200 characters). */
const MAX_MODEL_CHARS = 256;
const MAX_RUN_ID_CHARS = 128;

function string(body: Json, param: string, options: { required?: boolean; values?: readonly string[] } = {}): string | undefined {
  const v = body[param];
  if (!present(v)) {
    if (options.required) throw badRequest(`Missing required parameter: '${param}'.`, param, "missing_required_parameter");
    return undefined;
  }
  if (typeof v !== "string") throw invalidType(param, "a string", v);
  if (options.values && !options.values.includes(v)) throw invalidValue(param, `expected one of ${options.values.map((x) => `'${x}'`).join(", ")}, but got '${clip(v, 40)}'.`);
  return v;
}

function at(path: string, key: string | number): string {
  return typeof key === "number" ? `${path}[${key}]` : `${path}.${key}`;
}

function checkString(v: unknown, param: string, required = true): void {
  if (!present(v)) {
    if (required) throw badRequest(`Missing required parameter: '${param}'.`, param, "missing_required_parameter");
    return;
  }
  if (typeof v !== "string") throw invalidType(param, "a string", v);
}

function boolean(body: Json, param: string): void {
  const v = body[param];
  if (present(v) && typeof v !== "boolean") throw invalidType(param, "a boolean", v);
}

function number(body: Json, param: string, options: { min?: number; max?: number; integer?: boolean }): void {
  const v = body[param];
  if (!present(v)) return;
  const kind = options.integer ? "an integer" : "a number";
  if (typeof v !== "number" || !Number.isFinite(v) || (options.integer && !Number.isInteger(v))) throw invalidType(param, kind, v);
  const noun = options.integer ? "integer" : "decimal";
  if (options.min !== undefined && v < options.min) throw invalidValue(param, `${noun} below minimum value. Expected a value >= ${options.min}, but got ${v} instead.`, `${noun}_below_min_value`);
  if (options.max !== undefined && v > options.max) throw invalidValue(param, `${noun} above maximum value. Expected a value <= ${options.max}, but got ${v} instead.`, `${noun}_above_max_value`);
}

function array(v: unknown, param: string, options: { min?: number; max?: number } = {}): unknown[] {
  if (!Array.isArray(v)) throw invalidType(param, "an array", v);
  if (options.min !== undefined && v.length < options.min)
    throw invalidValue(param, `empty array. Expected an array with minimum length ${options.min}, but got an empty array instead.`, "empty_array");
  if (options.max !== undefined && v.length > options.max)
    throw invalidValue(param, `array too long. Expected an array with maximum length ${options.max}, but got an array with length ${v.length} instead.`, "array_above_max_length");
  return v;
}

function object(v: unknown, param: string): Json {
  if (!isObject(v)) throw invalidType(param, "an object", v);
  return v;
}

/** A client string that is used in SQL or logs: bounded and free of control characters. */
export function safeIdentifier(value: string, param: string, max: number): void {
  if (value.length > max) throw invalidValue(param, `string too long. Expected a string with maximum length ${max}, but got a string with length ${value.length} instead.`, "string_above_max_length");
  if (UNSAFE_TEXT.test(value)) throw invalidValue(param, "must not contain control characters (such as NUL) or unpaired surrogates.");
}

// ---------------------------------------------------------------------------
// Chat completions

const ROLES = ["system", "developer", "user", "assistant", "tool", "function"] as const;
type Role = (typeof ROLES)[number];
/** Content part types each role may send (OpenAI's message schemas). */
const PART_TYPES: Record<Role, readonly string[]> = {
  system: ["text"],
  developer: ["text"],
  user: ["text", "image_url", "input_audio", "file"],
  assistant: ["text", "refusal"],
  tool: ["text"],
  function: ["text"],
};
const IMAGE_DETAILS = ["auto", "low", "high"] as const;

function contentPart(part: unknown, param: string, role: Role): void {
  const p = object(part, param);
  const type = p.type;
  if (typeof type !== "string") throw invalidType(at(param, "type"), "a string", type);
  if (!PART_TYPES[role].includes(type)) {
    throw invalidValue(at(param, "type"), `expected one of ${PART_TYPES[role].map((x) => `'${x}'`).join(", ")} for a ${role} message, but got '${clip(type, 40)}'.`);
  }
  switch (type) {
    case "text":
      checkString(p.text, at(param, "text"));
      return;
    case "refusal":
      checkString(p.refusal, at(param, "refusal"));
      return;
    case "image_url": {
      const image = object(p.image_url, at(param, "image_url"));
      checkString(image.url, at(at(param, "image_url"), "url"));
      const detail = image.detail;
      if (present(detail) && (typeof detail !== "string" || !(IMAGE_DETAILS as readonly string[]).includes(detail))) {
        throw invalidValue(at(at(param, "image_url"), "detail"), `expected one of 'auto', 'low', 'high', but got ${typeof detail === "string" ? `'${clip(detail, 40)}'` : typeName(detail)}.`);
      }
      return;
    }
    case "input_audio": {
      const audio = object(p.input_audio, at(param, "input_audio"));
      checkString(audio.data, at(at(param, "input_audio"), "data"));
      checkString(audio.format, at(at(param, "input_audio"), "format"));
      return;
    }
    case "file": {
      const file = object(p.file, at(param, "file"));
      for (const field of ["file_data", "file_id", "filename"]) checkString(file[field], at(at(param, "file"), field), false);
      return;
    }
  }
}

function message(m: unknown, param: string): void {
  const msg = object(m, param);
  const role = msg.role;
  if (typeof role !== "string") {
    if (!present(role)) throw badRequest(`Missing required parameter: '${at(param, "role")}'.`, at(param, "role"), "missing_required_parameter");
    throw invalidType(at(param, "role"), "a string", role);
  }
  if (!(ROLES as readonly string[]).includes(role)) throw invalidValue(at(param, "role"), `expected one of ${ROLES.map((r) => `'${r}'`).join(", ")}, but got '${clip(role, 40)}'.`);
  const r = role as Role;
  const content = msg.content;
  const contentParam = at(param, "content");
  // An assistant message may carry only tool calls (content null); every other role needs content.
  if (!present(content)) {
    if (r !== "assistant" && r !== "function") throw badRequest(`Missing required parameter: '${contentParam}'.`, contentParam, "missing_required_parameter");
  } else if (Array.isArray(content)) {
    content.forEach((part, i) => {
      contentPart(part, at(contentParam, i), r);
    });
  } else if (typeof content !== "string") {
    throw invalidType(contentParam, "one of a string or array of objects", content);
  }
  checkString(msg.name, at(param, "name"), r === "function");
  if (r === "tool") checkString(msg.tool_call_id, at(param, "tool_call_id"));
  if (present(msg.tool_calls)) {
    array(msg.tool_calls, at(param, "tool_calls")).forEach((c, i) => {
      const call = object(c, at(at(param, "tool_calls"), i));
      if (present(call.function)) object(call.function, at(at(at(param, "tool_calls"), i), "function"));
    });
  }
  if (present(msg.function_call)) object(msg.function_call, at(param, "function_call"));
  if (present(msg.audio)) object(msg.audio, at(param, "audio"));
}

function chat(body: Json): void {
  array(body.messages, "messages", { min: 1 }).forEach((m, i) => {
    message(m, at("messages", i));
  });
  boolean(body, "stream");
  if (present(body.stream_options)) {
    const options = object(body.stream_options, "stream_options");
    if (present(options.include_usage) && typeof options.include_usage !== "boolean") throw invalidType("stream_options.include_usage", "a boolean", options.include_usage);
  }
  // 0 would reserve no output (OpenAI refuses it too); the upper bound keeps the reservation finite.
  number(body, "max_tokens", { integer: true, min: 1, max: 100_000_000 });
  number(body, "max_completion_tokens", { integer: true, min: 1, max: 100_000_000 });
  number(body, "n", { integer: true, min: 1, max: 128 });
  number(body, "temperature", { min: 0, max: 2 });
  number(body, "top_p", { min: 0, max: 1 });
  number(body, "presence_penalty", { min: -2, max: 2 });
  number(body, "frequency_penalty", { min: -2, max: 2 });
  number(body, "seed", { integer: true });
  number(body, "top_logprobs", { integer: true, min: 0, max: 20 });
  for (const flag of ["logprobs", "parallel_tool_calls", "store"]) boolean(body, flag);
  string(body, "user");
  string(body, "reasoning_effort");
  string(body, "service_tier");
  if (present(body.stop) && typeof body.stop !== "string") {
    array(body.stop, "stop", { max: 4 }).forEach((s, i) => {
      checkString(s, at("stop", i));
    });
  }
  if (present(body.tools)) {
    array(body.tools, "tools").forEach((t, i) => {
      const tool = object(t, at("tools", i));
      checkString(tool.type, at(at("tools", i), "type"));
      if (present(tool.function)) checkString(object(tool.function, at(at("tools", i), "function")).name, at(at(at("tools", i), "function"), "name"));
    });
  }
  if (present(body.functions)) {
    array(body.functions, "functions").forEach((f, i) => {
      checkString(object(f, at("functions", i)).name, at(at("functions", i), "name"));
    });
  }
  if (present(body.tool_choice) && typeof body.tool_choice !== "string") object(body.tool_choice, "tool_choice");
  if (present(body.function_call) && typeof body.function_call !== "string") object(body.function_call, "function_call");
  if (present(body.response_format)) checkString(object(body.response_format, "response_format").type, "response_format.type");
  if (present(body.logit_bias)) {
    for (const [token, bias] of Object.entries(object(body.logit_bias, "logit_bias"))) {
      if (typeof bias !== "number" || !Number.isFinite(bias)) throw invalidType(`logit_bias.${clip(token, 20)}`, "a number", bias);
    }
  }
  if (present(body.modalities))
    array(body.modalities, "modalities").forEach((m, i) => {
      checkString(m, at("modalities", i));
    });
  for (const field of ["metadata", "audio", "prediction", "web_search_options"]) if (present(body[field])) object(body[field], field);
}

// ---------------------------------------------------------------------------
// Responses (POST /v1/responses)

const INPUT_ROLES = ["user", "assistant", "system", "developer"] as const;

function responseContentPart(part: unknown, param: string): void {
  const p = object(part, param);
  checkString(p.type, at(param, "type"));
  switch (p.type) {
    case "input_text":
    case "output_text":
      checkString(p.text, at(param, "text"));
      return;
    case "refusal":
      checkString(p.refusal, at(param, "refusal"));
      return;
    case "input_image": {
      checkString(p.image_url, at(param, "image_url"), false);
      checkString(p.file_id, at(param, "file_id"), false);
      const detail = p.detail;
      if (present(detail) && (typeof detail !== "string" || !(IMAGE_DETAILS as readonly string[]).includes(detail))) {
        throw invalidValue(at(param, "detail"), `expected one of 'auto', 'low', 'high', but got ${typeof detail === "string" ? `'${clip(detail, 40)}'` : typeName(detail)}.`);
      }
      return;
    }
  }
}

function inputItem(item: unknown, param: string): void {
  const it = object(item, param);
  if (present(it.type)) checkString(it.type, at(param, "type"));
  const isMessage = it.type === "message" || (!present(it.type) && present(it.role));
  if (!isMessage) {
    if (!present(it.type)) throw badRequest(`Missing required parameter: '${at(param, "type")}'.`, at(param, "type"), "missing_required_parameter");
    if (it.type === "function_call") {
      checkString(it.name, at(param, "name"));
      checkString(it.arguments, at(param, "arguments"));
    }
    if (it.type === "function_call_output") checkString(it.call_id, at(param, "call_id"));
    return;
  }
  const role = it.role;
  if (typeof role !== "string") {
    if (!present(role)) throw badRequest(`Missing required parameter: '${at(param, "role")}'.`, at(param, "role"), "missing_required_parameter");
    throw invalidType(at(param, "role"), "a string", role);
  }
  if (!(INPUT_ROLES as readonly string[]).includes(role)) throw invalidValue(at(param, "role"), `expected one of ${INPUT_ROLES.map((r) => `'${r}'`).join(", ")}, but got '${clip(role, 40)}'.`);
  const content = it.content;
  const contentParam = at(param, "content");
  if (!present(content)) throw badRequest(`Missing required parameter: '${contentParam}'.`, contentParam, "missing_required_parameter");
  if (Array.isArray(content))
    content.forEach((part, i) => {
      responseContentPart(part, at(contentParam, i));
    });
  else if (typeof content !== "string") throw invalidType(contentParam, "one of a string or array of objects", content);
}

function responses(body: Json): void {
  const input = body.input;
  if (!present(input)) {
    // A stored prompt or conversation may stand in for it (their cost is bounded like unbounded parts: src/gateway/tokens.ts).
    if (!present(body.previous_response_id) && !present(body.prompt) && !present(body.conversation)) {
      throw badRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter");
    }
  } else if (typeof input !== "string") {
    array(input, "input").forEach((item, i) => {
      inputItem(item, at("input", i));
    });
  }
  checkString(body.instructions, "instructions", false);
  boolean(body, "stream");
  for (const flag of ["store", "parallel_tool_calls", "background"]) boolean(body, flag);
  if (body.background === true) {
    throw invalidValue(
      "background",
      "background responses are not supported: their tokens are generated after the request has ended, and tokengate charges every request when it ends.",
      "unsupported_value",
    );
  }
  // OpenAI's minimum is 16; the upper bound keeps the reservation finite.
  number(body, "max_output_tokens", { integer: true, min: 16, max: 100_000_000 });
  number(body, "max_tool_calls", { integer: true, min: 1 });
  number(body, "temperature", { min: 0, max: 2 });
  number(body, "top_p", { min: 0, max: 1 });
  number(body, "top_logprobs", { integer: true, min: 0, max: 20 });
  string(body, "previous_response_id");
  string(body, "user");
  string(body, "service_tier");
  string(body, "prompt_cache_key");
  string(body, "safety_identifier");
  string(body, "truncation", { values: ["auto", "disabled"] });
  if (present(body.tools)) {
    array(body.tools, "tools").forEach((t, i) => {
      checkString(object(t, at("tools", i)).type, at(at("tools", i), "type"));
    });
  }
  if (present(body.tool_choice) && typeof body.tool_choice !== "string") object(body.tool_choice, "tool_choice");
  if (present(body.conversation) && typeof body.conversation !== "string") object(body.conversation, "conversation");
  if (present(body.text)) {
    const text = object(body.text, "text");
    if (present(text.format)) checkString(object(text.format, "text.format").type, "text.format.type");
  }
  if (present(body.include))
    array(body.include, "include").forEach((x, i) => {
      checkString(x, at("include", i));
    });
  for (const field of ["metadata", "reasoning", "prompt", "stream_options"]) if (present(body[field])) object(body[field], field);
}

// ---------------------------------------------------------------------------
// Legacy text completions (POST /v1/completions)

/** The prompts of a completions request (a string, strings, a token array, token arrays), validated. */
function completionPrompt(v: unknown): void {
  if (!present(v)) throw badRequest("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter");
  if (typeof v === "string") return;
  const items = array(v, "prompt", { min: 1, max: MAX_EMBEDDING_INPUTS });
  if (typeof items[0] === "number") {
    tokenArray(items, "prompt");
    return;
  }
  items.forEach((item, i) => {
    if (Array.isArray(item)) tokenArray(item, at("prompt", i));
    else if (typeof item !== "string") throw invalidType(at("prompt", i), "a string or an array of tokens", item);
  });
}

function completions(body: Json): void {
  completionPrompt(body.prompt);
  boolean(body, "stream");
  boolean(body, "echo");
  if (present(body.stream_options)) {
    const options = object(body.stream_options, "stream_options");
    if (present(options.include_usage) && typeof options.include_usage !== "boolean") throw invalidType("stream_options.include_usage", "a boolean", options.include_usage);
  }
  number(body, "max_tokens", { integer: true, min: 0, max: 100_000_000 });
  number(body, "n", { integer: true, min: 1, max: 128 });
  number(body, "best_of", { integer: true, min: 1, max: 20 });
  if (typeof body.best_of === "number" && typeof body.n === "number" && body.best_of < body.n) {
    throw invalidValue("best_of", `must be greater than or equal to 'n' (${body.n}), but got ${body.best_of}.`);
  }
  number(body, "logprobs", { integer: true, min: 0, max: 5 });
  number(body, "temperature", { min: 0, max: 2 });
  number(body, "top_p", { min: 0, max: 1 });
  number(body, "presence_penalty", { min: -2, max: 2 });
  number(body, "frequency_penalty", { min: -2, max: 2 });
  number(body, "seed", { integer: true });
  string(body, "suffix");
  string(body, "user");
  if (present(body.stop) && typeof body.stop !== "string") {
    array(body.stop, "stop", { max: 4 }).forEach((x, i) => {
      checkString(x, at("stop", i));
    });
  }
  if (present(body.logit_bias)) {
    for (const [token, bias] of Object.entries(object(body.logit_bias, "logit_bias"))) {
      if (typeof bias !== "number" || !Number.isFinite(bias)) throw invalidType(`logit_bias.${clip(token, 20)}`, "a number", bias);
    }
  }
}

// ---------------------------------------------------------------------------
// Embeddings

/** OpenAI's limit of inputs per embeddings request. */
const MAX_EMBEDDING_INPUTS = 2048;

function tokenArray(v: unknown[], param: string): void {
  if (v.length === 0) throw invalidValue(param, "empty array. Expected a non-empty token array.", "empty_array");
  for (const t of v) if (typeof t !== "number" || !Number.isInteger(t) || t < 0) throw invalidType(param, "an array of non-negative integers (tokens)", t);
}

function embeddings(body: Json): void {
  const input = body.input;
  if (!present(input)) throw badRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter");
  if (typeof input !== "string") {
    const items = array(input, "input", { min: 1, max: MAX_EMBEDDING_INPUTS });
    if (typeof items[0] === "number") tokenArray(items, "input");
    else {
      items.forEach((item, i) => {
        if (Array.isArray(item)) tokenArray(item, at("input", i));
        else if (typeof item !== "string") throw invalidType(at("input", i), "a string or an array of tokens", item);
      });
    }
  }
  string(body, "encoding_format", { values: ["float", "base64"] });
  number(body, "dimensions", { integer: true, min: 1 });
  string(body, "user");
}

/** Deeper JSON than any real request (JSON schemas included); far below what overflows the stack when the body is serialized again. */
export const MAX_JSON_DEPTH = 128;

/** The nesting depth of a parsed JSON value, walked iteratively (a recursive walk is what deep input would overflow). */
function depthExceeds(root: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (value === null || typeof value !== "object") continue;
    if (depth > limit) return true;
    for (const child of Array.isArray(value) ? value : Object.values(value)) if (child !== null && typeof child === "object") stack.push([child, depth + 1]);
  }
  return false;
}

/**
 * Validates a parsed request body (and the `x-run-id` header) for `endpoint`; returns the model.
 * Throws a 400 GatewayError naming the first parameter at fault.
 */
export function validateRequest(endpoint: Endpoint, body: Json, runIdHeader: string | undefined): string {
  if (depthExceeds(body, MAX_JSON_DEPTH)) throw badRequest(`The request body is nested more than ${MAX_JSON_DEPTH} levels deep.`, null, "nested_too_deeply");
  const model = body.model;
  if (typeof model !== "string" || !model.trim()) {
    if (present(model) && typeof model !== "string") throw invalidType("model", "a string", model);
    throw badRequest("You must provide a model parameter.", "model", "missing_model");
  }
  safeIdentifier(model, "model", MAX_MODEL_CHARS);
  if (runIdHeader !== undefined) safeIdentifier(runIdHeader, "x-run-id", MAX_RUN_ID_CHARS);
  if (endpoint === "/v1/chat/completions") chat(body);
  else if (endpoint === "/v1/responses") responses(body);
  else if (endpoint === "/v1/completions") completions(body);
  else if (endpoint === "/v1/embeddings") embeddings(body);
  return model;
}
