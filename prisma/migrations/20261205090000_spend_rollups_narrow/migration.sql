-- Narrow spend rollups (issue 18: the series benchmark). The wide rollups key on every dimension, so
-- a day of 200 keys x 3 models holds about 1,400 rows and a 30-day chart by key reads 42,000 of them.
-- A report whose groups and filters need only keys and projects reads "SpendRollupDailyByKey"; one
-- that needs only models reads "SpendRollupHourlyByModel" (bucket, settlement and currency are in
-- every rollup). The triggers add to all four in one statement (tg_spend_rollup_add in
-- prisma/functions.sql): two more upserted rows per write batch (more when it spans keys or models).
--
-- The narrow rollups are filled from the wide ones, which equal the rows. Writers are locked out until
-- this commits, and the trigger functions are redefined here (the same text as functions.sql), so a
-- row is either counted by the fill or, written after this commits, by the new triggers; never both,
-- never neither (an instance of the previous release still writing meets the new functions at once).
LOCK TABLE "Receipt", "FailedRequest" IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE "SpendRollupDailyByKey" (
    "organizationId"          TEXT NOT NULL,
    "day"                     TIMESTAMP(3) NOT NULL,
    "keyId"                   TEXT,
    "projectId"               TEXT,
    "bucket"                  "BalanceBucket",
    "currency"                TEXT,
    "spend"                   BIGINT NOT NULL DEFAULT 0,
    "requests"                BIGINT NOT NULL DEFAULT 0,
    "promptTokens"            BIGINT NOT NULL DEFAULT 0,
    "completionTokens"        BIGINT NOT NULL DEFAULT 0,
    "cachedPromptTokens"      BIGINT NOT NULL DEFAULT 0,
    "cacheWriteTokens"        BIGINT NOT NULL DEFAULT 0,
    "audioPromptTokens"       BIGINT NOT NULL DEFAULT 0,
    "reasoningTokens"         BIGINT NOT NULL DEFAULT 0,
    "audioCompletionTokens"   BIGINT NOT NULL DEFAULT 0,
    "failedRequests"          BIGINT NOT NULL DEFAULT 0,
    "failedCharge"            BIGINT NOT NULL DEFAULT 0,
    -- NULLs (a failed request without a key, a model or a bucket) are one group, as in GROUP BY.
    CONSTRAINT "SpendRollupDailyByKey_group_key" UNIQUE NULLS NOT DISTINCT ("organizationId", "day", "keyId", "projectId", "bucket", "currency")
);

CREATE TABLE "SpendRollupHourlyByModel" (
    "organizationId"          TEXT NOT NULL,
    "hour"                    TIMESTAMP(3) NOT NULL,
    "requestedModel"          TEXT,
    "upstreamModel"           TEXT,
    "bucket"                  "BalanceBucket",
    "currency"                TEXT,
    "spend"                   BIGINT NOT NULL DEFAULT 0,
    "requests"                BIGINT NOT NULL DEFAULT 0,
    "promptTokens"            BIGINT NOT NULL DEFAULT 0,
    "completionTokens"        BIGINT NOT NULL DEFAULT 0,
    "cachedPromptTokens"      BIGINT NOT NULL DEFAULT 0,
    "cacheWriteTokens"        BIGINT NOT NULL DEFAULT 0,
    "audioPromptTokens"       BIGINT NOT NULL DEFAULT 0,
    "reasoningTokens"         BIGINT NOT NULL DEFAULT 0,
    "audioCompletionTokens"   BIGINT NOT NULL DEFAULT 0,
    "failedRequests"          BIGINT NOT NULL DEFAULT 0,
    "failedCharge"            BIGINT NOT NULL DEFAULT 0,
    -- NULLs (a failed request without a key, a model or a bucket) are one group, as in GROUP BY.
    CONSTRAINT "SpendRollupHourlyByModel_group_key" UNIQUE NULLS NOT DISTINCT ("organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency")
);

