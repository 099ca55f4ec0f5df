-- Spend rollups: per organization x key x project x route x requested model x balance bucket x
-- currency, the sums of receipts and charged failed requests (the rows spendSeries reads), by UTC
-- hour and by UTC day (a month by day reads 24 times fewer rows). Statement-level triggers with
-- transition tables keep them in the same transaction as the rows they summarize, whatever code
-- writes those rows (single inserts, multi-row batches, COPY), at one aggregated upsert per grain
-- and statement.

CREATE TABLE "SpendRollupHourly" (
    "organizationId"   TEXT NOT NULL,
    "hour"             TIMESTAMP(3) NOT NULL,
    "keyId"            TEXT,
    "projectId"        TEXT,
    "routeId"          TEXT,
    "requestedModel"   TEXT,
    "bucket"           "BalanceBucket" NOT NULL,
    "currency"         TEXT,
    "spend"            BIGINT NOT NULL DEFAULT 0,
    "requests"         BIGINT NOT NULL DEFAULT 0,
    "promptTokens"     BIGINT NOT NULL DEFAULT 0,
    "completionTokens" BIGINT NOT NULL DEFAULT 0,
    -- Failed requests may lack a key, route or model: NULLs are one group, as in GROUP BY.
    CONSTRAINT "SpendRollupHourly_group_key" UNIQUE NULLS NOT DISTINCT
      ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency")
);

CREATE TABLE "SpendRollupDaily" (
    "organizationId"   TEXT NOT NULL,
    "day"              TIMESTAMP(3) NOT NULL,
    "keyId"            TEXT,
    "projectId"        TEXT,
    "routeId"          TEXT,
    "requestedModel"   TEXT,
    "bucket"           "BalanceBucket" NOT NULL,
    "currency"         TEXT,
    "spend"            BIGINT NOT NULL DEFAULT 0,
    "requests"         BIGINT NOT NULL DEFAULT 0,
    "promptTokens"     BIGINT NOT NULL DEFAULT 0,
    "completionTokens" BIGINT NOT NULL DEFAULT 0,
    -- Failed requests may lack a key, route or model: NULLs are one group, as in GROUP BY.
    CONSTRAINT "SpendRollupDaily_group_key" UNIQUE NULLS NOT DISTINCT
      ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency")
);

-- Rows are upserted in key order so concurrent writers lock rollup rows in the same order (no
-- deadlock between two batches touching the same groups). UPDATE and DELETE are rare (receipts are
-- history) but handled, so the rollups equal the rows whatever happens to them.
CREATE FUNCTION tg_spend_rollup_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           -SUM("charge"), -COUNT(*), -SUM("promptTokens"), -SUM("completionTokens")
      FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           -SUM("charge"), -COUNT(*), -SUM("promptTokens"), -SUM("completionTokens")
      FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
      FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
      FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
  END IF;
  RETURN NULL;
END $$;

-- Only failed requests that were charged count as spend (the same rows as their CHARGE entries).
CREATE FUNCTION tg_spend_rollup_failed_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           -SUM("charge"), -COUNT(*), -SUM("promptTokens"), -SUM("completionTokens")
      FROM old_rows WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           -SUM("charge"), -COUNT(*), -SUM("promptTokens"), -SUM("completionTokens")
      FROM old_rows WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
      FROM new_rows WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
      FROM new_rows WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests",
      "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens";
  END IF;
  RETURN NULL;
END $$;

-- PostgreSQL allows transition tables only on single-event triggers: one trigger per event.
CREATE TRIGGER "Receipt_rollup_insert" AFTER INSERT ON "Receipt"
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_receipt();
CREATE TRIGGER "Receipt_rollup_update" AFTER UPDATE ON "Receipt"
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_receipt();
CREATE TRIGGER "Receipt_rollup_delete" AFTER DELETE ON "Receipt"
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_receipt();
CREATE TRIGGER "FailedRequest_rollup_insert" AFTER INSERT ON "FailedRequest"
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_failed_request();
CREATE TRIGGER "FailedRequest_rollup_update" AFTER UPDATE ON "FailedRequest"
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_failed_request();
CREATE TRIGGER "FailedRequest_rollup_delete" AFTER DELETE ON "FailedRequest"
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tg_spend_rollup_failed_request();

-- Backfill what was written before this migration. CREATE TRIGGER locks both tables against
-- writes until this transaction commits, so every row is either committed before the backfill
-- reads (and counted here) or inserted after it (and counted by the triggers), never both.
INSERT INTO "SpendRollupHourly" ("organizationId", "hour", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                         "spend", "requests", "promptTokens", "completionTokens")
SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
       SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
  FROM (
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           "charge", "promptTokens", "completionTokens"
      FROM "Receipt"
    UNION ALL
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           "charge", "promptTokens", "completionTokens"
      FROM "FailedRequest" WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0
  ) spend
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

INSERT INTO "SpendRollupDaily" ("organizationId", "day", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
                         "spend", "requests", "promptTokens", "completionTokens")
SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
       SUM("charge"), COUNT(*), SUM("promptTokens"), SUM("completionTokens")
  FROM (
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           "charge", "promptTokens", "completionTokens"
      FROM "Receipt"
    UNION ALL
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "requestedModel", "bucket", "currency",
           "charge", "promptTokens", "completionTokens"
      FROM "FailedRequest" WHERE "organizationId" IS NOT NULL AND "bucket" IS NOT NULL AND "charge" > 0
  ) spend
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
