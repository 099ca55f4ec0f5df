-- CreateTable
CREATE TABLE "BudgetAlert" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "scope" "CapScope" NOT NULL,
    "scopeId" TEXT NOT NULL,
    "bucket" "BalanceBucket" NOT NULL,
    "windowStart" TIMESTAMP(3) NOT NULL,
    "threshold" INTEGER NOT NULL,
    "spent" BIGINT NOT NULL,
    "cap" BIGINT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "BudgetAlert_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "BudgetAlert_organizationId_createdAt_idx" ON "BudgetAlert"("organizationId", "createdAt");

-- CreateIndex
CREATE UNIQUE INDEX "BudgetAlert_scope_scopeId_bucket_windowStart_threshold_key" ON "BudgetAlert"("scope", "scopeId", "bucket", "windowStart", "threshold");

-- AddForeignKey
ALTER TABLE "BudgetAlert" ADD CONSTRAINT "BudgetAlert_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

