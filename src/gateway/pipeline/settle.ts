// Stage 5, settle: a completed request's receipt and charge (its usage priced with the channel's
// price snapshot, capped at its hold: src/money/charges.ts), durable before the response's last
// byte is sent; then its spend is announced from memory (never delaying or failing the request).
import type { BalanceBucket } from "../../generated/prisma/enums.ts";
import { usageCharge, type ReceiptInput } from "../../money/index.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import { announceSpend } from "../../spend/index.ts";
import type { RequestView } from "../../events/index.ts";
import { observeSpend } from "../observe.ts";
import type { Usage } from "../sse.ts";
import type { Plan } from "./plan.ts";
import { finishAttempt, type GatewayDeps, type RequestState } from "./state.ts";

/** Writes the receipt of the request answered by `channel` and returns its charge. The trail's hold is settled by it. */
export async function settle(deps: GatewayDeps, state: RequestState, plan: Plan, channel: PlannedChannel, usage: Usage, status: number): Promise<bigint> {
  const price = channel.price!;
  const hold = state.hold!;
  const key = state.key!;
  const { charge, full } = usageCharge(price, usage, hold.amount);
  const exceeded = charge < full || usage.clamped === true;
  // The answering attempt ends here: its step (latency up to its usage) is the last of the receipt's path.
  finishAttempt(state, "ANSWERED");
  const attemptPath = [...state.path];
  if (exceeded) {
    // The upstream used more than the worst case reserved (another tokenizer, ignored max_tokens, absurd usage): caps win.
    deps.log("warn", "usage exceeded the reservation; the charge is capped at the hold", { requestId: state.requestId, usage, reserved: hold.amount.toString(), full: full.toString() });
  }
  const record: ReceiptInput = {
    requestId: state.requestId,
    organizationId: key.organizationId,
    keyId: key.id,
    projectId: key.projectId,
    runId: state.runId,
    routeId: plan.route.id,
    channelId: channel.channel.id,
    requestedModel: plan.model,
    upstreamModel: channel.channel.upstreamModel,
    endpoint: state.endpoint,
    channelRole: channel.role,
    fallback: state.attempts > 1,
    attempts: state.attempts,
    bucket: channel.bucket,
    currency: price.currency,
    promptTokens: usage.promptTokens,
    completionTokens: usage.completionTokens,
    cachedPromptTokens: usage.cachedPromptTokens ?? 0,
    cacheWriteTokens: usage.cacheWriteTokens ?? 0,
    audioPromptTokens: usage.audioPromptTokens ?? 0,
    reasoningTokens: usage.reasoningTokens ?? 0,
    audioCompletionTokens: usage.audioCompletionTokens ?? 0,
    upstreamCost: usage.upstreamCost ?? null,
    priceSnapshotId: price.id,
    charge,
    stream: plan.stream,
    latencyMs: Math.round(performance.now() - state.startedAt),
    status,
    usageExceededReservation: exceeded,
    attemptPath,
  };
  const settleStarted = performance.now();
  const receipt = await deps.settle({ record, hold, bucketId: hold.bucketId });
  state.settleMs += performance.now() - settleStarted;
  state.recorded = true;
  state.hold = null;
  const at = new Date();
  const view: RequestView = {
    kind: "receipt",
    id: receipt.id,
    requestId: record.requestId,
    organizationId: record.organizationId,
    projectId: record.projectId,
    projectName: null,
    keyId: key.id,
    keyName: key.name,
    keyPrefix: key.prefix,
    runId: record.runId,
    routeId: record.routeId,
    routeModel: plan.route.model,
    channelId: record.channelId,
    channelName: channel.channel.name,
    requestedModel: record.requestedModel,
    upstreamModel: record.upstreamModel,
    endpoint: record.endpoint,
    channelRole: record.channelRole,
    fallback: record.fallback,
    attempts: record.attempts,
    bucket: record.bucket,
    currency: record.currency,
    promptTokens: record.promptTokens,
    completionTokens: record.completionTokens,
    cachedPromptTokens: record.cachedPromptTokens ?? 0,
    cacheWriteTokens: record.cacheWriteTokens ?? 0,
    audioPromptTokens: record.audioPromptTokens ?? 0,
    reasoningTokens: record.reasoningTokens ?? 0,
    audioCompletionTokens: record.audioCompletionTokens ?? 0,
    upstreamCost: record.upstreamCost ?? null,
    priceSnapshotId: record.priceSnapshotId,
    charge: record.charge.toString(),
    stream: record.stream,
    usageExceededReservation: exceeded,
    estimated: false,
    latencyMs: record.latencyMs,
    httpStatus: status,
    upstreamStatus: status,
    cause: null,
    capScope: null,
    message: null,
    createdAt: at.toISOString(),
    attemptPath,
  };
  const event = { ...record, routeId: record.routeId, receiptId: receipt.id, status: "SETTLED" as const, view };
  // Sent before its commit (SEND_BEFORE_COMMIT_MS): announced once it committed, as every spend is.
  if (receipt.committed)
    receipt.committed.then(
      () => announce(deps, event),
      () => undefined,
    );
  else announce(deps, event);
  return charge;
}

/** keySpend / projectSpend / receiptCreated / budget alerts, after the record committed; never delays or fails the request. */
export function announce(
  deps: GatewayDeps,
  o: {
    organizationId: string;
    projectId: string;
    keyId: string;
    routeId: string | null;
    runId?: string | null;
    channelId?: string | null;
    requestId: string;
    bucket: BalanceBucket;
    charge: bigint;
    receiptId?: string;
    status: "SETTLED" | "FAILED";
    view?: RequestView;
  },
): void {
  observeSpend(o.bucket, o.charge, o.status === "SETTLED" ? "receipt" : "failed_request");
  announceSpend(deps.events, o, deps.spendStates(o.requestId)).catch((e: unknown) => deps.log("warn", "could not announce spend", { requestId: o.requestId, error: String(e) }));
}
