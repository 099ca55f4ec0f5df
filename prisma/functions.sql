-- The current definition of every SQL function of tokengate, in one place.
--
-- Migrations (prisma/migrations) own the tables, indexes and triggers; this file owns the
-- functions. The migrator (src/db/migrate.ts) applies it after the migrations whenever its
-- checksum differs from the one it last applied (table "_tg_functions"), in one transaction,
-- under the same advisory lock, so several instances starting at once apply it once.
--
-- Earlier migrations still create older versions of some of these functions (they are history:
-- an applied migration's checksum must not change); on a fresh database they run first and this
-- file replaces them, so what runs is always what is written here.
--
-- To change a function: edit it here. CREATE OR REPLACE cannot change a function's argument or
-- result types; to change a signature, add `DROP FUNCTION IF EXISTS name(old types);` just above
-- the new definition. A migration defines no function, with one exception: a migration that changes
-- a table so that the function writing it breaks (a dropped column or unique key) also redefines
-- that function in its own transaction, with the same text as here, so no write between the
-- migration and this file meets a stale function (20261203100000_spend_rollup_dimensions does).

-- ==============================================================================================
-- Time: the clock every function and the gateway's SQL share (tests move it).
-- ==============================================================================================

CREATE OR REPLACE FUNCTION tg_now() RETURNS timestamp(3) LANGUAGE sql STABLE AS $$
  SELECT (clock_timestamp() AT TIME ZONE 'UTC')::timestamp(3)
$$;

-- ==============================================================================================
-- The ledger: append-only, and the one way an entry is posted.
-- ==============================================================================================

-- The ledger is append-only: corrections are new entries.
CREATE OR REPLACE FUNCTION tg_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'TG_LEDGER_IMMUTABLE: ledger entries are append-only (% rejected)', TG_OP;
END $$;

-- History rows (receipts, failed requests, ledger entries) name their key, project, route, channel,
-- run, price, bucket and organization without foreign keys: a key check per name cost every write
-- ~10 index probes and row locks on the hottest rows (issue 16). Those rows are never deleted by
-- tokengate (keys are revoked, channels disabled); a DELETE or TRUNCATE of one still named by
-- history is refused here instead, where it is rare. TG_ARGV: (child table, column) pairs.
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

-- Post a TOPUP / ADJUSTMENT / REFUND, idempotent by key: a replay returns the first entry
-- (created = false); the same key with another bucket, kind or amount is a conflict.
CREATE OR REPLACE FUNCTION tg_post_entry(p_bucket_id text, p_kind "LedgerKind", p_amount bigint, p_idempotency_key text,
                              p_actor_token_id text, p_memo text, p_now timestamp(3))
RETURNS TABLE (entry_id text, created boolean) LANGUAGE plpgsql AS $$
DECLARE
  e "LedgerEntry"%ROWTYPE;
  v_available bigint;
  v_balance bigint;
  v_org text;
  v_entry text;
BEGIN
  IF p_kind = 'CHARGE' THEN
    RAISE EXCEPTION 'TG_BAD_KIND: charges are written by tg_resolve_hold';
  END IF;
  -- Lock the bucket first: two replays of one key serialise here, and the second sees the first's entry.
  SELECT b.balance - b.held, b."organizationId" INTO v_available, v_org FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;
  SELECT * INTO e FROM "LedgerEntry" WHERE "idempotencyKey" = p_idempotency_key;
  IF FOUND THEN
    IF e."bucketId" <> p_bucket_id OR e.kind <> p_kind OR e.amount <> p_amount THEN
      RAISE EXCEPTION 'TG_CONFLICT: idempotency key % was used for a different entry', p_idempotency_key;
    END IF;
    RETURN QUERY SELECT e.id, false; RETURN;
  END IF;
  IF v_available + p_amount < 0 THEN
    RAISE EXCEPTION 'TG_INSUFFICIENT_BALANCE: the entry would take the available balance below zero';
  END IF;
  UPDATE "WalletBucket" SET balance = balance + p_amount, "updatedAt" = p_now
   WHERE id = p_bucket_id RETURNING balance INTO v_balance;
  BEGIN
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey", "actorTokenId", memo, "createdAt")
      VALUES (gen_random_uuid()::text, v_org, p_bucket_id, p_kind, p_amount, v_balance, p_idempotency_key, p_actor_token_id, p_memo, p_now)
      RETURNING id INTO v_entry;
  EXCEPTION WHEN unique_violation THEN
    -- The same key was committed meanwhile on another bucket.
    RAISE EXCEPTION 'TG_CONFLICT: idempotency key % was used for a different entry', p_idempotency_key;
  END;
  RETURN QUERY SELECT v_entry, true;
END $$;

-- ==============================================================================================
-- Caps: the cap that applies to a scope in a bucket.
-- ==============================================================================================

-- A cap in one bucket is never escapable through the other bucket (issue 8, point 4).
-- Rule: a scope (key daily / per request, project daily / monthly, route daily, run total, and
-- later channel daily) with a cap in one bucket and none in the other is capped at ZERO in the
-- other bucket (fail closed); an admin sets the other bucket's cap explicitly to allow it. A scope
-- with no cap in any bucket stays uncapped. Every reader of caps (reservation, GraphQL, live
-- events) goes through this one function, so what is enforced is what is shown.
CREATE OR REPLACE FUNCTION tg_effective_cap(p_scope "CapScope", p_scope_id text, p_bucket "BalanceBucket")
RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN count(*) = 0 THEN NULL
              ELSE COALESCE(max(c.amount) FILTER (WHERE c.bucket = p_bucket), 0) END
    FROM "BudgetCap" c
   WHERE c.scope = p_scope AND c."scopeId" = p_scope_id
$$;

-- ==============================================================================================
-- Leases: budget granted to one instance ahead of its requests, returned, revoked, reclaimed.
-- ==============================================================================================

-- How much to grant out of `p_left` when `p_need` is required now and `p_want` would be
-- convenient: the grant shrinks as the scope nears its cap (25 % of what is left below half use,
-- 10 % up to 80 %, 5 % beyond), never below the request at hand, so the cap is reached exactly.
CREATE OR REPLACE FUNCTION tg_lease_size(p_need bigint, p_want bigint, p_left bigint, p_cap bigint, p_used bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN p_left < p_need THEN 0
    ELSE LEAST(p_left, GREATEST(p_need, LEAST(p_want,
      CASE WHEN p_cap IS NULL THEN p_want
           WHEN p_used * 2 < p_cap THEN p_left / 4
           WHEN p_used * 5 < p_cap * 4 THEN p_left / 10
           ELSE p_left / 20 END)))
  END
$$;

CREATE OR REPLACE FUNCTION tg_lease_grant(p_instance text, p_bucket_id text, p_scopes jsonb, p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (scope text, scope_id text, window_start timestamp(3), lease_id text, granted bigint, cap bigint, refusal text, replaced text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_now timestamp(3) := COALESCE(p_now, tg_now());
  v_bucket "BalanceBucket";
  v_balance bigint;
  v_held bigint;
  v_cap bigint;
  v_used bigint;
  v_grant bigint;
  v_id text;
  v_replaced text;
  v_status "RunStatus";
  v_expires timestamp(3) := COALESCE(p_now, tg_now()) + make_interval(secs => p_ttl_ms / 1000.0);
  sc record;
  grants jsonb := '[]'::jsonb;
  g jsonb;
BEGIN
  SELECT b.bucket, b.balance, b.held INTO v_bucket, v_balance, v_held FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;
  FOR sc IN SELECT x.scope, x.scope_id, x.window_start, x.need, x.want, x.lease_id
              FROM jsonb_to_recordset(p_scopes) AS x(scope text, scope_id text, window_start timestamp(3), need bigint, want bigint, lease_id text)
             ORDER BY COALESCE(array_position(ARRAY['KEY_DAILY', 'PROJECT_DAILY', 'PROJECT_MONTHLY', 'ROUTE_DAILY', 'CHANNEL_DAILY', 'RUN_TOTAL'], x.scope), 50),
                      x.scope, x.scope_id, x.window_start LOOP
    IF sc.need < 0 OR sc.want < sc.need THEN
      RAISE EXCEPTION 'TG_BAD_AMOUNT: a lease needs 0 <= need <= want';
    END IF;
    IF sc.scope = 'RUN_TOTAL' THEN
      SELECT r.status INTO v_status FROM "Run" r WHERE r.id = sc.scope_id;
      IF v_status IS DISTINCT FROM 'ACTIVE' THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamp(3), NULL::text, NULL::bigint, NULL::bigint,
          CASE WHEN v_status = 'PAUSED' THEN 'RUN_PAUSED' ELSE 'RUN_CANCELLED' END, NULL::text; RETURN;
      END IF;
    END IF;
    IF sc.scope = 'BALANCE' THEN
      v_cap := NULL;
      IF v_balance - v_held < sc.need THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamp(3), NULL::text, NULL::bigint, NULL::bigint, 'INSUFFICIENT_BALANCE'::text, NULL::text; RETURN;
      END IF;
      v_grant := tg_lease_size(sc.need, sc.want, v_balance - v_held, v_balance, v_held);
    ELSE
      INSERT INTO "SpendCounter" (scope, "scopeId", bucket, "windowStart")
        VALUES (sc.scope::"CapScope", sc.scope_id, v_bucket, sc.window_start) ON CONFLICT DO NOTHING;
      SELECT c.spent + c.held INTO v_used FROM "SpendCounter" c
       WHERE c.scope = sc.scope::"CapScope" AND c."scopeId" = sc.scope_id AND c.bucket = v_bucket AND c."windowStart" = sc.window_start
       FOR UPDATE;
      v_cap := tg_effective_cap(sc.scope::"CapScope", sc.scope_id, v_bucket);
      IF v_cap IS NULL THEN
        v_grant := sc.want;
      ELSE
        IF v_used + sc.need > v_cap THEN
          RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamp(3), NULL::text, NULL::bigint, NULL::bigint, sc.scope, NULL::text; RETURN;
        END IF;
        v_grant := tg_lease_size(sc.need, sc.want, v_cap - v_used, v_cap, v_used);
      END IF;
    END IF;
    grants := grants || jsonb_build_object('scope', sc.scope, 'scope_id', sc.scope_id, 'window_start', sc.window_start, 'grant', v_grant, 'cap', v_cap, 'lease_id', sc.lease_id);
  END LOOP;

  FOR g IN SELECT * FROM jsonb_array_elements(grants) LOOP
    IF g->>'scope' = 'BALANCE' THEN
      UPDATE "WalletBucket" SET held = held + (g->>'grant')::bigint, "updatedAt" = v_now WHERE id = p_bucket_id;
    ELSE
      UPDATE "SpendCounter" c SET held = c.held + (g->>'grant')::bigint
       WHERE c.scope = (g->>'scope')::"CapScope" AND c."scopeId" = g->>'scope_id' AND c.bucket = v_bucket
         AND c."windowStart" = (g->>'window_start')::timestamp(3);
    END IF;
    v_id := NULL;
    v_replaced := NULL;
    IF g->>'lease_id' IS NOT NULL THEN
      UPDATE "BudgetLease" l SET amount = l.amount + (g->>'grant')::bigint, "expiresAt" = GREATEST(l."expiresAt", v_expires)
       WHERE l.id = g->>'lease_id' AND l."instanceId" = p_instance AND NOT l.revoked
         AND l."bucketId" = p_bucket_id AND l.scope = g->>'scope' AND l."scopeId" = g->>'scope_id'
         AND l."windowStart" = (g->>'window_start')::timestamp(3)
      RETURNING l.id INTO v_id;
      IF v_id IS NULL THEN
        v_replaced := CASE WHEN EXISTS (SELECT 1 FROM "BudgetLease" l WHERE l.id = g->>'lease_id') THEN 'revoked' ELSE 'gone' END;
      END IF;
    END IF;
    IF v_id IS NULL THEN
      INSERT INTO "BudgetLease" ("instanceId", "bucketId", scope, "scopeId", "windowStart", amount, "expiresAt", "createdAt")
        VALUES (p_instance, p_bucket_id, g->>'scope', g->>'scope_id', (g->>'window_start')::timestamp(3), (g->>'grant')::bigint, v_expires, v_now)
        RETURNING id INTO v_id;
    END IF;
    RETURN QUERY SELECT g->>'scope', g->>'scope_id', (g->>'window_start')::timestamp(3), v_id, (g->>'grant')::bigint, (g->>'cap')::bigint, NULL::text, v_replaced;
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tg_lease_renew(p_instance text, p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (id text, revoked boolean) LANGUAGE sql AS $$
  UPDATE "BudgetLease" SET "expiresAt" = COALESCE(p_now, tg_now()) + make_interval(secs => p_ttl_ms / 1000.0)
   WHERE "instanceId" = p_instance RETURNING id, revoked
$$;

-- p_returns: JSON array of {lease_id, amount}; amount NULL = the whole lease (its row goes). A
-- partial return gives back at most what the lease holds. Returns how much went back in all.
CREATE OR REPLACE FUNCTION tg_lease_return(p_returns jsonb, p_now timestamp(3))
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  r record;
  l "BudgetLease"%ROWTYPE;
  v_bucket "BalanceBucket";
  v_back bigint;
  v_total bigint := 0;
  v_now timestamp(3) := COALESCE(p_now, tg_now());
BEGIN
  -- Bucket rows first, in id order (the lock order of every lease function).
  PERFORM 1 FROM "WalletBucket" b
   WHERE b.id IN (SELECT bl."bucketId" FROM jsonb_to_recordset(p_returns) AS x(lease_id text) JOIN "BudgetLease" bl ON bl.id = x.lease_id)
   ORDER BY b.id FOR UPDATE;
  FOR r IN SELECT x.lease_id, x.amount FROM jsonb_to_recordset(p_returns) AS x(lease_id text, amount bigint)
            JOIN "BudgetLease" b ON b.id = x.lease_id
           ORDER BY b."bucketId", b.scope = 'BALANCE' DESC, b.scope, b."scopeId", b."windowStart" LOOP
    SELECT * INTO l FROM "BudgetLease" WHERE id = r.lease_id FOR UPDATE;
    IF NOT FOUND THEN CONTINUE; END IF;
    SELECT b.bucket INTO v_bucket FROM "WalletBucket" b WHERE b.id = l."bucketId";
    v_back := CASE WHEN r.amount IS NULL THEN l.amount ELSE LEAST(GREATEST(r.amount, 0), l.amount) END;
    PERFORM tg_lease_unhold(l."bucketId", v_bucket, l.scope, l."scopeId", l."windowStart", v_back, v_now);
    IF r.amount IS NULL THEN
      DELETE FROM "BudgetLease" WHERE id = l.id;
    ELSE
      UPDATE "BudgetLease" SET amount = amount - v_back WHERE id = l.id;
    END IF;
    v_total := v_total + v_back;
  END LOOP;
  RETURN v_total;
END $$;

CREATE OR REPLACE FUNCTION tg_lease_revoke(p_scope text, p_scope_id text, p_organization_id text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_count integer;
BEGIN
  PERFORM 1 FROM "WalletBucket" b WHERE b."organizationId" = p_organization_id ORDER BY b.id FOR UPDATE;
  UPDATE "BudgetLease" SET revoked = true WHERE scope = p_scope AND "scopeId" = p_scope_id AND NOT revoked;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;

-- Takes `p_amount` of leased headroom off the held sum it was counted in.
CREATE OR REPLACE FUNCTION tg_lease_unhold(p_bucket_id text, p_bucket "BalanceBucket", p_scope text, p_scope_id text, p_window timestamp(3), p_amount bigint, p_now timestamp(3))
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_amount = 0 THEN RETURN; END IF;
  IF p_scope = 'BALANCE' THEN
    UPDATE "WalletBucket" SET held = held - p_amount, "updatedAt" = p_now WHERE id = p_bucket_id;
  ELSE
    UPDATE "SpendCounter" c SET held = c.held - p_amount
     WHERE c.scope = p_scope::"CapScope" AND c."scopeId" = p_scope_id AND c.bucket = p_bucket AND c."windowStart" = p_window;
  END IF;
END $$;

CREATE OR REPLACE FUNCTION tg_reclaim_leases(p_now timestamp(3), p_grace_ms integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  l record;
  v_bucket text;
  v_count integer := 0;
  v_before timestamp(3) := COALESCE(p_now, tg_now()) - make_interval(secs => p_grace_ms / 1000.0);
BEGIN
  FOR v_bucket IN SELECT DISTINCT bl."bucketId" FROM "BudgetLease" bl WHERE bl."expiresAt" <= v_before ORDER BY 1 LOOP
    -- In id order, as every function that touches leases locks buckets; a bucket in use waits for the next sweep.
    PERFORM 1 FROM "WalletBucket" b WHERE b.id = v_bucket FOR UPDATE SKIP LOCKED;
    CONTINUE WHEN NOT FOUND;
    FOR l IN SELECT bl.*, b.bucket AS bucket_enum FROM "BudgetLease" bl JOIN "WalletBucket" b ON b.id = bl."bucketId"
              WHERE bl."bucketId" = v_bucket AND bl."expiresAt" <= v_before
              ORDER BY bl.scope = 'BALANCE' DESC, bl.scope, bl."scopeId", bl."windowStart"
              FOR UPDATE OF bl LOOP
      PERFORM tg_lease_unhold(l."bucketId", l.bucket_enum, l.scope, l."scopeId", l."windowStart", l.amount, COALESCE(p_now, tg_now()));
      DELETE FROM "BudgetLease" WHERE id = l.id;
      v_count := v_count + 1;
    END LOOP;
  END LOOP;
  RETURN v_count;
END $$;

-- ==============================================================================================
-- The batched writer: one call per group commit records its receipts, failed requests and charges.
-- ==============================================================================================

-- The batched writer (latest definition: 20261202000000_reclaim_whole_and_charge_live_leases, unchanged but for
-- the receipt insert), now writing the token classes and the upstream's cost.
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

-- ==============================================================================================
-- Spend rollups, kept by triggers on Receipt and FailedRequest.
--
-- A write does not touch the rollups: its trigger appends what it adds, summed, as ONE row of
-- "SpendRollupPending" (an insert, where the four upserts cost a lone request ~0.8 ms of database
-- time). Each gateway folds the pending rows into the rollups about once a second
-- (tg_spend_rollup_fold). Reports read the "...Live" views: a rollup plus the pending rows, which
-- a fold moves from one to the other in one transaction, so every read sees the rows' sums exactly.
-- ==============================================================================================

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

-- Appends one statement's deltas to "SpendRollupPending" as one row, summed at the hourly grain
-- (a batch of a key's requests on one model is one delta).
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

-- Folds up to p_limit pending rows (oldest first) into the rollups; returns how many. Rows another
-- folder holds are skipped (SKIP LOCKED), so instances folding at once split the work; the rollup
-- rows are upserted in key order (tg_spend_rollup_add), the one order every folder locks them in.
CREATE OR REPLACE FUNCTION tg_spend_rollup_fold(p_limit integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_rows tg_spend_delta[];
  v_taken integer;
BEGIN
  WITH taken AS (
    DELETE FROM "SpendRollupPending" p
     WHERE p.id IN (SELECT q.id FROM "SpendRollupPending" q ORDER BY q.id LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING p.deltas
  )
  SELECT count(*)::integer, (SELECT array_agg(d) FROM taken t2, unnest(t2.deltas) AS d) INTO v_taken, v_rows FROM taken;
  PERFORM tg_spend_rollup_add(v_rows);
  RETURN v_taken;
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
  PERFORM tg_spend_rollup_queue(removed || added);
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
  PERFORM tg_spend_rollup_queue(removed || added);
  RETURN NULL;
END $$;

-- ==============================================================================================
-- Hold rows: one reservation row per request. The gateway's holds path (GATEWAY_ADMISSION=holds)
-- was retired in issue 16; these stay for the tests that reserve and settle through them, for the
-- sweeper (tg_expire_holds), and for an instance of an earlier release still on that path during
-- an upgrade (it reserves, settles and extends its holds through them).
-- ==============================================================================================

CREATE OR REPLACE FUNCTION tg_hold_scopes(p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                               p_day timestamp(3), p_month timestamp(3), p_channel_id text DEFAULT NULL)
RETURNS TABLE (ord int, scope "CapScope", scope_id text, window_start timestamp(3))
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN QUERY SELECT s.o, s.sc::"CapScope", s.sid, s.ws FROM (VALUES
    (1, 'KEY_DAILY', p_key_id, p_day),
    (2, 'PROJECT_DAILY', p_project_id, p_day),
    (3, 'PROJECT_MONTHLY', p_project_id, p_month),
    (4, 'ROUTE_DAILY', p_route_id, p_day),
    (5, 'CHANNEL_DAILY', p_channel_id, p_day),
    (6, 'RUN_TOTAL', p_run_id, timestamp '1970-01-01')
  ) AS s(o, sc, sid, ws)
  WHERE s.sid IS NOT NULL
  ORDER BY s.o;
END $$;

-- p_day / p_month: the starts of the day and month windows of the organization's zone that hold
-- p_now (src/accounting/windows.ts decides them; UTC when omitted).
DROP FUNCTION IF EXISTS tg_reserve(text, text, bigint, text, text, text, text, timestamp(3), integer, text);
CREATE OR REPLACE FUNCTION tg_reserve(p_request_id text, p_bucket_id text, p_amount bigint,
                           p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                           p_now timestamp(3), p_ttl_ms integer, p_channel_id text DEFAULT NULL,
                           p_day timestamp(3) DEFAULT NULL, p_month timestamp(3) DEFAULT NULL)
RETURNS TABLE (hold_id text, refusal text) LANGUAGE plpgsql AS $$
DECLARE
  v_bucket "BalanceBucket";
  v_available bigint;
  v_day timestamp(3) := COALESCE(p_day, date_trunc('day', p_now));
  v_month timestamp(3) := COALESCE(p_month, date_trunc('month', p_now));
  v_cap bigint;
  v_used bigint;
  v_run_status "RunStatus";
  v_hold text;
  sc record;
BEGIN
  IF p_amount IS NULL OR p_amount < 0 THEN
    RAISE EXCEPTION 'TG_BAD_AMOUNT: reservation amount must be >= 0';
  END IF;
  SELECT b.bucket, b.balance - b.held INTO v_bucket, v_available
    FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;

  v_cap := tg_effective_cap('KEY_PER_REQUEST', p_key_id, v_bucket);
  IF v_cap IS NOT NULL AND p_amount > v_cap THEN
    RETURN QUERY SELECT NULL::text, 'KEY_PER_REQUEST'::text; RETURN;
  END IF;

  IF p_run_id IS NOT NULL THEN
    SELECT r.status INTO v_run_status FROM "Run" r WHERE r.id = p_run_id;
    IF v_run_status::text = 'PAUSED' THEN
      RETURN QUERY SELECT NULL::text, 'RUN_PAUSED'::text; RETURN;
    END IF;
    IF v_run_status IS DISTINCT FROM 'ACTIVE' THEN
      RETURN QUERY SELECT NULL::text, 'RUN_CANCELLED'::text; RETURN;
    END IF;
  END IF;

  FOR sc IN SELECT * FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month, p_channel_id) LOOP
    INSERT INTO "SpendCounter" (scope, "scopeId", bucket, "windowStart")
      VALUES (sc.scope, sc.scope_id, v_bucket, sc.window_start) ON CONFLICT DO NOTHING;
    SELECT c.spent + c.held INTO v_used FROM "SpendCounter" c
     WHERE c.scope = sc.scope AND c."scopeId" = sc.scope_id AND c.bucket = v_bucket AND c."windowStart" = sc.window_start
     FOR UPDATE;
    v_cap := tg_effective_cap(sc.scope, sc.scope_id, v_bucket);
    IF v_cap IS NOT NULL AND v_used + p_amount > v_cap THEN
      RETURN QUERY SELECT NULL::text, sc.scope::text; RETURN;
    END IF;
  END LOOP;

  IF v_available < p_amount THEN
    RETURN QUERY SELECT NULL::text, 'INSUFFICIENT_BALANCE'::text; RETURN;
  END IF;

  UPDATE "WalletBucket" SET held = held + p_amount, "updatedAt" = p_now WHERE id = p_bucket_id;
  UPDATE "SpendCounter" c SET held = c.held + p_amount
    FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month, p_channel_id) hs
   WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  INSERT INTO "Hold" (id, "requestId", "bucketId", "keyId", "projectId", "routeId", "runId", "channelId",
                      amount, "dayStart", "monthStart", "expiresAt", "createdAt")
    VALUES (gen_random_uuid()::text, p_request_id, p_bucket_id, p_key_id, p_project_id, p_route_id, p_run_id, p_channel_id,
            p_amount, v_day, v_month, p_now + make_interval(secs => p_ttl_ms / 1000.0), p_now)
    RETURNING id INTO v_hold;
  RETURN QUERY SELECT v_hold, NULL::text;
END $$;

-- Resolve a hold: charge min(p_charge, hold amount), release the rest, write the CHARGE entry
-- (with its running balance) linked to the receipt or failed request. p_status is
-- SETTLED (success), RELEASED (failure, charged per policy) or EXPIRED (sweeper, charge 0).
-- Late settlement: a request that ends after the sweeper expired its hold (the process stalled
-- past the TTL despite the keep-alive) is still charged: the budget was already released, so the
-- charge goes to the balance and the spent counters (which may then pass a cap: the upstream
-- billed it), never below an available balance of zero (what is missing is noted on the entry),
-- and the CHARGE entry's memo says it was late. A hold is resolved late at most once.
CREATE OR REPLACE FUNCTION tg_resolve_hold(p_hold_id text, p_charge bigint, p_status "HoldStatus",
                                           p_receipt_id text, p_failed_request_id text, p_now timestamp(3))
RETURNS TABLE (ledger_entry_id text, charged bigint, balance_after bigint) LANGUAGE plpgsql AS $$
DECLARE
  h "Hold"%ROWTYPE;
  v_bucket "BalanceBucket";
  v_org text;
  v_charge bigint;
  v_wanted bigint;
  v_available bigint;
  v_balance bigint;
  v_entry text;
  v_late boolean := false;
  v_memo text;
BEGIN
  IF p_status = 'ACTIVE' THEN
    RAISE EXCEPTION 'TG_BAD_STATUS: a hold is resolved to SETTLED, RELEASED or EXPIRED';
  END IF;
  SELECT * INTO h FROM "Hold" WHERE id = p_hold_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: hold %', p_hold_id;
  END IF;
  IF h.status = 'EXPIRED' AND p_status <> 'EXPIRED' AND h."lateResolvedAt" IS NULL THEN
    v_late := true;
  ELSIF h.status <> 'ACTIVE' THEN
    RAISE EXCEPTION 'TG_HOLD_NOT_ACTIVE: hold % is %', p_hold_id, h.status;
  END IF;
  v_charge := LEAST(GREATEST(COALESCE(p_charge, 0), 0), h.amount);

  IF v_late THEN
    SELECT b.balance - b.held INTO v_available FROM "WalletBucket" b WHERE b.id = h."bucketId" FOR UPDATE;
    v_wanted := v_charge;
    v_charge := LEAST(v_charge, GREATEST(v_available, 0));
    v_memo := 'late settlement: the hold expired before the request ended';
    IF v_charge < v_wanted THEN
      v_memo := v_memo || format('; %s micro-units not charged (available balance short)', v_wanted - v_charge);
      -- The record states what was actually charged.
      UPDATE "Receipt" SET charge = v_charge WHERE id = p_receipt_id;
      UPDATE "FailedRequest" SET charge = v_charge WHERE id = p_failed_request_id;
    END IF;
    UPDATE "WalletBucket" SET balance = balance - v_charge, "updatedAt" = p_now
     WHERE id = h."bucketId" RETURNING balance, bucket, "organizationId" INTO v_balance, v_bucket, v_org;
    UPDATE "SpendCounter" c SET spent = c.spent + v_charge
      FROM tg_hold_scopes(h."keyId", h."projectId", h."routeId", h."runId", h."dayStart", h."monthStart", h."channelId") hs
     WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  ELSE
    UPDATE "WalletBucket" SET balance = balance - v_charge, held = held - h.amount, "updatedAt" = p_now
     WHERE id = h."bucketId" RETURNING balance, bucket, "organizationId" INTO v_balance, v_bucket, v_org;
    UPDATE "SpendCounter" c SET held = c.held - h.amount, spent = c.spent + v_charge
      FROM tg_hold_scopes(h."keyId", h."projectId", h."routeId", h."runId", h."dayStart", h."monthStart", h."channelId") hs
     WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  END IF;
  IF v_charge > 0 THEN
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey",
                               "receiptId", "failedRequestId", "holdId", memo, "createdAt")
      VALUES (gen_random_uuid()::text, v_org, h."bucketId", 'CHARGE', -v_charge, v_balance, 'hold:' || h.id,
              p_receipt_id, p_failed_request_id, h.id, v_memo, p_now)
      RETURNING id INTO v_entry;
  END IF;
  IF v_late THEN
    UPDATE "Hold" SET charged = v_charge, "lateResolvedAt" = p_now WHERE id = h.id;
  ELSE
    UPDATE "Hold" SET status = p_status, charged = v_charge, "resolvedAt" = p_now WHERE id = h.id;
  END IF;
  RETURN QUERY SELECT v_entry, v_charge, v_balance;
END $$;

-- Release every hold whose TTL passed (left by a process that died). Returns how many.
CREATE OR REPLACE FUNCTION tg_expire_holds(p_now timestamp(3)) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_id text;
  v_count integer := 0;
BEGIN
  FOR v_id IN SELECT id FROM "Hold" WHERE status = 'ACTIVE' AND "expiresAt" <= p_now
              ORDER BY "expiresAt" FOR UPDATE SKIP LOCKED LOOP
    PERFORM tg_resolve_hold(v_id, 0, 'EXPIRED', NULL, NULL, p_now);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- Keep-alive: moves the expiry of the given active holds (requests still running) to p_now + TTL,
-- in one statement for every live request of an instance.
CREATE OR REPLACE FUNCTION tg_extend_holds(p_hold_ids text[], p_now timestamp(3), p_ttl_ms integer) RETURNS integer LANGUAGE sql AS $$
  WITH u AS (
    UPDATE "Hold" SET "expiresAt" = GREATEST("expiresAt", p_now + make_interval(secs => p_ttl_ms / 1000.0))
     WHERE id = ANY(p_hold_ids) AND status = 'ACTIVE'
    RETURNING 1)
  SELECT count(*)::int FROM u
$$;
