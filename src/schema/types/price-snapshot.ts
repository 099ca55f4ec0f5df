import { builder } from "../builder.ts";
import { MoneyRef, moneyOf } from "./common.ts";
import { BalanceBucket } from "../../generated/prisma/enums.ts";

builder.prismaObject("PriceSnapshot", {
  description: "A channel's price from validFrom on, per million tokens, in its bucket's currency. Never rewritten.",
  authScopes: (p) => ({ owns: { organizationId: p.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    channel: t.relation("channel"),
    bucket: t.field({ type: BalanceBucket, resolve: (p) => p.bucket }),
    inputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.inputPerMillion, p.bucket) }),
    outputPerMillion: t.field({ type: MoneyRef, resolve: (p) => moneyOf(p.outputPerMillion, p.bucket) }),
    validFrom: t.expose("validFrom", { type: "DateTime" }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});
