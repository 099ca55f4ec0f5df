// Caps: one row per scope, bucket and window kind (BudgetCap). No row in any bucket = no cap; a row
// in another bucket only = capped at zero (see effectiveCap).
import { db } from "../db/index.ts";
import type { Prisma, Project } from "../generated/prisma/client.ts";
import type { BalanceBucket, CapScope } from "../generated/prisma/enums.ts";
import { assertCanWrite, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { conflict, notFound, requiredText } from "../errors.ts";
import { parseMoney } from "../money/amounts.ts";
import { scopeSpend, type ScopeSpend, revokeLeases } from "../money/index.ts";
import type { ZoneState } from "../money/windows.ts";

type Tx = Prisma.TransactionClient;

/** A cap change from an input: undefined leaves it, null removes it, a string sets it. */
export type CapInput = string | null | undefined;

export function parseCapInput(value: CapInput, field: string): bigint | null | undefined {
  if (value === undefined) return undefined;
  if (value === null) return null;
  return parseMoney(value, field);
}

export async function setCap(tx: Tx, target: { organizationId: string; scope: CapScope; scopeId: string; bucket: BalanceBucket }, amount: bigint | null | undefined): Promise<void> {
  if (amount === undefined) return;
  // Before the cap is written: a grant racing this change commits first (and is revoked here) or
  // waits for this transaction and reads the new cap.
  await revokeLeases(tx, target.scope, target.scopeId, target.organizationId);
  const where = { scope_scopeId_bucket: { scope: target.scope, scopeId: target.scopeId, bucket: target.bucket } };
  if (amount === null) {
    await tx.budgetCap.deleteMany({ where: { scope: target.scope, scopeId: target.scopeId, bucket: target.bucket } });
  } else {
    await tx.budgetCap.upsert({
      where,
      create: { ...target, amount },
      update: { amount, updatedAt: new Date() },
    });
  }
}

export interface CapView {
  scope: CapScope;
  bucket: BalanceBucket;
  amount: bigint;
}

export async function capsOf(tx: Tx | typeof db, scopeId: string): Promise<CapView[]> {
  const caps = await tx.budgetCap.findMany({ where: { scopeId }, orderBy: [{ scope: "asc" }, { bucket: "asc" }] });
  return caps.map((c) => ({ scope: c.scope, bucket: c.bucket, amount: c.amount }));
}

/**
 * The cap that is enforced for a scope in a bucket (the rule of tg_effective_cap in the reservation
 * SQL): its own cap if set; ZERO if the scope has a cap in another bucket only (a cap is never
 * escapable by switching bucket); null (uncapped) if it has no cap at all.
 */
export function effectiveCap(caps: ReadonlyArray<Pick<CapView, "scope" | "bucket" | "amount">>, scope: CapScope, bucket: BalanceBucket): bigint | null {
  let other = false;
  for (const c of caps) {
    if (c.scope !== scope) continue;
    if (c.bucket === bucket) return c.amount;
    other = true;
  }
  return other ? 0n : null;
}

export async function capAmount(scope: CapScope, scopeId: string, bucket: BalanceBucket): Promise<bigint | null> {
  const caps = await db.budgetCap.findMany({ where: { scope, scopeId } });
  return effectiveCap(caps, scope, bucket);
}

export interface BudgetStatus extends ScopeSpend {
  scope: CapScope;
  bucket: BalanceBucket;
  cap: bigint | null;
  /** cap − spent − held, never below zero; null when uncapped. */
  remaining: bigint | null;
}

/** A cap's current window: `zone` is its organization's (RUN_TOTAL and per-request caps have no window). */
export async function budgetStatus(scope: CapScope, scopeId: string, bucket: BalanceBucket, now = new Date(), zone?: ZoneState): Promise<BudgetStatus> {
  const [spend, cap] = await Promise.all([scopeSpend(scope, scopeId, bucket, now, zone), capAmount(scope, scopeId, bucket)]);
  const remaining = cap === null ? null : cap - spend.spent - spend.held > 0n ? cap - spend.spent - spend.held : 0n;
  return { scope, bucket, cap, remaining, ...spend };
}

export interface ProjectBudgetInput {
  dailyCap?: CapInput;
  monthlyCap?: CapInput;
  /** The bucket these caps count (default CREDIT): buckets have their own currencies. */
  bucket?: BalanceBucket | null;
}

export async function createProject(viewer: Viewer, input: { organizationId?: string | null; name: string } & ProjectBudgetInput): Promise<Project> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId);
  assertCanWrite(viewer, organizationId);
  const name = requiredText(input.name, "name");
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const monthlyCap = parseCapInput(input.monthlyCap, "monthlyCap");
  const bucket = input.bucket ?? "CREDIT";
  if (await db.project.findUnique({ where: { organizationId_name: { organizationId, name } } })) {
    throw conflict(`a project named ${JSON.stringify(name)} already exists`);
  }
  return db.$transaction(async (tx) => {
    const project = await tx.project.create({ data: { organizationId, name } });
    await setCap(tx, { organizationId, scope: "PROJECT_DAILY", scopeId: project.id, bucket }, dailyCap);
    await setCap(tx, { organizationId, scope: "PROJECT_MONTHLY", scopeId: project.id, bucket }, monthlyCap);
    await writeAudit(tx, viewer, {
      organizationId,
      action: "createProject",
      targetType: "Project",
      targetId: project.id,
      after: { ...project, caps: await capsOf(tx, project.id) },
    });
    return project;
  });
}

export async function setProjectBudget(viewer: Viewer, input: { projectId: string } & ProjectBudgetInput): Promise<Project> {
  const project = await db.project.findUnique({ where: { id: input.projectId } });
  if (!project) throw notFound("project", input.projectId);
  assertCanWrite(viewer, project.organizationId, { what: "project", id: project.id, projectId: project.id });
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const monthlyCap = parseCapInput(input.monthlyCap, "monthlyCap");
  const bucket = input.bucket ?? "CREDIT";
  return db.$transaction(async (tx) => {
    const before = await capsOf(tx, project.id);
    await setCap(tx, { organizationId: project.organizationId, scope: "PROJECT_DAILY", scopeId: project.id, bucket }, dailyCap);
    await setCap(tx, { organizationId: project.organizationId, scope: "PROJECT_MONTHLY", scopeId: project.id, bucket }, monthlyCap);
    await writeAudit(tx, viewer, {
      organizationId: project.organizationId,
      action: "setProjectBudget",
      targetType: "Project",
      targetId: project.id,
      before: { caps: before },
      after: { caps: await capsOf(tx, project.id) },
    });
    return project;
  });
}
