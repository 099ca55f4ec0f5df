-- Backup-route limits (CHANNEL_DAILY), run pause (PAUSED / RUN_PAUSED), and holds that outlive
-- their TTL (issue 8 point 5, issue 10 point 7). New enum values are only used inside plpgsql
-- bodies, which are not analysed until they run (after this migration's transaction committed).
ALTER TYPE "CapScope" ADD VALUE IF NOT EXISTS 'CHANNEL_DAILY';
ALTER TYPE "RunStatus" ADD VALUE IF NOT EXISTS 'PAUSED';
ALTER TYPE "FailureCause" ADD VALUE IF NOT EXISTS 'RUN_PAUSED';

ALTER TABLE "Hold" ADD COLUMN "channelId" TEXT;
ALTER TABLE "Hold" ADD COLUMN "lateResolvedAt" TIMESTAMP(3);

-- The counters a hold touches, in the one fixed order every function locks them in (bucket
-- first, then these). Now with the channel's daily counter.
DROP FUNCTION tg_hold_scopes(text, text, text, text, timestamp(3), timestamp(3));
CREATE FUNCTION tg_hold_scopes(p_key_id text, p_project_id text, p_route_id text, p_run_id text,
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

-- Reserve: place a hold of p_amount on a bucket if the bucket and every applicable cap admit it.
-- Returns (hold_id, NULL) or (NULL, refusal) where refusal is a CapScope name,
-- 'INSUFFICIENT_BALANCE', 'RUN_PAUSED' or 'RUN_CANCELLED'. A refusal writes nothing but empty
-- counters. Caps are the effective ones (tg_effective_cap: zero in a bucket without its own cap
-- when the other bucket has one).
DROP FUNCTION tg_reserve(text, text, bigint, text, text, text, text, timestamp(3), integer);
CREATE FUNCTION tg_reserve(p_request_id text, p_bucket_id text, p_amount bigint,
                           p_key_id text, p_project_id text, p_route_id text, p_run_id text,
                           p_now timestamp(3), p_ttl_ms integer, p_channel_id text DEFAULT NULL)
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

-- Keep-alive: moves the expiry of the given active holds (requests still running) to p_now + TTL,
-- in one statement for every live request of an instance.
CREATE FUNCTION tg_extend_holds(p_hold_ids text[], p_now timestamp(3), p_ttl_ms integer) RETURNS integer LANGUAGE sql AS $$
  WITH u AS (
    UPDATE "Hold" SET "expiresAt" = GREATEST("expiresAt", p_now + make_interval(secs => p_ttl_ms / 1000.0))
     WHERE id = ANY(p_hold_ids) AND status = 'ACTIVE'
    RETURNING 1)
  SELECT count(*)::int FROM u
$$;
