import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { BalanceBucket, ChannelRole } from "../../generated/prisma/enums.ts";
import { RequestAttemptRef, attemptsOf } from "./request-attempt.ts";

export const ReceiptRef = builder.prismaObject("Receipt", {
  interfaces: [NodeRef],
  description: "What one completed request cost and why: the route and channel it took, its tokens, the price it was charged at and its ledger entry.",
  authScopes: (r) => ({ owns: { organizationId: r.organizationId, projectId: r.projectId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    requestId: t.exposeString("requestId"),
    key: t.relation("key"),
    project: t.relation("project"),
    run: t.relation("run", { nullable: true }),
    route: t.relation("route"),
    channel: t.relation("channel"),
    requestedModel: t.exposeString("requestedModel"),
    upstreamModel: t.exposeString("upstreamModel"),
    endpoint: t.exposeString("endpoint"),
    channelRole: t.field({ type: ChannelRole, resolve: (r) => r.channelRole }),
    fallback: t.exposeBoolean("fallback", { description: "True when an earlier channel failed and another one answered." }),
    attempts: t.exposeInt("attempts"),
    attemptPath: t.field({
      type: [RequestAttemptRef],
      description:
        "Every upstream attempt, in order (the answered one last): channel, role, upstream status, cause, latency, and which one was charged. Empty for receipts recorded before attempt paths were (then only `attempts` counts them).",
      resolve: (r) => attemptsOf(r),
    }),
    bucket: t.field({ type: BalanceBucket, resolve: (r) => r.bucket }),
    promptTokens: t.exposeInt("promptTokens", { description: "All prompt tokens, every class below included." }),
    completionTokens: t.exposeInt("completionTokens", { description: "All generated tokens, reasoning and audio included." }),
    cachedPromptTokens: t.exposeInt("cachedPromptTokens", { description: "Of promptTokens: read from the upstream's prompt cache (charged at the snapshot's cached input price)." }),
    cacheWriteTokens: t.exposeInt("cacheWriteTokens", { description: "Of promptTokens: written to the upstream's prompt cache (charged at the cache-write price)." }),
    audioPromptTokens: t.exposeInt("audioPromptTokens", { description: "Of promptTokens: audio (charged at the audio input price)." }),
    reasoningTokens: t.exposeInt("reasoningTokens", { description: "Of completionTokens: reasoning (charged at the output price)." }),
    audioCompletionTokens: t.exposeInt("audioCompletionTokens", { description: "Of completionTokens: audio (charged at the audio output price)." }),
    upstreamCost: t.exposeString("upstreamCost", {
      nullable: true,
      description: "What the upstream itself reported the request cost (usage.cost), as it reported it, in its own unit; null when it reported none. Informational: the charge is ours.",
    }),
    priceSnapshot: t.relation("priceSnapshot"),
    charge: t.field({ type: MoneyRef, resolve: (r) => moneyOf(r.charge, r.bucket) }),
    stream: t.exposeBoolean("stream"),
    usageExceededReservation: t.exposeBoolean("usageExceededReservation", {
      description: "The upstream reported more usage than was reserved (or absurd token counts, stored clamped): the charge is the reservation.",
    }),
    latencyMs: t.exposeInt("latencyMs"),
    status: t.exposeInt("status"),
    ledgerEntry: t.relation("ledgerEntry", { nullable: true }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const ReceiptOrder = listOrder<Prisma.ReceiptOrderByWithRelationInput>()(
  "Receipt",
  { CREATED_AT: (d) => ({ createdAt: d }), CHARGE: (d) => ({ charge: d }), LATENCY: (d) => ({ latencyMs: d }) },
  (d) => [{ id: d }],
  { field: "CREATED_AT", direction: "DESC" },
);
export const ReceiptConnection = builder.connectionObject({ type: ReceiptRef, name: "ReceiptConnection" }, { name: "ReceiptEdge" });
