-- Runs with a lifecycle (issue 17): the model and a label given at start; runs listed per organization.
ALTER TABLE "Run" ADD COLUMN "model" TEXT, ADD COLUMN "label" TEXT;
CREATE INDEX "Run_organizationId_createdAt_idx" ON "Run"("organizationId", "createdAt");
