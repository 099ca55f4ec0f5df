-- CreateSchema
CREATE SCHEMA IF NOT EXISTS "public";

-- CreateEnum
CREATE TYPE "BalanceBucket" AS ENUM ('CREDIT', 'ROUTED');

-- CreateEnum
CREATE TYPE "LedgerKind" AS ENUM ('TOPUP', 'CHARGE', 'REFUND', 'ADJUSTMENT');

-- CreateEnum
CREATE TYPE "HoldStatus" AS ENUM ('ACTIVE', 'SETTLED', 'RELEASED', 'EXPIRED');

-- CreateEnum
CREATE TYPE "KeyStatus" AS ENUM ('ACTIVE', 'PAUSED', 'REVOKED');

-- CreateEnum
CREATE TYPE "FailedChargePolicy" AS ENUM ('NEVER', 'PROMPT_TOKENS', 'FULL_USAGE');

-- CreateEnum
CREATE TYPE "Settlement" AS ENUM ('OFFICIAL', 'ROUTED');

-- CreateEnum
CREATE TYPE "HealthState" AS ENUM ('HEALTHY', 'DEGRADED', 'DOWN');

-- CreateEnum
CREATE TYPE "ChannelRole" AS ENUM ('PRIMARY', 'BACKUP');

-- CreateEnum
CREATE TYPE "CapScope" AS ENUM ('KEY_PER_REQUEST', 'KEY_DAILY', 'PROJECT_DAILY', 'PROJECT_MONTHLY', 'ROUTE_DAILY', 'RUN_TOTAL');

-- CreateEnum
CREATE TYPE "FailureCause" AS ENUM ('KEY_INVALID', 'KEY_PAUSED', 'KEY_REVOKED', 'KEY_EXPIRED', 'MODEL_NOT_ALLOWED', 'MODEL_UNKNOWN', 'ROUTE_UNAVAILABLE', 'PRICE_UNKNOWN', 'BUDGET_EXCEEDED', 'INSUFFICIENT_BALANCE', 'RUN_CANCELLED', 'BAD_REQUEST', 'UPSTREAM_TIMEOUT', 'UPSTREAM_ERROR', 'CLIENT_CLOSED');

-- CreateEnum
CREATE TYPE "RunMode" AS ENUM ('QUICK', 'STANDARD', 'DEEP');

-- CreateEnum
CREATE TYPE "RunStatus" AS ENUM ('ACTIVE', 'CANCELLED', 'EXHAUSTED', 'COMPLETED');

-- CreateEnum
CREATE TYPE "AdminRole" AS ENUM ('PLATFORM_ADMIN', 'ORG_ADMIN', 'ORG_VIEWER', 'PROJECT_VIEWER');

-- CreateTable
CREATE TABLE "Organization" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "name" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Organization_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "AdminToken" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "name" TEXT NOT NULL,
    "role" "AdminRole" NOT NULL,
    "organizationId" TEXT,
    "projectId" TEXT,
    "tokenHash" TEXT NOT NULL,
    "prefix" TEXT NOT NULL,
    "last4" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "revokedAt" TIMESTAMP(3),

    CONSTRAINT "AdminToken_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Wallet" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Wallet_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "WalletBucket" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "walletId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "currency" TEXT NOT NULL,
    "balance" BIGINT NOT NULL DEFAULT 0,
    "held" BIGINT NOT NULL DEFAULT 0,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "WalletBucket_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "LedgerEntry" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "bucketId" TEXT NOT NULL,
    "sequence" BIGSERIAL NOT NULL,
    "kind" "LedgerKind" NOT NULL,
    "amount" BIGINT NOT NULL,
    "balanceAfter" BIGINT NOT NULL,
    "idempotencyKey" TEXT NOT NULL,
    "memo" TEXT,
    "receiptId" TEXT,
    "failedRequestId" TEXT,
    "holdId" TEXT,
    "actorTokenId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "LedgerEntry_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Hold" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "requestId" TEXT NOT NULL,
    "bucketId" TEXT NOT NULL,
    "keyId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "routeId" TEXT,
    "runId" TEXT,
    "amount" BIGINT NOT NULL,
    "charged" BIGINT NOT NULL DEFAULT 0,
    "status" "HoldStatus" NOT NULL DEFAULT 'ACTIVE',
    "dayStart" TIMESTAMP(3) NOT NULL,
    "monthStart" TIMESTAMP(3) NOT NULL,
    "expiresAt" TIMESTAMP(3) NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "resolvedAt" TIMESTAMP(3),

    CONSTRAINT "Hold_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "SpendCounter" (
    "scope" "CapScope" NOT NULL,
    "scopeId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "windowStart" TIMESTAMP(3) NOT NULL,
    "spent" BIGINT NOT NULL DEFAULT 0,
    "held" BIGINT NOT NULL DEFAULT 0,

    CONSTRAINT "SpendCounter_pkey" PRIMARY KEY ("scope","scopeId","bucket","windowStart")
);

