// One passthrough request (chat completion or embeddings), in the order DESIGN.md fixes:
// key check → route → worst-case reservation → upstream (with fallback) → settle + receipt,
// or → FailedRequest + release. Every exit of `run` leaves the request recorded exactly once
// and its hold resolved (the caller's `finally` releases a hold an unexpected error left behind).
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Config } from "../config.ts";
import type { ApiKey, Route } from "../generated/prisma/client.ts";
import type { BalanceBucket, FailureCause } from "../generated/prisma/enums.ts";
import type { ReserveInput, ReserveResult } from "../accounting/index.ts";
import { lookupKey } from "../keys/index.ts";
import { parseBearer } from "../auth/index.ts";
import { BUCKET_CURRENCY, MAX_AMOUNT_MICROS, formatMoney, requestCharge, tokenCharge } from "../money.ts";
import type { PlannedChannel } from "../routing/index.ts";
import { health, type Admission, type ChannelRef } from "../health/index.ts";
import { primaryBucket } from "../keys/index.ts";
import { announceSpend } from "../spend/index.ts";
import { capToHold, type CounterState, type FailedRequestInput, type HoldRef, type ReceiptInput } from "../requests/index.ts";
import {
  GatewayError,
  budgetExceeded,
  clientClosed,
  expiredKey,
  insufficientBalance,
  invalidKey,
  missingKey,
  modelNotAllowed,
  modelNotFound,
  pausedKey,
  priceUnknown,
  rateLimited,
  revokedKey,
  routeUnavailable,
  channelsDown,
  runCancelled,
  runNotFound,
  runPaused,
  sendError,
  upstreamError,
  upstreamRejected,
  upstreamTimeout,
} from "./errors.ts";
import { drained, header, parseJsonObject, readBody } from "./http.ts";
import { Lookups, modelAllowed, usableChannels } from "./lookups.ts";
import { SseRelay, choiceText, readUsage, type Usage } from "./sse.ts";
import { countChatPrompt, countEmbeddingInput, countText, outputBound, reservedPromptTokens } from "./tokens.ts";
import { UpstreamFailure, type UpstreamAttempt, type UpstreamClient } from "./upstream.ts";
import { validateRequest } from "./validate.ts";
import type { RateLimiter, RateTicket } from "./rate-limit.ts";
import { observeAttempt, observeFallback, observeSpend } from "./observe.ts";

export type Endpoint = "/v1/chat/completions" | "/v1/embeddings" | "/v1/models";

export interface GatewayDeps {
  config: Config;
  lookups: Lookups;
  upstream: UpstreamClient;
  log: (level: "debug" | "info" | "warn" | "error", message: string, extra?: Record<string, unknown>) => void;
  /** Admission: holds the worst case against every cap (see src/gateway/money.ts). */
  reserve: (input: ReserveInput) => Promise<ReserveResult>;
  /** Receipt + charge (batched). */
  settle: (item: { record: ReceiptInput; hold: HoldRef; bucketId: string }) => Promise<{ id: string }>;
  /** Drops a hold uncharged. */
  release: (hold: HoldRef) => Promise<void>;
  /** FailedRequest + its policy charge, capped at the hold. */
  recordFailure: (record: FailedRequestInput, hold: HoldRef | null) => Promise<{ id: string }>;
  /** Counters as the request's batch committed them, if the money path knows (events then read nothing). */
  spendStates: (requestId: string) => CounterState[] | null;
  /** Per-key rate limits and the bad-key throttle (src/gateway/rate-limit.ts). */
  limiter: RateLimiter;
}

interface Hold {
  id: string;
  amount: bigint;
  bucket: BalanceBucket;
  bucketId: string;
}

/** Usage a failure is charged from (only set once an attempt reached the upstream). */
interface FailureUsage {
  promptTokens: number;
  completionTokens: number;
  estimated: boolean;
}

