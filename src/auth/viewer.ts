// Who an admin token is and what it may read or change: pure rules with no database, so any
// module (audit, budgets, exports) can depend on them without importing token handling.
import { forbidden, notFound } from "../errors.ts";
import type { AdminRole } from "../generated/prisma/enums.ts";

export interface Viewer {
  tokenId: string;
  role: AdminRole;
  organizationId: string | null;
  projectId: string | null;
  label: string;
  /** When the token stops working (null or absent: never). Long-lived sockets close at this instant. */
  expiresAt?: Date | null;
}

export const isPlatform = (v: Viewer) => v.role === "PLATFORM_ADMIN";

export function canReadOrganization(v: Viewer, organizationId: string | null | undefined): boolean {
  if (isPlatform(v)) return true;
  return v.role !== "PROJECT_VIEWER" && organizationId != null && v.organizationId === organizationId;
}

/** Project-scoped rows: project viewers see only their project. */
export function canRead(v: Viewer, organizationId: string | null | undefined, projectId?: string | null): boolean {
  if (isPlatform(v)) return true;
  if (v.role === "PROJECT_VIEWER") return projectId != null && v.projectId === projectId;
  return organizationId != null && v.organizationId === organizationId;
}

export function canWrite(v: Viewer, organizationId: string): boolean {
  return isPlatform(v) || (v.role === "ORG_ADMIN" && v.organizationId === organizationId);
}

/** What a mutation acts on, so a refusal can answer like a query would. */
export interface WriteTarget {
  what: string;
  id: string;
  projectId?: string | null;
}

/**
 * The one tenancy check of every mutation. A row the token cannot even read answers NOT_FOUND,
 * exactly as a query for it does (no token learns that another organization's id exists);
 * a row it can read but not change answers FORBIDDEN.
 */
export function assertCanWrite(v: Viewer, organizationId: string, target?: WriteTarget): void {
  if (canWrite(v, organizationId)) return;
  if (target && !canRead(v, organizationId, target.projectId ?? null)) throw notFound(target.what, target.id);
  if (!target && !canReadOrganization(v, organizationId) && v.organizationId !== organizationId) throw notFound("organization", organizationId);
  throw forbidden();
}

/** Prisma `where` fragment restricting org-owned, project-scoped rows to what the viewer may read. */
export function tenancyWhere(v: Viewer): { organizationId?: string; projectId?: string } {
  if (isPlatform(v)) return {};
  if (v.role === "PROJECT_VIEWER") return { organizationId: v.organizationId ?? "", projectId: v.projectId ?? "" };
  return { organizationId: v.organizationId ?? "" };
}