-- CreateTable
CREATE TABLE "BudgetCap" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "scope" "CapScope" NOT NULL,
    "scopeId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "amount" BIGINT NOT NULL,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BudgetCap_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Project" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Project_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ApiKey" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "prefix" TEXT NOT NULL,
    "last4" TEXT NOT NULL,
    "status" "KeyStatus" NOT NULL DEFAULT 'ACTIVE',
    "allowedModels" TEXT[],
    "allowedBuckets" "BalanceBucket"[],
    "lowerCostRoutes" BOOLEAN NOT NULL DEFAULT true,
    "backupRoutes" BOOLEAN NOT NULL DEFAULT true,
    "retryCeiling" INTEGER NOT NULL DEFAULT 2,
    "failedChargePolicy" "FailedChargePolicy" NOT NULL DEFAULT 'NEVER',
    "expiresAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ApiKey_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ApiKeySecret" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "keyId" TEXT NOT NULL,
    "secretHash" TEXT NOT NULL,
    "prefix" TEXT NOT NULL,
    "last4" TEXT NOT NULL,
    "expiresAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ApiKeySecret_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Route" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "defaultMaxTokens" INTEGER NOT NULL DEFAULT 4096,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Route_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Channel" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "routeId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "baseUrl" TEXT NOT NULL,
    "apiKeyCiphertext" TEXT,
    "upstreamModel" TEXT NOT NULL,
    "settlement" "Settlement" NOT NULL,
    "priority" INTEGER NOT NULL DEFAULT 0,
    "enabled" BOOLEAN NOT NULL DEFAULT true,
    "health" "HealthState" NOT NULL DEFAULT 'HEALTHY',
    "healthChangedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Channel_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ChannelHealthEvent" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "channelId" TEXT NOT NULL,
    "fromState" "HealthState" NOT NULL,
    "toState" "HealthState" NOT NULL,
    "successRate" DOUBLE PRECISION NOT NULL,
    "p50LatencyMs" INTEGER NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "ChannelHealthEvent_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "PriceSnapshot" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "channelId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "currency" TEXT NOT NULL,
    "inputPerMillion" BIGINT NOT NULL,
    "outputPerMillion" BIGINT NOT NULL,
    "validFrom" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "createdById" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "PriceSnapshot_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Receipt" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "requestId" TEXT NOT NULL,
    "organizationId" TEXT NOT NULL,
    "keyId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "runId" TEXT,
    "routeId" TEXT NOT NULL,
    "channelId" TEXT NOT NULL,
    "requestedModel" TEXT NOT NULL,
    "upstreamModel" TEXT NOT NULL,
    "endpoint" TEXT NOT NULL,
    "channelRole" "ChannelRole" NOT NULL,
    "fallback" BOOLEAN NOT NULL,
    "attempts" INTEGER NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "currency" TEXT NOT NULL,
    "promptTokens" INTEGER NOT NULL,
    "completionTokens" INTEGER NOT NULL,
    "priceSnapshotId" TEXT NOT NULL,
    "charge" BIGINT NOT NULL,
    "stream" BOOLEAN NOT NULL DEFAULT false,
    "latencyMs" INTEGER NOT NULL,
    "status" INTEGER NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Receipt_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "FailedRequest" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "requestId" TEXT NOT NULL,
    "organizationId" TEXT,
    "keyId" TEXT,
    "projectId" TEXT,
    "runId" TEXT,
    "routeId" TEXT,
    "channelId" TEXT,
    "requestedModel" TEXT,
    "endpoint" TEXT NOT NULL,
    "cause" "FailureCause" NOT NULL,
    "capScope" "CapScope",
    "message" TEXT NOT NULL,
    "httpStatus" INTEGER NOT NULL,
    "upstreamStatus" INTEGER,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "bucket" "BalanceBucket",
    "currency" TEXT,
    "promptTokens" INTEGER NOT NULL DEFAULT 0,
    "completionTokens" INTEGER NOT NULL DEFAULT 0,
    "priceSnapshotId" TEXT,
    "charge" BIGINT NOT NULL DEFAULT 0,
    "estimated" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "FailedRequest_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Run" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "keyId" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "mode" "RunMode" NOT NULL,
    "status" "RunStatus" NOT NULL DEFAULT 'ACTIVE',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "endedAt" TIMESTAMP(3),

    CONSTRAINT "Run_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "AuditEntry" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT,
    "actorTokenId" TEXT,
    "actor" TEXT NOT NULL,
    "action" TEXT NOT NULL,
    "targetType" TEXT NOT NULL,
    "targetId" TEXT NOT NULL,
    "before" JSONB,
    "after" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AuditEntry_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "Organization_name_key" ON "Organization"("name");