/** Everything known about one request so far; what a FailedRequest is written from. */
export class RequestState {
  readonly startedAt = performance.now();
  key: ApiKey | null = null;
  model: string | null = null;
  route: Route | null = null;
  runId: string | null = null;
  channel: PlannedChannel | null = null;
  attempts = 0;
  hold: Hold | null = null;
  failureUsage: FailureUsage | null = null;
  recorded = false;
  /** The request's place in its key's rate limits, freed when it ends. */
  rateTicket: RateTicket | null = null;
  /** Time spent in upstream attempts, and in settlements awaited inside them (for the overhead metric). */
  upstreamMs = 0;
  settleMs = 0;
  /** Aborted when the client hangs up before the response is complete. */
  readonly client = new AbortController();

  constructor(
    readonly requestId: string,
    readonly endpoint: Endpoint,
  ) {}
}

type Outcome = { done: true } | { done: false; failure: UpstreamFailure | { kind: "status"; status: number; message: string } };

/** How long an upstream may take to end its response after `data: [DONE]`. */
const END_GRACE_MS = 2_000;
/**
 * A client that hangs up after the generation finished (finish_reason seen) but before the usage
 * chunk: the upstream is read this much longer for its usage, so the charge is exact rather than counted.
 */
const CLIENT_GONE_USAGE_GRACE_MS = 2_000;
/** Receipt status of an answer the upstream completed (and bills) but the client left before receiving (nginx's 499). */
const CLIENT_CLOSED_STATUS = 499;

const RETRYABLE_STATUS = (status: number) => status >= 500 || status === 429 || status === 408 || status === 401 || status === 403 || status === 404;

// ---------------------------------------------------------------------------

export async function authenticate(state: RequestState, req: IncomingMessage): Promise<ApiKey> {
  const secret = parseBearer(header(req, "authorization"));
  if (!secret) throw missingKey();
  const found = await lookupKey(secret);
  if (found.key) state.key = found.key;
  if (found.ok) return found.key;
  switch (found.reason) {
    case "KEY_REVOKED":
      throw revokedKey();
    case "KEY_PAUSED":
      throw pausedKey();
    case "KEY_EXPIRED":
      throw expiredKey();
    default:
      state.key = null; // an unknown or expired secret says nothing about whose key it was
      throw invalidKey();
  }
}

