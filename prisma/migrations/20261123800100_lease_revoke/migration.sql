-- A cap change revokes every live lease of its scope (issue 9): leases granted under the old cap
-- must not be spent under the new one. Called in the transaction that writes the cap; the
-- instances that held them learn it from a leasesRevoked event (and from their next renewal) and
-- take new grants, sized by the new cap. Charges of requests already admitted against a revoked
-- lease are still written (as for a lapsed lease: spent moves, held does not).
CREATE FUNCTION tg_lease_revoke(p_scope text, p_scope_id text, p_now timestamp(3)) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  l record;
  v_count integer := 0;
BEGIN
  -- Bucket rows first, in id order (the lock order of every lease function).
  PERFORM 1 FROM "WalletBucket" b
   WHERE b.id IN (SELECT bl."bucketId" FROM "BudgetLease" bl WHERE bl.scope = p_scope AND bl."scopeId" = p_scope_id)
   ORDER BY b.id FOR UPDATE;
  FOR l IN SELECT bl.*, b.bucket AS bucket_enum FROM "BudgetLease" bl JOIN "WalletBucket" b ON b.id = bl."bucketId"
            WHERE bl.scope = p_scope AND bl."scopeId" = p_scope_id
            ORDER BY bl."bucketId", bl."windowStart"
            FOR UPDATE OF bl LOOP
    PERFORM tg_lease_unhold(l."bucketId", l.bucket_enum, l.scope, l."scopeId", l."windowStart", l.amount, p_now);
    DELETE FROM "BudgetLease" WHERE id = l.id;
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;