-- CreateIndex
CREATE UNIQUE INDEX "AdminToken_tokenHash_key" ON "AdminToken"("tokenHash");

-- CreateIndex
CREATE UNIQUE INDEX "Wallet_organizationId_key" ON "Wallet"("organizationId");

-- CreateIndex
CREATE UNIQUE INDEX "WalletBucket_walletId_bucket_key" ON "WalletBucket"("walletId", "bucket");

-- CreateIndex
CREATE UNIQUE INDEX "LedgerEntry_sequence_key" ON "LedgerEntry"("sequence");

-- CreateIndex
CREATE UNIQUE INDEX "LedgerEntry_idempotencyKey_key" ON "LedgerEntry"("idempotencyKey");

-- CreateIndex
CREATE UNIQUE INDEX "LedgerEntry_receiptId_key" ON "LedgerEntry"("receiptId");

-- CreateIndex
CREATE UNIQUE INDEX "LedgerEntry_failedRequestId_key" ON "LedgerEntry"("failedRequestId");

-- CreateIndex
CREATE INDEX "LedgerEntry_bucketId_createdAt_idx" ON "LedgerEntry"("bucketId", "createdAt");

-- CreateIndex
CREATE INDEX "LedgerEntry_organizationId_createdAt_idx" ON "LedgerEntry"("organizationId", "createdAt");

-- CreateIndex
CREATE INDEX "Hold_status_expiresAt_idx" ON "Hold"("status", "expiresAt");

-- CreateIndex
CREATE INDEX "Hold_requestId_idx" ON "Hold"("requestId");

-- CreateIndex
CREATE INDEX "Hold_keyId_createdAt_idx" ON "Hold"("keyId", "createdAt");

-- CreateIndex
CREATE UNIQUE INDEX "BudgetCap_scope_scopeId_bucket_key" ON "BudgetCap"("scope", "scopeId", "bucket");

-- CreateIndex
CREATE UNIQUE INDEX "Project_organizationId_name_key" ON "Project"("organizationId", "name");

