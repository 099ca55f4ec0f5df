// Alert history (budget alerts, low-balance alerts, channel health changes) and the low-balance
// threshold. The live side of each is a subscription in live.ts, of the same type.
import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { isPlatform, tenancyWhere, type Viewer } from "../auth/index.ts";
import { setLowBalanceThreshold } from "../budgets/low-balance.ts";
import { forbidden } from "../errors.ts";
import { BalanceBucket, CapScope } from "../generated/prisma/enums.ts";
import { timeRange } from "./filters.ts";
import { viewerOf } from "./viewer.ts";
import { BudgetAlertConnection, BudgetAlertOrder, ChannelHealthEventConnection, ChannelHealthEventOrder, LowBalanceAlertConnection, LowBalanceAlertOrder } from "../schema/types/alerts.ts";

const BudgetAlertFilter = builder.inputType("BudgetAlertFilter", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
    scope: t.field({ type: CapScope, required: false }),
    scopeId: t.id({ required: false }),
    projectId: t.id({ required: false }),
    bucket: t.field({ type: BalanceBucket, required: false }),
    from: t.field({ type: "DateTime", required: false, description: "Inclusive." }),
    to: t.field({ type: "DateTime", required: false, description: "Exclusive." }),
  }),
});

const LowBalanceAlertFilter = builder.inputType("LowBalanceAlertFilter", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
    bucket: t.field({ type: BalanceBucket, required: false }),
    from: t.field({ type: "DateTime", required: false, description: "Inclusive." }),
    to: t.field({ type: "DateTime", required: false, description: "Exclusive." }),
  }),
});

const ChannelHealthFilter = builder.inputType("ChannelHealthFilter", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Platform tokens only; others always see their own organization." }),
    routeId: t.id({ required: false }),
    channelId: t.id({ required: false }),
    from: t.field({ type: "DateTime", required: false, description: "Inclusive." }),
    to: t.field({ type: "DateTime", required: false, description: "Exclusive." }),
  }),
});

type Id = string | number | null | undefined;
const given = (id: Id) => (id === null || id === undefined ? undefined : String(id));

/** The viewer's tenancy, narrowed to the organization a platform token names. */
function organizationWhere(viewer: Viewer, organizationId: Id): { organizationId?: string } {
  if (isPlatform(viewer)) return given(organizationId) ? { organizationId: given(organizationId) } : {};
  return { organizationId: tenancyWhere(viewer).organizationId };
}

/** Organization-level history (wallet, channels): not shown to project viewers. */
function organizationLevel(viewer: Viewer, what: string): void {
  if (viewer.role === "PROJECT_VIEWER") throw forbidden(`project viewers cannot read ${what}`);
}

const createdWithin = (from?: Date | null, to?: Date | null) => {
  const range = timeRange(from, to);
  return range ? { createdAt: range } : {};
};

