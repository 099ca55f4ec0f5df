// API keys: creation (secret shown once, stored as SHA-256), caps, status, rotation, and the
// hashed lookup the gateway runs on every request (cached ≤ KEY_CACHE_TTL_MS and cleared by key events).
import { db } from "../db/index.ts";
import type { ApiKey, Prisma } from "../generated/prisma/client.ts";
import type { BalanceBucket, FailedChargePolicy, KeyStatus } from "../generated/prisma/enums.ts";
import { assertCanWrite, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { capsOf, parseCapInput, setCap, type CapInput } from "../budgets/index.ts";
import { badInput, conflict, notFound, requiredText } from "../errors.ts";
import { displayParts, generateSecret, sha256 } from "../secrets.ts";
import { services } from "../installed.ts";
import type { KeyLookup } from "./cache.ts";

export const API_KEY_PREFIX = "tg_";
const DISPLAY_PREFIX_LENGTH = API_KEY_PREFIX.length + 6;
export const MAX_RETRY_CEILING = 10;
const MAX_GRACE_SECONDS = 30 * 24 * 3600;
export const DEFAULT_ROTATION_GRACE_SECONDS = 3600;

export interface KeyCapsInput {
  dailyCap?: CapInput;
  perRequestMaxCharge?: CapInput;
  /** The bucket dailyCap / perRequestMaxCharge apply to (default: the key's first allowed bucket). */
  capBucket?: BalanceBucket | null;
  retryCeiling?: number | null;
  failedChargePolicy?: FailedChargePolicy | null;
  allowedModels?: string[] | null;
  allowedBuckets?: BalanceBucket[] | null;
  lowerCostRoutes?: boolean | null;
  backupRoutes?: boolean | null;
  expiresAt?: Date | null;
  /** Rate limits: omitted = unchanged (none on creation), null = none. */
  rpmLimit?: number | null;
  tpmLimit?: number | null;
  maxConcurrent?: number | null;
}

const RATE_LIMIT_FIELDS = ["rpmLimit", "tpmLimit", "maxConcurrent"] as const;
const MAX_RATE_LIMIT = 1_000_000_000;

/** The rate limits an input sets (absent fields left out): positive integers, or null for none. */
function rateLimitsOf(input: KeyCapsInput): Partial<Record<(typeof RATE_LIMIT_FIELDS)[number], number | null>> {
  const out: Partial<Record<(typeof RATE_LIMIT_FIELDS)[number], number | null>> = {};
  for (const field of RATE_LIMIT_FIELDS) {
    const value = input[field];
    if (value === undefined) continue;
    if (value !== null && (!Number.isInteger(value) || value < 1 || value > MAX_RATE_LIMIT)) {
      throw badInput(field, `must be an integer from 1 to ${MAX_RATE_LIMIT}, or null for no limit`);
    }
    out[field] = value;
  }
  return out;
}

/** The bucket a key's single-valued money fields (dailyCap, spendToday…) are shown in. */
export const primaryBucket = (key: Pick<ApiKey, "allowedBuckets">): BalanceBucket => key.allowedBuckets[0] ?? "CREDIT";

function validateModels(models: string[]): string[] {
  const cleaned = [...new Set(models.map((m) => requiredText(m, "allowedModels")))];
  return cleaned;
}

function validateBuckets(buckets: BalanceBucket[]): BalanceBucket[] {
  const unique = [...new Set(buckets)];
  if (unique.length === 0) throw badInput("allowedBuckets", "must allow at least one bucket");
  return unique;
}

function validateRetryCeiling(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > MAX_RETRY_CEILING) {
    throw badInput("retryCeiling", `must be an integer from 0 to ${MAX_RETRY_CEILING}`);
  }
  return value;
}

async function applyCaps(tx: Prisma.TransactionClient, key: ApiKey, dailyCap: bigint | null | undefined, perRequest: bigint | null | undefined, bucket: BalanceBucket) {
  await setCap(tx, { organizationId: key.organizationId, scope: "KEY_DAILY", scopeId: key.id, bucket }, dailyCap);
  await setCap(tx, { organizationId: key.organizationId, scope: "KEY_PER_REQUEST", scopeId: key.id, bucket }, perRequest);
}

