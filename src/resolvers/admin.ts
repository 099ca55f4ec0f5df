// Organizations and admin tokens: how a platform admin onboards a team and hands out scoped tokens.
import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { adminTokenWhere, isPlatform, issueAdminToken, revokeAdminToken, type CreatedAdminToken as CreatedAdminTokenResult } from "../auth/index.ts";
import { ensureOrganization } from "../orgs/index.ts";
import { setOrganizationTimeZone } from "../orgs/time-zone.ts";
import { writeAudit } from "../audit/index.ts";
import { conflict, forbidden, requiredText } from "../errors.ts";
import { AdminRole } from "../generated/prisma/enums.ts";
import { viewerOf } from "./viewer.ts";
import { AdminTokenConnection, AdminTokenOrder } from "../schema/types/admin-token.ts";

const CreatedAdminToken = builder.objectRef<CreatedAdminTokenResult>("CreatedAdminToken").implement({
  description: "The secret is returned here only, never again.",
  fields: (t) => ({
    adminToken: t.prismaField({
      type: "AdminToken",
      resolve: (query, created) => db.adminToken.findUniqueOrThrow({ ...query, where: { id: created.id } }),
    }),
    secret: t.exposeString("secret"),
    id: t.exposeID("id", { deprecationReason: "Use adminToken.id." }),
    role: t.field({ type: AdminRole, deprecationReason: "Use adminToken.role.", resolve: (c) => c.token.role }),
    organizationId: t.id({ nullable: true, deprecationReason: "Use adminToken.organizationId.", resolve: (c) => c.token.organizationId }),
    projectId: t.id({ nullable: true, deprecationReason: "Use adminToken.projectId.", resolve: (c) => c.token.projectId }),
  }),
});

const CreateAdminTokenInput = builder.inputType("CreateAdminTokenInput", {
  fields: (t) => ({
    name: t.string({ required: true }),
    role: t.field({ type: AdminRole, required: true, description: "Organization admins cannot create PLATFORM_ADMIN tokens." }),
    organizationId: t.id({ required: false, description: "Default: the caller's organization. Ignored for PLATFORM_ADMIN." }),
    projectId: t.id({ required: false, description: "Required for PROJECT_VIEWER (and only allowed there)." }),
    expiresAt: t.field({ type: "DateTime", required: false, description: "Refused from then on; null = never expires." }),
  }),
});

builder.queryFields((t) => ({
  organizations: t.prismaField({
    type: ["Organization"],
    description: "Platform tokens see every organization; others their own.",
    resolve: (query, _root, _args, ctx) => {
      const viewer = viewerOf(ctx);
      if (viewer.role === "PROJECT_VIEWER") throw forbidden();
      return db.organization.findMany({ ...query, where: isPlatform(viewer) ? {} : { id: viewer.organizationId ?? "" }, orderBy: { createdAt: "asc" } });
    },
  }),
  adminTokens: t.prismaConnection(
    {
      type: "AdminToken",
      cursor: "id",
      description: "Newest first. Platform admins see every token, organization admins their organization's; viewers none.",
      args: {
        organizationId: t.arg.id({ required: false }),
        includeRevoked: t.arg.boolean({ required: false, description: "Default false." }),
        orderBy: t.arg({ type: AdminTokenOrder.Input, required: false, description: AdminTokenOrder.description }),
      },
      resolve: (query, _root, args, ctx) => db.adminToken.findMany({ ...query, where: adminTokenWhere(viewerOf(ctx), tokenFilter(args)), orderBy: AdminTokenOrder.orderBy(args.orderBy) }),
      totalCount: (_c, args, ctx) => db.adminToken.count({ where: adminTokenWhere(viewerOf(ctx), tokenFilter(args)) }),
    },
    AdminTokenConnection,
  ),
}));

const tokenFilter = (args: { organizationId?: string | number | null; includeRevoked?: boolean | null }) => ({
  organizationId: args.organizationId ? String(args.organizationId) : null,
  includeRevoked: args.includeRevoked ?? false,
});

builder.mutationFields((t) => ({
  createOrganization: t.prismaField({
    type: "Organization",
    description: "Platform admins only. Creates the organization with its wallet (both buckets at zero).",
    args: { name: t.arg.string({ required: true }) },
    resolve: async (query, _root, { name }, ctx) => {
      const viewer = viewerOf(ctx);
      if (!isPlatform(viewer)) throw forbidden("only platform admins can create organizations");
      const trimmed = requiredText(name, "name");
      if (await db.organization.findUnique({ where: { name: trimmed } })) throw conflict(`organization ${JSON.stringify(trimmed)} exists`);
      const org = await ensureOrganization(trimmed);
      await writeAudit(db, viewer, { organizationId: org.id, action: "createOrganization", targetType: "Organization", targetId: org.id, after: org });
      return db.organization.findUniqueOrThrow({ ...query, where: { id: org.id } });
    },
  }),
  setOrganizationTimeZone: t.prismaField({
    type: "Organization",
    description:
      "Sets the organization's IANA time zone (audited; e.g. \"Asia/Shanghai\"). Takes effect at a window boundary: the current day and month run on to the new zone's next midnight, so no spend is counted twice or escapes a cap. CONFLICT while the previous change is still taking effect (Organization.timeZoneChange); the same zone changes nothing.",
    args: {
      organizationId: t.arg.id({ required: false, description: "Default: the viewer's organization (platform tokens: the default organization)." }),
      timeZone: t.arg.string({ required: true }),
    },
    resolve: async (query, _root, args, ctx) => {
      const org = await setOrganizationTimeZone(viewerOf(ctx), { organizationId: args.organizationId ? String(args.organizationId) : null, timeZone: args.timeZone });
      return db.organization.findUniqueOrThrow({ ...query, where: { id: org.id } });
    },
  }),
  createAdminToken: t.field({
    type: CreatedAdminToken,
    args: { input: t.arg({ type: CreateAdminTokenInput, required: true }) },
    resolve: (_root, { input }, ctx) =>
      issueAdminToken(viewerOf(ctx), {
        ...input,
        organizationId: input.organizationId ? String(input.organizationId) : null,
        projectId: input.projectId ? String(input.projectId) : null,
      }),
  }),
  revokeAdminToken: t.prismaField({
    type: "AdminToken",
    description: "Refused at once on every instance (open WebSocket connections using it are closed with 4403).",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const token = await revokeAdminToken(viewerOf(ctx), String(id));
      return db.adminToken.findUniqueOrThrow({ ...query, where: { id: token.id } });
    },
  }),
}));
