// Stage 3, admit: the request's place in its key's rate limits (counted with its token bound),
// then, per channel tried, its worst case held against every cap and the balance (money path:
// src/money/index.ts; the amounts: src/money/charges.ts). Refusals: 429 rate_limit_exceeded;
// 402 budget_exceeded naming the cap scope (KEY_PER_REQUEST for the key's per-request maximum),
// 402 insufficient_balance, 402 run_paused / run_cancelled (not 409: SDKs retry 409).
import type { ApiKey } from "../../generated/prisma/client.ts";
import { holdable } from "../../money/index.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import { budgetExceeded, insufficientBalance, rateLimited, runCancelled, runPaused } from "../errors.ts";
import type { RateAdmission, RateTicket } from "../rate-limit.ts";
import type { GatewayDeps, Hold } from "./state.ts";
import { organizationZone } from "../../orgs/time-zone.ts";

/** The rate limiter's answer as a ticket, or 429. (The caller awaits the limiter: no promise of its own.) */
export function rateTicket(admitted: RateAdmission): RateTicket | null {
  if (!admitted.ok) throw rateLimited(admitted.limit, admitted.retryAfterSeconds);
  return admitted.ticket;
}

/** Holds `worst` for the request on `channel`, or throws the refusal. */
export async function admit(deps: Pick<GatewayDeps, "lookups" | "reserve">, key: ApiKey, routeId: string, runId: string | null, channel: PlannedChannel, worst: bigint): Promise<Hold> {
  if (!holdable(worst)) throw insufficientBalance(channel.bucket);
  const [bucketId, zone] = await Promise.all([deps.lookups.bucketId(key.organizationId, channel.bucket), organizationZone(key.organizationId)]);
  const result = await deps.reserve({
    zone,
    bucketId,
    amount: worst,
    keyId: key.id,
    projectId: key.projectId,
    routeId,
    runId,
    channelId: channel.channel.id,
  });
  if (result.ok) return { id: result.holdId, amount: worst, bucket: channel.bucket, bucketId, channelId: channel.channel.id };
  if (result.refusal === "INSUFFICIENT_BALANCE") throw insufficientBalance(channel.bucket);
  if (result.refusal === "RUN_CANCELLED") throw runCancelled();
  if (result.refusal === "RUN_PAUSED") throw runPaused();
  throw budgetExceeded(result.refusal, worst);
}
