import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { AdminRole } from "../../generated/prisma/enums.ts";

export const AdminTokenRef = builder.prismaObject("AdminToken", {
  interfaces: [NodeRef],
  description: "A bearer token for this API. Its secret is shown once, at creation, and stored only as a hash.",
  authScopes: (t) => ({ owns: { organizationId: t.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    name: t.exposeString("name"),
    role: t.field({ type: AdminRole, resolve: (token) => token.role }),
    organizationId: t.exposeID("organizationId", { nullable: true }),
    projectId: t.exposeID("projectId", { nullable: true }),
    prefix: t.exposeString("prefix", { description: "The secret's recognisable head (with last4: all that is ever shown of it)." }),
    last4: t.exposeString("last4"),
    bootstrap: t.exposeBoolean("bootstrap", { description: "Made from TOKENGATE_ADMIN_TOKEN or generated at first start." }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    expiresAt: t.expose("expiresAt", { type: "DateTime", nullable: true }),
    revokedAt: t.expose("revokedAt", { type: "DateTime", nullable: true }),
    lastUsedAt: t.expose("lastUsedAt", { type: "DateTime", nullable: true, description: "Updated at most once a minute." }),
  }),
});

export const AdminTokenOrder = listOrder<Prisma.AdminTokenOrderByWithRelationInput>()("AdminToken", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const AdminTokenConnection = builder.connectionObject({ type: AdminTokenRef, name: "AdminTokenConnection" }, { name: "AdminTokenEdge" });