-- CreateIndex
CREATE INDEX "ApiKey_projectId_idx" ON "ApiKey"("projectId");

-- CreateIndex
CREATE INDEX "ApiKey_organizationId_createdAt_idx" ON "ApiKey"("organizationId", "createdAt");

-- CreateIndex
CREATE UNIQUE INDEX "ApiKeySecret_secretHash_key" ON "ApiKeySecret"("secretHash");

-- CreateIndex
CREATE INDEX "ApiKeySecret_keyId_idx" ON "ApiKeySecret"("keyId");

-- CreateIndex
CREATE UNIQUE INDEX "Route_organizationId_model_key" ON "Route"("organizationId", "model");

-- CreateIndex
CREATE UNIQUE INDEX "Channel_routeId_name_key" ON "Channel"("routeId", "name");

-- CreateIndex
CREATE INDEX "ChannelHealthEvent_channelId_createdAt_idx" ON "ChannelHealthEvent"("channelId", "createdAt");

-- CreateIndex
CREATE INDEX "PriceSnapshot_channelId_validFrom_idx" ON "PriceSnapshot"("channelId", "validFrom");

-- CreateIndex
CREATE UNIQUE INDEX "Receipt_requestId_key" ON "Receipt"("requestId");

-- CreateIndex
CREATE INDEX "Receipt_organizationId_createdAt_idx" ON "Receipt"("organizationId", "createdAt");

-- CreateIndex
CREATE INDEX "Receipt_keyId_createdAt_idx" ON "Receipt"("keyId", "createdAt");

-- CreateIndex
CREATE INDEX "Receipt_projectId_createdAt_idx" ON "Receipt"("projectId", "createdAt");

-- CreateIndex
CREATE INDEX "Receipt_routeId_createdAt_idx" ON "Receipt"("routeId", "createdAt");

-- CreateIndex
CREATE INDEX "Receipt_runId_createdAt_idx" ON "Receipt"("runId", "createdAt");

-- CreateIndex
CREATE UNIQUE INDEX "FailedRequest_requestId_key" ON "FailedRequest"("requestId");

-- CreateIndex
CREATE INDEX "FailedRequest_organizationId_createdAt_idx" ON "FailedRequest"("organizationId", "createdAt");

-- CreateIndex
CREATE INDEX "FailedRequest_keyId_createdAt_idx" ON "FailedRequest"("keyId", "createdAt");

-- CreateIndex
CREATE INDEX "FailedRequest_projectId_createdAt_idx" ON "FailedRequest"("projectId", "createdAt");

-- CreateIndex
CREATE INDEX "FailedRequest_routeId_createdAt_idx" ON "FailedRequest"("routeId", "createdAt");

-- CreateIndex
CREATE INDEX "FailedRequest_runId_createdAt_idx" ON "FailedRequest"("runId", "createdAt");

-- CreateIndex
CREATE INDEX "Run_keyId_createdAt_idx" ON "Run"("keyId", "createdAt");

-- CreateIndex
CREATE INDEX "AuditEntry_organizationId_createdAt_idx" ON "AuditEntry"("organizationId", "createdAt");

-- CreateIndex
CREATE INDEX "AuditEntry_targetId_createdAt_idx" ON "AuditEntry"("targetId", "createdAt");

