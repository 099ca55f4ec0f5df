// Subscriptions for ops dashboards (graphql-ws and SSE). Authorization is checked when
// subscribing, and every event is filtered by the viewer's tenancy before it is delivered.
//
// Cost under load (issue 15): every event is built once, when it is published, with what a view
// shows (src/spend, src/events); its fields resolve from that payload. Filters run at dispatch
// (events.listen), so a subscriber an event is not for is never woken, and every source is bounded
// (src/events/streams.ts): a per-event stream queues at most LIVE_QUEUE_LIMIT events, a coalesced
// stream holds one pending tick. Each event runs with fresh DataLoaders: a loader kept for the
// subscription's life would answer a later event with the first one's values.
import type { GraphQLResolveInfo, SelectionSetNode } from "graphql";
import { builder, type Context } from "../schema/builder.ts";
import { createLoaders } from "../schema/loaders.ts";
import { db } from "../db/index.ts";
import { canRead, canReadOrganization, isPlatform, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import type { BudgetAlertEvent, LowBalanceAlertEvent, RequestView, RouteHealthEvent, ScopeStanding, SpendEvent, Topics } from "../events/index.ts";
import { boundedStream, coalescedStream } from "../events/streams.ts";
import { channelStatsBook, SpendWindow, watchWallet, type ChannelInfo, type SpendTick } from "../events/live.ts";
import { badInput, forbidden, notFound } from "../errors.ts";
import { BalanceBucket, type CapScope, FailureCause, HealthState } from "../generated/prisma/enums.ts";
import { MoneyRef, moneyOf, moneyOrNull } from "../schema/types/common.ts";
import { BudgetAlertRef, LowBalanceAlertRef } from "../schema/types/alerts.ts";
import { ChannelStatsTickRef, LiveSpendTickRef, ScopeStandingRef, WalletTickRef, type ChannelStatsTick, type WalletTick } from "../schema/types/live.ts";
import { windowFor } from "../money/windows.ts";
import { organizationZone } from "../orgs/time-zone.ts";
import { viewerOf } from "./viewer.ts";

builder.subscriptionType({ authScopes: { authenticated: true } });

const SpendStatus = builder.enumType("SpendStatus", { values: ["SETTLED", "FAILED"] as const });

const micro = (v: string | null) => (v === null ? null : BigInt(v));

/** Interval bounds of the coalesced streams (ms). */
export const LIVE_INTERVAL = { min: 250, max: 60_000, default: 1_000 } as const;
/** Ids one liveSpend / channelStats subscription may name. */
export const LIVE_LIST_MAX = { keyIds: 1_000, projectIds: 200, routeIds: 200 } as const;

function intervalOf(value: number | null | undefined): number {
  const ms = value ?? LIVE_INTERVAL.default;
  if (!Number.isInteger(ms) || ms < LIVE_INTERVAL.min || ms > LIVE_INTERVAL.max) {
    throw badInput("intervalMs", `must be an integer from ${LIVE_INTERVAL.min} to ${LIVE_INTERVAL.max}`);
  }
  return ms;
}

// ---- sources ---------------------------------------------------------------------------------

/**
 * A bounded per-event stream of `topic`, filtered at dispatch. Each event pulled gets fresh loaders
 * (see the top of this file); a consumer that falls LIVE_QUEUE_LIMIT events behind is cut off
 * (over graphql-ws its socket closes with 4500, over SSE the stream ends with SLOW_CONSUMER).
 */
function eventStream<K extends keyof Topics>(ctx: Context, topic: K, keep: (payload: Topics[K][0]) => boolean): AsyncIterableIterator<Topics[K][0]> {
  const source = boundedStream<Topics[K][0]>((push) => ctx.events.listen(topic, (payload) => keep(payload) && push(payload)), { onOverflow: () => ctx.closeSlow?.() });
  return freshLoadersPerEvent(ctx, source);
}

function freshLoadersPerEvent<T>(ctx: Context, source: AsyncIterableIterator<T>): AsyncIterableIterator<T> {
  const iterator: AsyncIterableIterator<T> = {
    next: async () => {
      const result = await source.next();
      ctx.loaders = createLoaders();
      return result;
    },
    return: () => source.return!(),
    throw: (error?: unknown) => source.throw!(error),
    [Symbol.asyncIterator]: () => iterator,
  };
  return iterator;
}

/** Events of organizations (and, for project viewers, the project) this viewer may read. */
const visible = (viewer: Viewer) => (e: { organizationId: string; projectId?: string | null }) =>
  isPlatform(viewer) || (viewer.role === "PROJECT_VIEWER" ? e.projectId === viewer.projectId : e.organizationId === viewer.organizationId);

// ---- per-event types -------------------------------------------------------------------------

function spendFields(scope: "key" | "project") {
  return builder.objectRef<SpendEvent>(scope === "key" ? "KeySpendEvent" : "ProjectSpendEvent").implement({
    description: `Sent after every settled or failed request of the ${scope}. Numbers come from the same counters that enforce the caps, as the batch that recorded the request left them.`,
    fields: (t) => ({
      ...(scope === "key" ? { keyId: t.exposeID("keyId") } : { projectId: t.exposeID("projectId"), keyId: t.exposeID("keyId") }),
      requestId: t.exposeString("requestId"),
      bucket: t.field({ type: BalanceBucket, resolve: (e) => e.bucket }),
      charge: t.field({ type: MoneyRef, resolve: (e) => moneyOf(BigInt(e.charge), e.bucket) }),
      spendToday: t.field({ type: MoneyRef, resolve: (e) => moneyOf(BigInt(scope === "key" ? e.keySpendToday : e.projectSpendToday), e.bucket) }),
      remainingToday: t.field({
        type: MoneyRef,
        nullable: true,
        resolve: (e) => moneyOrNull(micro(scope === "key" ? e.keyRemainingToday : e.projectRemainingToday), e.bucket),
      }),
      status: t.field({ type: SpendStatus, resolve: (e) => e.status }),
      at: t.field({ type: "DateTime", resolve: (e) => new Date(e.at) }),
      routeId: t.id({ nullable: true, resolve: (e) => e.routeId ?? null }),
      runId: t.id({ nullable: true, resolve: (e) => e.runId ?? null }),
      channelId: t.id({ nullable: true, resolve: (e) => e.channelId ?? null }),
      promptTokens: t.int({ resolve: (e) => e.promptTokens ?? 0 }),
      completionTokens: t.int({ resolve: (e) => e.completionTokens ?? 0 }),
      latencyMs: t.int({ nullable: true, resolve: (e) => e.latencyMs ?? null }),
      scopes: t.field({
        type: [ScopeStandingRef],
        description: "Every cap window the request touched (key, project day and month, route, run, channel), in the request's bucket.",
        resolve: (e) => e.scopes ?? [],
      }),
    }),
  });
}

const KeySpendEvent = spendFields("key");
const ProjectSpendEvent = spendFields("project");

const RouteHealthEventRef = builder.objectRef<RouteHealthEvent>("RouteHealthEvent").implement({
  fields: (t) => ({
    routeId: t.exposeID("routeId"),
    channelId: t.exposeID("channelId"),
    state: t.field({ type: HealthState, resolve: (e) => e.state }),
    previousState: t.field({ type: HealthState, resolve: (e) => e.previousState }),
    successRate: t.exposeFloat("successRate"),
    p50LatencyMs: t.exposeInt("p50LatencyMs"),
    at: t.field({ type: "DateTime", resolve: (e) => new Date(e.at) }),
  }),
});

/** The stored row an alert event stands for (the event is built from it): the history's type, live. */
const budgetAlertRow = (e: BudgetAlertEvent) => ({
  id: e.id,
  organizationId: e.organizationId,
  projectId: e.projectId,
  scope: e.scope as CapScope,
  scopeId: e.scopeId,
  bucket: e.bucket,
  windowStart: new Date(e.windowStart),
  threshold: e.threshold,
  spent: BigInt(e.spent),
  cap: BigInt(e.cap),
  createdAt: new Date(e.createdAt),
});

const lowBalanceRow = (e: LowBalanceAlertEvent) => ({
  id: e.id,
  organizationId: e.organizationId,
  bucket: e.bucket,
  threshold: BigInt(e.threshold),
  balance: BigInt(e.balance),
  requestId: e.requestId,
  createdAt: new Date(e.createdAt),
});

// ---- receipts and failed requests from their payload -------------------------------------------

/** Fields of each type a view carries (anything else selected is read, once per event). */
const FROM_VIEW: Record<string, ReadonlySet<string>> = {
  Receipt: new Set([
    "id",
    "requestId",
    "key",
    "project",
    "route",
    "channel",
    "requestedModel",
    "upstreamModel",
    "endpoint",
    "channelRole",
    "fallback",
    "attempts",
    "bucket",
    "promptTokens",
    "completionTokens",
    "cachedPromptTokens",
    "cacheWriteTokens",
    "audioPromptTokens",
    "reasoningTokens",
    "audioCompletionTokens",
    "upstreamCost",
    "charge",
    "stream",
    "usageExceededReservation",
    "latencyMs",
    "status",
    "createdAt",
    "attemptPath",
  ]),
  FailedRequest: new Set([
    "id",
    "requestId",
    "key",
    "project",
    "route",
    "channel",
    "requestedModel",
    "endpoint",
    "cause",
    "capScope",
    "message",
    "httpStatus",
    "upstreamStatus",
    "attempts",
    "bucket",
    "promptTokens",
    "completionTokens",
    "charge",
    "estimated",
    "createdAt",
    "attemptPath",
  ]),
  RequestAttempt: new Set(["position", "channelId", "channel", "role", "upstreamStatus", "cause", "latencyMs", "charged"]),
  ApiKey: new Set(["id", "name", "prefix"]),
  Project: new Set(["id", "name"]),
  Route: new Set(["id", "model"]),
  Channel: new Set(["id", "name", "upstreamModel"]),
  Money: new Set(["amount", "currency"]),
};

/** Does the selection under `info` ask only for what the view carries (names known)? */
function answerableFromView(info: GraphQLResolveInfo, typeName: string, view: RequestView): boolean {
  const relationType: Record<string, string> = { key: "ApiKey", project: "Project", route: "Route", channel: "Channel", charge: "Money", attemptPath: "RequestAttempt" };
  const known: Record<string, boolean> = {
    key: view.keyName !== null,
    project: view.projectName !== null,
    route: view.routeId === null || view.routeModel !== null,
    channel: view.channelId === null || view.channelName !== null,
    charge: true,
    attemptPath: view.attemptPath !== undefined,
  };
  // An attempt's channel, when the view names every attempt's.
  const attemptChannelsKnown = (view.attemptPath ?? []).every((step) => step.channelName !== null && step.upstreamModel !== null);
  const walk = (set: SelectionSetNode | undefined, type: string): boolean => {
    if (!set) return true;
    for (const s of set.selections) {
      if (s.kind === "InlineFragment") {
        if (!walk(s.selectionSet, s.typeCondition?.name.value ?? type)) return false;
      } else if (s.kind === "FragmentSpread") {
        const fragment = info.fragments[s.name.value];
        if (!fragment || !walk(fragment.selectionSet, fragment.typeCondition.name.value)) return false;
      } else {
        const name = s.name.value;
        if (name === "__typename") continue;
        if (s.directives?.length) return false;
        if (!FROM_VIEW[type]?.has(name)) return false;
        const nested = type === typeName ? relationType[name] : type === "RequestAttempt" && name === "channel" ? "Channel" : undefined;
        if (nested) {
          if (!(type === typeName ? known[name] : attemptChannelsKnown)) return false;
          if (!walk(s.selectionSet, nested)) return false;
        }
      }
    }
    return true;
  };
  return info.fieldNodes.every((node) => walk(node.selectionSet, typeName));
}

/** The row a view stands for, with the relations it names (partial rows: only what FROM_VIEW allows is read from them). */
function rowFromView(view: RequestView): Record<string, unknown> {
  const base = {
    id: view.id,
    requestId: view.requestId,
    organizationId: view.organizationId,
    projectId: view.projectId,
    keyId: view.keyId,
    runId: view.runId,
    routeId: view.routeId,
    channelId: view.channelId,
    requestedModel: view.requestedModel,
    endpoint: view.endpoint,
    attempts: view.attempts,
    bucket: view.bucket,
    currency: view.currency,
    promptTokens: view.promptTokens,
    completionTokens: view.completionTokens,
    priceSnapshotId: view.priceSnapshotId,
    charge: BigInt(view.charge),
    createdAt: new Date(view.createdAt),
    key: { id: view.keyId, name: view.keyName, prefix: view.keyPrefix, organizationId: view.organizationId, projectId: view.projectId },
    project: { id: view.projectId, name: view.projectName, organizationId: view.organizationId },
    route: view.routeId ? { id: view.routeId, model: view.routeModel, organizationId: view.organizationId } : null,
    channel: view.channelId ? { id: view.channelId, name: view.channelName, upstreamModel: view.upstreamModel, organizationId: view.organizationId, routeId: view.routeId } : null,
    // Each step with its channel built from the names the view carries (RequestAttempt.channel then reads nothing).
    attemptPath: (view.attemptPath ?? []).map((step) => ({
      ...step,
      channel:
        step.channelName === null || step.upstreamModel === null
          ? undefined
          : { id: step.channelId, name: step.channelName, upstreamModel: step.upstreamModel, organizationId: view.organizationId, routeId: view.routeId },
    })),
  };
  if (view.kind === "receipt") {
    return {
      ...base,
      upstreamModel: view.upstreamModel,
      channelRole: view.channelRole,
      fallback: view.fallback,
      stream: view.stream,
      usageExceededReservation: view.usageExceededReservation,
      cachedPromptTokens: view.cachedPromptTokens,
      cacheWriteTokens: view.cacheWriteTokens,
      audioPromptTokens: view.audioPromptTokens,
      reasoningTokens: view.reasoningTokens,
      audioCompletionTokens: view.audioCompletionTokens,
      upstreamCost: view.upstreamCost,
      latencyMs: view.latencyMs ?? 0,
      status: view.httpStatus,
    };
  }
  return { ...base, cause: view.cause, capScope: view.capScope, message: view.message ?? "", httpStatus: view.httpStatus, upstreamStatus: view.upstreamStatus, estimated: view.estimated };
}

/**
 * Reads of rows a view could not answer, shared by every subscriber of the same event asking the
 * same selection: one statement per event and selection, never one per subscriber.
 */
const sharedReads = new Map<string, Promise<unknown>>();
function sharedRead<T>(key: string, read: () => Promise<T>): Promise<T> {
  let hit = sharedReads.get(key) as Promise<T> | undefined;
  if (!hit) {
    if (sharedReads.size >= 2_000) sharedReads.delete(sharedReads.keys().next().value!);
    hit = read();
    sharedReads.set(key, hit);
    hit.catch(() => sharedReads.delete(key));
  }
  return hit;
}

// ---- liveFeed: the latest requests, coalesced ----------------------------------------------------

const FEED_LIMIT = { max: 100, default: 50 } as const;

const FeedKind = builder.enumType("LiveFeedKind", { values: ["RECEIPT", "FAILED_REQUEST"] as const });

const LiveFeedItemRef = builder.objectRef<RequestView>("LiveFeedItem").implement({
  description: "One recorded request as a live feed shows it, from its event (names included): no database read.",
  fields: (t) => ({
    kind: t.field({ type: FeedKind, resolve: (v) => (v.kind === "receipt" ? "RECEIPT" : "FAILED_REQUEST") }),
    id: t.exposeID("id", { description: "The Receipt or FailedRequest id." }),
    requestId: t.exposeString("requestId"),
    createdAt: t.field({ type: "DateTime", resolve: (v) => new Date(v.createdAt) }),
    httpStatus: t.exposeInt("httpStatus"),
    cause: t.field({ type: FailureCause, nullable: true, resolve: (v) => v.cause as FailureCause | null }),
    latencyMs: t.int({ nullable: true, resolve: (v) => v.latencyMs }),
    keyId: t.exposeID("keyId"),
    keyName: t.string({ nullable: true, resolve: (v) => v.keyName }),
    projectId: t.exposeID("projectId"),
    projectName: t.string({ nullable: true, resolve: (v) => v.projectName }),
    requestedModel: t.string({ nullable: true, resolve: (v) => v.requestedModel }),
    upstreamModel: t.string({ nullable: true, resolve: (v) => v.upstreamModel }),
    routeId: t.id({ nullable: true, resolve: (v) => v.routeId }),
    routeModel: t.string({ nullable: true, resolve: (v) => v.routeModel }),
    channelId: t.id({ nullable: true, resolve: (v) => v.channelId }),
    channelName: t.string({ nullable: true, resolve: (v) => v.channelName }),
    fallback: t.exposeBoolean("fallback"),
    attempts: t.exposeInt("attempts"),
    bucket: t.field({ type: BalanceBucket, nullable: true, resolve: (v) => v.bucket }),
    promptTokens: t.exposeInt("promptTokens"),
    completionTokens: t.exposeInt("completionTokens"),
    cachedPromptTokens: t.exposeInt("cachedPromptTokens", { description: "Of promptTokens: read from the upstream's prompt cache (0 for failures)." }),
    cacheWriteTokens: t.exposeInt("cacheWriteTokens", { description: "Of promptTokens: written to the upstream's prompt cache." }),
    audioPromptTokens: t.exposeInt("audioPromptTokens", { description: "Of promptTokens: audio." }),
    reasoningTokens: t.exposeInt("reasoningTokens", { description: "Of completionTokens: reasoning." }),
    audioCompletionTokens: t.exposeInt("audioCompletionTokens", { description: "Of completionTokens: audio." }),
    upstreamCost: t.string({ nullable: true, description: "What the upstream reported the request cost (usage.cost), in its own unit; null when it reported none.", resolve: (v) => v.upstreamCost }),
    charge: t.field({ type: MoneyRef, resolve: (v) => moneyOf(BigInt(v.charge), v.bucket ?? "CREDIT") }),
  }),
});

interface FeedTick {
  at: Date;
  requests: number;
  failed: number;
  items: RequestView[];
  dropped: number;
}

const LiveFeedTickRef = builder.objectRef<FeedTick>("LiveFeedTick").implement({
  description: "The requests recorded since the previous tick: how many, and the newest `limit` of them (newest first); `dropped` were not listed.",
  fields: (t) => ({
    at: t.field({ type: "DateTime", resolve: (f) => f.at }),
    requests: t.expose("requests", { type: "Count" }),
    failed: t.expose("failed", { type: "Count" }),
    dropped: t.expose("dropped", { type: "Count" }),
    items: t.field({ type: [LiveFeedItemRef], resolve: (f) => f.items }),
  }),
});

// ---- tenancy of the coalesced streams ----------------------------------------------------------

interface SpendScopeArgs {
  organizationId?: string | number | null;
  projectIds?: Array<string | number> | null;
  keyIds?: Array<string | number> | null;
  routeIds?: Array<string | number> | null;
}

function idList(values: Array<string | number> | null | undefined, field: keyof typeof LIVE_LIST_MAX): string[] | null {
  if (!values) return null;
  if (values.length > LIVE_LIST_MAX[field]) throw badInput(field, `at most ${LIVE_LIST_MAX[field]} ids`);
  const ids = [...new Set(values.map(String))];
  if (ids.some((id) => id.length === 0 || id.length > 100)) throw badInput(field, "ids are 1–100 characters");
  return ids;
}

/** Checks every named id is readable by the viewer (one query per list) and returns the event filter. */
async function spendScope(viewer: Viewer, input: SpendScopeArgs): Promise<{ organizationId: string; keep: (e: SpendEvent) => boolean; showScope: (s: ScopeStanding) => boolean }> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId ? String(input.organizationId) : null);
  const keyIds = idList(input.keyIds, "keyIds");
  const projectIds = idList(input.projectIds, "projectIds");
  const routeIds = idList(input.routeIds, "routeIds");
  const projectViewer = viewer.role === "PROJECT_VIEWER";
  if (keyIds?.length) {
    const rows = await db.apiKey.findMany({ where: { id: { in: keyIds } }, select: { id: true, organizationId: true, projectId: true } });
    const missing = keyIds.find((id) => !rows.some((r) => r.id === id && r.organizationId === organizationId && canRead(viewer, r.organizationId, r.projectId)));
    if (missing) throw notFound("API key", missing);
  }
  if (projectIds?.length) {
    const rows = await db.project.findMany({ where: { id: { in: projectIds } }, select: { id: true, organizationId: true } });
    const missing = projectIds.find((id) => !rows.some((r) => r.id === id && r.organizationId === organizationId && canRead(viewer, r.organizationId, r.id)));
    if (missing) throw notFound("project", missing);
  }
  if (routeIds?.length) {
    if (projectViewer) throw notFound("route", routeIds[0]!);
    const rows = await db.route.findMany({ where: { id: { in: routeIds } }, select: { id: true, organizationId: true } });
    const missing = routeIds.find((id) => !rows.some((r) => r.id === id && r.organizationId === organizationId && canReadOrganization(viewer, r.organizationId)));
    if (missing) throw notFound("route", missing);
  }
  const keys = keyIds && new Set(keyIds);
  const projects = projectIds && new Set(projectIds);
  const routes = routeIds && new Set(routeIds);
  const narrowed = !!(keys?.size || projects?.size || routes?.size);
  const mine = visible(viewer);
  const keep = (e: SpendEvent) => e.organizationId === organizationId && mine(e) && (!narrowed || !!keys?.has(e.keyId) || !!projects?.has(e.projectId) || (!!e.routeId && !!routes?.has(e.routeId)));
  // Project viewers see their own key, project and run windows only (routes and channels are the organization's).
  const showScope = (s: ScopeStanding) => !projectViewer || s.scope === "KEY_DAILY" || s.scope === "PROJECT_DAILY" || s.scope === "PROJECT_MONTHLY" || s.scope === "RUN_TOTAL";
  return { organizationId, keep, showScope };
}

