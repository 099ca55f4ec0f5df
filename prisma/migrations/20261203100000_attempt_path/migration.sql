-- The path of every request (issue 17, point 5): each Receipt and FailedRequest lists its upstream
-- attempts, in order, in a JSONB column of its own row ("attemptPath"; no row per attempt): an array
-- of {"channelId", "role" (PRIMARY | BACKUP), "status" (the upstream's HTTP status, null when no
-- response came), "cause" (ours: ANSWERED, CONNECT_ERROR, TIMEOUT, UPSTREAM_5XX, ...; never the
-- upstream's text), "latencyMs"}. Which attempt was charged is not stored: a request is charged once,
-- for its last attempt (src/requests/attempts.ts). Rows written before this migration get the
-- default, an empty path (adding a column with a constant default rewrites no row).
-- Bounded: a request makes at most 1 + retry ceiling (at most 10) attempts; the CHECK allows 16
-- (NOT VALID: the existing rows, all '[]', are not scanned).
--
-- tg_record_batch is redefined (signature unchanged) from its latest definition
-- (20261202100000_token_classes), changed only in its two inserts: each also writes "attemptPath"
-- from the batch's JSON ('[]' when a row has none).

ALTER TABLE "Receipt" ADD COLUMN "attemptPath" JSONB NOT NULL DEFAULT '[]';
ALTER TABLE "FailedRequest" ADD COLUMN "attemptPath" JSONB NOT NULL DEFAULT '[]';
ALTER TABLE "Receipt" ADD CONSTRAINT "Receipt_attemptPath_bounded"
  CHECK (CASE WHEN jsonb_typeof("attemptPath") = 'array' THEN jsonb_array_length("attemptPath") <= 16 ELSE false END) NOT VALID;
ALTER TABLE "FailedRequest" ADD CONSTRAINT "FailedRequest_attemptPath_bounded"
  CHECK (CASE WHEN jsonb_typeof("attemptPath") = 'array' THEN jsonb_array_length("attemptPath") <= 16 ELSE false END) NOT VALID;

CREATE OR REPLACE FUNCTION tg_record_batch(
  p_now timestamp(3),
  p_receipts json,
  p_failures json,
  p_request_ids text[], p_bucket_ids text[], p_charges bigint[], p_receipt_ids text[], p_failed_ids text[], p_ledger_ids text[], p_balance_lease_ids text[],
  p_lease_ids text[], p_lease_amounts bigint[],
  p_counter_scopes text[], p_counter_scope_ids text[], p_counter_buckets text[], p_counter_windows timestamp(3)[], p_counter_lease_ids text[], p_counter_amounts bigint[])
RETURNS TABLE (request_id text, ledger_entry_id text, balance_after bigint,
               scope text, scope_id text, bucket text, window_start text, spent bigint, held bigint, cap bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_live text[];
  v_gone text[];
BEGIN
  IF EXISTS (SELECT 1 FROM unnest(p_charges) AS c(charge) WHERE c.charge < 0)
     OR EXISTS (SELECT 1 FROM unnest(p_lease_amounts) AS c(amount) WHERE c.amount < 0)
     OR EXISTS (SELECT 1 FROM unnest(p_counter_amounts) AS c(amount) WHERE c.amount < 0) THEN
    RAISE EXCEPTION 'TG_BAD_AMOUNT: a charge must be >= 0';
  END IF;
  -- The bucket rows first, in id order: every function that touches leases or counters does.
  PERFORM 1 FROM "WalletBucket" b WHERE b.id = ANY(p_bucket_ids) ORDER BY b.id FOR UPDATE;

  -- Every lease charged must still exist (see the header); checked under the bucket locks.
  SELECT array_agg(d.id ORDER BY d.id) INTO v_gone
    FROM (SELECT DISTINCT x.id FROM unnest(p_lease_ids) AS x(id)) d
   WHERE NOT EXISTS (SELECT 1 FROM "BudgetLease" l WHERE l.id = d.id);
  IF v_gone IS NOT NULL THEN
    RAISE EXCEPTION 'TG_LEASE_GONE: %', array_to_string(v_gone, ',');
  END IF;

  IF p_receipts IS NOT NULL THEN
    INSERT INTO "Receipt" (id, "requestId", "organizationId", "keyId", "projectId", "runId", "routeId", "channelId", "requestedModel", "upstreamModel",
                           endpoint, "channelRole", fallback, attempts, bucket, currency, "promptTokens", "completionTokens", "priceSnapshotId",
                           charge, stream, "latencyMs", status, "usageExceededReservation",
                           "cachedPromptTokens", "cacheWriteTokens", "audioPromptTokens", "reasoningTokens", "audioCompletionTokens", "upstreamCost", "attemptPath", "createdAt")
    SELECT x.id, x."requestId", x."organizationId", x."keyId", x."projectId", x."runId", x."routeId", x."channelId", x."requestedModel", x."upstreamModel",
           x.endpoint, x."channelRole"::"ChannelRole", x.fallback, x.attempts, x.bucket::"BalanceBucket", x.currency, x."promptTokens", x."completionTokens", x."priceSnapshotId",
           x.charge::bigint, x.stream, x."latencyMs", x.status, x."usageExceededReservation",
           COALESCE(x."cachedPromptTokens", 0), COALESCE(x."cacheWriteTokens", 0), COALESCE(x."audioPromptTokens", 0), COALESCE(x."reasoningTokens", 0),
           COALESCE(x."audioCompletionTokens", 0), x."upstreamCost", COALESCE(x."attemptPath", '[]'::jsonb), p_now
      FROM json_to_recordset(p_receipts) AS x(id text, "requestId" text, "organizationId" text, "keyId" text, "projectId" text, "runId" text, "routeId" text,
             "channelId" text, "requestedModel" text, "upstreamModel" text, endpoint text, "channelRole" text, fallback boolean, attempts int, bucket text,
             currency text, "promptTokens" int, "completionTokens" int, "priceSnapshotId" text, charge text, stream boolean, "latencyMs" int, status int,
             "usageExceededReservation" boolean,
             "cachedPromptTokens" int, "cacheWriteTokens" int, "audioPromptTokens" int, "reasoningTokens" int, "audioCompletionTokens" int, "upstreamCost" text,
             "attemptPath" jsonb);
  END IF;
  IF p_failures IS NOT NULL THEN
    INSERT INTO "FailedRequest" (id, "requestId", "organizationId", "keyId", "projectId", "runId", "routeId", "channelId", "requestedModel", endpoint,
                                 cause, "capScope", message, "httpStatus", "upstreamStatus", attempts, bucket, currency, "promptTokens", "completionTokens",
                                 "priceSnapshotId", charge, estimated, "attemptPath", "createdAt")
    SELECT x.id, x."requestId", x."organizationId", x."keyId", x."projectId", x."runId", x."routeId", x."channelId", x."requestedModel", x.endpoint,
           x.cause::"FailureCause", x."capScope"::"CapScope", x.message, x."httpStatus", x."upstreamStatus", x.attempts, x.bucket::"BalanceBucket", x.currency,
           x."promptTokens", x."completionTokens", x."priceSnapshotId", x.charge::bigint, x.estimated, COALESCE(x."attemptPath", '[]'::jsonb), p_now
      FROM json_to_recordset(p_failures) AS x(id text, "requestId" text, "organizationId" text, "keyId" text, "projectId" text, "runId" text, "routeId" text,
             "channelId" text, "requestedModel" text, endpoint text, cause text, "capScope" text, message text, "httpStatus" int, "upstreamStatus" int,
             attempts int, bucket text, currency text, "promptTokens" int, "completionTokens" int, "priceSnapshotId" text, charge text, estimated boolean,
             "attemptPath" jsonb);
  END IF;

  -- The charges leave the leases that still live.
  WITH u AS (
    UPDATE "BudgetLease" l SET amount = l.amount - d.amount
      FROM unnest(p_lease_ids, p_lease_amounts) AS d(id, amount)
     WHERE l.id = d.id
    RETURNING l.id
  )
  SELECT COALESCE(array_agg(u.id), ARRAY[]::text[]) INTO v_live FROM u;

  -- A lapsed lease's counter may be of a window nobody leased since: make sure it exists (rare).
  IF cardinality(v_live) < cardinality(p_lease_ids) THEN
    INSERT INTO "SpendCounter" (scope, "scopeId", bucket, "windowStart")
    SELECT DISTINCT x.scope::"CapScope", x.scope_id, w.bucket, x.win
      FROM unnest(p_counter_scopes, p_counter_scope_ids, p_counter_buckets, p_counter_windows) AS x(scope, scope_id, bucket_id, win)
      JOIN "WalletBucket" w ON w.id = x.bucket_id
     ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING;
  END IF;

  -- Balances and ledger entries: each entry's running balance in request order.
  RETURN QUERY
  WITH per_bucket AS (
    SELECT c.bucket_id, sum(c.charge) AS total, COALESCE(sum(c.charge) FILTER (WHERE c.lease_id = ANY(v_live)), 0) AS unheld
      FROM unnest(p_bucket_ids, p_charges, p_balance_lease_ids) AS c(bucket_id, charge, lease_id)
     WHERE c.charge > 0
     GROUP BY c.bucket_id
  ), b AS (
    UPDATE "WalletBucket" w SET balance = w.balance - p.total, held = w.held - p.unheld, "updatedAt" = p_now
      FROM per_bucket p WHERE w.id = p.bucket_id
    RETURNING w.id, w."organizationId", w.balance + p.total AS before
  ), ins AS (
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey", "receiptId", "failedRequestId", "createdAt")
    SELECT c.ledger_id, b."organizationId", c.bucket_id, 'CHARGE', -c.charge,
           b.before - sum(c.charge) OVER (PARTITION BY c.bucket_id ORDER BY c.pos ROWS UNBOUNDED PRECEDING),
           'request:' || c.request_id, c.receipt_id, c.failed_id, p_now
      FROM unnest(p_request_ids, p_bucket_ids, p_charges, p_receipt_ids, p_failed_ids, p_ledger_ids) WITH ORDINALITY
             AS c(request_id, bucket_id, charge, receipt_id, failed_id, ledger_id, pos)
      JOIN b ON b.id = c.bucket_id
     WHERE c.charge > 0
     ORDER BY c.bucket_id, c.pos
    RETURNING "idempotencyKey", id, "balanceAfter"
  )
  SELECT substr(ins."idempotencyKey", 9), ins.id, ins."balanceAfter", NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint FROM ins;

  -- The counters, aggregated; returned as the batch left them (live events are announced from these).
  RETURN QUERY
  WITH per_counter AS (
    SELECT x.scope::"CapScope" AS scope, x.scope_id, w.bucket, x.win,
           sum(x.amount) AS spent, COALESCE(sum(x.amount) FILTER (WHERE x.lease_id = ANY(v_live)), 0) AS unheld
      FROM unnest(p_counter_scopes, p_counter_scope_ids, p_counter_buckets, p_counter_windows, p_counter_lease_ids, p_counter_amounts)
             AS x(scope, scope_id, bucket_id, win, lease_id, amount)
      JOIN "WalletBucket" w ON w.id = x.bucket_id
     WHERE x.amount > 0
     GROUP BY 1, 2, 3, 4
  ), u AS (
    UPDATE "SpendCounter" c SET spent = c.spent + p.spent, held = c.held - p.unheld
      FROM per_counter p
     WHERE c.scope = p.scope AND c."scopeId" = p.scope_id AND c.bucket = p.bucket AND c."windowStart" = p.win
    RETURNING c.scope, c."scopeId", c.bucket, c."windowStart", c.spent, c.held
  )
  SELECT NULL::text, NULL::text, NULL::bigint, u.scope::text, u."scopeId", u.bucket::text, to_char(u."windowStart", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), u.spent, u.held,
         (SELECT k.amount FROM "BudgetCap" k WHERE k.scope = u.scope AND k."scopeId" = u."scopeId" AND k.bucket = u.bucket)
    FROM u;
END $$;