-- AddForeignKey
ALTER TABLE "AdminToken" ADD CONSTRAINT "AdminToken_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "AdminToken" ADD CONSTRAINT "AdminToken_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Wallet" ADD CONSTRAINT "Wallet_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "WalletBucket" ADD CONSTRAINT "WalletBucket_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "WalletBucket" ADD CONSTRAINT "WalletBucket_walletId_fkey" FOREIGN KEY ("walletId") REFERENCES "Wallet"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_bucketId_fkey" FOREIGN KEY ("bucketId") REFERENCES "WalletBucket"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_receiptId_fkey" FOREIGN KEY ("receiptId") REFERENCES "Receipt"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_failedRequestId_fkey" FOREIGN KEY ("failedRequestId") REFERENCES "FailedRequest"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_holdId_fkey" FOREIGN KEY ("holdId") REFERENCES "Hold"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "LedgerEntry" ADD CONSTRAINT "LedgerEntry_actorTokenId_fkey" FOREIGN KEY ("actorTokenId") REFERENCES "AdminToken"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_bucketId_fkey" FOREIGN KEY ("bucketId") REFERENCES "WalletBucket"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_keyId_fkey" FOREIGN KEY ("keyId") REFERENCES "ApiKey"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_routeId_fkey" FOREIGN KEY ("routeId") REFERENCES "Route"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_runId_fkey" FOREIGN KEY ("runId") REFERENCES "Run"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "BudgetCap" ADD CONSTRAINT "BudgetCap_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Project" ADD CONSTRAINT "Project_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ApiKey" ADD CONSTRAINT "ApiKey_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ApiKey" ADD CONSTRAINT "ApiKey_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ApiKeySecret" ADD CONSTRAINT "ApiKeySecret_keyId_fkey" FOREIGN KEY ("keyId") REFERENCES "ApiKey"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Route" ADD CONSTRAINT "Route_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Channel" ADD CONSTRAINT "Channel_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Channel" ADD CONSTRAINT "Channel_routeId_fkey" FOREIGN KEY ("routeId") REFERENCES "Route"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ChannelHealthEvent" ADD CONSTRAINT "ChannelHealthEvent_channelId_fkey" FOREIGN KEY ("channelId") REFERENCES "Channel"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "PriceSnapshot" ADD CONSTRAINT "PriceSnapshot_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "PriceSnapshot" ADD CONSTRAINT "PriceSnapshot_channelId_fkey" FOREIGN KEY ("channelId") REFERENCES "Channel"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "PriceSnapshot" ADD CONSTRAINT "PriceSnapshot_createdById_fkey" FOREIGN KEY ("createdById") REFERENCES "AdminToken"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_keyId_fkey" FOREIGN KEY ("keyId") REFERENCES "ApiKey"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_runId_fkey" FOREIGN KEY ("runId") REFERENCES "Run"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_routeId_fkey" FOREIGN KEY ("routeId") REFERENCES "Route"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_channelId_fkey" FOREIGN KEY ("channelId") REFERENCES "Channel"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_priceSnapshotId_fkey" FOREIGN KEY ("priceSnapshotId") REFERENCES "PriceSnapshot"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_keyId_fkey" FOREIGN KEY ("keyId") REFERENCES "ApiKey"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_runId_fkey" FOREIGN KEY ("runId") REFERENCES "Run"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_routeId_fkey" FOREIGN KEY ("routeId") REFERENCES "Route"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_channelId_fkey" FOREIGN KEY ("channelId") REFERENCES "Channel"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_priceSnapshotId_fkey" FOREIGN KEY ("priceSnapshotId") REFERENCES "PriceSnapshot"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Run" ADD CONSTRAINT "Run_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Run" ADD CONSTRAINT "Run_keyId_fkey" FOREIGN KEY ("keyId") REFERENCES "ApiKey"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "Run" ADD CONSTRAINT "Run_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "Project"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "AuditEntry" ADD CONSTRAINT "AuditEntry_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "AuditEntry" ADD CONSTRAINT "AuditEntry_actorTokenId_fkey" FOREIGN KEY ("actorTokenId") REFERENCES "AdminToken"("id") ON DELETE SET NULL ON UPDATE CASCADE;


-- ---------------------------------------------------------------------------
-- Hand-written part: invariants the database itself enforces, and the
-- accounting primitives (one statement each, so caps hold across processes).
-- ---------------------------------------------------------------------------

