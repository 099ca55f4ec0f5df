// Organizations and their wallets: every organization has one wallet with both balance buckets.
import { db } from "../db/index.ts";
import { BUCKET_CURRENCY } from "../money/amounts.ts";
import type { Organization } from "../generated/prisma/client.ts";

export const DEFAULT_ORGANIZATION_NAME = "default";

export async function ensureOrganization(name: string): Promise<Organization> {
  const existing = await db.organization.findUnique({ where: { name } });
  if (existing) return existing;
  return db
    .$transaction(async (tx) => {
      const org = await tx.organization.create({ data: { name } });
      const wallet = await tx.wallet.create({ data: { organizationId: org.id } });
      await tx.walletBucket.createMany({
        data: (["CREDIT", "ROUTED"] as const).map((bucket) => ({
          organizationId: org.id,
          walletId: wallet.id,
          bucket,
          currency: BUCKET_CURRENCY[bucket],
        })),
      });
      return org;
    })
    .catch(async (error: unknown) => {
      // Another instance created it first.
      const raced = await db.organization.findUnique({ where: { name } });
      if (raced) return raced;
      throw error;
    });
}

export const ensureDefaultOrganization = () => ensureOrganization(DEFAULT_ORGANIZATION_NAME);
