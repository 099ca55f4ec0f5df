-- History rows without foreign-key checks (issue 16). Receipts, failed requests and ledger entries
-- are append-only history whose every write paid ~10 foreign-key checks (an index probe and a
-- FOR KEY SHARE lock on the key, project, route, channel, price, bucket and organization rows each
-- request shares with every other). The rows they name are never deleted by tokengate; instead of
-- the checks, a DELETE or TRUNCATE of a row still named by history is refused by a trigger on the
-- named table (tg_refuse_referenced_delete, the same text as in prisma/functions.sql). The old
-- ON DELETE SET NULL of failed requests and runs is gone with them: history is not rewritten.

ALTER TABLE "Receipt" DROP CONSTRAINT "Receipt_organizationId_fkey",
  DROP CONSTRAINT "Receipt_keyId_fkey",
  DROP CONSTRAINT "Receipt_projectId_fkey",
  DROP CONSTRAINT "Receipt_runId_fkey",
  DROP CONSTRAINT "Receipt_routeId_fkey",
  DROP CONSTRAINT "Receipt_channelId_fkey",
  DROP CONSTRAINT "Receipt_priceSnapshotId_fkey";
ALTER TABLE "FailedRequest" DROP CONSTRAINT "FailedRequest_organizationId_fkey",
  DROP CONSTRAINT "FailedRequest_keyId_fkey",
  DROP CONSTRAINT "FailedRequest_projectId_fkey",
  DROP CONSTRAINT "FailedRequest_runId_fkey",
  DROP CONSTRAINT "FailedRequest_routeId_fkey",
  DROP CONSTRAINT "FailedRequest_channelId_fkey",
  DROP CONSTRAINT "FailedRequest_priceSnapshotId_fkey";
ALTER TABLE "LedgerEntry" DROP CONSTRAINT "LedgerEntry_organizationId_fkey",
  DROP CONSTRAINT "LedgerEntry_bucketId_fkey",
  DROP CONSTRAINT "LedgerEntry_receiptId_fkey",
  DROP CONSTRAINT "LedgerEntry_failedRequestId_fkey",
  DROP CONSTRAINT "LedgerEntry_holdId_fkey",
  DROP CONSTRAINT "LedgerEntry_actorTokenId_fkey";

CREATE OR REPLACE FUNCTION tg_refuse_referenced_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  i integer := 0;
  v_named boolean;
BEGIN
  WHILE i < TG_NARGS LOOP
    IF TG_OP = 'TRUNCATE' THEN
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', TG_ARGV[i]) INTO v_named;
    ELSE
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I = $1)', TG_ARGV[i], TG_ARGV[i + 1]) INTO v_named USING OLD.id;
    END IF;
    IF v_named THEN
      RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
        MESSAGE = format('TG_REFERENCED: %s %s is named by %s.%s (history keeps it: revoke or disable it instead)',
                         TG_TABLE_NAME, CASE WHEN TG_OP = 'TRUNCATE' THEN '(truncate)' ELSE OLD.id END, TG_ARGV[i], TG_ARGV[i + 1]);
    END IF;
    i := i + 2;
  END LOOP;
  RETURN CASE WHEN TG_OP = 'TRUNCATE' THEN NULL ELSE OLD END;
END $$;

CREATE TRIGGER "Organization_history_named" BEFORE DELETE ON "Organization" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'organizationId', 'FailedRequest', 'organizationId', 'LedgerEntry', 'organizationId');
CREATE TRIGGER "Organization_history_named_truncate" BEFORE TRUNCATE ON "Organization" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'organizationId', 'FailedRequest', 'organizationId', 'LedgerEntry', 'organizationId');
CREATE TRIGGER "ApiKey_history_named" BEFORE DELETE ON "ApiKey" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'keyId', 'FailedRequest', 'keyId');
CREATE TRIGGER "ApiKey_history_named_truncate" BEFORE TRUNCATE ON "ApiKey" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'keyId', 'FailedRequest', 'keyId');
CREATE TRIGGER "Project_history_named" BEFORE DELETE ON "Project" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'projectId', 'FailedRequest', 'projectId');
CREATE TRIGGER "Project_history_named_truncate" BEFORE TRUNCATE ON "Project" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'projectId', 'FailedRequest', 'projectId');
CREATE TRIGGER "Run_history_named" BEFORE DELETE ON "Run" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'runId', 'FailedRequest', 'runId');
CREATE TRIGGER "Run_history_named_truncate" BEFORE TRUNCATE ON "Run" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'runId', 'FailedRequest', 'runId');
CREATE TRIGGER "Route_history_named" BEFORE DELETE ON "Route" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'routeId', 'FailedRequest', 'routeId');
CREATE TRIGGER "Route_history_named_truncate" BEFORE TRUNCATE ON "Route" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'routeId', 'FailedRequest', 'routeId');
CREATE TRIGGER "Channel_history_named" BEFORE DELETE ON "Channel" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'channelId', 'FailedRequest', 'channelId');
CREATE TRIGGER "Channel_history_named_truncate" BEFORE TRUNCATE ON "Channel" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'channelId', 'FailedRequest', 'channelId');
CREATE TRIGGER "PriceSnapshot_history_named" BEFORE DELETE ON "PriceSnapshot" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'priceSnapshotId', 'FailedRequest', 'priceSnapshotId');
CREATE TRIGGER "PriceSnapshot_history_named_truncate" BEFORE TRUNCATE ON "PriceSnapshot" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('Receipt', 'priceSnapshotId', 'FailedRequest', 'priceSnapshotId');
CREATE TRIGGER "WalletBucket_history_named" BEFORE DELETE ON "WalletBucket" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'bucketId');
CREATE TRIGGER "WalletBucket_history_named_truncate" BEFORE TRUNCATE ON "WalletBucket" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'bucketId');
CREATE TRIGGER "Receipt_history_named" BEFORE DELETE ON "Receipt" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'receiptId');
CREATE TRIGGER "Receipt_history_named_truncate" BEFORE TRUNCATE ON "Receipt" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'receiptId');
CREATE TRIGGER "FailedRequest_history_named" BEFORE DELETE ON "FailedRequest" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'failedRequestId');
CREATE TRIGGER "FailedRequest_history_named_truncate" BEFORE TRUNCATE ON "FailedRequest" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'failedRequestId');
CREATE TRIGGER "Hold_history_named" BEFORE DELETE ON "Hold" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'holdId');
CREATE TRIGGER "Hold_history_named_truncate" BEFORE TRUNCATE ON "Hold" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'holdId');
CREATE TRIGGER "AdminToken_history_named" BEFORE DELETE ON "AdminToken" FOR EACH ROW EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'actorTokenId');
CREATE TRIGGER "AdminToken_history_named_truncate" BEFORE TRUNCATE ON "AdminToken" FOR EACH STATEMENT EXECUTE FUNCTION tg_refuse_referenced_delete('LedgerEntry', 'actorTokenId');
