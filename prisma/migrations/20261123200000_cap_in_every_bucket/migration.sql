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

-- Reserve: place a hold of p_amount on a bucket if the bucket and every applicable cap admit it.
-- Returns (hold_id, NULL) or (NULL, refusal) where refusal is a CapScope name,
-- 'INSUFFICIENT_BALANCE' or 'RUN_CANCELLED'. A refusal writes nothing but empty counters.
CREATE OR REPLACE FUNCTION tg_reserve(p_request_id text, p_bucket_id text, p_amount bigint,
                           p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                           p_now timestamp(3), p_ttl_ms integer)
RETURNS TABLE (hold_id text, refusal text) LANGUAGE plpgsql AS $$
DECLARE
  v_bucket "BalanceBucket";
  v_available bigint;
  v_day timestamp(3) := date_trunc('day', p_now);
  v_month timestamp(3) := date_trunc('month', p_now);
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
    IF v_run_status IS DISTINCT FROM 'ACTIVE' THEN
      RETURN QUERY SELECT NULL::text, 'RUN_CANCELLED'::text; RETURN;
    END IF;
  END IF;

  FOR sc IN SELECT * FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month) LOOP
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
    FROM tg_hold_scopes(p_key_id, p_project_id, p_route_id, p_run_id, v_day, v_month) hs
   WHERE c.scope = hs.scope AND c."scopeId" = hs.scope_id AND c.bucket = v_bucket AND c."windowStart" = hs.window_start;
  INSERT INTO "Hold" (id, "requestId", "bucketId", "keyId", "projectId", "routeId", "runId",
                      amount, "dayStart", "monthStart", "expiresAt", "createdAt")
    VALUES (gen_random_uuid()::text, p_request_id, p_bucket_id, p_key_id, p_project_id, p_route_id, p_run_id,
            p_amount, v_day, v_month, p_now + make_interval(secs => p_ttl_ms / 1000.0), p_now)
    RETURNING id INTO v_hold;
  RETURN QUERY SELECT v_hold, NULL::text;
END $$;

