// Stage 5', fail: a request that ends in an error is recorded once (FailedRequest + its charge under
// the key's failed-request policy, which applies once an attempt reached the upstream:
// src/money/charges.ts; its hold is resolved with it), then answered: an error in OpenAI's
// shape, or mid-stream an SSE error event (OpenAI SDKs raise it), the charge, and no [DONE].
// Failed attempts followed by a successful fallback are not charged: the receipt is the charge.
import type { ServerResponse } from "node:http";
import { failedRequestCharge, type FailedRequestInput } from "../../money/index.ts";
import { primaryBucket } from "../../keys/index.ts";
import { markRunExhausted } from "../../runs/index.ts";
import { BUCKET_CURRENCY, formatMoney } from "../../money/amounts.ts";
import { sendError, type GatewayError } from "../errors.ts";
import { clip } from "../../text.ts";
import { announce } from "./settle.ts";
import type { RequestView } from "../../events/index.ts";
import type { ApiKey } from "../../generated/prisma/client.ts";
import type { GatewayDeps, RequestState } from "./state.ts";

export async function recordAndAnswerFailure(deps: GatewayDeps, state: RequestState, res: ServerResponse, error: GatewayError): Promise<void> {
  let charge = 0n;
  if (error.failureCause && !state.recorded) {
    const channel = state.channel;
    const hold = state.hold;
    const usage = state.failureUsage;
    charge = failedRequestCharge(error.failureCause, state.key?.failedChargePolicy ?? null, usage, channel?.price ?? null, hold ? hold.amount : null, usage?.billed === true);
    try {
      const record: FailedRequestInput = {
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
        message: clip(error.message, 2000),
        upstreamMessage: error.upstreamMessage === null ? null : clip(error.upstreamMessage, 2000),
        httpStatus: error.status,
        upstreamStatus: error.upstreamStatus,
        attempts: state.attempts,
        bucket: channel?.bucket ?? null,
        currency: channel ? BUCKET_CURRENCY[channel.bucket] : null,
        promptTokens: usage?.promptTokens ?? 0,
        completionTokens: usage?.completionTokens ?? 0,
        priceSnapshotId: channel?.price?.id ?? null,
        charge,
        estimated: usage?.estimated ?? false,
        // Every attempt has ended by now (forward's own bookkeeping runs before the error reaches here).
        attemptPath: [...state.path],
      };
      let written = record;
      const { id } = await deps.recordFailure(record, hold).catch(async (firstError: unknown) => {
        // Whatever in its client-derived text the database refused, the record is not lost: it is
        // written again with only our own words (the hold is still open, so its charge is the same).
        deps.log("warn", "a failed request's record was refused; writing a minimal one", { requestId: state.requestId, error: String(firstError) });
        written = minimalFailure(record);
        return deps.recordFailure(written, hold);
      });
      state.recorded = true;
      state.hold = null;
      // Refused on the run's cap: the run is EXHAUSTED (off the request path).
      if (error.failureCause === "BUDGET_EXCEEDED" && error.capScope === "RUN_TOTAL" && state.runId && state.key) {
        markRunExhausted(state.runId, state.key.organizationId, channel?.bucket ?? null, error.refusedAmount).catch((e: unknown) =>
          deps.log("warn", "could not mark the run exhausted", { runId: state.runId, error: String(e) }),
        );
      }
      const key = state.key;
      if (key) {
        announce(deps, {
          organizationId: key.organizationId,
          projectId: key.projectId,
          keyId: key.id,
          routeId: state.route?.id ?? null,
          runId: state.runId,
          channelId: channel?.channel.id ?? null,
          requestId: state.requestId,
          bucket: channel?.bucket ?? primaryBucket(key),
          charge,
          status: "FAILED",
          view: failureView(id, written, key, state),
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

/** A failed request's record with no client text left in it: only ids, numbers, enums and our own words. */
export function minimalFailure(record: FailedRequestInput): FailedRequestInput {
  return {
    ...record,
    // Printable ASCII only: what any database and any CSV reader takes.
    requestedModel: record.requestedModel === null ? null : clip(record.requestedModel, 256).replace(/[^\x20-\x7e]/g, "?"),
    message: `The request failed (${record.cause}${record.upstreamStatus ? `, upstream status ${record.upstreamStatus}` : ""}); its original message could not be stored.`,
    upstreamMessage: null,
  };
}

/** What a live feed shows of a failed request, from its record and the names the request's trail holds. */
function failureView(id: string, record: FailedRequestInput, key: ApiKey, state: RequestState): RequestView {
  return {
    kind: "failure",
    id,
    requestId: record.requestId,
    organizationId: key.organizationId,
    projectId: key.projectId,
    projectName: null,
    keyId: key.id,
    keyName: key.name,
    keyPrefix: key.prefix,
    runId: record.runId,
    routeId: record.routeId,
    routeModel: state.route?.model ?? null,
    channelId: record.channelId,
    channelName: state.channel?.channel.name ?? null,
    requestedModel: record.requestedModel,
    upstreamModel: state.channel?.channel.upstreamModel ?? null,
    endpoint: record.endpoint,
    channelRole: state.channel?.role ?? null,
    fallback: state.attempts > 1,
    attempts: record.attempts,
    bucket: record.bucket,
    currency: record.currency,
    promptTokens: record.promptTokens,
    completionTokens: record.completionTokens,
    cachedPromptTokens: 0,
    cacheWriteTokens: 0,
    audioPromptTokens: 0,
    reasoningTokens: 0,
    audioCompletionTokens: 0,
    upstreamCost: null,
    priceSnapshotId: record.priceSnapshotId,
    charge: record.charge.toString(),
    stream: false,
    usageExceededReservation: false,
    estimated: record.estimated,
    latencyMs: Math.round(performance.now() - state.startedAt),
    httpStatus: record.httpStatus,
    upstreamStatus: record.upstreamStatus,
    cause: record.cause,
    capScope: record.capScope,
    message: record.message,
    createdAt: new Date().toISOString(),
    attemptPath: [...state.path],
  };
}
