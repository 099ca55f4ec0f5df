// Stage 4, forward (the answer): an upstream's JSON or event stream relayed to the client, settled
// (stage 5) before its last byte. Headers (x-tokengate-currency / -bucket / -route (route id) /
// -channel / -upstream-model / -attempts / -fallback) go out with the first upstream bytes; a
// stream's final charge comes after the receipt committed, as an SSE comment `: tokengate-charge=
// <amount> currency=<code>` right before `data: [DONE]`, and as the HTTP trailer x-tokengate-charge.
// A stream cut or stalled after it started ends with an error (recorded by stage 5', fail). A
// client that hangs up mid-generation aborts the upstream call (CLIENT_CLOSED, recorded 499) and is
// charged prompt + generated; an answer the upstream completed anyway (non-stream once headers
// came; a stream past finish_reason, within 2 s) is a Receipt with status 499 at its real usage.
// An answer over UPSTREAM_MAX_RESPONSE_BYTES (a non-stream body, or one stream event) is never
// relayed nor retried elsewhere: 502 upstream_response_too_large, charged as the upstream bills it.
import type { ServerResponse } from "node:http";
import { BUCKET_CURRENCY, formatMoney } from "../../money/amounts.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import { clientClosed, upstreamError, upstreamResponseTooLarge, upstreamTimeout } from "../errors.ts";
import { drained } from "../http.ts";
import { MAX_USAGE_TOKENS, SseEventTooLarge, SseRelay, choiceText, readUsage } from "../sse.ts";
import { countText } from "../tokens.ts";
import { UpstreamFailure, type OversizedAnswer, type UpstreamAttempt } from "../upstream.ts";
import { channelRedactor } from "../redact.ts";
import type { Plan } from "./plan.ts";
import { settle } from "./settle.ts";
import { DONE, type FailureUsage, type GatewayDeps, type Outcome, type RequestState } from "./state.ts";

/** How long an upstream may take to end its response after `data: [DONE]`. */
const END_GRACE_MS = 2_000;
/**
 * A client that hangs up after the generation finished (finish_reason seen) but before the usage
 * chunk: the upstream is read this much longer for its usage, so the charge is exact rather than counted.
 */
const CLIENT_GONE_USAGE_GRACE_MS = 2_000;
/** Receipt status of an answer the upstream completed (and bills) but the client left before receiving (nginx's 499). */
const CLIENT_CLOSED_STATUS = 499;

function successHeaders(state: RequestState, plan: Plan, channel: PlannedChannel): Record<string, string> {
  return {
    "x-request-id": state.requestId,
    "x-tokengate-currency": BUCKET_CURRENCY[channel.bucket],
    "x-tokengate-bucket": channel.bucket,
    "x-tokengate-route": plan.route.id,
    "x-tokengate-channel": channel.channel.name,
    "x-tokengate-upstream-model": channel.channel.upstreamModel,
    "x-tokengate-attempts": String(state.attempts),
    "x-tokengate-fallback": String(state.attempts > 1),
  };
}