const LiveSpendInput = builder.inputType("LiveSpendInput", {
  description: "Which spend to follow: the union of the named keys, projects and routes; none named = the whole organization (a project token: its project).",
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Default: the token's (or the default) organization." }),
    keyIds: t.idList({ required: false, description: `At most ${LIVE_LIST_MAX.keyIds}.` }),
    projectIds: t.idList({ required: false, description: `At most ${LIVE_LIST_MAX.projectIds}.` }),
    routeIds: t.idList({ required: false, description: `At most ${LIVE_LIST_MAX.routeIds}.` }),
    intervalMs: t.int({ required: false, description: `At most one tick per interval: ${LIVE_INTERVAL.min}–${LIVE_INTERVAL.max} ms, default ${LIVE_INTERVAL.default}.` }),
  }),
});

const INTERVAL_HELP = `At most one tick per interval: ${LIVE_INTERVAL.min}–${LIVE_INTERVAL.max} ms, default ${LIVE_INTERVAL.default}.`;

// ---- the fields --------------------------------------------------------------------------------

builder.subscriptionFields((t) => ({
  keySpend: t.field({
    type: KeySpendEvent,
    args: { keyId: t.arg.id({ required: true }) },
    subscribe: async (_root, { keyId }, ctx) => {
      const key = await db.apiKey.findUnique({ where: { id: String(keyId) }, select: { id: true, organizationId: true, projectId: true } });
      if (!key || !canRead(viewerOf(ctx), key.organizationId, key.projectId)) throw notFound("API key", String(keyId));
      return eventStream(ctx, "spend", (e) => e.keyId === key.id);
    },
    resolve: (e) => e,
  }),
  projectSpend: t.field({
    type: ProjectSpendEvent,
    args: { projectId: t.arg.id({ required: true }) },
    subscribe: async (_root, { projectId }, ctx) => {
      const project = await db.project.findUnique({ where: { id: String(projectId) }, select: { id: true, organizationId: true } });
      if (!project || !canRead(viewerOf(ctx), project.organizationId, project.id)) throw notFound("project", String(projectId));
      return eventStream(ctx, "spend", (e) => e.projectId === project.id);
    },
    resolve: (e) => e,
  }),
  routeHealth: t.field({
    type: RouteHealthEventRef,
    description: "Every change of a channel's health; all routes the token may see when routeId is omitted. For success rate and latency on an interval, see channelStats.",
    args: { routeId: t.arg.id({ required: false }) },
    subscribe: async (_root, { routeId }, ctx) => {
      const viewer = viewerOf(ctx);
      if (routeId) {
        const route = await db.route.findUnique({ where: { id: String(routeId) }, select: { organizationId: true } });
        if (!route || !canReadOrganization(viewer, route.organizationId)) throw notFound("route", String(routeId));
      }
      return eventStream(ctx, "routeHealth", (e) => (routeId ? e.routeId === String(routeId) : canReadOrganization(viewer, e.organizationId)));
    },
    resolve: (e) => e,
  }),
  receiptCreated: t.prismaField({
    type: "Receipt",
    description:
      "Every receipt as it is committed. The fields a live feed shows (names of key, project, route and channel included) come with the event; others are read once per event, not per subscriber.",
    args: { projectId: t.arg.id({ required: false }), keyId: t.arg.id({ required: false }) },
    subscribe: (_root, args, ctx) => {
      const mine = visible(viewerOf(ctx));
      return eventStream(ctx, "receiptCreated", (e) => mine(e) && (!args.projectId || e.projectId === String(args.projectId)) && (!args.keyId || e.keyId === String(args.keyId)));
    },
    resolve: (query, event, _args, _ctx, info) => {
      const e = event as unknown as Topics["receiptCreated"][0];
      if (e.view && answerableFromView(info, "Receipt", e.view)) return rowFromView(e.view) as never;
      return sharedRead(`r|${e.receiptId}|${JSON.stringify(query)}`, () => db.receipt.findUniqueOrThrow({ ...query, where: { id: e.receiptId } }));
    },
  }),
  failedRequestCreated: t.prismaField({
    type: "FailedRequest",
    description: "Every failed request of a known key as it is committed (cause, HTTP status, charge under the key's policy), resolved like receiptCreated.",
    args: { projectId: t.arg.id({ required: false }), keyId: t.arg.id({ required: false }) },
    subscribe: (_root, args, ctx) => {
      const mine = visible(viewerOf(ctx));
      return eventStream(ctx, "failedRequestCreated", (e) => mine(e) && (!args.projectId || e.projectId === String(args.projectId)) && (!args.keyId || e.keyId === String(args.keyId)));
    },
    resolve: (query, event, _args, _ctx, info) => {
      const e = event as unknown as Topics["failedRequestCreated"][0];
      if (e.view && answerableFromView(info, "FailedRequest", e.view)) return rowFromView(e.view) as never;
      return sharedRead(`f|${e.failedRequestId}|${JSON.stringify(query)}`, () => db.failedRequest.findUniqueOrThrow({ ...query, where: { id: e.failedRequestId } }));
    },
  }),
  budgetAlert: t.field({
    type: BudgetAlertRef,
    args: { projectId: t.arg.id({ required: false }) },
    subscribe: (_root, args, ctx) => {
      const mine = visible(viewerOf(ctx));
      return eventStream(ctx, "budgetAlert", (e) => mine(e) && (!args.projectId || e.projectId === String(args.projectId)));
    },
    resolve: (e) => budgetAlertRow(e),
  }),

  lowBalanceAlert: t.field({
    type: LowBalanceAlertRef,
    description: "A charge took one of the organization's balances below its low-balance threshold (setLowBalanceThreshold): once per crossing. Not for project viewers.",
    subscribe: (_root, _args, ctx) => {
      const viewer = viewerOf(ctx);
      if (viewer.role === "PROJECT_VIEWER") throw forbidden("project viewers cannot read low-balance alerts");
      const mine = visible(viewer);
      return eventStream(ctx, "lowBalanceAlert", (e) => mine(e));
    },
    resolve: (e) => lowBalanceRow(e),
  }),

  liveFeed: t.field({
    type: LiveFeedTickRef,
    description:
      "Receipts and failed requests, coalesced for a live feed: at most one tick per interval with the newest `limit` (default 50, at most 100) recorded since the previous tick, from the events' payload. What it sends does not grow with the request rate.",
    args: {
      projectId: t.arg.id({ required: false }),
      keyId: t.arg.id({ required: false }),
      intervalMs: t.arg.int({ required: false, description: INTERVAL_HELP }),
      limit: t.arg.int({ required: false, description: `1–${FEED_LIMIT.max}, default ${FEED_LIMIT.default}.` }),
    },
    subscribe: (_root, args, ctx) => {
      const intervalMs = intervalOf(args.intervalMs);
      const limit = args.limit ?? FEED_LIMIT.default;
      if (!Number.isInteger(limit) || limit < 1 || limit > FEED_LIMIT.max) throw badInput("limit", `must be an integer from 1 to ${FEED_LIMIT.max}`);
      const mine = visible(viewerOf(ctx));
      const keep = (e: { organizationId: string; projectId: string; keyId: string }) =>
        mine(e) && (!args.projectId || e.projectId === String(args.projectId)) && (!args.keyId || e.keyId === String(args.keyId));
      let items: RequestView[] = [];
      let requests = 0;
      let failed = 0;
      const add = (view: RequestView | null | undefined, touch: () => void) => {
        if (!view) return;
        requests++;
        if (view.kind === "failure") failed++;
        items.push(view);
        // Only the newest `limit` are kept: memory per subscriber is bounded whatever the rate.
        if (items.length > limit * 2) items = items.slice(-limit);
        touch();
      };
      return coalescedStream<FeedTick>({
        intervalMs,
        start: (touch) => {
          const a = ctx.events.listen("receiptCreated", (e) => keep(e) && add(e.view, touch));
          const b = ctx.events.listen("failedRequestCreated", (e) => keep(e) && add(e.view, touch));
          return () => {
            a();
            b();
          };
        },
        take: () => {
          if (requests === 0) return null;
          const newest = items.slice(-limit).reverse();
          const tick = { at: new Date(), requests, failed, items: newest, dropped: requests - newest.length };
          items = [];
          requests = failed = 0;
          return tick;
        },
      });
    },
    resolve: (tick) => tick,
  }),

  liveSpend: t.field({
    type: LiveSpendTickRef,
    description:
      "Spend of a set of scopes, coalesced: at most one tick per interval (only when a request was recorded), with what was spent since the previous tick and where every cap window those requests touched stands. A thousand keys are one subscription. A slow consumer gets merged ticks, never a backlog.",
    args: { input: t.arg({ type: LiveSpendInput, required: false }) },
    subscribe: async (_root, { input }, ctx) => {
      const intervalMs = intervalOf(input?.intervalMs);
      const { keep, showScope } = await spendScope(viewerOf(ctx), input ?? {});
      const window = new SpendWindow(showScope);
      return coalescedStream<SpendTick>({
        intervalMs,
        start: (touch) =>
          ctx.events.listen("spend", (e) => {
            if (!keep(e)) return;
            window.add(e);
            touch();
          }),
        take: () => window.take(),
      });
    },
    resolve: (tick) => tick,
  }),

  channelStats: t.field({
    type: ChannelStatsTickRef,
    description:
      "Per-channel statistics of a route (or every route the token may see) on an interval: requests, success rate, p50 / p95 latency over the last minutes, today's spend and health state. The first tick comes at once.",
    args: { routeId: t.arg.id({ required: false }), organizationId: t.arg.id({ required: false }), intervalMs: t.arg.int({ required: false, description: INTERVAL_HELP }) },
    subscribe: async (_root, args, ctx) => {
      const viewer = viewerOf(ctx);
      const intervalMs = intervalOf(args.intervalMs);
      if (viewer.role === "PROJECT_VIEWER") throw notFound("organization", viewer.organizationId ?? "");
      const organizationId = await resolveOrganizationId(viewer, args.organizationId ? String(args.organizationId) : null);
      if (args.routeId) {
        const route = await db.route.findUnique({ where: { id: String(args.routeId) }, select: { organizationId: true } });
        if (!route || route.organizationId !== organizationId || !canReadOrganization(viewer, route.organizationId)) throw notFound("route", String(args.routeId));
      }
      const channels = await db.channel.findMany({
        where: { organizationId, enabled: true, ...(args.routeId ? { routeId: String(args.routeId) } : {}) },
        select: { id: true, name: true, routeId: true, priority: true, settlement: true, health: true, route: { select: { model: true } } },
        orderBy: [{ routeId: "asc" }, { priority: "asc" }],
        take: 500,
      });
      const infos: ChannelInfo[] = channels.map((c) => ({
        channelId: c.id,
        channelName: c.name,
        routeId: c.routeId,
        routeModel: c.route.model,
        organizationId,
        priority: c.priority,
        settlement: c.settlement,
        health: c.health,
      }));
      const ids = new Set(infos.map((c) => c.channelId));
      const now = new Date();
      // Ticks are synchronous: they use the zone as last read, refreshed in the background (a zone change shows within a tick or two).
      let zone = await organizationZone(organizationId);
      const windowStart = windowFor("CHANNEL_DAILY", now, zone);
      const counters = infos.length ? await db.spendCounter.findMany({ where: { scope: "CHANNEL_DAILY", scopeId: { in: [...ids] }, windowStart } }) : [];
      const atStart = new Map<string, Map<"CREDIT" | "ROUTED", { windowStart: string; spent: bigint }>>();
      for (const c of counters) {
        const m = atStart.get(c.scopeId) ?? new Map();
        m.set(c.bucket, { windowStart: c.windowStart.toISOString(), spent: c.spent });
        atStart.set(c.scopeId, m);
      }
      const tick = (): ChannelStatsTick => {
        const at = Date.now();
        organizationZone(organizationId).then(
          (z) => {
            zone = z;
          },
          () => undefined,
        );
        const today = windowFor("CHANNEL_DAILY", new Date(at), zone).toISOString();
        return { at: new Date(at), channels: infos.map((info) => channelStatsBook.stats(info, atStart.get(info.channelId) ?? new Map(), today, at)) };
      };
      let unwatch: () => void = () => undefined;
      return coalescedStream<ChannelStatsTick>({
        intervalMs,
        initial: tick,
        // Statistics age out of their window even without traffic: refreshed at least every 5 s.
        heartbeatMs: Math.max(intervalMs, 5_000),
        start: (touch) => {
          unwatch = channelStatsBook.watch((channelId) => ids.has(channelId) && touch());
          return () => unwatch();
        },
        take: tick,
      });
    },
    resolve: (tick) => tick,
  }),

  walletBalances: t.field({
    type: WalletTickRef,
    description: "The organization's balances per bucket: one at once, then at most one tick per interval when a balance or what is held changed. Read once per organization for every subscriber.",
    args: { organizationId: t.arg.id({ required: false }), intervalMs: t.arg.int({ required: false, description: INTERVAL_HELP }) },
    subscribe: async (_root, args, ctx) => {
      const viewer = viewerOf(ctx);
      const intervalMs = intervalOf(args.intervalMs);
      if (viewer.role === "PROJECT_VIEWER") throw notFound("organization", viewer.organizationId ?? "");
      const organizationId = await resolveOrganizationId(viewer, args.organizationId ? String(args.organizationId) : null);
      let version = 0;
      let sent = -1;
      let touchStream: () => void = () => undefined;
      const watch = watchWallet(organizationId, () => {
        version++;
        touchStream();
      });
      const value = (): WalletTick | null => {
        const snapshot = watch.snapshot();
        if (!snapshot || sent === version) return null;
        sent = version;
        return { at: new Date(), balances: snapshot };
      };
      await watch.first;
      return coalescedStream<WalletTick>({
        intervalMs,
        initial: value,
        start: (touch) => {
          touchStream = touch;
          return () => watch.stop();
        },
        take: value,
      });
    },
    resolve: (tick) => tick,
  }),
}));
