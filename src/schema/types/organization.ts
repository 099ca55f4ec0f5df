import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { ProjectConnection, ProjectOrder } from "./project.ts";

builder.prismaObject("Organization", {
  interfaces: [NodeRef],
  authScopes: (org) => ({ owns: { organizationId: org.id } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    name: t.exposeString("name"),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    projects: t.relatedConnection(
      "projects",
      {
        cursor: "id",
        totalCount: true,
        args: { orderBy: t.arg({ type: ProjectOrder.Input, required: false, description: ProjectOrder.description }) },
        query: (args) => ({ orderBy: ProjectOrder.orderBy(args.orderBy) }),
      },
      ProjectConnection,
    ),
  }),
});
