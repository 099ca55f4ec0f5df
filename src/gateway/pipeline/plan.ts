// Stage 2, plan: what the request asks (chat completions, responses, text completions or
// embeddings) and where it may go. Body (≤ MAX_BODY_BYTES, else 413; bad
// JSON 400) → validation → allowed models (403) → route (404; cached ≤ 1 s) → usable channels
// (buckets, lower-cost ROUTED routes, backup routes; none → 403) → priced channels (none → 503
// price_unknown, fail closed: an unpriced channel is never called) → x-run-id (this key's run, else
// 404 run_not_found; PAUSED → 402 run_paused; not ACTIVE → 402 run_cancelled) → token bounds.
// A request claiming a quote (x-tokengate-quote, src/quotes) is priced here, and only here, with
// the quote's pinned snapshots: the hold (forward.ts) and the charge (settle.ts, fail.ts) read
// `channel.price`, so both use the quoted price. A quote that cannot apply is refused (404 / 400).
import type { IncomingMessage } from "node:http";
import type { ApiKey, Route } from "../../generated/prisma/client.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import { modelNotAllowed, modelNotFound, priceUnknown, quoteRefused, routeUnavailable, runCancelled, runNotFound, runPaused } from "../errors.ts";
import { claimQuote, QUOTE_HEADER } from "../../quotes/index.ts";
import { header, parseJsonObject, readBody } from "../http.ts";
import { modelAllowed, usableChannels } from "../lookups.ts";
import {
  completionsOutputBound,
  countChatPrompt,
  countCompletionPrompt,
  countEmbeddingInput,
  countResponsesPrompt,
  outputBound,
  reservedPromptTokens,
  responsesOutputBound,
  type PromptCount,
} from "../tokens.ts";
import { validateRequest } from "../validate.ts";
import type { Endpoint, GatewayDeps, RequestState } from "./state.ts";

/** Everything the later stages need to know about the request. */
export interface Plan {
  body: Record<string, unknown>;
  model: string;
  /** Generates text (chat, responses, completions): streams and output bounds apply. False for embeddings. */
  chat: boolean;
  /** The event-stream protocol when streaming: chat-style chunks ending in [DONE] (chat, completions), or the Responses API's typed events. */
  protocol: "chat" | "responses";
  stream: boolean;
  /** The client asked for the usage chunk (it is always asked of the upstream; chat and completions only). */
  clientWantsUsage: boolean;
  route: Route;
  /** Usable, priced channels in the order they are tried. */
  channels: PlannedChannel[];
  runId: string | null;
  /** Prompt tokens as counted here (what a failure is charged from when the upstream reported none). */
  promptCounted: number;
  /** Token bounds the worst case is priced from: the prompt (with a margin for the upstream's tokenizer) and the output. */
  promptBound: number;
  outputBound: number;
}

/**
 * Plans the request of `key`. Records model, route, run and (for price_unknown) channel on the
 * trail as soon as they are known, so a refusal here is recorded with them.
 */
export async function plan(
  deps: Pick<GatewayDeps, "config" | "lookups">,
  key: ApiKey,
  req: IncomingMessage,
  trail: Pick<RequestState, "endpoint" | "model" | "route" | "runId" | "channel">,
): Promise<Plan> {
  const { config, lookups } = deps;
  const body = parseJsonObject(await readBody(req, config.maxBodyBytes));
  const runHeader = header(req, "x-run-id");
  const model = validateRequest(trail.endpoint, body, runHeader);
  trail.model = model;
  const chat = trail.endpoint !== "/v1/embeddings" && trail.endpoint !== "/v1/models";
  const protocol = trail.endpoint === "/v1/responses" ? "responses" : "chat";
  const stream = chat && body.stream === true;

  if (!modelAllowed(key, model)) throw modelNotAllowed(model);
  const routed = await lookups.plan(key.organizationId, model);
  if (!routed) throw modelNotFound(model);
  const route = routed.route;
  trail.route = route;
  if (routed.channels.length === 0) throw routeUnavailable(model);
  let usable = usableChannels(routed, key);
  if (usable.length === 0) throw modelNotAllowed(model, "no channel of its route is open to this key (allowed buckets, lower-cost routes, backup routes)");
  const quoteId = header(req, QUOTE_HEADER);
  if (quoteId !== undefined) {
    const claimed = await claimQuote(quoteId, key, model);
    if (!claimed.ok) throw quoteRefused(claimed.problem.code, claimed.problem.message);
    usable = usable.map((c) => ({ ...c, price: claimed.snapshots.find((s) => s.channelId === c.channel.id) ?? c.price }));
  }
  const channels = usable.filter((c) => c.price !== null);
  if (channels.length === 0) {
    trail.channel = usable[0]!;
    throw priceUnknown(model);
  }

  const runId = runHeader?.trim();
  if (runId) {
    const run = await lookups.run(runId, key.id);
    if (!run) throw runNotFound(runId);
    trail.runId = run.id;
    if (run.status === "PAUSED") throw runPaused();
    if (run.status !== "ACTIVE") throw runCancelled(run.status);
  }

  const bounds = await requestBounds(
    trail.endpoint,
    body,
    route,
    channels.map((c) => c.channel.upstreamModel),
  );
  return {
    body,
    model,
    chat,
    protocol,
    stream,
    clientWantsUsage: stream && protocol === "chat" && (body.stream_options as { include_usage?: unknown } | null | undefined)?.include_usage === true,
    route,
    channels,
    runId: trail.runId,
    ...bounds,
  };
}

/**
 * The token bounds a request's worst case is priced from: every prompt token (with a margin for
 * the upstream's tokenizer) and the output bound; and the prompt as counted. Quotes count a body
 * with this too, so a quote's worst case is the hold its request takes.
 */
export async function requestBounds(
  endpoint: Endpoint,
  body: Record<string, unknown>,
  route: Pick<Route, "defaultMaxTokens" | "maxUnboundedPartTokens">,
  upstreamModels: string[],
): Promise<{ promptCounted: number; promptBound: number; outputBound: number }> {
  let prompt: PromptCount;
  let output = 0;
  if (endpoint === "/v1/chat/completions") {
    prompt = await countChatPrompt(body);
    output = outputBound(body, route.defaultMaxTokens);
  } else if (endpoint === "/v1/responses") {
    prompt = await countResponsesPrompt(body);
    output = responsesOutputBound(body, route.defaultMaxTokens);
  } else if (endpoint === "/v1/completions") {
    const counted = await countCompletionPrompt(body);
    prompt = counted;
    output = completionsOutputBound(body, route.defaultMaxTokens, counted.prompts);
  } else prompt = await countEmbeddingInput(body);
  return { promptCounted: prompt.text, promptBound: reservedPromptTokens(prompt, upstreamModels, route.maxUnboundedPartTokens), outputBound: output };
}