export async function proxy(deps: GatewayDeps, state: RequestState, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { config, lookups } = deps;
  const key = await authenticate(state, req);
  const body = parseJsonObject(await readBody(req, config.maxBodyBytes));
  const model = validateRequest(state.endpoint, body, header(req, "x-run-id"));
  state.model = model;
  const chat = state.endpoint === "/v1/chat/completions";
  const stream = chat && body.stream === true;

  if (!modelAllowed(key, model)) throw modelNotAllowed(model);
  const plan = await lookups.plan(key.organizationId, model);
  if (!plan) throw modelNotFound(model);
  state.route = plan.route;
  if (plan.channels.length === 0) throw routeUnavailable(model);
  const usable = usableChannels(plan, key);
  if (usable.length === 0) throw modelNotAllowed(model, "no channel of its route is open to this key (allowed buckets, lower-cost routes, backup routes)");
  const priced = usable.filter((c) => c.price !== null);
  if (priced.length === 0) {
    state.channel = usable[0]!;
    throw priceUnknown(model);
  }

  const runId = header(req, "x-run-id")?.trim();
  if (runId) {
    const run = await lookups.run(runId, key.id);
    if (!run) throw runNotFound(runId);
    state.runId = run.id;
    if (run.status === "PAUSED") throw runPaused();
    if (run.status !== "ACTIVE") throw runCancelled();
  }

  // Worst case: every prompt token (with a margin for the upstream's tokenizer) and the output bound.
  const prompt = chat ? await countChatPrompt(body) : await countEmbeddingInput(body);
  const promptCounted = prompt.text;
  const reservedPrompt = reservedPromptTokens(prompt, priced.map((c) => c.channel.upstreamModel), plan.route.maxUnboundedPartTokens);
  const reservedOutput = chat ? outputBound(body, plan.route.defaultMaxTokens) : 0;
  const clientWantsUsage = stream && (body.stream_options as { include_usage?: unknown } | null | undefined)?.include_usage === true;

  // Per-key rate limits: counted with the request's token bound, before anything is reserved.
  const admitted = await deps.limiter.admit(key.id, state.requestId, key, reservedPrompt + reservedOutput);
  if (!admitted.ok) throw rateLimited(admitted.limit, admitted.retryAfterSeconds);
  state.rateTicket = admitted.ticket;

  const maxAttempts = 1 + Math.max(0, key.retryCeiling);
  // Set inside tryChannel; read after the loop (a holder, since closures defeat narrowing).
  const failed: { last: Extract<Outcome, { done: false }>["failure"] | null } = { last: null };
  /** One attempt on one channel; true when the request is answered. */
  const tryChannel = async (channel: PlannedChannel, ref: ChannelRef, admission: Admission): Promise<boolean> => {
    let started = 0;
    let settleBefore = state.settleMs;
    let ok: boolean | null = null;
    try {
      const worst = requestCharge(channel.price!, reservedPrompt, reservedOutput);
      await holdFor(deps, state, key, channel, worst);
      if (state.client.signal.aborted) throw clientClosed();
      state.channel = channel;
      state.attempts++;
      state.failureUsage = null;
      if (state.attempts > 1) observeFallback(state, channel);
      started = performance.now();
      settleBefore = state.settleMs;
      const outcome = await attempt(deps, state, res, { body, channel, stream, clientWantsUsage, promptCounted, plan: plan.route });
      ok = outcome.done;
      if (outcome.done) return true;
      failed.last = outcome.failure;
    } catch (error) {
      ok = started ? healthVerdict(error) : null;
      throw error;
    } finally {
      if (started) {
        const upstreamMs = performance.now() - started - (state.settleMs - settleBefore);
        state.upstreamMs += upstreamMs;
        observeAttempt(state, channel, ok === true, upstreamMs);
      }
      if (ok !== null) {
        health.record(ref, { ok, latencyMs: Math.round(performance.now() - started) }).catch((e: unknown) => deps.log("warn", "could not record channel health", { error: String(e) }));
      } else if (admission === "probe") {
        // The probe learnt nothing (refused, client gone, our own error): free the slot, or the channel stays DOWN here for good.
        health.releaseProbe(ref);
      }
    }
    deps.log("debug", "upstream attempt failed", { requestId: state.requestId, channel: channel.channel.name, failure: failed.last ? describe(failed.last) : "none" });
    return false;
  };
  const refOf = (channel: PlannedChannel): ChannelRef => ({ id: channel.channel.id, routeId: channel.channel.routeId, organizationId: key.organizationId, health: channel.channel.health });

  // A channel whose own daily cap (CHANNEL_DAILY) refuses the reservation is skipped like an
  // unusable channel and the next one is tried; only when none is left is that refusal the answer.
  let channelCapped: GatewayError | null = null;
  const tryUnlessCapped = async (channel: PlannedChannel, ref: ChannelRef, admission: Admission): Promise<boolean> => {
    try {
      return await tryChannel(channel, ref, admission);
    } catch (error) {
      if (error instanceof GatewayError && error.capScope === "CHANNEL_DAILY") {
        channelCapped = error;
        return false;
      }
      throw error;
    }
  };
  const coolingDown: PlannedChannel[] = [];
  for (const channel of priced) {
    if (state.attempts >= maxAttempts) break;
    // A DOWN channel is skipped while it cools down (then one request probes it): see src/health.
    const ref = refOf(channel);
    const admission = health.admit(ref);
    if (admission === "no") {
      coolingDown.push(channel);
      continue;
    }
    if (await tryUnlessCapped(channel, ref, admission)) return;
  }
  // Every usable channel is DOWN and cooling down: try the best (first) one rather than refuse blindly.
  if (state.attempts === 0 && coolingDown.length > 0) {
    const best = coolingDown[0]!;
    if (await tryUnlessCapped(best, refOf(best), "probe")) return;
  }
  if (state.attempts === 0 && channelCapped) throw channelCapped;
  if (state.attempts === 0) throw channelsDown(model);
  const last = failed.last;
  // Every usable channel (or the retry ceiling) is exhausted.
  const reached = last instanceof UpstreamFailure ? last.reachedUpstream : true;
  state.failureUsage = reached ? { promptTokens: promptCounted, completionTokens: 0, estimated: true } : null;
  if (last instanceof UpstreamFailure && last.kind === "timeout") throw upstreamTimeout(last.message, state.attempts);
  throw upstreamError(last ? describe(last) : "no attempt was possible", state.attempts, last && !(last instanceof UpstreamFailure) ? last.status : null);
}

