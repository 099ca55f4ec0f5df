// Organizations and admin tokens: how a platform admin onboards a team and hands out scoped tokens.
import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { assertCanWrite, createAdminToken, isPlatform, type Viewer } from "../auth/index.ts";
import { ensureOrganization } from "../orgs/index.ts";
import { writeAudit } from "../audit/index.ts";
import { badInput, conflict, forbidden, notFound, requiredText } from "../errors.ts";
import { AdminRole } from "../generated/prisma/enums.ts";
import { viewerOf } from "./viewer.ts";

interface CreatedToken {
  id: string;
  secret: string;
  role: "PLATFORM_ADMIN" | "ORG_ADMIN" | "ORG_VIEWER" | "PROJECT_VIEWER";
  organizationId: string | null;
  projectId: string | null;
}

const CreatedAdminToken = builder.objectRef<CreatedToken>("CreatedAdminToken").implement({
  description: "The secret is returned here only, never again.",
  fields: (t) => ({
    id: t.exposeID("id"),
    secret: t.exposeString("secret"),
    role: t.field({ type: AdminRole, resolve: (c) => c.role }),
    organizationId: t.exposeID("organizationId", { nullable: true }),
    projectId: t.exposeID("projectId", { nullable: true }),
  }),
});

const CreateAdminTokenInput = builder.inputType("CreateAdminTokenInput", {
  fields: (t) => ({
    name: t.string({ required: true }),
    role: t.field({ type: AdminRole, required: true }),
    organizationId: t.id({ required: false }),
    projectId: t.id({ required: false, description: "Required for PROJECT_VIEWER." }),
  }),
});

async function issueToken(viewer: Viewer, input: { name: string; role: CreatedToken["role"]; organizationId?: string | null; projectId?: string | null }) {
  if (input.role === "PLATFORM_ADMIN" && !isPlatform(viewer)) throw forbidden("only platform admins can create platform tokens");
  let organizationId = input.organizationId ?? viewer.organizationId;
  if (input.projectId) {
    const project = await db.project.findUnique({ where: { id: input.projectId } });
    if (!project) throw notFound("project", input.projectId);
    organizationId = project.organizationId;
  }
  if (input.role !== "PLATFORM_ADMIN") {
    if (!organizationId) throw badInput("organizationId", "required for organization and project tokens");
    assertCanWrite(viewer, organizationId);
  }
  const created = await createAdminToken({ ...input, organizationId, projectId: input.projectId ?? null });
  await writeAudit(db, viewer, {
    organizationId: input.role === "PLATFORM_ADMIN" ? null : organizationId,
    action: "createAdminToken",
    targetType: "AdminToken",
    targetId: created.id,
    after: { name: input.name, role: input.role, organizationId, projectId: input.projectId ?? null },
  });
  return { id: created.id, secret: created.secret, role: input.role, organizationId: input.role === "PLATFORM_ADMIN" ? null : organizationId, projectId: input.projectId ?? null };
}

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
}));

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
  createAdminToken: t.field({
    type: CreatedAdminToken,
    args: { input: t.arg({ type: CreateAdminTokenInput, required: true }) },
    resolve: (_root, { input }, ctx) =>
      issueToken(viewerOf(ctx), {
        ...input,
        organizationId: input.organizationId ? String(input.organizationId) : null,
        projectId: input.projectId ? String(input.projectId) : null,
      }),
  }),
}));
