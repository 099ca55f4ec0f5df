-- Admin token lifecycle: expiry, last use, and which tokens came from start-up (TOKENGATE_ADMIN_TOKEN or generated).
ALTER TABLE "AdminToken" ADD COLUMN "expiresAt" TIMESTAMP(3);
ALTER TABLE "AdminToken" ADD COLUMN "lastUsedAt" TIMESTAMP(3);
ALTER TABLE "AdminToken" ADD COLUMN "bootstrap" BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE "AdminToken" ADD COLUMN "createdById" TEXT;
UPDATE "AdminToken" SET "bootstrap" = true WHERE "name" IN ('TOKENGATE_ADMIN_TOKEN', 'bootstrap') AND "role" = 'PLATFORM_ADMIN';
CREATE INDEX "AdminToken_organizationId_createdAt_idx" ON "AdminToken"("organizationId", "createdAt");
