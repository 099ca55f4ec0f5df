// Stage 4, forward: the planned channels in priority order, up to 1 + the key's retry ceiling
// attempts, each admitted (stage 3) before it is sent. Connect errors, timeouts, 5xx, 429, and
// 401/403/404 (a channel's credential or model is wrong, not the request) move to the next channel;
// any other 4xx is the request's fault and is passed back as it came. A fallback to another channel
// releases the hold and is admitted anew against that channel's limits (its own daily cap among
// them), so the charge is counted where it is spent. A
// channel whose own daily cap (CHANNEL_DAILY) refuses is skipped like an unusable one; a DOWN
// channel is skipped while it cools down (src/health), or probed when every channel is. Exhausted:
// 504 upstream_timeout if the last failure was a timeout, else 502 upstream_error (with the last
// upstream status). The answer itself is relayed (and settled) by relay.ts. Every attempt that was
// sent ends as one step of the request's path (state.path: channel, role, upstream status, cause,
// latency), stored with its receipt or failed request; skipped channels (cooling down, capped) are
// not attempts and leave no step.
import type { ServerResponse } from "node:http";
import type { ApiKey } from "../../generated/prisma/client.ts";
import { holdCovers, worstCase, refusalSkipsChannel } from "../../money/index.ts";
import type { Admission, ChannelRef } from "../../health/index.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import { GatewayError, channelsDown, clientClosed, upstreamRejected, upstreamError, upstreamTimeout } from "../errors.ts";
import { observeAttempt, observeFallback } from "../observe.ts";
import { UpstreamFailure } from "../upstream.ts";
import { statusCause, type AttemptCause } from "../../requests/attempts.ts";
import { channelRedactor } from "../redact.ts";
import { clip } from "../../text.ts";
import { admit } from "./admit.ts";
import type { Plan } from "./plan.ts";
import { relayJson, relayStream } from "./relay.ts";
import { finishAttempt, type AttemptFailure, type Endpoint, type GatewayDeps, type Outcome, type RequestState } from "./state.ts";

const RETRYABLE_STATUS = (status: number) => status >= 500 || status === 429 || status === 408 || status === 401 || status === 403 || status === 404;

/** Answers the request from the first channel that can; throws the failure to record when none did. */
export async function forward(deps: GatewayDeps, state: RequestState, res: ServerResponse, key: ApiKey, plan: Plan): Promise<void> {
  const maxAttempts = 1 + Math.max(0, key.retryCeiling);
  let last: AttemptFailure | null = null;
  let channelCapped: GatewayError | null = null;
  let coolingDown: PlannedChannel[] | null = null;
  for (const channel of plan.channels) {
    if (state.attempts >= maxAttempts) break;
    // A DOWN channel is skipped while it cools down (then one request probes it): see src/health.
    const ref = refOf(channel, key);
    const admission = deps.health.admit(ref);
    if (admission === "no") {
      coolingDown ??= [];
      coolingDown.push(channel);
      continue;
    }
    const failed = await tryChannel(deps, state, res, key, plan, channel, ref, admission);
    if (failed === null) return;
    if (failed instanceof GatewayError) channelCapped = failed;
    else last = failed;
  }
  // Every usable channel is DOWN and cooling down: try the best (first) one rather than refuse blindly.
  if (state.attempts === 0 && coolingDown) {
    const best = coolingDown[0]!;
    const failed = await tryChannel(deps, state, res, key, plan, best, refOf(best, key), "probe");
    if (failed === null) return;
    if (failed instanceof GatewayError) channelCapped = failed;
    else last = failed;
  }
  if (state.attempts === 0 && channelCapped) throw channelCapped;
  if (state.attempts === 0) throw channelsDown(plan.model);
  // Every usable channel (or the retry ceiling) is exhausted.
  const reached = last instanceof UpstreamFailure ? last.reachedUpstream : true;
  state.failureUsage = reached ? { promptTokens: plan.promptCounted, completionTokens: 0, estimated: true } : null;
  // The client gets our words; what the upstream said is kept for admins, redacted.
  const detail = { requestId: state.requestId, upstreamMessage: last ? channelRedactor(deps.lookups, plan.channels)(upstreamText(last)) : null };
  if (last instanceof UpstreamFailure && last.kind === "timeout") throw upstreamTimeout(last.summary, state.attempts, detail);
  throw upstreamError(last ? describe(last) : "no attempt was possible", state.attempts, last && !(last instanceof UpstreamFailure) ? last.status : null, detail);
}

