-- Budget leases (issue 9): durable grants of headroom an instance may spend without a database
-- round trip per request. A lease is for one scope-window-bucket counter (scope = a CapScope
-- name) or for a bucket's available balance (scope = 'BALANCE'). Its `amount` is granted headroom
-- not yet spent (in-flight holds live inside it, in the instance's memory) and is counted in the
-- counter's / bucket's `held`, so at all times:
--   spent + held <= cap (every counter),  held <= balance (every bucket),  held = Σ live leases.
-- Spending moves an amount from the lease to `spent` / out of `balance` in the batched writer
-- (tg_charge_batch); an unused rest goes back with tg_lease_return; a dead instance's leases
-- lapse with tg_expire_leases once their TTL passed.
CREATE TABLE "BudgetLease" (
    "id" TEXT NOT NULL DEFAULT gen_random_uuid()::text,
    "instanceId" TEXT NOT NULL,
    "bucketId" TEXT NOT NULL,
    "scope" TEXT NOT NULL,
    "scopeId" TEXT NOT NULL,
    "windowStart" TIMESTAMP(3) NOT NULL,
    "amount" BIGINT NOT NULL,
    "expiresAt" TIMESTAMP(3) NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "BudgetLease_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "BudgetLease_amount_nonnegative" CHECK ("amount" >= 0),
    CONSTRAINT "BudgetLease_bucketId_fkey" FOREIGN KEY ("bucketId") REFERENCES "WalletBucket"("id") ON DELETE RESTRICT ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "BudgetLease_instance_scope_key" ON "BudgetLease" ("instanceId", "bucketId", "scope", "scopeId", "windowStart");
CREATE INDEX "BudgetLease_expiresAt_idx" ON "BudgetLease" ("expiresAt");

-- Caps bind through tg_effective_cap (migration 20261123200000): a scope capped in one bucket only
-- is capped at zero in the other.

-- How much to grant out of `p_left` when `p_need` is required now and `p_want` would be
-- convenient: the grant shrinks as the scope nears its cap (25 % of what is left below half use,
-- 10 % up to 80 %, 5 % beyond), never below the request at hand, so the cap is reached exactly.
CREATE FUNCTION tg_lease_size(p_need bigint, p_want bigint, p_left bigint, p_cap bigint, p_used bigint)
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

-- Grant leases for one request's bucket, all-or-nothing: p_scopes is a JSON array of
-- {scope, scope_id, window_start, need, want}, where scope 'BALANCE' is the bucket's available
-- balance. Locks the bucket row first: every function here does, and every counter a bucket's
-- leases touch belongs to that bucket's organization, so the bucket lock orders them all. Returns one row per scope (lease_id, granted, cap) or, when something
-- cannot cover its `need`, a single row naming the refusal (a CapScope or 'INSUFFICIENT_BALANCE')
-- and writes nothing but empty counters.
CREATE FUNCTION tg_lease_grant(p_instance text, p_bucket_id text, p_scopes jsonb, p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (scope text, scope_id text, window_start timestamp(3), lease_id text, granted bigint, cap bigint, refusal text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_bucket "BalanceBucket";
  v_balance bigint;
  v_held bigint;
  v_cap bigint;
  v_used bigint;
  v_grant bigint;
  v_id text;
  v_expires timestamp(3) := p_now + make_interval(secs => p_ttl_ms / 1000.0);
  sc record;
  grants jsonb := '[]'::jsonb;
  g jsonb;
BEGIN
  SELECT b.bucket, b.balance, b.held INTO v_bucket, v_balance, v_held FROM "WalletBucket" b WHERE b.id = p_bucket_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'TG_NOT_FOUND: bucket %', p_bucket_id;
  END IF;
  FOR sc IN SELECT x.scope, x.scope_id, x.window_start, x.need, x.want
              FROM jsonb_to_recordset(p_scopes) AS x(scope text, scope_id text, window_start timestamp(3), need bigint, want bigint)
             -- The order tg_reserve checks in (tg_hold_scopes: so a refusal names the same scope); the balance last.
             ORDER BY COALESCE(array_position(ARRAY['KEY_DAILY', 'PROJECT_DAILY', 'PROJECT_MONTHLY', 'ROUTE_DAILY', 'CHANNEL_DAILY', 'RUN_TOTAL'], x.scope), 50),
                      x.scope, x.scope_id, x.window_start LOOP
    IF sc.need < 0 OR sc.want < sc.need THEN
      RAISE EXCEPTION 'TG_BAD_AMOUNT: a lease needs 0 <= need <= want';
    END IF;
    IF sc.scope = 'BALANCE' THEN
      v_cap := NULL;
      v_grant := tg_lease_size(sc.need, sc.want, v_balance - v_held, v_balance, v_held);
      -- The balance has no cap ratio: size it like a capped scope against the balance itself.
      IF v_balance - v_held < sc.need THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamp(3), NULL::text, NULL::bigint, NULL::bigint, 'INSUFFICIENT_BALANCE'::text; RETURN;
      END IF;
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
          RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamp(3), NULL::text, NULL::bigint, NULL::bigint, sc.scope; RETURN;
        END IF;
        v_grant := tg_lease_size(sc.need, sc.want, v_cap - v_used, v_cap, v_used);
      END IF;
    END IF;
    grants := grants || jsonb_build_object('scope', sc.scope, 'scope_id', sc.scope_id, 'window_start', sc.window_start, 'grant', v_grant, 'cap', v_cap);
  END LOOP;

  -- Everything fits: write the grants.
  FOR g IN SELECT * FROM jsonb_array_elements(grants) LOOP
    IF g->>'scope' = 'BALANCE' THEN
      UPDATE "WalletBucket" SET held = held + (g->>'grant')::bigint, "updatedAt" = p_now WHERE id = p_bucket_id;
    ELSE
      UPDATE "SpendCounter" c SET held = c.held + (g->>'grant')::bigint
       WHERE c.scope = (g->>'scope')::"CapScope" AND c."scopeId" = g->>'scope_id' AND c.bucket = v_bucket
         AND c."windowStart" = (g->>'window_start')::timestamp(3);
    END IF;
    INSERT INTO "BudgetLease" ("instanceId", "bucketId", scope, "scopeId", "windowStart", amount, "expiresAt", "createdAt")
      VALUES (p_instance, p_bucket_id, g->>'scope', g->>'scope_id', (g->>'window_start')::timestamp(3), (g->>'grant')::bigint, v_expires, p_now)
      ON CONFLICT ("instanceId", "bucketId", scope, "scopeId", "windowStart")
      DO UPDATE SET amount = "BudgetLease".amount + EXCLUDED.amount, "expiresAt" = GREATEST("BudgetLease"."expiresAt", EXCLUDED."expiresAt")
      RETURNING id INTO v_id;
    RETURN QUERY SELECT g->>'scope', g->>'scope_id', (g->>'window_start')::timestamp(3), v_id, (g->>'grant')::bigint, (g->>'cap')::bigint, NULL::text;
  END LOOP;
END $$;

-- Gives back part (or all) of leases: p_returns is a JSON array of {lease_id, amount}; an amount
-- larger than what the lease still holds gives back what it holds. A lease at zero is deleted.
-- Returns how much went back in all.
CREATE FUNCTION tg_lease_return(p_returns jsonb, p_now timestamp(3))
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  r record;
  l "BudgetLease"%ROWTYPE;
  v_bucket "BalanceBucket";
  v_back bigint;
  v_total bigint := 0;
BEGIN
  FOR r IN SELECT x.lease_id, x.amount FROM jsonb_to_recordset(p_returns) AS x(lease_id text, amount bigint)
            JOIN "BudgetLease" b ON b.id = x.lease_id
           ORDER BY b."bucketId", b.scope = 'BALANCE' DESC, b.scope, b."scopeId", b."windowStart" LOOP
    SELECT b.bucket INTO v_bucket FROM "WalletBucket" b JOIN "BudgetLease" bl ON bl."bucketId" = b.id WHERE bl.id = r.lease_id FOR UPDATE OF b;
    SELECT * INTO l FROM "BudgetLease" WHERE id = r.lease_id FOR UPDATE;
    IF NOT FOUND THEN CONTINUE; END IF;
    v_back := LEAST(GREATEST(r.amount, 0), l.amount);
    PERFORM tg_lease_unhold(l."bucketId", v_bucket, l.scope, l."scopeId", l."windowStart", v_back, p_now);
    IF l.amount - v_back = 0 THEN
      DELETE FROM "BudgetLease" WHERE id = l.id;
    ELSE
      UPDATE "BudgetLease" SET amount = amount - v_back WHERE id = l.id;
    END IF;
    v_total := v_total + v_back;
  END LOOP;
  RETURN v_total;
END $$;

-- Takes `p_amount` of leased headroom off the held sum it was counted in.
CREATE FUNCTION tg_lease_unhold(p_bucket_id text, p_bucket "BalanceBucket", p_scope text, p_scope_id text, p_window timestamp(3), p_amount bigint, p_now timestamp(3))
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

-- Renews every lease of an instance still alive (its heartbeat). Returns how many it renewed:
-- fewer than the instance holds means some lapsed (the instance must forget them).
CREATE FUNCTION tg_lease_renew(p_instance text, p_now timestamp(3), p_ttl_ms integer)
RETURNS integer LANGUAGE sql AS $$
  WITH u AS (
    UPDATE "BudgetLease" SET "expiresAt" = p_now + make_interval(secs => p_ttl_ms / 1000.0)
     WHERE "instanceId" = p_instance AND "expiresAt" > p_now RETURNING 1)
  SELECT count(*)::int FROM u
$$;

-- Lapses every lease whose TTL passed (its instance died or stalled): its headroom goes back.
CREATE FUNCTION tg_expire_leases(p_now timestamp(3)) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  l record;
  v_count integer := 0;
BEGIN
  FOR l IN SELECT bl.*, b.bucket AS bucket_enum FROM "BudgetLease" bl JOIN "WalletBucket" b ON b.id = bl."bucketId"
            WHERE bl."expiresAt" <= p_now
            ORDER BY bl."bucketId", bl.scope = 'BALANCE' DESC, bl.scope, bl."scopeId", bl."windowStart"
            FOR UPDATE OF b, bl SKIP LOCKED LOOP
    PERFORM tg_lease_unhold(l."bucketId", l.bucket_enum, l.scope, l."scopeId", l."windowStart", l.amount, p_now);
    DELETE FROM "BudgetLease" WHERE id = l.id;
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- The batched writer's money step: many requests' charges in one call. p_items is a JSON array of
-- {pos, request_id, bucket_id, charge, receipt_id, failed_request_id, leases: [{lease_id, scope,
-- scope_id, window_start}]}. Per lease, per counter and per bucket the deltas are aggregated and
-- applied once: the charge leaves the lease (while it lives) and its counter's / bucket's `held`,
-- and lands in `spent` / leaves `balance`. A charge whose lease already lapsed (its rest already
-- went back) is still charged: spent and balance move, held does not. Each charge > 0 gets its
-- CHARGE ledger entry (idempotency key 'request:<id>') with the running balance in `pos` order.
-- Returns one row per ledger entry, then one row per counter it changed (request_id NULL) with
-- the counter's spent / held and its cap as the batch left them.
-- p_written is not used: a caller that inserts the receipts in a CTE of the same statement passes
-- their count, which makes PostgreSQL write them before this function (and its ledger entries'
-- foreign keys) runs.
CREATE FUNCTION tg_charge_batch(p_items jsonb, p_now timestamp(3), p_written bigint DEFAULT 0)
RETURNS TABLE (request_id text, ledger_entry_id text, balance_after bigint,
               scope text, scope_id text, bucket text, window_start text, spent bigint, held bigint, cap bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_live text[];
  v_counters jsonb;
BEGIN
  IF EXISTS (SELECT 1 FROM jsonb_to_recordset(p_items) AS x(charge bigint) WHERE x.charge < 0) THEN
    RAISE EXCEPTION 'TG_BAD_AMOUNT: a charge must be >= 0';
  END IF;
  PERFORM 1 FROM "WalletBucket" b
   WHERE b.id IN (SELECT x.bucket_id FROM jsonb_to_recordset(p_items) AS x(bucket_id text))
   ORDER BY b.id FOR UPDATE;

  WITH per_lease AS (
    SELECT e.lease_id, sum(x.charge) AS total
      FROM jsonb_to_recordset(p_items) AS x(charge bigint, leases jsonb),
           jsonb_to_recordset(x.leases) AS e(lease_id text)
     WHERE x.charge > 0
     GROUP BY e.lease_id
  ), u AS (
    UPDATE "BudgetLease" l SET amount = l.amount - p.total FROM per_lease p WHERE l.id = p.lease_id RETURNING l.id
  )
  SELECT COALESCE(array_agg(u.id), ARRAY[]::text[]) INTO v_live FROM u;

  -- A lapsed lease's counter may be of a window nobody leased since: make sure it exists first.
  INSERT INTO "SpendCounter" (scope, "scopeId", bucket, "windowStart")
  SELECT DISTINCT e.scope::"CapScope", e.scope_id, b.bucket, e.window_start
    FROM jsonb_to_recordset(p_items) AS x(bucket_id text, charge bigint, leases jsonb)
    JOIN "WalletBucket" b ON b.id = x.bucket_id,
         jsonb_to_recordset(x.leases) AS e(scope text, scope_id text, window_start timestamp(3))
   WHERE x.charge > 0 AND e.scope <> 'BALANCE'
   ORDER BY 1, 2, 3, 4
  ON CONFLICT DO NOTHING;

  WITH per_counter AS (
    SELECT e.scope::"CapScope" AS scope, e.scope_id, e.window_start, b.bucket AS bucket,
           sum(x.charge) AS spent, COALESCE(sum(x.charge) FILTER (WHERE e.lease_id = ANY(v_live)), 0) AS unheld
      FROM jsonb_to_recordset(p_items) AS x(bucket_id text, charge bigint, leases jsonb)
      JOIN "WalletBucket" b ON b.id = x.bucket_id,
           jsonb_to_recordset(x.leases) AS e(lease_id text, scope text, scope_id text, window_start timestamp(3))
     WHERE x.charge > 0 AND e.scope <> 'BALANCE'
     GROUP BY 1, 2, 3, 4
  )
  , u AS (
    UPDATE "SpendCounter" c SET spent = c.spent + p.spent, held = c.held - p.unheld
      FROM per_counter p
     WHERE c.scope = p.scope AND c."scopeId" = p.scope_id AND c.bucket = p.bucket AND c."windowStart" = p.window_start
    RETURNING c.scope, c."scopeId", c.bucket, c."windowStart", c.spent, c.held
  )
  -- The counters as this batch left them: live events are announced from these, without reading again.
  SELECT COALESCE(jsonb_agg(jsonb_build_object('scope', u.scope, 'scope_id', u."scopeId", 'bucket', u.bucket, 'window_start', u."windowStart",
                                              'spent', u.spent, 'held', u.held,
                                              'cap', (SELECT c.amount FROM "BudgetCap" c WHERE c.scope = u.scope AND c."scopeId" = u."scopeId" AND c.bucket = u.bucket))), '[]'::jsonb)
    INTO v_counters FROM u;

  WITH per_bucket AS (
    SELECT x.bucket_id, sum(x.charge) AS total,
           COALESCE(sum(x.charge) FILTER (WHERE EXISTS (
             SELECT 1 FROM jsonb_to_recordset(x.leases) AS e(lease_id text, scope text) WHERE e.scope = 'BALANCE' AND e.lease_id = ANY(v_live))), 0) AS unheld
      FROM jsonb_to_recordset(p_items) AS x(bucket_id text, charge bigint, leases jsonb)
     WHERE x.charge > 0
     GROUP BY x.bucket_id
  )
  UPDATE "WalletBucket" b SET balance = b.balance - p.total, held = b.held - p.unheld, "updatedAt" = p_now
    FROM per_bucket p WHERE b.id = p.bucket_id;

  RETURN QUERY
  WITH x AS (
    SELECT x.* FROM jsonb_to_recordset(p_items) AS x(pos int, request_id text, bucket_id text, charge bigint, receipt_id text, failed_request_id text)
     WHERE x.charge > 0
  ), ins AS (
    INSERT INTO "LedgerEntry" (id, "organizationId", "bucketId", kind, amount, "balanceAfter", "idempotencyKey", "receiptId", "failedRequestId", "createdAt")
    SELECT gen_random_uuid()::text, b."organizationId", x.bucket_id, 'CHARGE', -x.charge,
           b.balance + sum(x.charge) OVER (PARTITION BY x.bucket_id) - sum(x.charge) OVER (PARTITION BY x.bucket_id ORDER BY x.pos ROWS UNBOUNDED PRECEDING),
           'request:' || x.request_id, x.receipt_id, x.failed_request_id, p_now
      FROM x JOIN "WalletBucket" b ON b.id = x.bucket_id
     ORDER BY x.bucket_id, x.pos
    RETURNING "idempotencyKey", id, "balanceAfter"
  )
  SELECT substr(ins."idempotencyKey", 9), ins.id, ins."balanceAfter", NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint FROM ins;
  RETURN QUERY
  SELECT NULL::text, NULL::text, NULL::bigint, x.scope, x.scope_id, x.bucket, to_char(x.window_start, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), x.spent, x.held, x.cap
    FROM jsonb_to_recordset(v_counters) AS x(scope text, scope_id text, bucket text, window_start timestamp(3), spent bigint, held bigint, cap bigint);
END $$;
