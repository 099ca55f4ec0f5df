// The gateway's metric observations (src/metrics.ts defines the series). Labels: the route's
// catalog model and the channel's name, both bounded by configuration.
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { BUCKET_CURRENCY } from "../money/amounts.ts";
import type { PlannedChannel } from "../routing/index.ts";
import { NONE, fallbacks, gatewayDuration, gatewayOverhead, gatewayRequests, spendMicros, upstreamAttempts, upstreamDuration } from "../metrics.ts";
import type { RequestState } from "./pipeline/state.ts";

/** What the request metrics need of a request (RequestState, or less for one refused before it had one). */
export type Observed = Pick<RequestState, "startedAt" | "route" | "channel" | "attempts" | "upstreamMs">;

const routeLabel = (state: Pick<RequestState, "route">): string => state.route?.model ?? NONE;

/** Once per answered /v1 request. */
export function observeRequest(state: Observed, status: number): void {
  const seconds = (performance.now() - state.startedAt) / 1000;
  const labels = { route: routeLabel(state), channel: state.channel?.channel.name ?? NONE, status: String(status) };
  gatewayRequests.inc(labels);
  gatewayDuration.observe(labels, seconds);
  gatewayOverhead.observe({ route: labels.route }, Math.max(0, seconds - state.upstreamMs / 1000));
}

/** Once per upstream attempt; `milliseconds` excludes the settlement the attempt waited for. */
export function observeAttempt(state: RequestState, channel: PlannedChannel, ok: boolean, milliseconds: number): void {
  const labels = { route: routeLabel(state), channel: channel.channel.name };
  upstreamAttempts.inc({ ...labels, outcome: ok ? "ok" : "failed" });
  upstreamDuration.observe(labels, milliseconds / 1000);
}

/** A failed attempt is followed by one on `next`. */
export function observeFallback(state: RequestState, next: PlannedChannel): void {
  fallbacks.inc({ route: routeLabel(state), channel: next.channel.name });
}

/** After a receipt or a failed request committed with its charge. */
export function observeSpend(bucket: BalanceBucket, charge: bigint, source: "receipt" | "failed_request"): void {
  spendMicros.inc({ bucket, currency: BUCKET_CURRENCY[bucket], source }, Number(charge));
}