/** What an attempt that ended in an exception says about its channel: null = nothing (not recorded; a probe slot is freed). */
function healthVerdict(error: unknown): boolean | null {
  if (error instanceof GatewayError) {
    if (error.failureCause === "BAD_REQUEST") return true; // the upstream answered; the request was at fault
    if (error.failureCause === "UPSTREAM_ERROR" || error.failureCause === "UPSTREAM_TIMEOUT") return false; // cut or stalled mid-stream
  }
  // Client gone or our own error: says nothing about the channel.
  return null;
}

function describe(f: UpstreamFailure | { kind: "status"; status: number; message: string }): string {
  return f instanceof UpstreamFailure ? f.message : `HTTP ${f.status}${f.message ? `: ${f.message}` : ""}`;
}

/**
 * Makes sure a hold covers `worst` in the channel's bucket. A fallback to a channel in the same
 * bucket whose worst case the current hold already covers keeps it; otherwise the old hold is
 * released first and a new one reserved (so it is never counted twice).
 */
async function holdFor(deps: GatewayDeps, state: RequestState, key: ApiKey, channel: PlannedChannel, worst: bigint): Promise<void> {
  if (state.hold) {
    if (state.hold.bucket === channel.bucket && worst <= state.hold.amount) return;
    const old = state.hold;
    state.hold = null;
    await deps.release(old);
  }
  state.channel = channel;
  if (worst > MAX_AMOUNT_MICROS) throw insufficientBalance(channel.bucket);
  const bucketId = await deps.lookups.bucketId(key.organizationId, channel.bucket);
  const result = await deps.reserve({
    requestId: state.requestId,
    bucketId,
    amount: worst,
    keyId: key.id,
    projectId: key.projectId,
    routeId: state.route!.id,
    runId: state.runId,
    channelId: channel.channel.id,
    ttlMs: deps.config.holdTtlMs,
  });
  if (result.ok) {
    state.hold = { id: result.holdId, amount: worst, bucket: channel.bucket, bucketId };
    return;
  }
  if (result.refusal === "INSUFFICIENT_BALANCE") throw insufficientBalance(channel.bucket);
  if (result.refusal === "RUN_CANCELLED") throw runCancelled();
  if (result.refusal === "RUN_PAUSED") throw runPaused();
  throw budgetExceeded(result.refusal);
}

interface AttemptInput {
  body: Record<string, unknown>;
  channel: PlannedChannel;
  stream: boolean;
  clientWantsUsage: boolean;
  promptCounted: number;
  plan: Route;
}

function upstreamUrl(baseUrl: string, endpoint: Endpoint): string {
  // Channel base URLs follow the OpenAI SDKs' baseURL convention: they include the version (…/v1).
  return `${baseUrl.replace(/\/+$/, "")}${endpoint.slice(3)}`;
}

