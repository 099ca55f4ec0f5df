// Every admin mutation leaves an AuditEntry: who, what, on which target, before and after.
import type { Prisma } from "../generated/prisma/client.ts";
import type { Viewer } from "../auth/viewer.ts";

type AuditClient = Pick<Prisma.TransactionClient, "auditEntry">;

/** Every action an audit entry records: the name of the mutation that wrote it. */
export const AUDIT_ACTIONS = [
  "createOrganization",
  "setOrganizationTimeZone",
  "createAdminToken",
  "revokeAdminToken",
  "createProject",
  "setProjectBudget",
  "createApiKey",
  "setKeyCaps",
  "pauseKey",
  "resumeKey",
  "revokeKey",
  "rotateKey",
  "upsertRoute",
  "setRouteLimits",
  "setChannelLimits",
  "setPrice",
  "topUp",
  "adjustBalance",
  "setLowBalanceThreshold",
  "setAlertWebhook",
  "startRun",
  "cancelRun",
  "pauseRun",
  "resumeRun",
  "finishRun",
  "setRunCap",
  "quoteRequest",
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/** The kinds of object an audit entry's targetId names (stored names: a wallet bucket is WalletBucket). */
export const AUDIT_TARGET_TYPES = ["Organization", "AdminToken", "Project", "ApiKey", "Route", "Channel", "LedgerEntry", "WalletBucket", "AlertWebhook", "Run", "Quote"] as const;
export type AuditTargetType = (typeof AUDIT_TARGET_TYPES)[number];

/** JSON-safe snapshot: BigInt money becomes a decimal-free integer string of micros, dates ISO strings. */
export function snapshot(value: unknown): Prisma.InputJsonValue | undefined {
  if (value === undefined || value === null) return undefined;
  return JSON.parse(JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? v.toString() : v))) as Prisma.InputJsonValue;
}

export async function writeAudit(
  client: AuditClient,
  viewer: Viewer,
  entry: { organizationId: string | null; action: AuditAction; targetType: AuditTargetType; targetId: string; before?: unknown; after?: unknown },
): Promise<void> {
  await client.auditEntry.create({
    data: {
      organizationId: entry.organizationId,
      actorTokenId: viewer.tokenId,
      actor: viewer.label,
      action: entry.action,
      targetType: entry.targetType,
      targetId: entry.targetId,
      before: snapshot(entry.before),
      after: snapshot(entry.after),
    },
  });
}
