-- CreateEnum
CREATE TYPE "WebhookDeliveryStatus" AS ENUM ('SUCCEEDED', 'RETRYING', 'FAILED');

-- CreateTable
CREATE TABLE "AlertWebhook" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "organizationId" TEXT NOT NULL,
    "url" TEXT NOT NULL,
    "secretCiphertext" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AlertWebhook_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "AlertWebhookDelivery" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "webhookId" TEXT NOT NULL,
    "organizationId" TEXT NOT NULL,
    "deliveryId" TEXT NOT NULL,
    "event" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "status" "WebhookDeliveryStatus" NOT NULL,
    "httpStatus" INTEGER,
    "error" TEXT,
    "durationMs" INTEGER NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "AlertWebhookDelivery_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "AlertWebhook_organizationId_key" ON "AlertWebhook"("organizationId");

-- CreateIndex
CREATE INDEX "AlertWebhookDelivery_webhookId_createdAt_idx" ON "AlertWebhookDelivery"("webhookId", "createdAt");

-- CreateIndex
CREATE INDEX "AlertWebhookDelivery_deliveryId_idx" ON "AlertWebhookDelivery"("deliveryId");

-- AddForeignKey
ALTER TABLE "AlertWebhook" ADD CONSTRAINT "AlertWebhook_organizationId_fkey" FOREIGN KEY ("organizationId") REFERENCES "Organization"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "AlertWebhookDelivery" ADD CONSTRAINT "AlertWebhookDelivery_webhookId_fkey" FOREIGN KEY ("webhookId") REFERENCES "AlertWebhook"("id") ON DELETE CASCADE ON UPDATE CASCADE;

