-- Issue 18: RunStatus loses EXHAUSTED and COMPLETED, which no code ever wrote (a run whose cap is
-- spent stays ACTIVE and its requests are refused by the cap; nothing completes a run). PostgreSQL
-- cannot drop an enum value, so the type is rebuilt. A row holding one of them (written by hand)
-- would make the cast fail and the migration roll back: nothing is rewritten silently. The PL/pgSQL
-- functions that declare "RunStatus" variables resolve the type by name when they run.
ALTER TYPE "RunStatus" RENAME TO "RunStatus_old";
CREATE TYPE "RunStatus" AS ENUM ('ACTIVE', 'CANCELLED', 'PAUSED');
ALTER TABLE "Run" ALTER COLUMN "status" DROP DEFAULT;
ALTER TABLE "Run" ALTER COLUMN "status" TYPE "RunStatus" USING "status"::text::"RunStatus";
ALTER TABLE "Run" ALTER COLUMN "status" SET DEFAULT 'ACTIVE';
DROP TYPE "RunStatus_old";
