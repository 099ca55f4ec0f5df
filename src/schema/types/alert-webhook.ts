import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { WebhookDeliveryStatus } from "../../generated/prisma/enums.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import type { PublishedAlert } from "../../events/index.ts";

builder.enumType(WebhookDeliveryStatus, {
  name: "WebhookDeliveryStatus",
  description: "SUCCEEDED: the receiver answered 2xx. RETRYING: failed, another attempt is scheduled. FAILED: failed, no attempt left.",
});

/** The events a webhook delivers (the subscription of the same name carries the same alert). */
export const WEBHOOK_EVENTS = ["budgetAlert", "lowBalanceAlert"] as const satisfies ReadonlyArray<PublishedAlert["topic"]>;
const WebhookEvent = builder.enumType("WebhookEvent", {
  description: "Which alert a delivery carried: the name of the subscription that carries it live.",
  values: WEBHOOK_EVENTS,
});

export const AlertWebhookRef = builder.prismaObject("AlertWebhook", {
  interfaces: [NodeRef],
  description: "Where the organization's budget alerts are POSTed, signed with its secret (never shown after it was set).",
  authScopes: (w) => ({ owns: { organizationId: w.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    url: t.exposeString("url"),
    deliveries: t.relatedConnection(
      "deliveries",
      {
        cursor: "id",
        totalCount: true,
        description: "Every delivery attempt, newest first by default.",
        args: { orderBy: t.arg({ type: AlertWebhookDeliveryOrder.Input, required: false, description: AlertWebhookDeliveryOrder.description }) },
        query: (args) => ({ orderBy: AlertWebhookDeliveryOrder.orderBy(args.orderBy) }),
      },
      AlertWebhookDeliveryConnection,
    ),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    updatedAt: t.expose("updatedAt", { type: "DateTime" }),
  }),
});

export const AlertWebhookDeliveryRef = builder.prismaObject("AlertWebhookDelivery", {
  interfaces: [NodeRef],
  description: "One attempt to deliver one event; attempts of the same event share deliveryId (sent as x-tokengate-delivery).",
  authScopes: (d) => ({ owns: { organizationId: d.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    deliveryId: t.exposeString("deliveryId"),
    event: t.field({ type: WebhookEvent, resolve: (d) => d.event as (typeof WEBHOOK_EVENTS)[number] }),
    attempt: t.exposeInt("attempt"),
    status: t.expose("status", { type: WebhookDeliveryStatus }),
    httpStatus: t.exposeInt("httpStatus", { nullable: true }),
    error: t.exposeString("error", { nullable: true }),
    durationMs: t.exposeInt("durationMs"),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const AlertWebhookDeliveryOrder = listOrder<Prisma.AlertWebhookDeliveryOrderByWithRelationInput>()("AlertWebhookDelivery", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const AlertWebhookDeliveryConnection = builder.connectionObject({ type: AlertWebhookDeliveryRef, name: "AlertWebhookDeliveryConnection" }, { name: "AlertWebhookDeliveryEdge" });
