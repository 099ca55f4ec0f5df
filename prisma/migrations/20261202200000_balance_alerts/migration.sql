-- Low-balance alerts (issue 15): a threshold per organization and bucket, and the history of alerts.
CREATE TABLE "BalanceThreshold" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "bucketId" TEXT NOT NULL,
    "threshold" BIGINT NOT NULL,
    "alertedAt" TIMESTAMP(3),
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BalanceThreshold_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "BalanceThreshold_threshold_check" CHECK ("threshold" > 0)
);
CREATE UNIQUE INDEX "BalanceThreshold_bucketId_key" ON "BalanceThreshold"("bucketId");
ALTER TABLE "BalanceThreshold" ADD CONSTRAINT "BalanceThreshold_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
ALTER TABLE "BalanceThreshold" ADD CONSTRAINT "BalanceThreshold_bucketId_fkey" FOREIGN KEY ("bucketId") REFERENCES "WalletBucket"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

CREATE TABLE "BalanceAlert" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "threshold" BIGINT NOT NULL,
    "balance" BIGINT NOT NULL,
    "requestId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BalanceAlert_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "BalanceAlert_organizationId_createdAt_idx" ON "BalanceAlert"("organizationId", "createdAt");
ALTER TABLE "BalanceAlert" ADD CONSTRAINT "BalanceAlert_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;


-- Budget alerts name their project (project viewers see their own in the history, as they do live).
ALTER TABLE "BudgetAlert" ADD COLUMN "projectId" TEXT;
UPDATE "BudgetAlert" SET "projectId" = "scopeId" WHERE scope IN ('PROJECT_DAILY', 'PROJECT_MONTHLY');
UPDATE "BudgetAlert" a SET "projectId" = k."projectId" FROM "ApiKey" k WHERE a.scope IN ('KEY_DAILY', 'KEY_PER_REQUEST') AND k.id = a."scopeId";
UPDATE "BudgetAlert" a SET "projectId" = r."projectId" FROM "Run" r WHERE a.scope = 'RUN_TOTAL' AND r.id = a."scopeId";

-- Channel health history, listed per organization and route (issue 15): the channel's tenancy copied on each row.
ALTER TABLE "ChannelHealthEvent" ADD COLUMN "organizationId" TEXT, ADD COLUMN "routeId" TEXT;
UPDATE "ChannelHealthEvent" e SET "organizationId" = c."organizationId", "routeId" = c."routeId" FROM "Channel" c WHERE c.id = e."channelId";
ALTER TABLE "ChannelHealthEvent" ALTER COLUMN "organizationId" SET NOT NULL, ALTER COLUMN "routeId" SET NOT NULL;
CREATE INDEX "ChannelHealthEvent_organizationId_createdAt_idx" ON "ChannelHealthEvent"("organizationId", "createdAt");
