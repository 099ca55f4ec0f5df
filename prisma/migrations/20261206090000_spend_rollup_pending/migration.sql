-- Spend rollups without an upsert per write (issue 16): a write's trigger appends its deltas, summed,
-- as one row here; each gateway folds the rows into the rollups about once a second
-- (tg_spend_rollup_fold in prisma/functions.sql, which also holds the new trigger bodies). Reports
-- read the views below, a rollup plus what is pending for it, so they stay exact between folds.
-- The trigger functions switch to queuing in this transaction (the same text as in functions.sql),
-- so from its commit every write queues: an instance of the previous release still writing queues
-- too, and reads the rollups without the queue (up to ROLLUP_FOLD_MS behind) until it is replaced.
CREATE TABLE "SpendRollupPending" (
    "id"     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "deltas" tg_spend_delta[] NOT NULL
);

CREATE VIEW "SpendRollupHourlyLive" AS
  SELECT "organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge"
    FROM "SpendRollupHourly"
  UNION ALL
  SELECT d."organizationId", d."hour", d."keyId", d."projectId", d."routeId", d."channelId", d."runId", d."requestedModel", d."upstreamModel", d."bucket", d."currency", d."spend", d."requests", d."promptTokens", d."completionTokens", d."cachedPromptTokens", d."cacheWriteTokens", d."audioPromptTokens", d."reasoningTokens", d."audioCompletionTokens", d."failedRequests", d."failedCharge"
    FROM "SpendRollupPending" p, unnest(p.deltas) AS d;

CREATE VIEW "SpendRollupDailyLive" AS
  SELECT "organizationId", "day", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge"
    FROM "SpendRollupDaily"
  UNION ALL
  SELECT d."organizationId", date_trunc('day', d."hour")::timestamp(3), d."keyId", d."projectId", d."routeId", d."channelId", d."runId", d."requestedModel", d."upstreamModel", d."bucket", d."currency", d."spend", d."requests", d."promptTokens", d."completionTokens", d."cachedPromptTokens", d."cacheWriteTokens", d."audioPromptTokens", d."reasoningTokens", d."audioCompletionTokens", d."failedRequests", d."failedCharge"
    FROM "SpendRollupPending" p, unnest(p.deltas) AS d;

CREATE VIEW "SpendRollupDailyByKeyLive" AS
  SELECT "organizationId", "day", "keyId", "projectId", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge"
    FROM "SpendRollupDailyByKey"
  UNION ALL
  SELECT d."organizationId", date_trunc('day', d."hour")::timestamp(3), d."keyId", d."projectId", d."bucket", d."currency", d."spend", d."requests", d."promptTokens", d."completionTokens", d."cachedPromptTokens", d."cacheWriteTokens", d."audioPromptTokens", d."reasoningTokens", d."audioCompletionTokens", d."failedRequests", d."failedCharge"
    FROM "SpendRollupPending" p, unnest(p.deltas) AS d;

CREATE VIEW "SpendRollupHourlyByModelLive" AS
  SELECT "organizationId", "hour", "requestedModel", "upstreamModel", "bucket", "currency", "spend", "requests", "promptTokens", "completionTokens", "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "failedRequests", "failedCharge"
    FROM "SpendRollupHourlyByModel"
  UNION ALL
  SELECT d."organizationId", d."hour", d."requestedModel", d."upstreamModel", d."bucket", d."currency", d."spend", d."requests", d."promptTokens", d."completionTokens", d."cachedPromptTokens", d."cacheWriteTokens", d."audioPromptTokens", d."reasoningTokens", d."audioCompletionTokens", d."failedRequests", d."failedCharge"
    FROM "SpendRollupPending" p, unnest(p.deltas) AS d;

CREATE OR REPLACE FUNCTION tg_spend_rollup_queue(p_rows tg_spend_delta[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_rows IS NULL OR cardinality(p_rows) = 0 THEN RETURN; END IF;
  INSERT INTO "SpendRollupPending" (deltas)
  SELECT array_agg(ROW("organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                       s."spend", s."requests", s."promptTokens", s."completionTokens", s."cachedPromptTokens", s."cacheWriteTokens", s."audioPromptTokens",
                       s."reasoningTokens", s."audioCompletionTokens", s."failedRequests", s."failedCharge")::tg_spend_delta)
    FROM (SELECT "organizationId", "hour", "keyId", "projectId", "routeId", "channelId", "runId", "requestedModel", "upstreamModel", "bucket", "currency",
                 SUM("spend") AS "spend", SUM("requests") AS "requests", SUM("promptTokens") AS "promptTokens", SUM("completionTokens") AS "completionTokens",
                 SUM("cachedPromptTokens") AS "cachedPromptTokens", SUM("cacheWriteTokens") AS "cacheWriteTokens", SUM("audioPromptTokens") AS "audioPromptTokens",
                 SUM("reasoningTokens") AS "reasoningTokens", SUM("audioCompletionTokens") AS "audioCompletionTokens", SUM("failedRequests") AS "failedRequests",
                 SUM("failedCharge") AS "failedCharge"
            FROM unnest(p_rows) GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11) s;
END $$;

CREATE OR REPLACE FUNCTION tg_spend_rollup_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  removed tg_spend_delta[];
  added tg_spend_delta[];
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN SELECT array_agg(tg_receipt_spend_delta(o, -1)) INTO removed FROM old_rows o; END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN SELECT array_agg(tg_receipt_spend_delta(n, 1)) INTO added FROM new_rows n; END IF;
  PERFORM tg_spend_rollup_queue(removed || added);
  RETURN NULL;
END $$;

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
  PERFORM tg_spend_rollup_queue(removed || added);
  RETURN NULL;
END $$;
