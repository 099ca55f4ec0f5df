// Admin tokens and the viewer they authenticate. Tenancy rules live here so resolvers stay thin.
import { db } from "../db/index.ts";
import { DomainError, forbidden, notFound } from "../errors.ts";
import { assertCanWrite, canReadOrganization, isPlatform, type Viewer } from "./viewer.ts";
import { badInput, requiredText } from "../errors.ts";
import { displayParts, generateSecret, sha256 } from "../secrets.ts";
import type { AdminToken, Prisma } from "../generated/prisma/client.ts";
import type { AdminRole } from "../generated/prisma/enums.ts";
import { ensureDefaultOrganization } from "../orgs/index.ts";
import { writeAudit } from "../audit/index.ts";
import { services } from "../installed.ts";

export const ADMIN_TOKEN_PREFIX = "tgadm_";

export {
  assertCanWrite,
  canRead,
  canReadOrganization,
  canWrite,
  isPlatform,
  tenancyWhere,
  type Viewer,
  type WriteTarget,
} from "./viewer.ts";

/** The organization an org-level argument refers to: the given one (if allowed) or the viewer's / the default. */
export async function resolveOrganizationId(v: Viewer, requested?: string | null): Promise<string> {
  if (requested) {
    // Another organization's id answers like an unknown one: its existence is not this token's business.
    if (!canReadOrganization(v, requested) && !(v.role === "PROJECT_VIEWER" && v.organizationId === requested)) {
      throw notFound("organization", requested);
    }
    // A platform token may name any organization, so it may also name one that does not exist.
    if (isPlatform(v) && !(await db.organization.findUnique({ where: { id: requested }, select: { id: true } }))) {
      throw notFound("organization", requested);
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

/** Tokens revoked since start (here or, through the adminTokenRevoked event, on another instance). */
const revokedTokenIds = new Set<string>();
export function noteRevokedToken(tokenId: string): void {
  if (revokedTokenIds.size > 100_000) revokedTokenIds.clear();
  revokedTokenIds.add(tokenId);
}

/** For long-lived operations (subscriptions) authenticated earlier: still unrevoked and unexpired? */
export function viewerStillValid(v: Viewer, now = Date.now()): boolean {
  return !revokedTokenIds.has(v.tokenId) && !(v.expiresAt && v.expiresAt.getTime() <= now);
}

/** lastUsedAt is written at most this often per token and instance: not a database write per request. */
const LAST_USED_RESOLUTION_MS = 60_000;
const lastUsedWritten = new Map<string, number>();

/**
 * Awaited, not fire-and-forget: a write still in flight when the process closes its pool would hold
 * its connection forever (pool.end waits for it); once a minute per token the wait is negligible.
 */
async function noteUse(tokenId: string, now: number): Promise<void> {
  const previous = lastUsedWritten.get(tokenId);
  if (previous !== undefined && now - previous < LAST_USED_RESOLUTION_MS) return;
  if (lastUsedWritten.size > 10_000) lastUsedWritten.clear();
  lastUsedWritten.set(tokenId, now);
  const at = new Date(now);
  await db.adminToken
    .updateMany({ where: { id: tokenId, OR: [{ lastUsedAt: null }, { lastUsedAt: { lt: new Date(now - LAST_USED_RESOLUTION_MS) } }] }, data: { lastUsedAt: at } })
    .catch(() => lastUsedWritten.delete(tokenId));
}

/**
 * The viewer an `Authorization: Bearer` value authenticates, or null. Read from the database on every
 * call (one indexed lookup, no cache), so a revoked or expired token is refused at once on every instance.
 */
export async function authenticateAdmin(authorization: string | null | undefined): Promise<Viewer | null> {
  const secret = parseBearer(authorization);
  if (!secret || secret.length > 200) return null;
  const token = await db.adminToken.findUnique({ where: { tokenHash: sha256(secret) } });
  const now = Date.now();
  if (!token || token.revokedAt || (token.expiresAt && token.expiresAt.getTime() <= now)) return null;
  await noteUse(token.id, now);
  return {
    tokenId: token.id,
    role: token.role,
    organizationId: token.organizationId,
    projectId: token.projectId,
    label: `${token.name} (${token.prefix}…${token.last4})`,
    expiresAt: token.expiresAt,
  };
}

export interface CreatedAdminToken {
  id: string;
  secret: string;
  token: AdminToken;
}

export async function createAdminToken(
  input: {
    name: string;
    role: AdminRole;
    organizationId?: string | null;
    projectId?: string | null;
    expiresAt?: Date | null;
    secret?: string;
    bootstrap?: boolean;
    createdById?: string | null;
  },
  client: Pick<Prisma.TransactionClient, "adminToken"> = db,
): Promise<CreatedAdminToken> {
  if (input.role !== "PLATFORM_ADMIN" && !input.organizationId) {
    throw new DomainError("BAD_USER_INPUT", "organizationId: required for organization and project tokens", "organizationId");
  }
  if (input.role === "PROJECT_VIEWER" && !input.projectId) {
    throw new DomainError("BAD_USER_INPUT", "projectId: required for a project viewer token", "projectId");
  }
  const secret = input.secret ?? generateSecret(ADMIN_TOKEN_PREFIX);
  const { prefix, last4 } = displayParts(secret, ADMIN_TOKEN_PREFIX.length + 4);
  const token = await client.adminToken.create({
    data: {
      name: input.name,
      role: input.role,
      organizationId: input.role === "PLATFORM_ADMIN" ? null : input.organizationId,
      projectId: input.role === "PROJECT_VIEWER" ? input.projectId : null,
      tokenHash: sha256(secret),
      prefix,
      last4,
      expiresAt: input.expiresAt ?? null,
      bootstrap: input.bootstrap ?? false,
      createdById: input.createdById ?? null,
    },
  });
  return { id: token.id, secret, token };
}

const ROLES: readonly AdminRole[] = ["PLATFORM_ADMIN", "ORG_ADMIN", "ORG_VIEWER", "PROJECT_VIEWER"];
const canManageTokens = (v: Viewer) => v.role === "PLATFORM_ADMIN" || v.role === "ORG_ADMIN";

/** The admin tokens a viewer may see: platform admins all, organization admins their organization's, viewers none. */
export function adminTokenWhere(v: Viewer, filter: { organizationId?: string | null; includeRevoked?: boolean | null } = {}): Prisma.AdminTokenWhereInput {
  if (!canManageTokens(v)) throw forbidden("only admins can list admin tokens");
  const organizationId = filter.organizationId ?? null;
  if (organizationId && !canReadOrganization(v, organizationId)) throw notFound("organization", organizationId);
  return {
    ...(isPlatform(v) ? (organizationId ? { organizationId } : {}) : { organizationId: v.organizationId ?? "" }),
    ...(filter.includeRevoked ? {} : { revokedAt: null }),
  };
}

/**
 * createAdminToken as the API offers it: admins only; an organization admin mints tokens for its own
 * organization and never a PLATFORM_ADMIN one; the secret is returned once and stored hashed.
 */
export async function issueAdminToken(
  viewer: Viewer,
  input: { name: string; role: AdminRole; organizationId?: string | null; projectId?: string | null; expiresAt?: Date | null },
): Promise<CreatedAdminToken> {
  if (!canManageTokens(viewer)) throw forbidden("only admins can create admin tokens");
  if (!ROLES.includes(input.role)) throw badInput("role", "unknown role");
  if (input.role === "PLATFORM_ADMIN" && !isPlatform(viewer)) throw forbidden("only platform admins can create PLATFORM_ADMIN tokens");
  const name = requiredText(input.name, "name", 100);
  if (input.expiresAt && input.expiresAt.getTime() <= Date.now()) throw badInput("expiresAt", "must be in the future");
  // As every organizationId argument (API.md): the given one, else the viewer's, else the default
  // organization (a platform token has none of its own). A project token takes its project's.
  let organizationId = input.role === "PLATFORM_ADMIN" || input.role === "PROJECT_VIEWER" ? null : await resolveOrganizationId(viewer, input.organizationId ?? null);
  let projectId: string | null = null;
  if (input.role === "PROJECT_VIEWER") {
    if (!input.projectId) throw badInput("projectId", "required for a PROJECT_VIEWER token");
    const project = await db.project.findUnique({ where: { id: input.projectId } });
    if (!project || !canReadOrganization(viewer, project.organizationId)) throw notFound("project", input.projectId);
    if (input.organizationId && input.organizationId !== project.organizationId) throw badInput("projectId", "belongs to another organization");
    organizationId = project.organizationId;
    projectId = project.id;
  } else if (input.projectId) {
    throw badInput("projectId", "only PROJECT_VIEWER tokens are scoped to a project");
  }
  if (input.role !== "PLATFORM_ADMIN") {
    if (!organizationId) throw badInput("organizationId", "required for organization and project tokens");
    if (!(await db.organization.findUnique({ where: { id: organizationId } }))) throw notFound("organization", organizationId);
    assertCanWrite(viewer, organizationId);
  }
  return db.$transaction(async (tx) => {
    const created = await createAdminToken({ name, role: input.role, organizationId, projectId, expiresAt: input.expiresAt ?? null, createdById: viewer.tokenId }, tx);
    await writeAudit(tx, viewer, {
      organizationId,
      action: "createAdminToken",
      targetType: "AdminToken",
      targetId: created.id,
      after: redactToken(created.token),
    });
    return created;
  });
}

const redactToken = ({ tokenHash: _hash, ...rest }: AdminToken) => rest;

/** Revokes an admin token at once on every instance; revoking a revoked token changes nothing. */
export async function revokeAdminToken(viewer: Viewer, id: string): Promise<AdminToken> {
  if (!canManageTokens(viewer)) throw forbidden("only admins can revoke admin tokens");
  const token = await db.adminToken.findUnique({ where: { id } });
  // Platform tokens belong to no organization: to an organization admin they do not exist.
  if (!token || (!isPlatform(viewer) && (token.organizationId === null || token.organizationId !== viewer.organizationId))) throw notFound("admin token", id);
  if (token.revokedAt) return token;
  const revoked = await db.$transaction(async (tx) => {
    const next = await tx.adminToken.update({ where: { id }, data: { revokedAt: new Date() } });
    await writeAudit(tx, viewer, {
      organizationId: token.organizationId,
      action: "revokeAdminToken",
      targetType: "AdminToken",
      targetId: id,
      before: { revokedAt: null },
      after: { revokedAt: next.revokedAt },
    });
    return next;
  });
  noteRevokedToken(id);
  services().events.publish("adminTokenRevoked", { tokenId: id });
  return revoked;
}

/**
 * Start-up: make sure the default organization exists and a platform admin can log in.
 * TOKENGATE_ADMIN_TOKEN is the bootstrap token: when it changes, every earlier bootstrap token
 * (the previous value, or the one generated at first start) is revoked.
 * Returns a generated secret when one had to be made (the caller prints it once).
 */
export async function bootstrapAdmin(configuredToken: string | undefined): Promise<{ generatedSecret: string | null; revoked: number }> {
  await ensureDefaultOrganization();
  if (configuredToken) {
    const tokenHash = sha256(configuredToken);
    const existing = await db.adminToken.findUnique({ where: { tokenHash } });
    if (!existing) {
      // Instances starting together race to create it: the loser finds the winner's row.
      await createAdminToken({ name: "TOKENGATE_ADMIN_TOKEN", role: "PLATFORM_ADMIN", secret: configuredToken, bootstrap: true }).catch(async (error: unknown) => {
        if (!(await db.adminToken.findUnique({ where: { tokenHash } }))) throw error;
      });
    } else if (existing.revokedAt) console.warn("TOKENGATE_ADMIN_TOKEN was revoked through the API and stays revoked: set a new value.");
    const { count } = await db.adminToken.updateMany({
      where: { bootstrap: true, revokedAt: null, tokenHash: { not: tokenHash } },
      data: { revokedAt: new Date() },
    });
    return { generatedSecret: null, revoked: count };
  }
  const anyPlatform = await db.adminToken.findFirst({ where: { role: "PLATFORM_ADMIN", revokedAt: null } });
  if (anyPlatform) return { generatedSecret: null, revoked: 0 };
  const created = await createAdminToken({ name: "bootstrap", role: "PLATFORM_ADMIN", bootstrap: true });
  return { generatedSecret: created.secret, revoked: 0 };
}