export async function relayJson(deps: GatewayDeps, state: RequestState, res: ServerResponse, call: UpstreamAttempt, plan: Plan, channel: PlannedChannel, contentType: string): Promise<Outcome> {
  let raw: Buffer;
  try {
    const answer = await call.readAnswer();
    if ("oversized" in answer) throw oversized(deps, state, plan, channel, answer.oversized);
    raw = answer.body;
  } catch (error) {
    if (!(error instanceof UpstreamFailure)) throw error;
    if (error.kind === "client_closed") {
      state.failureUsage = { promptTokens: plan.promptCounted, completionTokens: 0, estimated: true };
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
    usage = { promptTokens: plan.promptCounted, completionTokens: countText(answerText(parsed).join("")) };
    deps.log("warn", "upstream reported no usage; charged from counted tokens", { requestId: state.requestId, channel: channel.channel.name });
  }
  const clientGone = state.client.signal.aborted || res.destroyed;
  const charge = await settle(deps, state, plan, channel, usage, clientGone ? CLIENT_CLOSED_STATUS : 200);
  if (res.destroyed) return DONE;
  res.writeHead(200, {
    "content-type": contentType || "application/json",
    "content-length": String(raw.length),
    "x-tokengate-charge": formatMoney(charge),
    ...successHeaders(state, plan, channel),
  });
  res.end(raw);
  return DONE;
}

/**
 * A non-stream answer over UPSTREAM_MAX_RESPONSE_BYTES: the upstream generated it and bills it, so
 * it is charged like an answer the client hung up on (its usage, whatever the key's policy, capped
 * at the hold) and not retried elsewhere (another channel would generate and bill it again). Its
 * usage is read from the ends of the body; without one, the completion is charged at the request's
 * output bound (its worst case, what the hold reserved), flagged estimated.
 */
function oversized(deps: GatewayDeps, state: RequestState, plan: Plan, channel: PlannedChannel, answer: OversizedAnswer) {
  const usage = answer.ends.usage();
  state.failureUsage = usage
    ? { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, estimated: false, billed: true }
    : { promptTokens: plan.promptCounted, completionTokens: plan.outputBound, estimated: true, billed: true };
  const limit = deps.config.upstream.maxResponseBytes;
  deps.log("warn", "upstream answer over the response limit; charged as billed, not relayed", {
    requestId: state.requestId,
    channel: channel.channel.name,
    bytes: answer.bytes,
    limit,
    usageFound: usage !== null,
    cut: answer.cut?.message ?? null,
  });
  const size = answer.cut ? `more than ${answer.bytes} bytes (then ${answer.cut.message})` : `${answer.bytes} bytes`;
  return upstreamResponseTooLarge(`${size}, over the limit of ${limit} bytes`, state.attempts);
}

/** The generated text of a JSON answer: chat messages, text completions, or the Responses API's output items. */
function answerText(parsed: Record<string, unknown>): string[] {
  const text: string[] = [];
  if (Array.isArray(parsed.choices)) {
    for (const c of parsed.choices) {
      const choice = c as { message?: unknown; text?: unknown } | null;
      if (typeof choice?.text === "string") text.push(choice.text);
      choiceText(choice?.message, text);
    }
  }
  if (Array.isArray(parsed.output)) {
    for (const item of parsed.output) {
      if (!item || typeof item !== "object") continue;
      const it = item as Record<string, unknown>;
      if (it.type === "message" && Array.isArray(it.content)) {
        for (const part of it.content) choiceText(part, text);
      } else if (it.type !== "message") {
        // Tool calls, reasoning summaries and the rest: all of their text is generated.
        text.push(JSON.stringify(it));
      }
    }
  }
  return text;
}

export async function relayStream(deps: GatewayDeps, state: RequestState, res: ServerResponse, call: UpstreamAttempt, plan: Plan, channel: PlannedChannel): Promise<Outcome> {
  const relay = new SseRelay(plan.clientWantsUsage, deps.config.upstream.maxResponseBytes, plan.protocol);
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
      ...successHeaders(state, plan, channel),
    });
  };
  const failureUsage = (): FailureUsage =>
    relay.usage ? { ...relay.usage, estimated: false } : { promptTokens: plan.promptCounted, completionTokens: countText(relay.generatedText()), estimated: true };

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
    if (error instanceof SseEventTooLarge) {
      // Never buffered further; the upstream is stopped (the attempt is closed) and what it streamed
      // is charged as billed, the unfinished event counted at one token per byte (an upper bound, as
      // src/gateway/tokens.ts counts long pieces), capped at the hold. Not retried elsewhere.
      const streamed = failureUsage();
      state.failureUsage = relay.usage ? { ...streamed, billed: true } : { ...streamed, completionTokens: Math.min(MAX_USAGE_TOKENS, streamed.completionTokens + error.pendingBytes), billed: true };
      deps.log("warn", "upstream stream event over the response limit; the stream was stopped", { requestId: state.requestId, channel: channel.channel.name, limit: error.limit });
      throw upstreamResponseTooLarge(`one stream event was larger than ${error.limit} bytes`, state.attempts);
    }
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
      const detail = { requestId: state.requestId, upstreamMessage: channelRedactor(deps.lookups, [channel])(error.message) };
      if (error.kind === "timeout") throw upstreamTimeout(`the stream stalled: ${error.summary}`, state.attempts, detail);
      if (state.current) state.current.cause = "NETWORK_ERROR";
      throw upstreamError(`the stream was cut off: ${error.summary}`, state.attempts, 200, detail);
    }
  } finally {
    state.client.signal.removeEventListener("abort", onClientGone);
  }
  if (relay.failed && !relay.done) {
    // Responses API: the upstream said the response failed (its event reached the client). A failure, charged by the key's policy.
    state.failureUsage = failureUsage();
    throw upstreamError("the upstream reported that the response failed", state.attempts, 200, { requestId: state.requestId, upstreamMessage: null });
  }
  if (!relay.done && (!relay.usage || plan.protocol === "responses")) {
    if (!committed) return { done: false, failure: { kind: "status", status: 200, message: "the upstream closed the stream without any event" } };
    state.failureUsage = failureUsage();
    throw upstreamError(plan.protocol === "responses" ? "the stream ended before response.completed" : "the stream ended before [DONE]", state.attempts, 200, {
      requestId: state.requestId,
      upstreamMessage: null,
    });
  }
  commit();
  let usage = relay.usage;
  if (!usage) {
    usage = { promptTokens: plan.promptCounted, completionTokens: countText(relay.generatedText()) };
    deps.log("warn", "upstream stream carried no usage; charged from counted tokens", { requestId: state.requestId, channel: channel.channel.name });
  }
  const charge = await settle(deps, state, plan, channel, usage, state.client.signal.aborted ? CLIENT_CLOSED_STATUS : 200);
  const amount = formatMoney(charge);
  if (!res.destroyed) {
    // Chat: the charge, then [DONE]. Responses API (no [DONE]): the charge, then the terminal event held back until now.
    res.write(`: tokengate-charge=${amount} currency=${channel.price!.currency}\n\n${plan.protocol === "responses" ? relay.terminal : "data: [DONE]\n\n"}`);
    res.addTrailers({ "x-tokengate-charge": amount });
    res.end();
  }
  return DONE;
}