async function attempt(deps: GatewayDeps, state: RequestState, res: ServerResponse, input: AttemptInput): Promise<Outcome> {
  const { channel, stream } = input;
  const upstreamBody: Record<string, unknown> = { ...input.body, model: channel.channel.upstreamModel };
  if (stream) {
    const given = input.body.stream_options;
    upstreamBody.stream_options = { ...(given && typeof given === "object" ? given : {}), include_usage: true };
  }
  const headers: Record<string, string> = {
    "content-type": "application/json",
    accept: stream ? "text/event-stream" : "application/json",
    "x-tokengate-request-id": state.requestId,
  };
  const credential = deps.lookups.credential(channel.channel);
  if (credential) headers.authorization = `Bearer ${credential}`;

  const call = deps.upstream.attempt({
    url: upstreamUrl(channel.channel.baseUrl, state.endpoint),
    headers,
    body: JSON.stringify(upstreamBody),
    clientSignal: state.client.signal,
  });
  try {
    let head: { status: number; headers: Record<string, string | string[] | undefined> };
    try {
      head = await call.start();
    } catch (error) {
      if (!(error instanceof UpstreamFailure)) throw error;
      if (error.kind === "client_closed") {
        state.failureUsage = error.reachedUpstream ? { promptTokens: input.promptCounted, completionTokens: 0, estimated: true } : null;
        throw clientClosed();
      }
      return { done: false, failure: error };
    }

    if (head.status >= 400) {
      const errorBody = await call.readAll(1024 * 1024).catch(() => Buffer.alloc(0));
      const message = upstreamErrorMessage(errorBody);
      if (RETRYABLE_STATUS(head.status)) return { done: false, failure: { kind: "status", status: head.status, message } };
      state.failureUsage = { promptTokens: input.promptCounted, completionTokens: 0, estimated: true };
      throw upstreamRejected(head.status, normalizeErrorBody(errorBody, message), `the upstream rejected the request (HTTP ${head.status}): ${message}`);
    }

    const contentType = String(head.headers["content-type"] ?? "");
    if (stream) {
      if (!contentType.includes("text/event-stream")) {
        await call.readAll(1024 * 1024).catch(() => undefined);
        return { done: false, failure: { kind: "status", status: head.status, message: `expected an event stream, got ${contentType || "no content type"}` } };
      }
      return await relayStream(deps, state, res, call, input);
    }
    // The upstream has answered and bills it: its answer is read to the end even if the client leaves, to charge its usage.
    call.detachClient();
    return await relayJson(deps, state, res, call, input, contentType);
  } finally {
    call.close();
  }
}

function upstreamErrorMessage(body: Buffer): string {
  const text = body.toString("utf8");
  try {
    const parsed = JSON.parse(text) as { error?: { message?: unknown } | string; message?: unknown };
    if (parsed && typeof parsed.error === "object" && typeof parsed.error?.message === "string") return parsed.error.message;
    if (typeof parsed?.error === "string") return parsed.error;
    if (typeof parsed?.message === "string") return parsed.message;
  } catch {
    // not JSON
  }
  return text.slice(0, 300);
}

/** An upstream 4xx body in OpenAI's shape passes as it is; anything else is wrapped. */
function normalizeErrorBody(body: Buffer, message: string): Buffer {
  try {
    const parsed = JSON.parse(body.toString("utf8")) as { error?: unknown };
    if (parsed && typeof parsed.error === "object" && parsed.error !== null) return body;
  } catch {
    // wrap below
  }
  return Buffer.from(JSON.stringify({ error: { message, type: "invalid_request_error", code: "upstream_rejected", param: null } }));
}

function successHeaders(state: RequestState, channel: PlannedChannel): Record<string, string> {
  return {
    "x-request-id": state.requestId,
    "x-tokengate-currency": BUCKET_CURRENCY[channel.bucket],
    "x-tokengate-bucket": channel.bucket,
    "x-tokengate-route": state.route!.id,
    "x-tokengate-channel": channel.channel.name,
    "x-tokengate-upstream-model": channel.channel.upstreamModel,
    "x-tokengate-attempts": String(state.attempts),
    "x-tokengate-fallback": String(state.attempts > 1),
  };
}

