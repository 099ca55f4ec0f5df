-- Leases keep what their instance holds in flight (issue 14, points 2, 3, 4, 7). The database must
-- always count every hold an instance admits, so nothing that happens to a lease gives back more
-- than its instance's free part:
-- * a cap change REVOKES its scope's leases: they stop admitting (the instance hears it through
--   leasesRevoked or its next renewal) but keep their amount held; the instance gives back the free
--   part and its requests in flight are charged out of them as usual (against the new cap);
-- * a lease whose instance stopped renewing stays held for a grace period past its expiry (the
--   longest a request admitted against it can still run) before the sweeper reclaims it; a stalled
--   instance that comes back within the grace finds its leases intact;
-- * returns are partial (the free part, counted out of the instance's memory before it is sent) or
--   whole (a lease its instance no longer uses at all: the row goes);
-- * a grant tops up the lease its instance names (by id) or makes a new row; it never merges into
--   a lease that is being returned or was revoked.
-- Expiry is stamped and swept with the database's clock (tg_now), never an instance's: p_now
-- arguments are NULL in the gateway and set only by tests that move time.

CREATE FUNCTION tg_now() RETURNS timestamp(3) LANGUAGE sql STABLE AS $$
  SELECT (clock_timestamp() AT TIME ZONE 'UTC')::timestamp(3)
$$;

ALTER TABLE "BudgetLease" ADD COLUMN "revoked" BOOLEAN NOT NULL DEFAULT false;
DROP INDEX "BudgetLease_instance_scope_key";
CREATE INDEX "BudgetLease_instance_idx" ON "BudgetLease" ("instanceId");
CREATE INDEX "BudgetLease_scope_idx" ON "BudgetLease" (scope, "scopeId");

-- p_scopes: JSON array of {scope, scope_id, window_start, need, want, lease_id}; lease_id (optional)
-- is the instance's live lease of that scope to top up. Refusals: a CapScope, 'INSUFFICIENT_BALANCE',
-- 'RUN_PAUSED' or 'RUN_CANCELLED' (a run that is not ACTIVE grants nothing, whatever its cap).
-- Each answered row also says what became of a named lease that could not be topped up (`replaced`:
-- 'revoked' if its row is still there, 'gone' if it was reclaimed): the instance stops counting on it.
DROP FUNCTION tg_lease_grant(text, text, jsonb, timestamp(3), integer);
CREATE FUNCTION tg_lease_grant(p_instance text, p_bucket_id text, p_scopes jsonb, p_now timestamp(3), p_ttl_ms integer)
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

-- The heartbeat: renews every lease of an instance (revoked ones too: their holds in flight stay
-- counted while their instance lives) and answers which it still has, and which are revoked. A
-- lease the instance believes in but that is not in the answer was reclaimed.
DROP FUNCTION tg_lease_renew(text, timestamp(3), integer);
CREATE FUNCTION tg_lease_renew(p_instance text, p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (id text, revoked boolean) LANGUAGE sql AS $$
  UPDATE "BudgetLease" SET "expiresAt" = COALESCE(p_now, tg_now()) + make_interval(secs => p_ttl_ms / 1000.0)
   WHERE "instanceId" = p_instance RETURNING id, revoked
$$;

-- Reclaims the leases of instances that stopped renewing: only `p_grace_ms` after their expiry,
-- when no request admitted against them can still be running (an instance that stalled and comes
-- back within it keeps them).
DROP FUNCTION tg_expire_leases(timestamp(3));
CREATE FUNCTION tg_reclaim_leases(p_now timestamp(3), p_grace_ms integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  l record;
  v_count integer := 0;
  v_before timestamp(3) := COALESCE(p_now, tg_now()) - make_interval(secs => p_grace_ms / 1000.0);
BEGIN
  FOR l IN SELECT bl.*, b.bucket AS bucket_enum FROM "BudgetLease" bl JOIN "WalletBucket" b ON b.id = bl."bucketId"
            WHERE bl."expiresAt" <= v_before
            ORDER BY bl."bucketId", bl.scope = 'BALANCE' DESC, bl.scope, bl."scopeId", bl."windowStart"
            FOR UPDATE OF b, bl SKIP LOCKED LOOP
    PERFORM tg_lease_unhold(l."bucketId", l.bucket_enum, l.scope, l."scopeId", l."windowStart", l.amount, COALESCE(p_now, tg_now()));
    DELETE FROM "BudgetLease" WHERE id = l.id;
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- A cap of a scope is about to change (or its run paused / cancelled): lock every bucket of its
-- organization first, so a grant racing the change either committed before (and its lease is
-- revoked here) or waits for the change's commit (and reads the new cap); then revoke the scope's
-- leases. They keep their amount (what their instances hold in flight stays counted against the
-- new cap); their instances give back the free part. Call it in the change's transaction, before
-- the cap is written.
DROP FUNCTION tg_lease_revoke(text, text, timestamp(3));
CREATE FUNCTION tg_lease_revoke(p_scope text, p_scope_id text, p_organization_id text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_count integer;
BEGIN
  PERFORM 1 FROM "WalletBucket" b WHERE b."organizationId" = p_organization_id ORDER BY b.id FOR UPDATE;
  UPDATE "BudgetLease" SET revoked = true WHERE scope = p_scope AND "scopeId" = p_scope_id AND NOT revoked;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;
