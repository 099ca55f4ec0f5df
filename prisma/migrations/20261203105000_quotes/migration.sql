-- Quotes (issue 17, point 2): a dry run of admission whose price a request may claim for a few
-- minutes (header x-tokengate-quote). It pins the price snapshot of every channel the request may be
-- served by, so a setPrice in between changes nothing for it; any instance honours it.
CREATE TABLE "Quote" (
  "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
  "organizationId" TEXT NOT NULL REFERENCES "Organization"("id"),
  "keyId" TEXT NOT NULL REFERENCES "ApiKey"("id"),
  "model" TEXT NOT NULL,
  "runId" TEXT REFERENCES "Run"("id"),
  "channelId" TEXT NOT NULL REFERENCES "Channel"("id"),
  "priceSnapshotId" TEXT NOT NULL REFERENCES "PriceSnapshot"("id"),
  "pinnedSnapshotIds" TEXT[] NOT NULL,
  "worstCase" BIGINT NOT NULL,
  "expectedCharge" BIGINT NOT NULL,
  "createdById" TEXT,
  "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "expiresAt" TIMESTAMP(3) NOT NULL,
  CONSTRAINT "Quote_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "Quote_keyId_createdAt_idx" ON "Quote"("keyId", "createdAt");