async function writeReceipt(deps: GatewayDeps, state: RequestState, input: AttemptInput, usage: Usage, status: number): Promise<bigint> {
  const { channel } = input;
  const price = channel.price!;
  const hold = state.hold!;
  const full = requestCharge(price, usage.promptTokens, usage.completionTokens);
  const charge = capToHold(full, hold);
  const exceeded = charge < full || usage.clamped === true;
  if (exceeded) {
    // The upstream used more than the worst case reserved (another tokenizer, ignored max_tokens, absurd usage): caps win.
    deps.log("warn", "usage exceeded the reservation; the charge is capped at the hold", { requestId: state.requestId, usage, reserved: hold.amount.toString(), full: full.toString() });
  }
  const record: ReceiptInput = {
    requestId: state.requestId,
    organizationId: state.key!.organizationId,
    keyId: state.key!.id,
    projectId: state.key!.projectId,
    runId: state.runId,
    routeId: state.route!.id,
    channelId: channel.channel.id,
    requestedModel: state.model!,
    upstreamModel: channel.channel.upstreamModel,
    endpoint: state.endpoint,
    channelRole: channel.role,
    fallback: state.attempts > 1,
    attempts: state.attempts,
    bucket: channel.bucket,
    currency: price.currency,
    promptTokens: usage.promptTokens,
    completionTokens: usage.completionTokens,
    priceSnapshotId: price.id,
    charge,
    stream: input.stream,
    latencyMs: Math.round(performance.now() - state.startedAt),
    status,
    usageExceededReservation: exceeded,
  };
  const settleStarted = performance.now();
  const receipt = await deps.settle({ record, hold, bucketId: hold.bucketId });
  state.settleMs += performance.now() - settleStarted;
  state.recorded = true;
  state.hold = null;
  announce(deps, { ...record, routeId: record.routeId, receiptId: receipt.id, status: "SETTLED" });
  return charge;
}

async function relayJson(deps: GatewayDeps, state: RequestState, res: ServerResponse, call: UpstreamAttempt, input: AttemptInput, contentType: string): Promise<Outcome> {
  let raw: Buffer;
  try {
    raw = await call.readAll();
  } catch (error) {
    if (!(error instanceof UpstreamFailure)) throw error;
    if (error.kind === "client_closed") {
      state.failureUsage = { promptTokens: input.promptCounted, completionTokens: 0, estimated: true };
      throw clientClosed();
    }
    return { done: false, failure: error };
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
    if (!parsed || typeof parsed !== "object") throw new Error("not an object");
  } catch {
    return { done: false, failure: { kind: "status", status: 200, message: "the upstream answered with invalid JSON" } };
  }
  let usage = readUsage(parsed.usage);
  if (!usage) {
    // No usage reported: charge from our own count (prompt) and the returned text.
    const text: string[] = [];
    if (Array.isArray(parsed.choices)) for (const c of parsed.choices) choiceText((c as { message?: unknown } | null)?.message, text);
    usage = { promptTokens: input.promptCounted, completionTokens: countText(text.join("")) };
    deps.log("warn", "upstream reported no usage; charged from counted tokens", { requestId: state.requestId, channel: input.channel.channel.name });
  }
  const clientGone = state.client.signal.aborted || res.destroyed;
  const charge = await writeReceipt(deps, state, input, usage, clientGone ? CLIENT_CLOSED_STATUS : 200);
  if (res.destroyed) return { done: true };
  res.writeHead(200, {
    "content-type": contentType || "application/json",
    "content-length": String(raw.length),
    "x-tokengate-charge": formatMoney(charge),
    ...successHeaders(state, input.channel),
  });
  res.end(raw);
  return { done: true };
}