-- One row of what a receipt or failed request adds to (or takes off) the rollups, at the hourly grain.
CREATE TYPE tg_spend_delta AS (
    "organizationId" TEXT, "hour" TIMESTAMP(3), "keyId" TEXT, "projectId" TEXT, "routeId" TEXT, "channelId" TEXT, "runId" TEXT,
    "requestedModel" TEXT, "upstreamModel" TEXT, "bucket" "BalanceBucket", "currency" TEXT,
    "spend" BIGINT, "requests" BIGINT, "promptTokens" BIGINT, "completionTokens" BIGINT, "cachedPromptTokens" BIGINT, "cacheWriteTokens" BIGINT, "audioPromptTokens" BIGINT, "reasoningTokens" BIGINT, "audioCompletionTokens" BIGINT, "failedRequests" BIGINT, "failedCharge" BIGINT
);
-- What one receipt or failed request adds to the rollups (sign 1) or takes off them (sign -1), at the
-- hourly grain. A receipt is spend; a failed request is a failure, and spend only when charged (the
-- same rows as its CHARGE entry), without token classes or an upstream model.
CREATE OR REPLACE FUNCTION tg_receipt_spend_delta(r "Receipt", sign int) RETURNS tg_spend_delta LANGUAGE sql IMMUTABLE AS $$
  SELECT ROW(r."organizationId", date_trunc('hour', r."createdAt"), r."keyId", r."projectId", r."routeId", r."channelId", r."runId", r."requestedModel", r."upstreamModel", r.bucket, r.currency,
             sign * r.charge, sign, sign * r."promptTokens", sign * r."completionTokens", sign * r."cachedPromptTokens", sign * r."cacheWriteTokens",
             sign * r."audioPromptTokens", sign * r."reasoningTokens", sign * r."audioCompletionTokens", 0, 0)::tg_spend_delta
$$;

CREATE OR REPLACE FUNCTION tg_failed_request_spend_delta(f "FailedRequest", sign int) RETURNS tg_spend_delta LANGUAGE sql IMMUTABLE AS $$
  SELECT ROW(f."organizationId", date_trunc('hour', f."createdAt"), f."keyId", f."projectId", f."routeId", f."channelId", f."runId", f."requestedModel", NULL, f.bucket, f.currency,
             CASE WHEN charged THEN sign * f.charge ELSE 0 END, CASE WHEN charged THEN sign ELSE 0 END,
             CASE WHEN charged THEN sign * f."promptTokens" ELSE 0 END, CASE WHEN charged THEN sign * f."completionTokens" ELSE 0 END,
             0, 0, 0, 0, 0, sign, CASE WHEN charged THEN sign * f.charge ELSE 0 END)::tg_spend_delta
    FROM (SELECT f.bucket IS NOT NULL AND f.charge > 0 AS charged) c
$$;

