// The OpenAI-compatible passthrough (/v1/*): POST /v1/chat/completions, /v1/responses and
// /v1/completions (stream or not), POST /v1/embeddings, GET /v1/models[/{id}]. The Responses API's
// stateful sub-resources (/v1/responses/{id}…) answer 404 unsupported_endpoint: nothing is stored. The server hands every /v1/ request here with its
// body unread. Every response carries x-request-id; every request that names a key or a model
// ends as exactly one Receipt or FailedRequest, and never leaves a hold open.
//
// One request's path is a pipeline of stages, a module each: src/gateway/pipeline/index.ts.
// Decisions (README material):
// - Order: key check (cached ≤ 1 s, cleared by keyChanged events) → body (≤ MAX_BODY_BYTES, else
//   413; bad JSON 400) → allowed models (403) → route (404) → usable channels (buckets,
//   lower-cost ROUTED routes, backup routes; none → 403) → x-tokengate-quote (its pinned prices
//   replace the current ones; unknown / other key's 404, expired / other model's 400) → priced channels (none → 503
//   price_unknown, fail closed: an unpriced channel is never called) → x-run-id (must be this
//   key's run, else 404 run_not_found; not ACTIVE → 402 run_cancelled) → worst case → reserve →
//   upstream → receipt + settle, or FailedRequest + release.
// - Worst case = requestCharge(price, prompt bound, output bound). Prompt bound = gpt-tokenizer
//   count (o200k, chat framing, tools) + 10 % + 16 tokens; output bound = max(max_tokens,
//   max_completion_tokens) or the route's defaultMaxTokens, × n. A charge never exceeds its hold.
// - Refusals: 402 budget_exceeded (the FailedRequest names the cap scope, KEY_PER_REQUEST for the
//   key's per-request maximum), 402 insufficient_balance, 402 run_cancelled (not 409: SDKs retry 409).
// - Fallback: channels in priority order; connect errors, timeouts, 5xx, 429, and 401/403/404
//   (a channel's credential or model is wrong, not the request) move to the next channel, up to
//   1 + retryCeiling attempts; any other 4xx is the request's fault and is passed back as it came.
//   A fallback keeps the hold if it covers the next channel's worst case in the same bucket,
//   else releases it and reserves anew. Exhausted: 504 upstream_timeout if the last failure was a
//   timeout, else 502 upstream_error (429 if the last upstream answer was 429).
// - Failed-request charge policy applies to the request's final failure once an attempt reached
//   the upstream: NEVER 0; PROMPT_TOKENS prompt × input price; FULL_USAGE prompt and generated
//   tokens (upstream usage if reported, else counted from the streamed text, estimated = true).
//   Failed attempts followed by a successful fallback are not charged: the receipt is the charge.
// - Streams: stream_options.include_usage is forced upstream; the usage chunk reaches the client
//   only if it asked. Headers (x-tokengate-currency / -bucket / -route (route id) / -channel /
//   -upstream-model / -attempts / -fallback) go out with the first upstream bytes; the final
//   charge comes after the receipt committed, as an SSE comment `: tokengate-charge=<amount>
//   currency=<code>` right before `data: [DONE]`, and as the HTTP trailer x-tokengate-charge.
//   A stream cut or stalled after it started ends with an SSE error event (OpenAI SDKs raise it)
//   and no [DONE]. A client that hangs up mid-generation aborts the upstream call (CLIENT_CLOSED,
//   recorded 499) and is charged prompt + generated whatever its policy; an answer the upstream
//   completed anyway (non-stream once headers came; a stream past finish_reason, within 2 s) is a
//   Receipt with status 499 at its real usage.
// - Timeouts (config.upstream): connect, first byte, idle between chunks, total per attempt.
// - Hot path: keys and route plans are cached ≤ 1 s. Admission is in memory against this
//   instance's budget leases and each request is written once (record + charge) by a batched
//   writer, sent straight to the driver (src/money/index.ts).
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomUUID } from "node:crypto";
import type { Config } from "../config.ts";
import { leaseMoneyPath, type MoneyStats } from "../money/index.ts";
import { recentlyValidKey } from "../keys/index.ts";
import { services, type Services } from "../installed.ts";
import { parseBearer } from "../auth/index.ts";
import { header } from "./http.ts";
import { GatewayError, badKeysThrottled, internalError, methodNotAllowed, sendError, statefulUnsupported, unknownUrl } from "./errors.ts";
import { Lookups } from "./lookups.ts";
import { findModel, listModels } from "./models.ts";
import { RequestState, authenticate, proxy, recordAndAnswerFailure, type Endpoint, type GatewayDeps } from "./pipeline/index.ts";
import { UpstreamClient } from "./upstream.ts";
import { RateLimiter, type RateLimiterStats } from "./rate-limit.ts";
import { setRateUsageSource } from "../keys/plan.ts";
import { componentLogger } from "../log.ts";
import { startRollupFolder } from "../analytics/rollups.ts";
import { observeRequest, type Observed } from "./observe.ts";