const refOf = (channel: PlannedChannel, key: ApiKey): ChannelRef => ({ id: channel.channel.id, routeId: channel.channel.routeId, organizationId: key.organizationId, health: channel.channel.health });

/**
 * One attempt on one channel: null when the request is answered, the failure when the next channel
 * may be tried, or the CHANNEL_DAILY refusal when this channel's own cap is spent (skipped). Any
 * other error is the request's answer and is thrown.
 */
async function tryChannel(
  deps: GatewayDeps,
  state: RequestState,
  res: ServerResponse,
  key: ApiKey,
  plan: Plan,
  channel: PlannedChannel,
  ref: ChannelRef,
  admission: Admission,
): Promise<AttemptFailure | GatewayError | null> {
  let started = 0;
  let settleBefore = state.settleMs;
  let ok: boolean | null = null;
  let failure: AttemptFailure;
  let ended: AttemptCause = "INTERNAL_ERROR";
  try {
    const worst = worstCase(channel.price!, plan.promptBound, plan.outputBound);
    if (!holdCovers(state.hold, channel.channel.id, worst)) {
      // Released first, so it is never counted twice.
      if (state.hold) {
        const old = state.hold;
        state.hold = null;
        await deps.release(old);
      }
      state.channel = channel;
      state.hold = await admit(deps, key, plan.route.id, plan.runId, channel, worst);
    }
    if (state.client.signal.aborted) throw clientClosed();
    state.channel = channel;
    state.attempts++;
    state.failureUsage = null;
    if (state.attempts > 1) observeFallback(state, channel);
    started = performance.now();
    settleBefore = state.settleMs;
    state.current = { channel, startedAt: started, settleBefore, status: null, cause: null };
    const outcome = await attempt(deps, state, res, plan, channel);
    ok = outcome.done;
    if (outcome.done) {
      ended = "ANSWERED"; // settle() has already ended it so (its step is in the receipt)
      return null;
    }
    failure = outcome.failure;
    ended = failureCause(failure);
  } catch (error) {
    ok = started ? healthVerdict(error) : null;
    ended = state.current?.cause ?? thrownCause(error);
    // A channel whose own daily cap refuses is skipped like an unusable channel; only when none is left is that refusal the answer.
    if (error instanceof GatewayError && refusalSkipsChannel(error.capScope)) return error;
    throw error;
  } finally {
    if (started) {
      finishAttempt(state, ended);
      const upstreamMs = performance.now() - started - (state.settleMs - settleBefore);
      state.upstreamMs += upstreamMs;
      observeAttempt(state, channel, ok === true, upstreamMs);
    }
    if (ok !== null) {
      deps.health.record(ref, { ok, latencyMs: Math.round(performance.now() - started) }).catch((e: unknown) => deps.log("warn", "could not record channel health", { error: String(e) }));
    } else if (admission === "probe") {
      // The probe learnt nothing (refused, client gone, our own error): free the slot, or the channel stays DOWN here for good.
      deps.health.releaseProbe(ref);
    }
  }
  deps.log("debug", "upstream attempt failed", { requestId: state.requestId, channel: channel.channel.name, failure: upstreamText(failure) });
  return failure;
}

/** What an attempt that ended in an exception says about its channel: null = nothing (not recorded; a probe slot is freed). */
function healthVerdict(error: unknown): boolean | null {
  if (error instanceof GatewayError) {
    if (error.failureCause === "BAD_REQUEST") return true; // the upstream answered; the request was at fault
    // The upstream answered in full; only our relay limit refused it (one client's huge asks must not mark a channel DOWN).
    if (error.code === "upstream_response_too_large") return true;
    if (error.failureCause === "UPSTREAM_ERROR" || error.failureCause === "UPSTREAM_TIMEOUT") return false; // cut or stalled mid-stream
  }
  // Client gone or our own error: says nothing about the channel.
  return null;
}

/** The step cause of an attempt the next channel may fix. */
function failureCause(f: AttemptFailure): AttemptCause {
  if (!(f instanceof UpstreamFailure)) return statusCause(f.status);
  if (f.kind === "connect") return "CONNECT_ERROR";
  if (f.kind === "timeout") return f.reachedUpstream ? "TIMEOUT" : "CONNECT_TIMEOUT";
  if (f.kind === "client_closed") return "CLIENT_CLOSED";
  return "NETWORK_ERROR";
}

