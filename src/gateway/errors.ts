// Errors of the passthrough, in OpenAI's shape: { error: { message, type, code, param } }.
// A GatewayError also says how the request is recorded (its FailedRequest cause and cap scope).
import type { ServerResponse } from "node:http";
import type { CapScope, FailureCause } from "../generated/prisma/enums.ts";
import { wellFormed } from "../text.ts";

export type OpenAIErrorType = "invalid_request_error" | "authentication_error" | "permission_error" | "insufficient_quota" | "not_found_error" | "rate_limit_error" | "api_error" | "server_error";

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: string | null; param: string | null };
}

export class GatewayError extends Error {
  readonly status: number;
  readonly type: OpenAIErrorType;
  readonly code: string;
  readonly param: string | null;
  /** How the request is recorded; null = not recorded (e.g. an unknown URL). */
  readonly failureCause: FailureCause | null;
  readonly capScope: CapScope | null;
  readonly upstreamStatus: number | null;
  /** An upstream error body passed back to the client as it came (a 4xx caused by the request). */
  readonly rawBody: Buffer | null;
  /** What the upstream itself said (redacted): stored for organization admins, never sent to the client. */
  readonly upstreamMessage: string | null;
  readonly headers: Record<string, string>;
  /** A cap refusal: the worst case (micro-units) that did not fit, when admission knew it. */
  readonly refusedAmount: bigint | null;

  constructor(init: {
    status: number;
    type: OpenAIErrorType;
    code: string;
    message: string;
    param?: string | null;
    cause: FailureCause | null;
    capScope?: CapScope | null;
    upstreamStatus?: number | null;
    rawBody?: Buffer | null;
    upstreamMessage?: string | null;
    headers?: Record<string, string>;
    refusedAmount?: bigint | null;
  }) {
    // Echoed to the client and stored: well-formed whatever client text it quotes.
    super(wellFormed(init.message));
    this.name = "GatewayError";
    this.status = init.status;
    this.type = init.type;
    this.code = init.code;
    this.param = init.param == null ? null : wellFormed(init.param);
    this.failureCause = init.cause;
    this.capScope = init.capScope ?? null;
    this.upstreamStatus = init.upstreamStatus ?? null;
    this.rawBody = init.rawBody ?? null;
    this.upstreamMessage = init.upstreamMessage == null ? null : wellFormed(init.upstreamMessage);
    this.headers = init.headers ?? {};
    this.refusedAmount = init.refusedAmount ?? null;
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, code: this.code, param: this.param } };
  }
}

// ---------------------------------------------------------------------------
// The errors of API.md, one constructor each.

// A missing or unknown key is not recorded (cause null): a flood of guessed keys must not write a
// database row per request. It is counted in /metrics and throttled per client address instead.
export const missingKey = () =>
  new GatewayError({
    status: 401,
    type: "invalid_request_error",
    code: "invalid_api_key",
    message: "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
    cause: null,
  });

export const invalidKey = () => new GatewayError({ status: 401, type: "invalid_request_error", code: "invalid_api_key", message: "Incorrect API key provided.", cause: null });

const LIMIT_TEXT = { rpm: "requests per minute (rpmLimit)", tpm: "tokens per minute (tpmLimit)", concurrent: "requests in flight (maxConcurrent)" } as const;

/** Over one of the key's rate limits; `retry-after` says when to try again (OpenAI SDKs honour it). */
export const rateLimited = (limit: keyof typeof LIMIT_TEXT, retryAfterSeconds: number) =>
  new GatewayError({
    status: 429,
    type: "rate_limit_error",
    code: "rate_limit_exceeded",
    message: `Rate limit reached: this API key's limit of ${LIMIT_TEXT[limit]}. Retry after ${retryAfterSeconds} s.`,
    cause: "RATE_LIMITED",
    headers: { "retry-after": String(retryAfterSeconds) },
  });

/** A client address that sent too many missing or unknown keys: refused before any key lookup (not recorded). */
export const badKeysThrottled = (retryAfterSeconds: number) =>
  new GatewayError({
    status: 429,
    type: "rate_limit_error",
    code: "rate_limit_exceeded",
    message: `Too many requests with an invalid API key from this address. Retry after ${retryAfterSeconds} s.`,
    cause: null,
    headers: { "retry-after": String(retryAfterSeconds) },
  });

export const expiredKey = () => new GatewayError({ status: 401, type: "invalid_request_error", code: "invalid_api_key", message: "This API key has expired.", cause: "KEY_EXPIRED" });

export const revokedKey = () => new GatewayError({ status: 401, type: "invalid_request_error", code: "key_revoked", message: "This API key has been revoked.", cause: "KEY_REVOKED" });

export const pausedKey = () => new GatewayError({ status: 403, type: "permission_error", code: "key_paused", message: "This API key is paused.", cause: "KEY_PAUSED" });