export async function createApiKey(viewer: Viewer, input: { projectId: string; name: string } & KeyCapsInput): Promise<{ apiKey: ApiKey; secret: string }> {
  const project = await db.project.findUnique({ where: { id: input.projectId } });
  if (!project) throw notFound("project", input.projectId);
  assertCanWrite(viewer, project.organizationId, { what: "project", id: project.id, projectId: project.id });
  const name = requiredText(input.name, "name");
  const allowedBuckets = validateBuckets(input.allowedBuckets ?? ["CREDIT", "ROUTED"]);
  const allowedModels = validateModels(input.allowedModels ?? []);
  const retryCeiling = validateRetryCeiling(input.retryCeiling ?? 2);
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const perRequest = parseCapInput(input.perRequestMaxCharge, "perRequestMaxCharge");
  const capBucket = input.capBucket ?? allowedBuckets[0]!;
  if (input.expiresAt && input.expiresAt.getTime() <= Date.now()) throw badInput("expiresAt", "must be in the future");
  const rateLimits = rateLimitsOf(input);

  const secret = generateSecret(API_KEY_PREFIX);
  const { prefix, last4 } = displayParts(secret, DISPLAY_PREFIX_LENGTH);
  const apiKey = await db.$transaction(async (tx) => {
    const key = await tx.apiKey.create({
      data: {
        organizationId: project.organizationId,
        projectId: project.id,
        name,
        prefix,
        last4,
        allowedModels,
        allowedBuckets,
        lowerCostRoutes: input.lowerCostRoutes ?? true,
        backupRoutes: input.backupRoutes ?? true,
        retryCeiling,
        failedChargePolicy: input.failedChargePolicy ?? "NEVER",
        expiresAt: input.expiresAt ?? null,
        ...rateLimits,
        secrets: { create: { secretHash: sha256(secret), prefix, last4 } },
      },
    });
    await applyCaps(tx, key, dailyCap, perRequest, capBucket);
    await writeAudit(tx, viewer, {
      organizationId: key.organizationId,
      action: "createApiKey",
      targetType: "ApiKey",
      targetId: key.id,
      after: { ...key, caps: await capsOf(tx, key.id) },
    });
    return key;
  });
  return { apiKey, secret };
}

async function loadWritableKey(viewer: Viewer, id: string): Promise<ApiKey> {
  const key = await db.apiKey.findUnique({ where: { id } });
  if (!key) throw notFound("API key", id);
  assertCanWrite(viewer, key.organizationId, { what: "API key", id, projectId: key.projectId });
  return key;
}

export async function setKeyCaps(viewer: Viewer, input: { keyId: string } & KeyCapsInput): Promise<ApiKey> {
  const key = await loadWritableKey(viewer, input.keyId);
  if (key.status === "REVOKED") throw conflict("a revoked key cannot be changed");
  const data: Prisma.ApiKeyUpdateInput = { updatedAt: new Date() };
  if (input.allowedBuckets != null) data.allowedBuckets = validateBuckets(input.allowedBuckets);
  if (input.allowedModels != null) data.allowedModels = validateModels(input.allowedModels);
  if (input.retryCeiling != null) data.retryCeiling = validateRetryCeiling(input.retryCeiling);
  if (input.failedChargePolicy != null) data.failedChargePolicy = input.failedChargePolicy;
  if (input.lowerCostRoutes != null) data.lowerCostRoutes = input.lowerCostRoutes;
  if (input.backupRoutes != null) data.backupRoutes = input.backupRoutes;
  if (input.expiresAt !== undefined) {
    if (input.expiresAt && input.expiresAt.getTime() <= Date.now()) throw badInput("expiresAt", "must be in the future");
    data.expiresAt = input.expiresAt;
  }
  Object.assign(data, rateLimitsOf(input));
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const perRequest = parseCapInput(input.perRequestMaxCharge, "perRequestMaxCharge");
  const capBucket = input.capBucket ?? primaryBucket({ allowedBuckets: (data.allowedBuckets as BalanceBucket[] | undefined) ?? key.allowedBuckets });
  const updated = await db.$transaction(async (tx) => {
    const before = { ...key, caps: await capsOf(tx, key.id) };
    const next = await tx.apiKey.update({ where: { id: key.id }, data });
    await applyCaps(tx, next, dailyCap, perRequest, capBucket);
    await writeAudit(tx, viewer, {
      organizationId: key.organizationId,
      action: "setKeyCaps",
      targetType: "ApiKey",
      targetId: key.id,
      before,
      after: { ...next, caps: await capsOf(tx, key.id) },
    });
    return next;
  });
  announceKeyChange(updated);
  return updated;
}