/** The step cause of an attempt that ended the request by throwing (unless its stage said better: state.current.cause). */
function thrownCause(error: unknown): AttemptCause {
  if (!(error instanceof GatewayError)) return "INTERNAL_ERROR";
  switch (error.code) {
    case "upstream_rejected":
      return "REJECTED";
    case "client_closed":
      return "CLIENT_CLOSED";
    case "upstream_response_too_large":
      return "RESPONSE_TOO_LARGE";
    case "upstream_timeout":
      return "TIMEOUT";
    case "upstream_error":
      return "BAD_RESPONSE";
    default:
      return "INTERNAL_ERROR";
  }
}

/** Our words for a failed attempt (the upstream status, never its text): what key holders read. */
function describe(f: AttemptFailure): string {
  return f instanceof UpstreamFailure ? f.summary : f.status >= 400 ? "the upstream answered with an error" : "the upstream's answer was unusable";
}

/** What the upstream (or the connection to it) said: for logs and admins only, once redacted. */
function upstreamText(f: AttemptFailure): string {
  return f instanceof UpstreamFailure ? f.message : `HTTP ${f.status}${f.message ? `: ${f.message}` : ""}`;
}

function upstreamUrl(baseUrl: string, endpoint: Endpoint): string {
  // Channel base URLs follow the OpenAI SDKs' baseURL convention: they include the version (…/v1).
  return `${baseUrl.replace(/\/+$/, "")}${endpoint.slice(3)}`;
}

/** Sends the request to one channel and relays its answer; a failure the next channel may fix is returned, not thrown. */
async function attempt(deps: GatewayDeps, state: RequestState, res: ServerResponse, plan: Plan, channel: PlannedChannel): Promise<Outcome> {
  const { stream } = plan;
  const upstreamBody: Record<string, unknown> = { ...plan.body, model: channel.channel.upstreamModel };
  if (stream && plan.protocol === "chat") {
    // Chat and text completion streams always get usage upstream; the usage chunk reaches the client
    // only if it asked. (A Responses API stream always ends with its usage in response.completed.)
    const given = plan.body.stream_options;
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
      if (state.current) state.current.status = head.status;
    } catch (error) {
      if (!(error instanceof UpstreamFailure)) throw error;
      if (error.kind === "client_closed") {
        state.failureUsage = error.reachedUpstream ? { promptTokens: plan.promptCounted, completionTokens: 0, estimated: true } : null;
        throw clientClosed();
      }
      return { done: false, failure: error };
    }

    if (head.status >= 400) {
      const errorBody = await call.readAll(1024 * 1024).catch(() => Buffer.alloc(0));
      const message = upstreamErrorMessage(errorBody);
      if (RETRYABLE_STATUS(head.status)) return { done: false, failure: { kind: "status", status: head.status, message } };
      state.failureUsage = { promptTokens: plan.promptCounted, completionTokens: 0, estimated: true };
      // Passed back (it is about the client's own request) with the channel's credential and addresses redacted.
      const redact = channelRedactor(deps.lookups, [channel]);
      throw upstreamRejected(head.status, redactBody(normalizeErrorBody(errorBody, message), redact), { requestId: state.requestId, upstreamMessage: redact(message) });
    }

    const contentType = String(head.headers["content-type"] ?? "");
    if (stream) {
      if (!contentType.includes("text/event-stream")) {
        await call.readAll(1024 * 1024).catch(() => undefined);
        return { done: false, failure: { kind: "status", status: head.status, message: `expected an event stream, got ${contentType || "no content type"}` } };
      }
      return await relayStream(deps, state, res, call, plan, channel);
    }
    // The upstream has answered and bills it: its answer is read to the end even if the client leaves, to charge its usage.
    call.detachClient();
    return await relayJson(deps, state, res, call, plan, channel, contentType);
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
  return clip(text, 300);
}

/** The body unchanged unless redaction changes its text. */
function redactBody(body: Buffer, redact: (text: string) => string): Buffer {
  const text = body.toString("utf8");
  const redacted = redact(text);
  return redacted === text ? body : Buffer.from(redacted);
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