async function relayStream(deps: GatewayDeps, state: RequestState, res: ServerResponse, call: UpstreamAttempt, input: AttemptInput): Promise<Outcome> {
  const relay = new SseRelay(input.clientWantsUsage);
  let committed = false;
  // Headers go out with the first upstream bytes: until then a failing channel can still fall back.
  const commit = () => {
    if (committed) return;
    committed = true;
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
      trailer: "x-tokengate-charge",
      ...successHeaders(state, input.channel),
    });
  };
  const failureUsage = (): FailureUsage =>
    relay.usage
      ? { ...relay.usage, estimated: false }
      : { promptTokens: input.promptCounted, completionTokens: countText(relay.generatedText()), estimated: true };

  // A client that hangs up mid-generation stops the upstream at once (what was streamed is charged);
  // one that hangs up once the generation finished waits a short grace for the upstream's usage.
  call.detachClient();
  const onClientGone = () => (relay.finished ? call.expectEnd(CLIENT_GONE_USAGE_GRACE_MS) : call.abort());
  if (state.client.signal.aborted) onClientGone();
  else state.client.signal.addEventListener("abort", onClientGone, { once: true });
  try {
    for await (const chunk of call.chunks()) {
      const out = relay.push(chunk);
      commit();
      if (out && !state.client.signal.aborted && !res.write(out)) {
        call.pauseIdle();
        await drained(res, state.client.signal);
        call.resumeIdle();
      }
      // After [DONE] the upstream only has to end the response; one that keeps it open gets a short grace.
      if (relay.done) call.expectEnd(END_GRACE_MS);
    }
    const tail = relay.end();
    if (tail && !state.client.signal.aborted) {
      commit();
      res.write(tail);
    }
  } catch (error) {
    if (!(error instanceof UpstreamFailure)) throw error;
    if (relay.done) {
      // The answer was complete ([DONE] seen); only the end of the upstream response was missing.
    } else if (error.kind === "client_closed" || state.client.signal.aborted) {
      state.failureUsage = failureUsage();
      throw clientClosed();
    } else if (!committed) {
      return { done: false, failure: error };
    } else {
      state.failureUsage = failureUsage();
      if (error.kind === "timeout") throw upstreamTimeout(`the stream stalled: ${error.message}`, state.attempts);
      throw upstreamError(`the stream was cut off: ${error.message}`, state.attempts, 200);
    }
  } finally {
    state.client.signal.removeEventListener("abort", onClientGone);
  }
  if (!relay.done && !relay.usage) {
    if (!committed) return { done: false, failure: { kind: "status", status: 200, message: "the upstream closed the stream without any event" } };
    state.failureUsage = failureUsage();
    throw upstreamError("the stream ended before [DONE]", state.attempts, 200);
  }
  commit();
  let usage = relay.usage;
  if (!usage) {
    usage = { promptTokens: input.promptCounted, completionTokens: countText(relay.generatedText()) };
    deps.log("warn", "upstream stream carried no usage; charged from counted tokens", { requestId: state.requestId, channel: input.channel.channel.name });
  }
  const charge = await writeReceipt(deps, state, input, usage, state.client.signal.aborted ? CLIENT_CLOSED_STATUS : 200);
  const amount = formatMoney(charge);
  if (!res.destroyed) {
    res.write(`: tokengate-charge=${amount} currency=${input.channel.price!.currency}\n\ndata: [DONE]\n\n`);
    res.addTrailers({ "x-tokengate-charge": amount });
    res.end();
  }
  return { done: true };
}

/** keySpend / projectSpend / receiptCreated / budget alerts, after the record committed; never delays or fails the request. */
function announce(
  deps: GatewayDeps,
  o: { organizationId: string; projectId: string; keyId: string; routeId: string | null; requestId: string; bucket: BalanceBucket; charge: bigint; receiptId?: string; status: "SETTLED" | "FAILED" },
): void {
  observeSpend(o.bucket, o.charge, o.status === "SETTLED" ? "receipt" : "failed_request");
  announceSpend(o, deps.spendStates(o.requestId)).catch((e: unknown) => deps.log("warn", "could not announce spend", { requestId: o.requestId, error: String(e) }));
}