const TRANSITIONS: Record<"pauseKey" | "resumeKey" | "revokeKey", { from: KeyStatus[]; to: KeyStatus }> = {
  pauseKey: { from: ["ACTIVE", "PAUSED"], to: "PAUSED" },
  resumeKey: { from: ["PAUSED", "ACTIVE"], to: "ACTIVE" },
  revokeKey: { from: ["ACTIVE", "PAUSED", "REVOKED"], to: "REVOKED" },
};

/** pause / resume / revoke. Revocation is final; repeating a transition is a no-op that still answers. */
export async function changeKeyStatus(viewer: Viewer, id: string, action: keyof typeof TRANSITIONS): Promise<ApiKey> {
  const key = await loadWritableKey(viewer, id);
  const { from, to } = TRANSITIONS[action];
  if (!from.includes(key.status)) throw conflict(`cannot ${action.replace("Key", "")} a ${key.status.toLowerCase()} key`);
  if (key.status === to) return key;
  const updated = await db.$transaction(async (tx) => {
    const next = await tx.apiKey.update({ where: { id }, data: { status: to, updatedAt: new Date() } });
    await writeAudit(tx, viewer, {
      organizationId: key.organizationId,
      action,
      targetType: "ApiKey",
      targetId: id,
      before: { status: key.status },
      after: { status: to },
    });
    return next;
  });
  announceKeyChange(updated);
  return updated;
}

/** Issues a new secret; the old ones keep working for graceSeconds, then stop. */
export async function rotateKey(viewer: Viewer, id: string, graceSeconds?: number | null): Promise<{ apiKey: ApiKey; secret: string }> {
  const key = await loadWritableKey(viewer, id);
  if (key.status === "REVOKED") throw conflict("a revoked key cannot be rotated");
  const grace = graceSeconds ?? DEFAULT_ROTATION_GRACE_SECONDS;
  if (!Number.isInteger(grace) || grace < 0 || grace > MAX_GRACE_SECONDS) {
    throw badInput("graceSeconds", `must be an integer from 0 to ${MAX_GRACE_SECONDS}`);
  }
  const secret = generateSecret(API_KEY_PREFIX);
  const { prefix, last4 } = displayParts(secret, DISPLAY_PREFIX_LENGTH);
  const now = new Date();
  const graceEnds = new Date(now.getTime() + grace * 1000);
  const apiKey = await db.$transaction(async (tx) => {
    await tx.apiKeySecret.updateMany({
      where: { keyId: id, OR: [{ expiresAt: null }, { expiresAt: { gt: graceEnds } }] },
      data: { expiresAt: graceEnds },
    });
    await tx.apiKeySecret.create({ data: { keyId: id, secretHash: sha256(secret), prefix, last4 } });
    const next = await tx.apiKey.update({ where: { id }, data: { prefix, last4, updatedAt: now } });
    await writeAudit(tx, viewer, {
      organizationId: key.organizationId,
      action: "rotateKey",
      targetType: "ApiKey",
      targetId: id,
      before: { prefix: key.prefix, last4: key.last4 },
      after: { prefix, last4, previousSecretsExpireAt: graceEnds.toISOString() },
    });
    return next;
  });
  announceKeyChange(apiKey);
  return { apiKey, secret };
}

// ---------------------------------------------------------------------------
// Gateway lookup: the process's KeyCache (src/keys/cache.ts, a service).

export type { KeyContext, KeyLookup } from "./cache.ts";

function announceKeyChange(key: ApiKey): void {
  forgetKey(key.id);
  services().events.publish("keyChanged", { keyId: key.id, status: key.status });
}

export function forgetKey(keyId: string): void {
  services().keys.forget(keyId);
}

/** Whether this secret was a usable key on this instance in the last 10 minutes (the bad-key throttle's question). */
export function recentlyValidKey(secret: string, now = Date.now()): boolean {
  return services().keys.recentlyValid(secret, now);
}

/** `cacheTtlMs`: KEY_CACHE_TTL_MS of the gateway asking, capped at 1 s (pause / revoke must bite within 1 s even without events). */
export function lookupKey(secret: string, now = new Date(), cacheTtlMs = 1_000): Promise<KeyLookup> {
  return services().keys.lookup(secret, now, cacheTtlMs);
}
