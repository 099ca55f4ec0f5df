// Alert history: budget alerts, low-balance alerts and channel health changes, each stored once and
// shown by the same type live (subscriptions) and in the lists.
import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { BalanceBucket, CapScope, HealthState } from "../../generated/prisma/enums.ts";
import { listOrder, MoneyRef, moneyOf } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";

export const BudgetAlertRef = builder.prismaObject("BudgetAlert", {
  interfaces: [NodeRef],
  description: "A cap's window crossed 50, 80 or 100 %: raised once per threshold and window, across instances.",
  authScopes: (a) => ({ owns: { organizationId: a.organizationId, projectId: a.projectId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    scope: t.field({ type: CapScope, resolve: (a) => a.scope }),
    scopeId: t.exposeID("scopeId"),
    projectId: t.exposeID("projectId", { nullable: true, description: "Null for route and channel caps (they span projects)." }),
    bucket: t.field({ type: BalanceBucket, resolve: (a) => a.bucket }),
    threshold: t.exposeInt("threshold", { description: "Percent of the cap: 50, 80 or 100." }),
    spent: t.field({ type: MoneyRef, resolve: (a) => moneyOf(a.spent, a.bucket) }),
    cap: t.field({ type: MoneyRef, resolve: (a) => moneyOf(a.cap, a.bucket) }),
    windowStart: t.expose("windowStart", { type: "DateTime" }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const LowBalanceAlertRef = builder.prismaObject("BalanceAlert", {
  interfaces: [NodeRef],
  name: "LowBalanceAlert",
  description: "A charge took a bucket's ledger balance below the organization's threshold: raised once per crossing (a credit back to the threshold, or a new threshold, re-arms it).",
  authScopes: (a) => ({ owns: { organizationId: a.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    bucket: t.field({ type: BalanceBucket, resolve: (a) => a.bucket }),
    threshold: t.field({ type: MoneyRef, resolve: (a) => moneyOf(a.threshold, a.bucket) }),
    balance: t.field({ type: MoneyRef, description: "The ledger balance after the charge.", resolve: (a) => moneyOf(a.balance, a.bucket) }),
    requestId: t.exposeString("requestId", { nullable: true, description: "The request whose charge crossed it (null when the threshold was set above the balance)." }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const ChannelHealthEventRef = builder.prismaObject("ChannelHealthEvent", {
  interfaces: [NodeRef],
  description: "A channel's health changed state (the live routeHealth event, stored).",
  authScopes: (e) => ({ owns: { organizationId: e.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    channel: t.relation("channel"),
    routeId: t.exposeID("routeId"),
    previousState: t.field({ type: HealthState, resolve: (e) => e.fromState }),
    state: t.field({ type: HealthState, resolve: (e) => e.toState }),
    successRate: t.exposeFloat("successRate", { description: "Over the health window when it changed." }),
    p50LatencyMs: t.exposeInt("p50LatencyMs"),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const BudgetAlertOrder = listOrder<Prisma.BudgetAlertOrderByWithRelationInput>()("BudgetAlert", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const BudgetAlertConnection = builder.connectionObject({ type: BudgetAlertRef, name: "BudgetAlertConnection" }, { name: "BudgetAlertEdge" });
export const LowBalanceAlertOrder = listOrder<Prisma.BalanceAlertOrderByWithRelationInput>()("LowBalanceAlert", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const LowBalanceAlertConnection = builder.connectionObject({ type: LowBalanceAlertRef, name: "LowBalanceAlertConnection" }, { name: "LowBalanceAlertEdge" });
export const ChannelHealthEventOrder = listOrder<Prisma.ChannelHealthEventOrderByWithRelationInput>()("ChannelHealthEvent", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const ChannelHealthEventConnection = builder.connectionObject({ type: ChannelHealthEventRef, name: "ChannelHealthEventConnection" }, { name: "ChannelHealthEventEdge" });
