// Every admin mutation leaves an AuditEntry: who, what, on which target, before and after.
import type { Prisma } from "../generated/prisma/client.ts";
import type { Viewer } from "../auth/index.ts";

type AuditClient = Pick<Prisma.TransactionClient, "auditEntry">;

/** JSON-safe snapshot: BigInt money becomes a decimal-free integer string of micros, dates ISO strings. */
export function snapshot(value: unknown): Prisma.InputJsonValue | undefined {
  if (value === undefined || value === null) return undefined;
  return JSON.parse(
    JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? v.toString() : v)),
  ) as Prisma.InputJsonValue;
}

export async function writeAudit(
  client: AuditClient,
  viewer: Viewer,
  entry: { organizationId: string | null; action: string; targetType: string; targetId: string; before?: unknown; after?: unknown },
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
