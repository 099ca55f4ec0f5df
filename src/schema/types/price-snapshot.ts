import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

export const PriceSnapshotRef = builder.prismaObject("PriceSnapshot", {
  interfaces: [NodeRef],
  description: "A channel's price from validFrom on, per million tokens, in its bucket's currency, with optional token-class prices (cached input, cache writes, audio). Never rewritten.",
  authScopes: (p) => ({ owns: { organizationId: p.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    channel: t.relation("channel"),
    bucket: t.field({ type: BalanceBucket, resolve: (p) => p.bucket }),
    inputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.inputPerMillion, p.bucket) }),
    outputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.outputPerMillion, p.bucket) }),
    cachedInputPerMillion: t.field({
      type: MoneyRef,
      nullable: true,
      description: "Cached input tokens (prompt cache reads); null: charged at inputPerMillion.",
      resolve: (p) => (p.cachedInputPerMillion === null ? null : moneyOf(p.cachedInputPerMillion, p.bucket)),
    }),
    cacheWritePerMillion: t.field({
      type: MoneyRef,
      nullable: true,
      description: "Prompt cache writes; null: charged at inputPerMillion.",
      resolve: (p) => (p.cacheWritePerMillion === null ? null : moneyOf(p.cacheWritePerMillion, p.bucket)),
    }),
    audioInputPerMillion: t.field({
      type: MoneyRef,
      nullable: true,
      description: "Audio input tokens; null: charged at inputPerMillion.",
      resolve: (p) => (p.audioInputPerMillion === null ? null : moneyOf(p.audioInputPerMillion, p.bucket)),
    }),
    audioOutputPerMillion: t.field({
      type: MoneyRef,
      nullable: true,
      description: "Audio output tokens; null: charged at outputPerMillion.",
      resolve: (p) => (p.audioOutputPerMillion === null ? null : moneyOf(p.audioOutputPerMillion, p.bucket)),
    }),
    validFrom: t.expose("validFrom", { type: "DateTime" }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const PriceSnapshotOrder = listOrder<Prisma.PriceSnapshotOrderByWithRelationInput>()(
  "PriceSnapshot",
  { VALID_FROM: (d) => ({ validFrom: d }), CREATED_AT: (d) => ({ createdAt: d }) },
  (d) => [{ createdAt: d }, { id: d }],
  { field: "VALID_FROM", direction: "DESC" },
);
export const PriceSnapshotConnection = builder.connectionObject({ type: PriceSnapshotRef, name: "PriceSnapshotConnection" }, { name: "PriceSnapshotEdge" });
