import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canRead, tenancyWhere, isPlatform } from "../auth/index.ts";
import { createProject, setProjectBudget } from "../budgets/index.ts";
import { notFound } from "../errors.ts";
import { BalanceBucket } from "../generated/prisma/enums.ts";
import { viewerOf } from "./viewer.ts";
import { ProjectConnection, ProjectOrder } from "../schema/types/project.ts";

function projectWhere(ctx: Parameters<typeof viewerOf>[0]) {
  const viewer = viewerOf(ctx);
  const scope = tenancyWhere(viewer);
  // Project rows have no projectId column: a project viewer sees its own project by id.
  return isPlatform(viewer) ? {} : viewer.role === "PROJECT_VIEWER" ? { id: viewer.projectId ?? "" } : { organizationId: scope.organizationId };
}

builder.queryFields((t) => ({
  projects: t.prismaConnection(
    {
      type: "Project",
      cursor: "id",
      args: { orderBy: t.arg({ type: ProjectOrder.Input, required: false, description: ProjectOrder.description }) },
      resolve: (query, _root, args, ctx) => db.project.findMany({ ...query, where: projectWhere(ctx), orderBy: ProjectOrder.orderBy(args.orderBy) }),
      totalCount: (_c, _a, ctx) => db.project.count({ where: projectWhere(ctx) }),
    },
    ProjectConnection,
  ),
  project: t.prismaField({
    type: "Project",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (query, _root, { id }, ctx) => {
      const project = await db.project.findUnique({ ...query, where: { id: String(id) } });
      if (!project || !canRead(viewerOf(ctx), project.organizationId, project.id)) throw notFound("project", String(id));
      return project;
    },
  }),
}));

const CreateProjectInput = builder.inputType("CreateProjectInput", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Default: the token's organization (or the default one)." }),
    name: t.string({ required: true }),
    dailyCap: t.field({ type: "Decimal", required: false }),
    monthlyCap: t.field({ type: "Decimal", required: false }),
    bucket: t.field({ type: BalanceBucket, required: false, description: "Bucket the caps count (default CREDIT)." }),
  }),
});

const SetProjectBudgetInput = builder.inputType("SetProjectBudgetInput", {
  description: "Omitted caps stay; an explicit null removes a cap.",
  fields: (t) => ({
    projectId: t.id({ required: true }),
    dailyCap: t.field({ type: "Decimal", required: false }),
    monthlyCap: t.field({ type: "Decimal", required: false }),
    bucket: t.field({ type: BalanceBucket, required: false, description: "Bucket the caps count (default CREDIT)." }),
  }),
});

builder.mutationFields((t) => ({
  createProject: t.prismaField({
    type: "Project",
    args: { input: t.arg({ type: CreateProjectInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const project = await createProject(viewerOf(ctx), { ...input, organizationId: input.organizationId ? String(input.organizationId) : null });
      return db.project.findUniqueOrThrow({ ...query, where: { id: project.id } });
    },
  }),
  setProjectBudget: t.prismaField({
    type: "Project",
    args: { input: t.arg({ type: SetProjectBudgetInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const project = await setProjectBudget(viewerOf(ctx), { ...input, projectId: String(input.projectId) });
      return db.project.findUniqueOrThrow({ ...query, where: { id: project.id } });
    },
  }),
}));
