// What the pipeline's stages share: their dependencies, and the request's trail.
//
// Stages take explicit inputs and return typed outputs (ApiKey, Plan, Hold, Outcome, a charge).
// The trail (RequestState) is what outlives a stage that throws: the facts a FailedRequest is
// written from (key, model, route, run, channel, attempts, usage so far), the hold the gateway must
// release whatever happens, the rate-limit ticket, and what the metrics read. Stages write to it only
// those facts, as soon as they learn them, through the narrow Pick<> their signature names.
import type { Config } from "../../config.ts";
import type { HealthTracker } from "../../health/index.ts";
import type { EventBus } from "../../events/index.ts";
import type { ApiKey, Route } from "../../generated/prisma/client.ts";
import type { BalanceBucket } from "../../generated/prisma/enums.ts";
import type { AdmissionRequest, AdmissionResult, CounterState, FailedRequestInput, HoldRef, ReceiptInput } from "../../money/index.ts";
import type { AttemptCause, AttemptStep } from "../../requests/attempts.ts";
import type { PlannedChannel } from "../../routing/index.ts";
import type { Lookups } from "../lookups.ts";
import type { RateLimiter, RateTicket } from "../rate-limit.ts";
import type { UpstreamClient, UpstreamFailure } from "../upstream.ts";

export type Endpoint = "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/v1/embeddings" | "/v1/models";

/** The endpoints whose answers are generated text (a stream is possible, an output bound applies). */
export type GenerationEndpoint = Exclude<Endpoint, "/v1/embeddings" | "/v1/models">;

export interface GatewayDeps {
  config: Config;
  /** Channel health of this instance: DOWN channels are skipped, every attempt is recorded. */
  health: HealthTracker;
  /** Where settled and failed requests are announced (spend, receiptCreated, failedRequestCreated, budgetAlert). */
  events: EventBus;
  lookups: Lookups;
  upstream: UpstreamClient;
  log: (level: "debug" | "info" | "warn" | "error", message: string, extra?: Record<string, unknown>) => void;
  /** Admission: holds the worst case against every cap (see src/money/index.ts). */
  reserve: (input: AdmissionRequest) => Promise<AdmissionResult>;
  /** Receipt + charge (batched). */
  settle: (item: { record: ReceiptInput; hold: HoldRef; bucketId: string }) => Promise<{ id: string; committed?: Promise<void> }>;
  /** Drops a hold uncharged. */
  release: (hold: HoldRef) => Promise<void>;
  /** FailedRequest + its policy charge, capped at the hold. */
  recordFailure: (record: FailedRequestInput, hold: HoldRef | null) => Promise<{ id: string }>;
  /** Counters as the request's batch committed them, if the money path knows (events then read nothing). */
  spendStates: (requestId: string) => CounterState[] | null;
  /** Per-key rate limits and the bad-key throttle (src/gateway/rate-limit.ts). */
  limiter: RateLimiter;
}

/** A request's worst case, held in one bucket against every cap (a Hold row, or a hold inside leases). */
export interface Hold {
  id: string;
  amount: bigint;
  bucket: BalanceBucket;
  bucketId: string;
  /** The channel it was admitted for: its CHANNEL_DAILY cap is one of the caps it is held against. */
  channelId: string;
}

/** Usage a failure is charged from (only set once an attempt reached the upstream). */
export interface FailureUsage {
  promptTokens: number;
  completionTokens: number;
  estimated: boolean;
  /** The upstream produced the answer and bills it (e.g. one too large to relay): charged in full whatever the key's policy. */
  billed?: boolean;
}

/** Why an attempt on a channel failed in a way the next channel may fix. */
export type AttemptFailure = UpstreamFailure | { kind: "status"; status: number; message: string };

/** A step of the request's path with the names a live view shows (the stored step drops them). */
export interface PathStep extends AttemptStep {
  channelName: string;
  upstreamModel: string;
}

/** The attempt in progress: what its step is built from when it ends (finishAttempt). */
export interface CurrentAttempt {
  channel: PlannedChannel;
  startedAt: number;
  /** state.settleMs when it started: a settlement it waits for is not its latency. */
  settleBefore: number;
  /** The upstream's HTTP status, once its headers came. */
  status: number | null;
  /** Set by the stage that knows better than the error it throws (e.g. a stream cut off: NETWORK_ERROR). */
  cause: AttemptCause | null;
}

/** How an attempt ended when it did not throw: answered, or failed over to the next channel. */
export type Outcome = { done: true } | { done: false; failure: AttemptFailure };

export const DONE: Outcome = { done: true };

/** The request's trail (see the top of this file). */
export class RequestState {
  readonly startedAt = performance.now();
  key: ApiKey | null = null;
  model: string | null = null;
  route: Route | null = null;
  runId: string | null = null;
  channel: PlannedChannel | null = null;
  attempts = 0;
  /** Every attempt that ended, in order (the receipt's or failed request's attemptPath). */
  readonly path: PathStep[] = [];
  current: CurrentAttempt | null = null;
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

/** Ends the current attempt as `cause`: its step joins the path (once; a second call does nothing). */
export function finishAttempt(state: RequestState, cause: AttemptCause): void {
  const a = state.current;
  if (!a) return;
  state.current = null;
  state.path.push({
    channelId: a.channel.channel.id,
    role: a.channel.role,
    status: a.status,
    cause,
    latencyMs: Math.max(0, Math.round(performance.now() - a.startedAt - (state.settleMs - a.settleBefore))),
    channelName: a.channel.channel.name,
    upstreamModel: a.channel.channel.upstreamModel,
  });
}