// ---------------------------------------------------------------------------
// Failure: record (FailedRequest + release in one transaction), then answer.

function failureCharge(state: RequestState, cause: FailureCause): { charge: bigint; usage: FailureUsage | null } {
  const usage = state.failureUsage;
  const price = state.channel?.price;
  // The key's policy governs failures the client did not cause. A client that hangs up after its
  // request reached the upstream is charged what the upstream bills: the prompt and what was generated.
  const policy = cause === "CLIENT_CLOSED" ? "FULL_USAGE" : (state.key?.failedChargePolicy ?? "NEVER");
  if (!usage || !price || !state.hold || policy === "NEVER") return { charge: 0n, usage };
  const charge = policy === "PROMPT_TOKENS" ? tokenCharge(usage.promptTokens, price.inputPerMillion) : requestCharge(price, usage.promptTokens, usage.completionTokens);
  return { charge: capToHold(charge, state.hold), usage };
}

export async function recordAndAnswerFailure(deps: GatewayDeps, state: RequestState, res: ServerResponse, error: GatewayError): Promise<void> {
  let charge = 0n;
  if (error.failureCause && !state.recorded) {
    const computed = failureCharge(state, error.failureCause);
    charge = computed.charge;
    const channel = state.channel;
    const hold = state.hold;
    try {
      await deps.recordFailure(
        {
          requestId: state.requestId,
          organizationId: state.key?.organizationId ?? null,
          keyId: state.key?.id ?? null,
          projectId: state.key?.projectId ?? null,
          runId: state.runId,
          routeId: state.route?.id ?? null,
          channelId: channel?.channel.id ?? null,
          requestedModel: state.model,
          endpoint: state.endpoint,
          cause: error.failureCause,
          capScope: error.capScope,
          message: error.message.slice(0, 2000),
          httpStatus: error.status,
          upstreamStatus: error.upstreamStatus,
          attempts: state.attempts,
          bucket: channel?.bucket ?? null,
          currency: channel ? BUCKET_CURRENCY[channel.bucket] : null,
          promptTokens: computed.usage?.promptTokens ?? 0,
          completionTokens: computed.usage?.completionTokens ?? 0,
          priceSnapshotId: channel?.price?.id ?? null,
          charge,
          estimated: computed.usage?.estimated ?? false,
        },
        hold,
      );
      state.recorded = true;
      state.hold = null;
      const key = state.key;
      if (key) {
        announce(deps, {
          organizationId: key.organizationId,
          projectId: key.projectId,
          keyId: key.id,
          routeId: state.route?.id ?? null,
          requestId: state.requestId,
          bucket: channel?.bucket ?? primaryBucket(key),
          charge,
          status: "FAILED",
        });
      }
    } catch (recordError) {
      deps.log("error", "could not record a failed request", { requestId: state.requestId, error: String(recordError) });
    }
  }
  const chargeHeader: Record<string, string> = {};
  if (state.attempts > 0 && state.channel) {
    chargeHeader["x-tokengate-charge"] = formatMoney(charge);
    chargeHeader["x-tokengate-currency"] = BUCKET_CURRENCY[state.channel.bucket];
    chargeHeader["x-tokengate-bucket"] = state.channel.bucket;
  }
  if (!res.headersSent) {
    sendError(res, state.requestId, error, chargeHeader);
  } else if (!res.writableEnded && !res.destroyed) {
    // Mid-stream: an error event (OpenAI SDKs raise it), the charge, and no [DONE].
    res.write(`data: ${JSON.stringify(error.body())}\n\n`);
    if (chargeHeader["x-tokengate-charge"]) {
      res.write(`: tokengate-charge=${chargeHeader["x-tokengate-charge"]} currency=${chargeHeader["x-tokengate-currency"]}\n\n`);
      res.addTrailers({ "x-tokengate-charge": chargeHeader["x-tokengate-charge"] });
    }
    res.end();
  }
}