ALTER TABLE "WalletBucket" ADD CONSTRAINT "WalletBucket_held_nonnegative" CHECK (held >= 0);
ALTER TABLE "WalletBucket" ADD CONSTRAINT "WalletBucket_available_nonnegative" CHECK (balance - held >= 0);
ALTER TABLE "SpendCounter" ADD CONSTRAINT "SpendCounter_nonnegative" CHECK (spent >= 0 AND held >= 0);
ALTER TABLE "Hold" ADD CONSTRAINT "Hold_amounts" CHECK (amount >= 0 AND charged >= 0 AND charged <= amount);
ALTER TABLE "BudgetCap" ADD CONSTRAINT "BudgetCap_nonnegative" CHECK (amount >= 0);

-- The ledger is append-only: corrections are new entries.
CREATE FUNCTION tg_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'TG_LEDGER_IMMUTABLE: ledger entries are append-only (% rejected)', TG_OP;
END $$;
CREATE TRIGGER "LedgerEntry_append_only" BEFORE UPDATE OR DELETE ON "LedgerEntry"
  FOR EACH ROW EXECUTE FUNCTION tg_ledger_append_only();
CREATE TRIGGER "LedgerEntry_no_truncate" BEFORE TRUNCATE ON "LedgerEntry"
  FOR EACH STATEMENT EXECUTE FUNCTION tg_ledger_append_only();

-- The counters a hold touches, in the one fixed order every function locks them in
-- (bucket first, then these), so concurrent reservations and settlements never deadlock.
CREATE FUNCTION tg_hold_scopes(p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                               p_day timestamp(3), p_month timestamp(3))
RETURNS TABLE (ord int, scope "CapScope", scope_id text, window_start timestamp(3))
LANGUAGE sql IMMUTABLE AS $$
  SELECT * FROM (VALUES
    (1, 'KEY_DAILY'::"CapScope", p_key_id, p_day),
    (2, 'PROJECT_DAILY'::"CapScope", p_project_id, p_day),
    (3, 'PROJECT_MONTHLY'::"CapScope", p_project_id, p_month),
    (4, 'ROUTE_DAILY'::"CapScope", p_route_id, p_day),
    (5, 'RUN_TOTAL'::"CapScope", p_run_id, timestamp '1970-01-01')
  ) AS s(ord, scope, scope_id, window_start)
  WHERE scope_id IS NOT NULL
  ORDER BY ord
$$;

