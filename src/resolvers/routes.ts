import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canReadOrganization, isPlatform, tenancyWhere } from "../auth/index.ts";
import { setChannelLimits, setPrice, setRouteLimits, upsertRoute } from "../routing/index.ts";
import { forbidden, notFound } from "../errors.ts";
import { BalanceBucket, Settlement } from "../generated/prisma/enums.ts";
import { timeRange } from "./filters.ts";
import { viewerOf } from "./viewer.ts";
import { PriceSnapshotConnection, PriceSnapshotOrder } from "../schema/types/price-snapshot.ts";
import type { Context } from "../schema/builder.ts";

function orgWhere(ctx: Context) {
  const viewer = viewerOf(ctx);
  if (viewer.role === "PROJECT_VIEWER") throw forbidden("project viewers cannot read routes");
  return isPlatform(viewer) ? {} : { organizationId: tenancyWhere(viewer).organizationId };
}

builder.queryFields((t) => ({
  routes: t.prismaField({
    type: ["Route"],
    resolve: (query, _root, _args, ctx) => db.route.findMany({ ...query, where: orgWhere(ctx), orderBy: { model: "asc" } }),
  }),
  route: t.prismaField({
    type: "Route",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const route = await db.route.findUnique({ ...query, where: { id: String(id) } });
      if (!route || !canReadOrganization(viewerOf(ctx), route.organizationId)) throw notFound("route", String(id));
      return route;
    },
  }),
  priceSnapshots: t.prismaConnection(
    {
      type: "PriceSnapshot",
      cursor: "id",
      description: "Price history, newest first.",
      args: {
        channelId: t.arg.id({ required: false }),
        routeId: t.arg.id({ required: false }),
        from: t.arg({ type: "DateTime", required: false }),
        to: t.arg({ type: "DateTime", required: false }),
        orderBy: t.arg({ type: PriceSnapshotOrder.Input, required: false, description: PriceSnapshotOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.priceSnapshot.findMany({ ...query, where: priceWhere(ctx, args), orderBy: PriceSnapshotOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.priceSnapshot.count({ where: priceWhere(ctx, args) }),
    },
    PriceSnapshotConnection,
  ),
}));

function priceWhere(ctx: Context, args: { channelId?: string | number | null; routeId?: string | number | null; from?: Date | null; to?: Date | null }) {
  const range = timeRange(args.from, args.to);
  return {
    ...orgWhere(ctx),
    ...(args.channelId ? { channelId: String(args.channelId) } : {}),
    ...(args.routeId ? { channel: { routeId: String(args.routeId) } } : {}),
    ...(range ? { validFrom: range } : {}),
  };
}

const ChannelInput = builder.inputType("ChannelInput", {
  fields: (t) => ({
    name: t.string({ required: true }),
    baseUrl: t.string({ required: true, description: "OpenAI-compatible base URL, e.g. https://api.example.com/v1" }),
    apiKey: t.string({ required: false, description: "Upstream credential; encrypted at rest, never returned. Omit to keep the stored one." }),
    upstreamModel: t.string({ required: true }),
    settlement: t.field({ type: Settlement, required: false, description: "Default OFFICIAL (CREDIT bucket)." }),
    priority: t.int({ required: false, description: "Lower is tried first; default: position in the list." }),
  }),
});

const UpsertRouteInput = builder.inputType("UpsertRouteInput", {
  fields: (t) => ({
    organizationId: t.id({ required: false }),
    model: t.string({ required: true, description: "The catalog model name clients request." }),
    channels: t.field({ type: [ChannelInput], required: true }),
    dailyCap: t.field({ type: "Decimal", required: false }),
    capBucket: t.field({ type: BalanceBucket, required: false, description: "Bucket the daily cap counts (default: the primary channel's)." }),
    defaultMaxTokens: t.int({ required: false }),
    maxUnboundedPartTokens: t.int({
      required: false,
      description: "Prompt tokens reserved per audio / file part (their cost cannot be bounded from the request); 0 refuses such parts; omitted keeps the current value.",
    }),
  }),
});

const SetRouteLimitsInput = builder.inputType("SetRouteLimitsInput", {
  fields: (t) => ({
    routeId: t.id({ required: true }),
    dailyCap: t.field({ type: "Decimal", required: false, description: "null removes the cap." }),
    capBucket: t.field({ type: BalanceBucket, required: false }),
    defaultMaxTokens: t.int({ required: false }),
    maxUnboundedPartTokens: t.int({
      required: false,
      description: "Prompt tokens reserved per audio / file part (their cost cannot be bounded from the request); 0 refuses such parts; omitted keeps the current value.",
    }),
  }),
});

const SetChannelLimitsInput = builder.inputType("SetChannelLimitsInput", {
  fields: (t) => ({
    channelId: t.id({ required: true }),
    dailyCap: t.field({ type: "Decimal", required: false, description: "Daily cap of this channel (CHANNEL_DAILY); null removes it." }),
    capBucket: t.field({ type: BalanceBucket, required: false, description: "Default: the channel's own bucket." }),
  }),
});

const SetPriceInput = builder.inputType("SetPriceInput", {
  fields: (t) => ({
    channelId: t.id({ required: true }),
    inputPerMillion: t.field({ type: "Decimal", required: true }),
    outputPerMillion: t.field({ type: "Decimal", required: true }),
    cachedInputPerMillion: t.field({ type: "Decimal", required: false, description: "Cached input tokens (prompt cache reads). Omitted: the input price." }),
    cacheWritePerMillion: t.field({ type: "Decimal", required: false, description: "Prompt cache writes, where the upstream bills them apart. Omitted: the input price." }),
    audioInputPerMillion: t.field({ type: "Decimal", required: false, description: "Audio input tokens. Omitted: the input price." }),
    audioOutputPerMillion: t.field({ type: "Decimal", required: false, description: "Audio output tokens. Omitted: the output price." }),
    validFrom: t.field({ type: "DateTime", required: false, description: "Default now." }),
  }),
});

builder.mutationFields((t) => ({
  upsertRoute: t.prismaField({
    type: "Route",
    args: { input: t.arg({ type: UpsertRouteInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const route = await upsertRoute(viewerOf(ctx), { ...input, organizationId: input.organizationId ? String(input.organizationId) : null });
      return db.route.findUniqueOrThrow({ ...query, where: { id: route.id } });
    },
  }),
  setRouteLimits: t.prismaField({
    type: "Route",
    args: { input: t.arg({ type: SetRouteLimitsInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const route = await setRouteLimits(viewerOf(ctx), { ...input, routeId: String(input.routeId) });
      return db.route.findUniqueOrThrow({ ...query, where: { id: route.id } });
    },
  }),
  setChannelLimits: t.prismaField({
    type: "Channel",
    description: "Backup-route limits: a channel's daily cap, enforced with every other cap; a capped-out channel is skipped and the next one tried. Audited.",
    args: { input: t.arg({ type: SetChannelLimitsInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const channel = await setChannelLimits(viewerOf(ctx), { ...input, channelId: String(input.channelId) });
      return db.channel.findUniqueOrThrow({ ...query, where: { id: channel.id } });
    },
  }),
  setPrice: t.prismaField({
    type: "PriceSnapshot",
    args: { input: t.arg({ type: SetPriceInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const snapshot = await setPrice(viewerOf(ctx), { ...input, channelId: String(input.channelId) });
      return db.priceSnapshot.findUniqueOrThrow({ ...query, where: { id: snapshot.id } });
    },
  }),
}));
