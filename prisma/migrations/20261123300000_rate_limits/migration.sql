-- Per-key rate limits (null = none) and the failure cause of a request refused by one.
ALTER TYPE "FailureCause" ADD VALUE IF NOT EXISTS 'RATE_LIMITED';

ALTER TABLE "ApiKey" ADD COLUMN "rpmLimit" INTEGER,
                     ADD COLUMN "tpmLimit" INTEGER,
                     ADD COLUMN "maxConcurrent" INTEGER;