export const modelNotAllowed = (model: string, why = "this API key may not call it") =>
  new GatewayError({
    status: 403,
    type: "permission_error",
    code: "model_not_allowed",
    message: `The model '${model}' is not allowed: ${why}.`,
    param: "model",
    cause: "MODEL_NOT_ALLOWED",
  });

export const modelNotFound = (model: string) =>
  new GatewayError({
    status: 404,
    type: "invalid_request_error",
    code: "model_not_found",
    message: `The model '${model}' does not exist or you do not have access to it.`,
    param: "model",
    cause: "MODEL_UNKNOWN",
  });

export const routeUnavailable = (model: string) =>
  new GatewayError({
    status: 503,
    type: "api_error",
    code: "route_unavailable",
    message: `The model '${model}' has no enabled channel.`,
    cause: "ROUTE_UNAVAILABLE",
    headers: { "x-should-retry": "false" },
  });

export const channelsDown = (model: string) =>
  new GatewayError({
    status: 503,
    type: "api_error",
    code: "route_unavailable",
    message: `Every channel of '${model}' this key may use is down; retry later.`,
    cause: "ROUTE_UNAVAILABLE",
  });

/** Fail closed: a channel without a price is never called (503, not retried by OpenAI SDKs). */
export const priceUnknown = (model: string) =>
  new GatewayError({
    status: 503,
    type: "api_error",
    code: "price_unknown",
    message: `The model '${model}' has no price configured for any channel this key may use; the request was refused.`,
    cause: "PRICE_UNKNOWN",
    headers: { "x-should-retry": "false" },
  });

const SCOPE_TEXT: Record<CapScope, string> = {
  KEY_PER_REQUEST: "the key's per-request maximum charge",
  KEY_DAILY: "the key's daily cap",
  PROJECT_DAILY: "the project's daily cap",
  PROJECT_MONTHLY: "the project's monthly cap",
  ROUTE_DAILY: "the route's daily cap",
  RUN_TOTAL: "the run's cap",
  CHANNEL_DAILY: "the daily cap of every channel left to try",
};

export const budgetExceeded = (scope: CapScope, refusedAmount?: bigint) =>
  new GatewayError({
    refusedAmount,
    status: 402,
    type: "insufficient_quota",
    code: "budget_exceeded",
    message: `This request's worst-case cost would exceed ${SCOPE_TEXT[scope]} (${scope}).`,
    cause: "BUDGET_EXCEEDED",
    capScope: scope,
  });

export const insufficientBalance = (bucket: string) =>
  new GatewayError({
    status: 402,
    type: "insufficient_quota",
    code: "insufficient_balance",
    message: `The ${bucket} balance does not cover this request's worst-case cost.`,
    cause: "INSUFFICIENT_BALANCE",
  });

/** 402 rather than 409: OpenAI SDKs retry 409, and retrying a cancelled run cannot help. */
export const runCancelled = (status?: string) =>
  new GatewayError({
    status: 402,
    type: "insufficient_quota",
    code: "run_cancelled",
    message:
      status === "EXHAUSTED"
        ? "The run is exhausted: a request was refused on its cap (setRunCap makes room again)."
        : status === "COMPLETED"
          ? "The run is completed (finishRun)."
          : "The run is no longer active (cancelled or ended).",
    cause: "RUN_CANCELLED",
  });

/** 402 like run_cancelled; unlike it, the run works again after resumeRun. */
export const runPaused = () =>
  new GatewayError({ status: 402, type: "insufficient_quota", code: "run_paused", message: "The run is paused; its requests are refused until it is resumed.", cause: "RUN_PAUSED" });

/** A claimed quote (x-tokengate-quote) that cannot price this request: refused, never priced otherwise. */
export const quoteRefused = (code: "quote_not_found" | "quote_expired" | "quote_model_mismatch" | "quote_stale", message: string) =>
  new GatewayError({ status: code === "quote_not_found" ? 404 : 400, type: "invalid_request_error", code, message, param: "x-tokengate-quote", cause: "BAD_REQUEST" });

export const runNotFound = (runId: string) =>
  new GatewayError({
    status: 404,
    type: "invalid_request_error",
    code: "run_not_found",
    message: `Run '${runId}' does not exist or does not belong to this API key.`,
    param: "x-run-id",
    cause: "BAD_REQUEST",
  });

export const badRequest = (message: string, param: string | null = null, code = "invalid_request") =>
  new GatewayError({ status: 400, type: "invalid_request_error", code, message, param, cause: "BAD_REQUEST" });

export const bodyTooLarge = (limit: number) =>
  new GatewayError({
    status: 413,
    type: "invalid_request_error",
    code: "request_too_large",
    message: `The request body is larger than ${limit} bytes.`,
    cause: "BAD_REQUEST",
  });

