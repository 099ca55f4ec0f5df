-- Spend rollups by more dimensions (issue 18, point 5): channel, run and upstream model join the
-- group key (run mode is the run's, settlement the bucket's: both derived at read time), and every
-- failed request of an organization is counted ("failedRequests", "failedCharge" = its charge) so
-- failure series come from the rollups too. A failed request refused before a balance was chosen has
-- no bucket: "bucket" becomes nullable. What "spend" and "requests" sum is unchanged (receipts plus
-- charged failed requests, their tokens included), so spendSeries reads them as before.
--
-- The group key changes, so both rollups are rebuilt from the rows. Writers are locked out for the
-- rebuild (the migration runs in one transaction): a row is either committed before the rebuild reads
-- and counted by it, or written after this commits and counted by the new triggers, never both.
LOCK TABLE "Receipt", "FailedRequest" IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE "SpendRollupHourly", "SpendRollupDaily" IN ACCESS EXCLUSIVE MODE;

ALTER TABLE "SpendRollupHourly"
  ADD COLUMN "channelId" TEXT,
  ADD COLUMN "runId" TEXT,
  ADD COLUMN "upstreamModel" TEXT,
  ADD COLUMN "failedRequests" BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN "failedCharge" BIGINT NOT NULL DEFAULT 0,
  ALTER COLUMN "bucket" DROP NOT NULL,
  DROP CONSTRAINT "SpendRollupHourly_group_key",
  -- Failed requests may lack a key, route, model or bucket: NULLs are one group, as in GROUP BY.
  ADD CONSTRAINT "SpendRollupHourly_group_key" UNIQUE NULLS NOT DISTINCT ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency");

ALTER TABLE "SpendRollupDaily"
  ADD COLUMN "channelId" TEXT,
  ADD COLUMN "runId" TEXT,
  ADD COLUMN "upstreamModel" TEXT,
  ADD COLUMN "failedRequests" BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN "failedCharge" BIGINT NOT NULL DEFAULT 0,
  ALTER COLUMN "bucket" DROP NOT NULL,
  DROP CONSTRAINT "SpendRollupDaily_group_key",
  -- Failed requests may lack a key, route, model or bucket: NULLs are one group, as in GROUP BY.
  ADD CONSTRAINT "SpendRollupDaily_group_key" UNIQUE NULLS NOT DISTINCT ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency");

-- Rows are upserted in key order so concurrent writers lock rollup rows in the same order.
CREATE OR REPLACE FUNCTION tg_spend_rollup_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           -SUM("charge"), -SUM(1), -SUM("promptTokens"), -SUM("completionTokens"), -SUM("cachedPromptTokens"), -SUM("cacheWriteTokens"), -SUM("audioPromptTokens"), -SUM("reasoningTokens"), -SUM("audioCompletionTokens"), -SUM(0), -SUM(0)
      FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           -SUM("charge"), -SUM(1), -SUM("promptTokens"), -SUM("completionTokens"), -SUM("cachedPromptTokens"), -SUM("cacheWriteTokens"), -SUM("audioPromptTokens"), -SUM("reasoningTokens"), -SUM("audioCompletionTokens"), -SUM(0), -SUM(0)
      FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           SUM("charge"), SUM(1), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM(0), SUM(0)
      FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           SUM("charge"), SUM(1), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM(0), SUM(0)
      FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
  END IF;
  RETURN NULL;
END $$;

-- Every failed request of an organization counts as a failure; only a charged one counts as spend (the same rows as their CHARGE entries).
CREATE OR REPLACE FUNCTION tg_spend_rollup_failed_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL::text, "bucket", "currency",
           -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END), -SUM(0), -SUM(0), -SUM(0), -SUM(0), -SUM(0), -SUM(1), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END)
      FROM old_rows WHERE "organizationId" IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL::text, "bucket", "currency",
           -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END), -SUM(0), -SUM(0), -SUM(0), -SUM(0), -SUM(0), -SUM(1), -SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END)
      FROM old_rows WHERE "organizationId" IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL::text, "bucket", "currency",
           SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END), SUM(0), SUM(0), SUM(0), SUM(0), SUM(0), SUM(1), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END)
      FROM new_rows WHERE "organizationId" IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
    INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                                "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
    SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL::text, "bucket", "currency",
           SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END), SUM(0), SUM(0), SUM(0), SUM(0), SUM(0), SUM(1), SUM(CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END)
      FROM new_rows WHERE "organizationId" IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
      "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
  END IF;
  RETURN NULL;
END $$;

TRUNCATE "SpendRollupHourly", "SpendRollupDaily";

INSERT INTO "SpendRollupHourly" ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                         "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
SELECT "organizationId", date_trunc('hour', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
       SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
  FROM (
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           "charge" AS "spend", 1 AS "requests", "promptTokens" AS "promptTokens", "completionTokens" AS "completionTokens", "cachedPromptTokens" AS "cachedPromptTokens", "cacheWriteTokens" AS "cacheWriteTokens", "audioPromptTokens" AS "audioPromptTokens", "reasoningTokens" AS "reasoningTokens", "audioCompletionTokens" AS "audioCompletionTokens", 0 AS "failedRequests", 0 AS "failedCharge"
      FROM "Receipt"
    UNION ALL
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL, "bucket", "currency",
           CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END, 0, 0, 0, 0, 0, 1, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END
      FROM "FailedRequest" WHERE "organizationId" IS NOT NULL
  ) spend
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11;

INSERT INTO "SpendRollupDaily" ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                         "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
SELECT "organizationId", date_trunc('day', "createdAt"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
       SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
  FROM (
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
           "charge" AS "spend", 1 AS "requests", "promptTokens" AS "promptTokens", "completionTokens" AS "completionTokens", "cachedPromptTokens" AS "cachedPromptTokens", "cacheWriteTokens" AS "cacheWriteTokens", "audioPromptTokens" AS "audioPromptTokens", "reasoningTokens" AS "reasoningTokens", "audioCompletionTokens" AS "audioCompletionTokens", 0 AS "failedRequests", 0 AS "failedCharge"
      FROM "Receipt"
    UNION ALL
    SELECT "organizationId", "createdAt", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", NULL, "bucket", "currency",
           CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN 1 ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "promptTokens" ELSE 0 END, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "completionTokens" ELSE 0 END, 0, 0, 0, 0, 0, 1, CASE WHEN ("bucket" IS NOT NULL AND "charge" > 0) THEN "charge" ELSE 0 END
      FROM "FailedRequest" WHERE "organizationId" IS NOT NULL
  ) spend
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11;