builder.queryFields((t) => ({
  budgetAlerts: t.prismaConnection(
    {
      type: "BudgetAlert",
      cursor: "id",
      description: "Budget alerts raised (50 / 80 / 100 % of a cap), newest first. Project viewers see their project's.",
      args: { filter: t.arg({ type: BudgetAlertFilter, required: false }), orderBy: t.arg({ type: BudgetAlertOrder.Input, required: false, description: BudgetAlertOrder.description }) },
      resolve: (query, _root, args, ctx) => db.budgetAlert.findMany({ ...query, where: budgetAlertWhere(viewerOf(ctx), args.filter), orderBy: BudgetAlertOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.budgetAlert.count({ where: budgetAlertWhere(viewerOf(ctx), args.filter) }),
    },
    BudgetAlertConnection,
  ),
  lowBalanceAlerts: t.prismaConnection(
    {
      type: "BalanceAlert",
      cursor: "id",
      description: "Low-balance alerts raised, newest first.",
      args: { filter: t.arg({ type: LowBalanceAlertFilter, required: false }), orderBy: t.arg({ type: LowBalanceAlertOrder.Input, required: false, description: LowBalanceAlertOrder.description }) },
      resolve: (query, _root, args, ctx) => db.balanceAlert.findMany({ ...query, where: lowBalanceWhere(viewerOf(ctx), args.filter), orderBy: LowBalanceAlertOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.balanceAlert.count({ where: lowBalanceWhere(viewerOf(ctx), args.filter) }),
    },
    LowBalanceAlertConnection,
  ),
  channelHealthEvents: t.prismaConnection(
    {
      type: "ChannelHealthEvent",
      cursor: "id",
      description: "Channel health changes, newest first.",
      args: {
        filter: t.arg({ type: ChannelHealthFilter, required: false }),
        orderBy: t.arg({ type: ChannelHealthEventOrder.Input, required: false, description: ChannelHealthEventOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.channelHealthEvent.findMany({ ...query, where: healthWhere(viewerOf(ctx), args.filter), orderBy: ChannelHealthEventOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.channelHealthEvent.count({ where: healthWhere(viewerOf(ctx), args.filter) }),
    },
    ChannelHealthEventConnection,
  ),
}));

type BudgetAlertFilterInput = { organizationId?: Id; scope?: CapScope | null; scopeId?: Id; projectId?: Id; bucket?: BalanceBucket | null; from?: Date | null; to?: Date | null };

function budgetAlertWhere(viewer: Viewer, filter: BudgetAlertFilterInput | null | undefined) {
  const f = filter ?? {};
  return {
    AND: [
      organizationWhere(viewer, f.organizationId),
      viewer.role === "PROJECT_VIEWER" ? { projectId: viewer.projectId ?? "" } : {},
      {
        ...(f.scope ? { scope: f.scope } : {}),
        ...(given(f.scopeId) ? { scopeId: given(f.scopeId) } : {}),
        ...(given(f.projectId) ? { projectId: given(f.projectId) } : {}),
        ...(f.bucket ? { bucket: f.bucket } : {}),
        ...createdWithin(f.from, f.to),
      },
    ],
  };
}

function lowBalanceWhere(viewer: Viewer, filter: { organizationId?: Id; bucket?: BalanceBucket | null; from?: Date | null; to?: Date | null } | null | undefined) {
  organizationLevel(viewer, "low-balance alerts");
  const f = filter ?? {};
  return { ...organizationWhere(viewer, f.organizationId), ...(f.bucket ? { bucket: f.bucket } : {}), ...createdWithin(f.from, f.to) };
}

function healthWhere(viewer: Viewer, filter: { organizationId?: Id; routeId?: Id; channelId?: Id; from?: Date | null; to?: Date | null } | null | undefined) {
  organizationLevel(viewer, "channel health");
  const f = filter ?? {};
  return {
    ...organizationWhere(viewer, f.organizationId),
    ...(given(f.routeId) ? { routeId: given(f.routeId) } : {}),
    ...(given(f.channelId) ? { channelId: given(f.channelId) } : {}),
    ...createdWithin(f.from, f.to),
  };
}

const SetLowBalanceThresholdInput = builder.inputType("SetLowBalanceThresholdInput", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Default: the viewer's organization (platform tokens: the default organization)." }),
    bucket: t.field({ type: BalanceBucket, required: true }),
    threshold: t.field({
      type: "Decimal",
      required: false,
      description: "In the bucket's currency, positive; null removes it. A charge that takes the balance below it raises one lowBalanceAlert; a top-up back to it re-arms it.",
    }),
  }),
});

builder.mutationFields((t) => ({
  setLowBalanceThreshold: t.prismaField({
    type: "WalletBucket",
    description: "Sets the organization's low-balance threshold for one bucket (audited). Already below it: the alert is raised at once.",
    args: { input: t.arg({ type: SetLowBalanceThresholdInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const bucket = await setLowBalanceThreshold(viewerOf(ctx), {
        organizationId: given(input.organizationId) ?? null,
        bucket: input.bucket,
        threshold: input.threshold ?? null,
      });
      return db.walletBucket.findUniqueOrThrow({ ...query, where: { id: bucket.id } });
    },
  }),
}));