-- Reserve: place a hold of p_amount on a bucket if the bucket and every applicable cap admit it.
-- Returns (hold_id, NULL) or (NULL, refusal) where refusal is a CapScope name,
-- 'INSUFFICIENT_BALANCE' or 'RUN_CANCELLED'. A refusal writes nothing but empty counters.
CREATE FUNCTION tg_reserve(p_request_id text, p_bucket_id text, p_amount bigint,
                           p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                           p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (hold_id text, refusal text) LANGUAGE plpgsql AS $$
DECLARE
  v_bucket "BalanceBucket";
  v_available bigint;
  v_day timestamp(3) := date_trunc('day', p_now);
  v_month timestamp(3) := date_trunc('month', p_now);
  v_cap bigint;
  v_used bigint;
  v_run_status "RunStatus";
  v_hold text;
  sc record;
BEGIN
  IF p_amount IS NULL OR p_amount < 0 THEN
    RAISE EXCEPTION 'TG_BAD_AMOUNT: reservation amount must be >= 0';
  END IF;
  SELECT b.bucket, b.balance - b.held INTO v_bucket, v_available
    FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;

  SELECT c.amount INTO v_cap FROM "BudgetCap" c
   WHERE c.scope = 'KEY_PER_REQUEST' AND c."scopeId" = p_key_id AND c.bucket = v_bucket;
  IF v_cap IS NOT NULL AND p_amount > v_cap THEN
    RETURN QUERY SELECT NULL::text, 'KEY_PER_REQUEST'::text; RETURN;
  END IF;

  IF p_run_id IS NOT NULL THEN
    SELECT r.status INTO v_run_status FROM "Run" r WHERE r.id = p_run_id;
    IF v_run_status IS DISTINCT FROM 'ACTIVE' THEN
      RETURN QUERY SELECT NULL::text, 'RUN_CANCELLED'::text; RETURN;
    END IF;
  END IF;

  FOR sc IN SELECT * FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month) LOOP
    INSERT INTO "SpendCounter" (scope, "scopeId", bucket, "windowStart")
      VALUES (sc.scope, sc.scope_id, v_bucket, sc.window_start) ON CONFLICT DO NOTHING;
    SELECT c.spent + c.held INTO v_used FROM "SpendCounter" c
     WHERE c.scope = sc.scope AND c."scopeId" = sc.scope_id AND c.bucket = v_bucket AND c."windowStart" = sc.window_start
     FOR UPDATE;
    SELECT c.amount INTO v_cap FROM "BudgetCap" c
     WHERE c.scope = sc.scope AND c."scopeId" = sc.scope_id AND c.bucket = v_bucket;
    IF v_cap IS NOT NULL AND v_used + p_amount > v_cap THEN
      RETURN QUERY SELECT NULL::text, sc.scope::text; RETURN;
    END IF;
  END LOOP;

  IF v_available < p_amount THEN
    RETURN QUERY SELECT NULL::text, 'INSUFFICIENT_BALANCE'::text; RETURN;
  END IF;

  UPDATE "WalletBucket" SET held = held + p_amount, "updatedAt" = p_now WHERE id = p_bucket_id;
  UPDATE "SpendCounter" c SET held = c.held + p_amount
    FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month) hs
   WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  INSERT INTO "Hold" (id, "requestId", "bucketId", "keyId", "projectId", "routeId", "runId",
                      amount, "dayStart", "monthStart", "expiresAt", "createdAt")
    VALUES (gen_random_uuid()::text, p_request_id, p_bucket_id, p_key_id, p_project_id, p_route_id, p_run_id,
            p_amount, v_day, v_month, p_now + make_interval(secs => p_ttl_ms / 1000.0), p_now)
    RETURNING id INTO v_hold;
  RETURN QUERY SELECT v_hold, NULL::text;
END $$;

-- Resolve a hold: charge min(p_charge, hold amount), release the rest, write the CHARGE entry
-- (with its running balance) linked to the receipt or failed request. p_status is
-- SETTLED (success), RELEASED (failure, charged per policy) or EXPIRED (sweeper, charge 0).
CREATE FUNCTION tg_resolve_hold(p_hold_id text, p_charge bigint, p_status "HoldStatus",
                                p_receipt_id text, p_failed_request_id text, p_now timestamp(3))
RETURNS TABLE (ledger_entry_id text, charged bigint, balance_after bigint) LANGUAGE plpgsql AS $$
DECLARE
  h "Hold"%ROWTYPE;
  v_bucket "BalanceBucket";
  v_org text;
  v_charge bigint;
  v_balance bigint;
  v_entry text;