export const unknownUrl = (method: string, path: string) =>
  new GatewayError({ status: 404, type: "invalid_request_error", code: "unknown_url", message: `Unknown request URL: ${method} ${path}.`, cause: null });

/** A stateful sub-resource of the Responses API (stored responses, cancel, input items): tokengate stores no responses. */
export const statefulUnsupported = (method: string, path: string) =>
  new GatewayError({
    status: 404,
    type: "invalid_request_error",
    code: "unsupported_endpoint",
    message: `${method} ${path} is not served: tokengate does not store responses (each POST /v1/responses is answered, charged and forgotten). Send the conversation in 'input' instead.`,
    cause: null,
  });

export const methodNotAllowed = (method: string, path: string) =>
  new GatewayError({ status: 405, type: "invalid_request_error", code: "method_not_allowed", message: `Method ${method} is not allowed on ${path}.`, cause: null });

export const internalError = () =>
  new GatewayError({
    status: 500,
    type: "server_error",
    code: "internal_error",
    message: "The gateway had an internal error while processing the request. It was not charged.",
    cause: "INTERNAL_ERROR",
  });

// Upstream failures: the key holder gets our words (what happened, the upstream status, the request
// id to quote); what the upstream itself said goes to upstreamMessage, for admins, redacted.
export interface UpstreamDetail {
  requestId: string;
  /** The upstream's own text (error message, connection error), already redacted. */
  upstreamMessage: string | null;
}

export const upstreamTimeout = (summary: string, attempts: number, detail: UpstreamDetail) =>
  new GatewayError({
    status: 504,
    type: "api_error",
    code: "upstream_timeout",
    message: `The upstream did not answer in time after ${attempts} attempt(s): ${summary}. Request id ${detail.requestId}.`,
    cause: "UPSTREAM_TIMEOUT",
    upstreamMessage: detail.upstreamMessage,
  });

export const upstreamError = (summary: string, attempts: number, upstreamStatus: number | null, detail: UpstreamDetail) =>
  new GatewayError({
    status: upstreamStatus === 429 ? 429 : 502,
    type: upstreamStatus === 429 ? "rate_limit_error" : "api_error",
    code: upstreamStatus === 429 ? "rate_limit_exceeded" : "upstream_error",
    message: `The upstream failed after ${attempts} attempt(s): ${summary}${upstreamStatus ? ` (upstream status ${upstreamStatus})` : ""}. Request id ${detail.requestId}.`,
    cause: "UPSTREAM_ERROR",
    upstreamStatus,
    upstreamMessage: detail.upstreamMessage,
  });

/**
 * The upstream answered (and bills) more than the gateway relays (UPSTREAM_MAX_RESPONSE_BYTES):
 * not retried on another channel, which would generate and bill it again; charged as billed.
 * OpenAI SDKs retry a 502 unless told not to.
 */
export const upstreamResponseTooLarge = (message: string, attempts: number) =>
  new GatewayError({
    status: 502,
    type: "api_error",
    code: "upstream_response_too_large",
    message: `The upstream's answer is too large to relay after ${attempts} attempt(s): ${message}. It was charged as the upstream bills it; ask for less output (max_tokens) or fewer choices.`,
    cause: "UPSTREAM_ERROR",
    upstreamStatus: 200,
    headers: { "x-should-retry": "false" },
  });

/** What a client that hung up is recorded with (nginx's 499: nobody receives it). */
export const clientClosed = (upstreamStatus: number | null = null) =>
  new GatewayError({ status: 499, type: "invalid_request_error", code: "client_closed", message: "The client closed the connection.", cause: "CLIENT_CLOSED", upstreamStatus });

/**
 * A 4xx the upstream blamed on the request: its body (about the client's own request, credential
 * and addresses redacted) passed back, never retried. The stored message is ours; the upstream's
 * text is upstreamMessage.
 */
export const upstreamRejected = (status: number, body: Buffer, detail: UpstreamDetail) =>
  new GatewayError({
    status,
    type: "invalid_request_error",
    code: "upstream_rejected",
    message: `The upstream rejected the request (HTTP ${status}). Request id ${detail.requestId}.`,
    cause: "BAD_REQUEST",
    upstreamStatus: status,
    rawBody: body,
    upstreamMessage: detail.upstreamMessage,
  });

export function sendError(res: ServerResponse, requestId: string, error: GatewayError, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const payload = error.rawBody ?? Buffer.from(JSON.stringify(error.body()));
  res.writeHead(error.status === 499 ? 400 : error.status, {
    "content-type": "application/json",
    "content-length": String(payload.length),
    "x-request-id": requestId,
    ...error.headers,
    ...extraHeaders,
  });
  res.end(payload);
}
