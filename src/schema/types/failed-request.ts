import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { BalanceBucket, CapScope, FailureCause } from "../../generated/prisma/enums.ts";
import { RequestAttemptRef, attemptsOf } from "./request-attempt.ts";

export const FailedRequestRef = builder.prismaObject("FailedRequest", {
  interfaces: [NodeRef],
  description: "A request that did not complete: why (cause, and for budget refusals which cap), where, and what it was charged under the key's policy.",
  // Unattributed failures (unknown keys) have no organization: only platform admins see them.
  authScopes: (f) => ({ owns: { organizationId: f.organizationId, projectId: f.projectId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    requestId: t.exposeString("requestId"),
    key: t.relation("key", { nullable: true }),
    project: t.relation("project", { nullable: true }),
    run: t.relation("run", { nullable: true }),
    route: t.relation("route", { nullable: true }),
    channel: t.relation("channel", { nullable: true }),
    requestedModel: t.exposeString("requestedModel", { nullable: true }),
    endpoint: t.exposeString("endpoint"),
    cause: t.field({ type: FailureCause, resolve: (f) => f.cause }),
    capScope: t.field({ type: CapScope, nullable: true, resolve: (f) => f.capScope }),
    message: t.exposeString("message", { description: "Our words: the cause, the upstream status and the request id. Never the upstream's own text." }),
    upstreamMessage: t.string({
      nullable: true,
      description:
        "What the upstream itself said (its error message, or the connection error), with the channel's credential and internal addresses redacted. Organization and platform admins only: null for viewers.",
      authScopes: { admin: true },
      unauthorizedResolver: () => null,
      resolve: (f, _args, ctx) => ctx.loaders.upstreamMessages.load(f.requestId),
    }),
    httpStatus: t.exposeInt("httpStatus"),
    upstreamStatus: t.exposeInt("upstreamStatus", { nullable: true }),
    attempts: t.exposeInt("attempts"),
    attemptPath: t.field({
      type: [RequestAttemptRef],
      description:
        "Every upstream attempt, in order: channel, role, upstream status, cause, latency, and which one (the last, if any) was charged under the key's failed-request policy. Empty when the request was refused before any attempt, and for failed requests recorded before attempt paths were.",
      resolve: (f) => attemptsOf(f),
    }),
    bucket: t.field({ type: BalanceBucket, nullable: true, resolve: (f) => f.bucket }),
    promptTokens: t.exposeInt("promptTokens"),
    completionTokens: t.exposeInt("completionTokens"),
    priceSnapshot: t.relation("priceSnapshot", { nullable: true }),
    charge: t.field({ type: MoneyRef, resolve: (f) => moneyOf(f.charge, f.bucket ?? "CREDIT") }),
    estimated: t.exposeBoolean("estimated", { description: "The charge was computed from streamed text, not upstream-reported usage." }),
    ledgerEntry: t.relation("ledgerEntry", { nullable: true }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const FailedRequestOrder = listOrder<Prisma.FailedRequestOrderByWithRelationInput>()(
  "FailedRequest",
  { CREATED_AT: (d) => ({ createdAt: d }), CHARGE: (d) => ({ charge: d }) },
  (d) => [{ id: d }],
  { field: "CREATED_AT", direction: "DESC" },
);
export const FailedRequestConnection = builder.connectionObject({ type: FailedRequestRef, name: "FailedRequestConnection" }, { name: "FailedRequestEdge" });
