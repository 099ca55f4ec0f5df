import { builder } from "../builder.ts";

builder.prismaObject("Organization", {
  authScopes: (org) => ({ owns: { organizationId: org.id } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    name: t.exposeString("name"),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    projects: t.relatedConnection("projects", { cursor: "id", totalCount: true, query: { orderBy: { createdAt: "asc" } } }),
  }),
});
