import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { ChannelHealthEventConnection, ChannelHealthEventOrder } from "./alerts.ts";
import { PriceSnapshotConnection, PriceSnapshotOrder } from "./price-snapshot.ts";
import { BalanceBucket, HealthState, Settlement } from "../../generated/prisma/enums.ts";
import { bucketOf, PRICE_ORDER } from "../../routing/index.ts";
import { BUCKET_CURRENCY } from "../../money/amounts.ts";
import { db } from "../../db/index.ts";
import { MoneyRef, budgetMoney } from "./common.ts";

export const ChannelRef = builder.prismaObject("Channel", {
  interfaces: [NodeRef],
  description: "One upstream that can serve a route. Its credential is encrypted at rest and never returned.",
  authScopes: (c) => ({ owns: { organizationId: c.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    name: t.exposeString("name"),
    route: t.relation("route"),
    priority: t.exposeInt("priority", { description: "Lower is tried first; the first enabled channel is the primary." }),
    settlement: t.field({ type: Settlement, resolve: (c) => c.settlement }),
    bucket: t.field({ type: BalanceBucket, resolve: (c) => bucketOf(c.settlement) }),
    baseUrl: t.exposeString("baseUrl"),
    upstreamModel: t.exposeString("upstreamModel"),
    hasCredential: t.boolean({ resolve: (c) => c.apiKeyCiphertext !== null }),
    enabled: t.exposeBoolean("enabled"),
    health: t.field({ type: HealthState, resolve: (c) => c.health }),
    healthChangedAt: t.expose("healthChangedAt", { type: "DateTime" }),
    currentPrice: t.prismaField({
      type: "PriceSnapshot",
      nullable: true,
      description:
        "The snapshot requests are priced with now, in the channel's current bucket (null = unpriced: requests are refused; a settlement change leaves the channel unpriced until setPrice).",
      resolve: (query, channel) => {
        // The same rule as the gateway's route plan (routing pricedNowWhere), for the channel at hand.
        const bucket = bucketOf(channel.settlement);
        return db.priceSnapshot.findFirst({
          ...query,
          where: { channelId: channel.id, bucket, currency: BUCKET_CURRENCY[bucket], validFrom: { lte: new Date() } },
          orderBy: PRICE_ORDER,
        });
      },
    }),
    priceHistory: t.relatedConnection(
      "priceSnapshots",
      {
        cursor: "id",
        totalCount: true,
        args: { orderBy: t.arg({ type: PriceSnapshotOrder.Input, required: false, description: PriceSnapshotOrder.description }) },
        query: (args) => ({ orderBy: PriceSnapshotOrder.orderBy(args.orderBy) }),
      },
      PriceSnapshotConnection,
    ),
    healthHistory: t.relatedConnection(
      "healthEvents",
      {
        cursor: "id",
        totalCount: true,
        description: "Its health changes, newest first by default.",
        args: { orderBy: t.arg({ type: ChannelHealthEventOrder.Input, required: false, description: ChannelHealthEventOrder.description }) },
        query: (args) => ({ orderBy: ChannelHealthEventOrder.orderBy(args.orderBy) }),
      },
      ChannelHealthEventConnection,
    ),
    dailyCap: t.field({
      type: MoneyRef,
      nullable: true,
      args: { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default: the channel's own bucket." }) },
      description: "Backup-route limit (CHANNEL_DAILY), the effective cap; null when uncapped.",
      resolve: (c, { bucket }, ctx) => budgetMoney(ctx, "CHANNEL_DAILY", c, bucket ?? bucketOf(c.settlement), "cap"),
    }),
    spendToday: t.field({
      type: MoneyRef,
      args: { bucket: t.arg({ type: BalanceBucket, required: false, description: "Default: the channel's own bucket." }) },
      description: "Settled spend through this channel in the current day of the organization's time zone.",
      resolve: (c, { bucket }, ctx) => budgetMoney(ctx, "CHANNEL_DAILY", c, bucket ?? bucketOf(c.settlement), "spent"),
    }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});