-- Adds one statement's deltas to every rollup: the wide ones (every dimension, by UTC hour and UTC
-- day) and the narrow ones a report reads when its groups and filters need only keys and projects
-- (by day) or only models (by hour), so a chart of 200 keys reads ~400 rows a day, not ~1,400.
-- Each upsert sums its own grain first (one row per group: ON CONFLICT touches a row once) and goes
-- in key order, so concurrent writers lock rollup rows in the same order. One statement: the deltas
-- are unnested once and the four upserts run in one executor pass (cheaper than four statements).
CREATE OR REPLACE FUNCTION tg_spend_rollup_add(p_rows tg_spend_delta[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_rows IS NULL OR cardinality(p_rows) = 0 THEN RETURN; END IF;
  WITH d AS MATERIALIZED (SELECT * FROM unnest(p_rows)),
  hourly AS (
  INSERT INTO "SpendRollupHourly" AS r ("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
  SELECT "organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
    FROM d GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
  ON CONFLICT ON CONSTRAINT "SpendRollupHourly_group_key" DO UPDATE SET
    "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge"
  ),
  daily AS (
  INSERT INTO "SpendRollupDaily" AS r ("organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
  SELECT "organizationId", date_trunc('day', "hour"), "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
    FROM d GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
  ON CONFLICT ON CONSTRAINT "SpendRollupDaily_group_key" DO UPDATE SET
    "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge"
  ),
  daily_by_key AS (
  INSERT INTO "SpendRollupDailyByKey" AS r ("organizationId", "day", "keyId", "projectId", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
  SELECT "organizationId", date_trunc('day', "hour"), "keyId", "projectId", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
    FROM d GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT ON CONSTRAINT "SpendRollupDailyByKey_group_key" DO UPDATE SET
    "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge"
  )
  INSERT INTO "SpendRollupHourlyByModel" AS r ("organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
  SELECT "organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
    FROM d GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT ON CONSTRAINT "SpendRollupHourlyByModel_group_key" DO UPDATE SET
    "spend" = r."spend" + EXCLUDED."spend", "requests" = r."requests" + EXCLUDED."requests", "promptTokens" = r."promptTokens" + EXCLUDED."promptTokens", "completionTokens" = r."completionTokens" + EXCLUDED."completionTokens", "cachedPromptTokens" = r."cachedPromptTokens" + EXCLUDED."cachedPromptTokens", "cacheWriteTokens" = r."cacheWriteTokens" + EXCLUDED."cacheWriteTokens", "audioPromptTokens" = r."audioPromptTokens" + EXCLUDED."audioPromptTokens", "reasoningTokens" = r."reasoningTokens" + EXCLUDED."reasoningTokens", "audioCompletionTokens" = r."audioCompletionTokens" + EXCLUDED."audioCompletionTokens", "failedRequests" = r."failedRequests" + EXCLUDED."failedRequests", "failedCharge" = r."failedCharge" + EXCLUDED."failedCharge";
END $$;

-- One trigger per event (transition tables allow no more); UPDATE and DELETE are rare (receipts are
-- history) but handled, so the rollups equal the rows whatever happens to them.
CREATE OR REPLACE FUNCTION tg_spend_rollup_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  removed tg_spend_delta[];
  added tg_spend_delta[];
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN SELECT array_agg(tg_receipt_spend_delta(o, -1)) INTO removed FROM old_rows o; END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN SELECT array_agg(tg_receipt_spend_delta(n, 1)) INTO added FROM new_rows n; END IF;
  PERFORM tg_spend_rollup_add(removed || added);
  RETURN NULL;
END $$;

-- Failed requests without an organization (refused before a key was known) are in no rollup.
CREATE OR REPLACE FUNCTION tg_spend_rollup_failed_request() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  removed tg_spend_delta[];
  added tg_spend_delta[];
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    SELECT array_agg(tg_failed_request_spend_delta(o, -1)) INTO removed FROM old_rows o WHERE o."organizationId" IS NOT NULL;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    SELECT array_agg(tg_failed_request_spend_delta(n, 1)) INTO added FROM new_rows n WHERE n."organizationId" IS NOT NULL;
  END IF;
  PERFORM tg_spend_rollup_add(removed || added);
  RETURN NULL;
END $$;

-- The fill: each narrow rollup is the sum of the wide one of its grain over the dimensions it drops.
INSERT INTO "SpendRollupDailyByKey" ("organizationId", "day", "keyId", "projectId", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
SELECT "organizationId", "day", "keyId", "projectId", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
  FROM "SpendRollupDaily" GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO "SpendRollupHourlyByModel" ("organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge")
SELECT "organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency", SUM("spend"), SUM("requests"), SUM("promptTokens"), SUM("completionTokens"), SUM("cachedPromptTokens"), SUM("cacheWriteTokens"), SUM("audioPromptTokens"), SUM("reasoningTokens"), SUM("audioCompletionTokens"), SUM("failedRequests"), SUM("failedCharge")
  FROM "SpendRollupHourly" GROUP BY 1, 2, 3, 4, 5, 6;
