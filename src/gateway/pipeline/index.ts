// One passthrough request (chat completion, Responses API, text completion or embeddings) as a pipeline of named stages, in the
// order DESIGN.md fixes:
//
//   authenticate → plan → admit → forward → settle      (answered: Receipt + charge)
//                                         ↘ fail        (any refusal or failure: FailedRequest)
//
// authenticate.ts  bearer secret → usable ApiKey
// plan.ts          body, model, route, channels, run, token bounds → Plan
// admit.ts         rate-limit ticket; per channel tried, its worst case held → Hold
// forward.ts       channels in order with fallback, one upstream attempt each → answered or thrown
// relay.ts         the upstream's JSON / event stream (chat chunks + [DONE], or Responses API typed events) to the client
// settle.ts        receipt + charge, durable before the last byte; spend announced from memory
// fail.ts          FailedRequest + its policy charge, then the error answer
//
// Every amount is decided in src/money/charges.ts; the money path (holds or leases) is
// src/money/index.ts. Every exit leaves the request recorded exactly once and its hold resolved
// (the caller's `finally` releases a hold an unexpected error left behind).
import type { IncomingMessage, ServerResponse } from "node:http";
import { lookupBearer, usableKey } from "./authenticate.ts";
import { plan } from "./plan.ts";
import { rateTicket } from "./admit.ts";
import { forward } from "./forward.ts";
import type { GatewayDeps, RequestState } from "./state.ts";

export { authenticate } from "./authenticate.ts";
export { recordAndAnswerFailure } from "./fail.ts";
export { RequestState, type Endpoint, type GatewayDeps } from "./state.ts";

export async function proxy(deps: GatewayDeps, state: RequestState, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const key = usableKey(await lookupBearer(req, deps.config.keyCacheTtlMs), state);
  const planned = await plan(deps, key, req, state);
  // Per-key rate limits: counted with the request's token bound, before anything is held.
  state.rateTicket = rateTicket(await deps.limiter.admit(key.id, state.requestId, key, planned.promptBound + planned.outputBound));
  await forward(deps, state, res, key, planned);
}