BEGIN
  IF p_status = 'ACTIVE' THEN
    RAISE EXCEPTION 'TG_BAD_STATUS: a hold is resolved to SETTLED, RELEASED or EXPIRED';
  END IF;
  SELECT * INTO h FROM "Hold" WHERE id = p_hold_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: hold %', p_hold_id;
  END IF;
  IF h.status <> 'ACTIVE' THEN
    RAISE EXCEPTION 'TG_HOLD_NOT_ACTIVE: hold % is %', p_hold_id, h.status;
  END IF;
  v_charge := LEAST(GREATEST(COALESCE(p_charge, 0), 0), h.amount);

  UPDATE "WalletBucket" SET balance = balance - v_charge, held = held - h.amount, "updatedAt" = p_now
   WHERE id = h."bucketId" RETURNING balance, bucket, "organizationId" INTO v_balance, v_bucket, v_org;
  UPDATE "SpendCounter" c SET held = c.held - h.amount, spent = c.spent + v_charge
    FROM tg_hold_scopes(h."keyId", h."projectId", h."routeId", h."runId", h."dayStart", h."monthStart") hs
   WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  IF v_charge > 0 THEN
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey",
                               "receiptId", "failedRequestId", "holdId", "createdAt")
      VALUES (gen_random_uuid()::text, v_org, h."bucketId", 'CHARGE', -v_charge, v_balance, 'hold:' || h.id,
              p_receipt_id, p_failed_request_id, h.id, p_now)
      RETURNING id INTO v_entry;
  END IF;
  UPDATE "Hold" SET status = p_status, charged = v_charge, "resolvedAt" = p_now WHERE id = h.id;
  RETURN QUERY SELECT v_entry, v_charge, v_balance;
END $$;

-- Release every hold whose TTL passed (left by a process that died). Returns how many.
CREATE FUNCTION tg_expire_holds(p_now timestamp(3)) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_id text;
  v_count integer := 0;
BEGIN
  FOR v_id IN SELECT id FROM "Hold" WHERE status = 'ACTIVE' AND "expiresAt" <= p_now
              ORDER BY "expiresAt" FOR UPDATE SKIP LOCKED LOOP
    PERFORM tg_resolve_hold(v_id, 0, 'EXPIRED', NULL, NULL, p_now);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- Post a TOPUP / ADJUSTMENT / REFUND, idempotent by key: a replay returns the first entry
-- (created = false); the same key with another bucket, kind or amount is a conflict.
CREATE FUNCTION tg_post_entry(p_bucket_id text, p_kind "LedgerKind", p_amount bigint, p_idempotency_key text,
                              p_actor_token_id text, p_memo text, p_now timestamp(3))
RETURNS TABLE (entry_id text, created boolean) LANGUAGE plpgsql AS $$
DECLARE
  e "LedgerEntry"%ROWTYPE;
  v_available bigint;
  v_balance bigint;
  v_org text;
  v_entry text;
BEGIN
  IF p_kind = 'CHARGE' THEN
    RAISE EXCEPTION 'TG_BAD_KIND: charges are written by tg_resolve_hold';
  END IF;
  -- Lock the bucket first: two replays of one key serialise here, and the second sees the first's entry.
  SELECT b.balance - b.held, b."organizationId" INTO v_available, v_org FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;
  SELECT * INTO e FROM "LedgerEntry" WHERE "idempotencyKey" = p_idempotency_key;
  IF FOUND THEN
    IF e."bucketId" <> p_bucket_id OR e.kind <> p_kind OR e.amount <> p_amount THEN
      RAISE EXCEPTION 'TG_CONFLICT: idempotency key % was used for a different entry', p_idempotency_key;
    END IF;
    RETURN QUERY SELECT e.id, false; RETURN;
  END IF;
  IF v_available + p_amount < 0 THEN
    RAISE EXCEPTION 'TG_INSUFFICIENT_BALANCE: the entry would take the available balance below zero';
  END IF;
  UPDATE "WalletBucket" SET balance = balance + p_amount, "updatedAt" = p_now
   WHERE id = p_bucket_id RETURNING balance INTO v_balance;
  BEGIN
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey", "actorTokenId", memo, "createdAt")
      VALUES (gen_random_uuid()::text, v_org, p_bucket_id, p_kind, p_amount, v_balance, p_idempotency_key, p_actor_token_id, p_memo, p_now)
      RETURNING id INTO v_entry;
  EXCEPTION WHEN unique_violation THEN
    -- The same key was committed meanwhile on another bucket.
    RAISE EXCEPTION 'TG_CONFLICT: idempotency key % was used for a different entry', p_idempotency_key;
  END;
  RETURN QUERY SELECT v_entry, true;
END $$;
