// Admin tokens and the viewer they authenticate. Tenancy rules live here so resolvers stay thin.
import { db } from "../db/index.ts";
import { DomainError, forbidden } from "../errors.ts";
import { displayParts, generateSecret, sha256 } from "../secrets.ts";
import type { AdminRole } from "../generated/prisma/enums.ts";
import { ensureDefaultOrganization } from "../orgs/index.ts";

export const ADMIN_TOKEN_PREFIX = "tgadm_";

export interface Viewer {
  tokenId: string;
  role: AdminRole;
  organizationId: string | null;
  projectId: string | null;
  label: string;
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

export function assertCanWrite(v: Viewer, organizationId: string): void {
  if (!canWrite(v, organizationId)) throw forbidden();
}

/** Prisma `where` fragment restricting org-owned, project-scoped rows to what the viewer may read. */
export function tenancyWhere(v: Viewer): { organizationId?: string; projectId?: string } {
  if (isPlatform(v)) return {};
  if (v.role === "PROJECT_VIEWER") return { organizationId: v.organizationId ?? "", projectId: v.projectId ?? "" };
  return { organizationId: v.organizationId ?? "" };
}

/** The organization an org-level argument refers to: the given one (if allowed) or the viewer's / the default. */
export async function resolveOrganizationId(v: Viewer, requested?: string | null): Promise<string> {
  if (requested) {
    if (!canReadOrganization(v, requested) && !(v.role === "PROJECT_VIEWER" && v.organizationId === requested)) {
      throw forbidden("this token cannot act on that organization");
    }
    return requested;
  }
  if (v.organizationId) return v.organizationId;
  return (await ensureDefaultOrganization()).id;
}

export function parseBearer(header: string | null | undefined): string | null {
  if (!header) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1]! : null;
}

export async function authenticateAdmin(authorization: string | null | undefined): Promise<Viewer | null> {
  const secret = parseBearer(authorization);
  if (!secret) return null;
  const token = await db.adminToken.findUnique({ where: { tokenHash: sha256(secret) } });
  if (!token || token.revokedAt) return null;
  return {
    tokenId: token.id,
    role: token.role,
    organizationId: token.organizationId,
    projectId: token.projectId,
    label: `${token.name} (${token.prefix}…${token.last4})`,
  };
}

export interface CreatedAdminToken {
  id: string;
  secret: string;
}

export async function createAdminToken(input: {
  name: string;
  role: AdminRole;
  organizationId?: string | null;
  projectId?: string | null;
  secret?: string;
}): Promise<CreatedAdminToken> {
  if (input.role !== "PLATFORM_ADMIN" && !input.organizationId) {
    throw new DomainError("BAD_USER_INPUT", "organizationId: required for organization and project tokens", "organizationId");
  }
  if (input.role === "PROJECT_VIEWER" && !input.projectId) {
    throw new DomainError("BAD_USER_INPUT", "projectId: required for a project viewer token", "projectId");
  }
  const secret = input.secret ?? generateSecret(ADMIN_TOKEN_PREFIX);
  const { prefix, last4 } = displayParts(secret, ADMIN_TOKEN_PREFIX.length + 4);
  const token = await db.adminToken.create({
    data: {
      name: input.name,
      role: input.role,
      organizationId: input.role === "PLATFORM_ADMIN" ? null : input.organizationId,
      projectId: input.role === "PROJECT_VIEWER" ? input.projectId : null,
      tokenHash: sha256(secret),
      prefix,
      last4,
    },
  });
  return { id: token.id, secret };
}

/**
 * Start-up: make sure the default organization exists and a platform admin can log in.
 * Returns a generated secret when one had to be made (the caller prints it once).
 */
export async function bootstrapAdmin(configuredToken: string | undefined): Promise<{ generatedSecret: string | null }> {
  await ensureDefaultOrganization();
  if (configuredToken) {
    const existing = await db.adminToken.findUnique({ where: { tokenHash: sha256(configuredToken) } });
    if (!existing) await createAdminToken({ name: "TOKENGATE_ADMIN_TOKEN", role: "PLATFORM_ADMIN", secret: configuredToken });
    return { generatedSecret: null };
  }
  const anyPlatform = await db.adminToken.findFirst({ where: { role: "PLATFORM_ADMIN", revokedAt: null } });
  if (anyPlatform) return { generatedSecret: null };
  const created = await createAdminToken({ name: "bootstrap", role: "PLATFORM_ADMIN" });
  return { generatedSecret: created.secret };
}
