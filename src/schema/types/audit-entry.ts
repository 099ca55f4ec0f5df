import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";

builder.prismaObject("AuditEntry", {
  interfaces: [NodeRef],
  description: "One admin mutation: who did what to which object, with the state before and after.",
  authScopes: (a) => ({ owns: { organizationId: a.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    actor: t.exposeString("actor"),
    action: t.exposeString("action"),
    targetType: t.exposeString("targetType"),
    targetId: t.exposeString("targetId"),
    before: t.expose("before", { type: "JSON", nullable: true }),
    after: t.expose("after", { type: "JSON", nullable: true }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});
