// Subscriptions for ops dashboards (graphql-ws and SSE). Authorization is checked when
// subscribing, and every event is filtered by the viewer's tenancy before it is delivered.
import { filter, pipe } from "graphql-yoga";
import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canRead, canReadOrganization, isPlatform, type Viewer } from "../auth/index.ts";
import { events, type BudgetAlertEvent, type RouteHealthEvent, type SpendEvent } from "../events/index.ts";
import { notFound } from "../errors.ts";
import { BalanceBucket, CapScope, HealthState } from "../generated/prisma/enums.ts";
import { MoneyRef, moneyOf, moneyOrNull } from "../schema/types/common.ts";
import { viewerOf } from "./viewer.ts";

builder.subscriptionType({ authScopes: { authenticated: true } });

const SpendStatus = builder.enumType("SpendStatus", { values: ["SETTLED", "FAILED"] as const });

const micro = (v: string | null) => (v === null ? null : BigInt(v));

function spendFields(scope: "key" | "project") {
  return builder.objectRef<SpendEvent>(scope === "key" ? "KeySpendEvent" : "ProjectSpendEvent").implement({
    description: `Sent after every settled or failed request of the ${scope}. Numbers come from the same counters that enforce the caps.`,
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

const BudgetAlertRef = builder.objectRef<BudgetAlertEvent>("BudgetAlert").implement({
  description: "A cap's window crossed 50, 80 or 100 %: sent once per threshold and window.",
  fields: (t) => ({
    scope: t.field({ type: CapScope, resolve: (e) => e.scope as CapScope }),
    scopeId: t.exposeID("scopeId"),
    projectId: t.exposeID("projectId", { nullable: true }),
    bucket: t.field({ type: BalanceBucket, resolve: (e) => e.bucket }),
    threshold: t.exposeInt("threshold", { description: "Percent of the cap: 50, 80 or 100." }),
    spent: t.field({ type: MoneyRef, resolve: (e) => moneyOf(BigInt(e.spent), e.bucket) }),
    cap: t.field({ type: MoneyRef, resolve: (e) => moneyOf(BigInt(e.cap), e.bucket) }),
    windowStart: t.field({ type: "DateTime", resolve: (e) => new Date(e.windowStart) }),
  }),
});

/** Events of organizations (and, for project viewers, the project) this viewer may read. */
const visible = (viewer: Viewer) => (e: { organizationId: string; projectId?: string | null }) =>
  isPlatform(viewer) || (viewer.role === "PROJECT_VIEWER" ? e.projectId === viewer.projectId : e.organizationId === viewer.organizationId);

builder.subscriptionFields((t) => ({
  keySpend: t.field({
    type: KeySpendEvent,
    args: { keyId: t.arg.id({ required: true }) },
    subscribe: async (_root, { keyId }, ctx) => {
      const key = await db.apiKey.findUnique({ where: { id: String(keyId) } });
      if (!key || !canRead(viewerOf(ctx), key.organizationId, key.projectId)) throw notFound("API key", String(keyId));
      return pipe(events.subscribe("spend"), filter((e: SpendEvent) => e.keyId === key.id));
    },
    resolve: (e) => e,
  }),
  projectSpend: t.field({
    type: ProjectSpendEvent,
    args: { projectId: t.arg.id({ required: true }) },
    subscribe: async (_root, { projectId }, ctx) => {
      const project = await db.project.findUnique({ where: { id: String(projectId) } });
      if (!project || !canRead(viewerOf(ctx), project.organizationId, project.id)) throw notFound("project", String(projectId));
      return pipe(events.subscribe("spend"), filter((e: SpendEvent) => e.projectId === project.id));
    },
    resolve: (e) => e,
  }),
  routeHealth: t.field({
    type: RouteHealthEventRef,
    description: "Every change of a channel's health; all routes the token may see when routeId is omitted.",
    args: { routeId: t.arg.id({ required: false }) },
    subscribe: async (_root, { routeId }, ctx) => {
      const viewer = viewerOf(ctx);
      if (routeId) {
        const route = await db.route.findUnique({ where: { id: String(routeId) } });
        if (!route || !canReadOrganization(viewer, route.organizationId)) throw notFound("route", String(routeId));
      }
      return pipe(
        events.subscribe("routeHealth"),
        filter((e: RouteHealthEvent) => (routeId ? e.routeId === String(routeId) : canReadOrganization(viewer, e.organizationId))),
      );
    },
    resolve: (e) => e,
  }),
  receiptCreated: t.prismaField({
    type: "Receipt",
    args: { projectId: t.arg.id({ required: false }), keyId: t.arg.id({ required: false }) },
    subscribe: (_root, args, ctx) => {
      const viewer = viewerOf(ctx);
      const mine = visible(viewer);
      return pipe(
        events.subscribe("receiptCreated"),
        filter((e) => mine(e) && (!args.projectId || e.projectId === String(args.projectId)) && (!args.keyId || e.keyId === String(args.keyId))),
      );
    },
    resolve: (query, event) => db.receipt.findUniqueOrThrow({ ...query, where: { id: (event as { receiptId: string }).receiptId } }),
  }),
  budgetAlert: t.field({
    type: BudgetAlertRef,
    args: { projectId: t.arg.id({ required: false }) },
    subscribe: (_root, args, ctx) => {
      const mine = visible(viewerOf(ctx));
      return pipe(
        events.subscribe("budgetAlert"),
        filter((e: BudgetAlertEvent) => mine(e) && (!args.projectId || e.projectId === String(args.projectId))),
      );
    },
    resolve: (e) => e,
  }),
}));