export interface Gateway {
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
  close(): Promise<void>;
  /** Group-commit counters (for /metrics and tests). */
  stats(): GatewayStats;
  /**
   * Gives this instance's unused lease headroom back now, as shutdown does, without stopping (a
   * recall; idle leases also go back by themselves after LEASE_TTL_MS / 2). No-op on `holds`.
   */
  recallLeases(): Promise<void>;
}

export type GatewayStats = MoneyStats & { limits: RateLimiterStats };

export interface GatewayOptions {
  /** How long a route plan (channels, prices) may be served from memory. Default 1000 ms; 0 disables the cache. */
  routeCacheTtlMs?: number;
  /** The bus and channel health it runs with; default: the installed services (src/installed.ts). */
  services?: Pick<Services, "events" | "health">;
}

export function createGateway(config: Config, options: GatewayOptions = {}): Gateway {
  const { events, health } = options.services ?? services();
  const logger = componentLogger("gateway", config.logLevel);
  const log: GatewayDeps["log"] = (level, message, extra) => logger[level](extra ?? {}, message);
  const limiter = RateLimiter.create({ redisUrl: config.redisUrl, badKeyLimitPerMinute: config.badKeyLimitPerMinute, log });
  // Key plans and quotes read where a key stands in its rate limits from this limiter.
  const forgetRateUsage = setRateUsageSource((keyId) => limiter.usage(keyId));
  const money = leaseMoneyPath({
    ttlMs: config.leases.ttlMs,
    reclaimGraceMs: config.leases.reclaimGraceMs,
    chunkRequests: config.leases.chunkRequests,
    sendBeforeCommitMs: config.leases.sendBeforeCommitMs,
    capCacheTtlMs: config.keyCacheTtlMs,
    onError: (message, error) => log("warn", message, { error: String(error) }),
    events,
  });
  // This instance's writes queue their spend sums; it folds them into the rollups (src/analytics/rollups.ts).
  const stopRollupFolder = startRollupFolder(config.rollupFoldMs, (error) => log("warn", "spend rollup fold failed", { error: String(error) }));
  const deps: GatewayDeps = {
    config,
    health,
    events,
    limiter,
    lookups: new Lookups(options.routeCacheTtlMs ?? 1_000),
    upstream: new UpstreamClient(config.upstream),
    reserve: (input) => money.reserve(input),
    settle: (item) => money.settle(item),
    release: (hold) => money.release(hold),
    recordFailure: (record, hold) => money.recordFailure(record, hold),
    spendStates: (requestId) => money.spendStates(requestId),
    log,
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = (q === -1 ? url : url.slice(0, q)).replace(/\/+$/, "");
    const method = req.method ?? "GET";
    const startedAt = performance.now();
    /** Metrics and the request's log line, once it is answered. */
    const finished = (observed: Observed) => {
      observeRequest(observed, res.statusCode);
      if (!logger.isLevelEnabled("info")) return;
      logger.info(
        {
          requestId,
          method,
          path,
          status: res.statusCode,
          durationMs: Math.round(performance.now() - observed.startedAt),
          route: observed.route?.model ?? null,
          channel: observed.channel?.channel.name ?? null,
          attempts: observed.attempts,
        },
        "request",
      );
    };
    const refuse = (error: GatewayError, headers?: Record<string, string>) => {
      sendError(res, requestId, error, headers);
      finished({ startedAt, route: null, channel: null, attempts: 0, upstreamMs: 0 });
    };

    let endpoint: Endpoint;
    let modelId: string | null = null;
    if (path === "/v1/chat/completions" || path === "/v1/completions" || path === "/v1/responses" || path === "/v1/embeddings") {
      endpoint = path;
      if (method !== "POST") return refuse(methodNotAllowed(method, path), { allow: "POST" });
    } else if (path.startsWith("/v1/responses/")) {
      // GET / DELETE /v1/responses/{id}, POST …/cancel, GET …/input_items, POST …/input_tokens: nothing is stored to serve them.
      req.resume();
      return refuse(statefulUnsupported(method, path));
    } else if (path === "/v1/models" || path.startsWith("/v1/models/")) {
      endpoint = "/v1/models";
      if (method !== "GET") return refuse(methodNotAllowed(method, path), { allow: "GET" });
      if (path !== "/v1/models") modelId = safeDecode(path.slice("/v1/models/".length));
    } else {
      req.resume();
      return refuse(unknownUrl(method, path));
    }

    // An address that keeps sending bad keys is slowed before any key lookup (no database work).
    const address = clientAddress(req, config.trustProxy);
    const throttledFor = limiter.throttled(address, () => {
      const presented = parseBearer(header(req, "authorization"));
      return presented !== null && recentlyValidKey(presented);
    });
    if (throttledFor > 0) {
      req.resume();
      return sendError(res, requestId, badKeysThrottled(throttledFor));
    }

    const state = new RequestState(requestId, endpoint);
    const onClose = () => {
      if (!res.writableFinished) state.client.abort();
    };
    res.on("close", onClose);
    try {
      if (endpoint === "/v1/models") await models(state, req, res, modelId);
      else await proxy(deps, state, req, res);
    } catch (error) {
      const known = error instanceof GatewayError ? error : null;
      if (known?.code === "invalid_api_key" && state.key === null) await limiter.badKey(address);
      if (!known) deps.log("error", "internal error in the passthrough", { requestId, error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
      await recordAndAnswerFailure(deps, state, res, known ?? internalError()).catch((e) => deps.log("error", "could not answer a failed request", { requestId, error: String(e) }));
    } finally {
      res.off("close", onClose);
      if (state.rateTicket) await limiter.finish(state.rateTicket);
      // Never leave budget locked: whatever happened, a hold still open is released uncharged.
      if (state.hold) {
        const hold = state.hold;
        state.hold = null;
        await deps.release(hold).catch((e) => deps.log("error", "could not release a hold (its leases lapse after their TTL)", { requestId, holdId: hold.id, error: String(e) }));
      }
      if (!res.headersSent) sendError(res, requestId, internalError());
      else if (!res.writableEnded && !res.destroyed) res.end();
      finished(state);
    }
  }

  async function models(state: RequestState, req: IncomingMessage, res: ServerResponse, modelId: string | null): Promise<void> {
    req.resume();
    const key = await authenticate(req, state, config.keyCacheTtlMs);
    let payload: unknown;
    if (modelId === null) payload = await listModels(deps.lookups, key);
    else {
      payload = await findModel(deps.lookups, key, modelId);
      if (!payload) {
        throw new GatewayError({
          status: 404,
          type: "invalid_request_error",
          code: "model_not_found",
          message: `The model '${modelId}' does not exist or you do not have access to it.`,
          param: "model",
          cause: null,
        });
      }
    }
    const body = Buffer.from(JSON.stringify(payload));
    res.writeHead(200, { "content-type": "application/json", "content-length": String(body.length), "x-request-id": state.requestId });
    res.end(body);
  }

  return {
    handle,
    stats: () => ({ ...money.stats(), limits: { ...limiter.stats, rateLimited: { ...limiter.stats.rateLimited } } }),
    recallLeases: () => money.pool.returnAll(),
    async close() {
      forgetRateUsage();
      await deps.upstream.close();
      await limiter.close();
      await money.close();
      await stopRollupFolder();
    },
  };
}

/** The client's address: the TCP peer, or behind TRUST_PROXY the address the (last) proxy appended to x-forwarded-for. */
export function clientAddress(req: IncomingMessage, trustProxy: boolean): string {
  if (trustProxy) {
    const forwarded = req.headers["x-forwarded-for"];
    const last = (Array.isArray(forwarded) ? forwarded.join(",") : (forwarded ?? "")).split(",").pop()?.trim();
    if (last) return last;
  }
  return req.socket.remoteAddress ?? "unknown";
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}
