// Where a LeasePool's leases live: the three statements it sends (grant, give back, renew). In
// production they are the SQL functions tg_lease_grant / tg_lease_return / tg_lease_renew of
// prisma/functions.sql, which lock the bucket and every counter so caps hold across instances.
// Tests of the pool's own logic can put an in-memory store behind the same interface
// (test/support/memory-grants.ts); the database tests and the simulation run on the SQL one.
import { translateDbError, type SqlClient } from "./sql.ts";

/** One scope a grant asks for: `need` now (refused below it), up to `want`; `lease_id` tops up that lease. */
export interface GrantAsk {
  scope: string;
  scope_id: string;
  /** ISO instant: the start of the window counted (the epoch for BALANCE and RUN_TOTAL). */
  window_start: string;
  need: string;
  want: string;
  lease_id: string | null;
}

/**
 * One row of a grant's answer. A refusal is a single row with only `refusal` set (the scope that
 * refused, or BALANCE / RUN_PAUSED / RUN_CANCELLED). `replaced` says why the lease asked for was not
 * topped up and a new one was made: `revoked` (a cap change) or `gone` (reclaimed).
 */
export interface GrantRow {
  scope: string | null;
  scope_id: string | null;
  lease_id: string | null;
  granted: bigint;
  refusal: string | null;
  replaced: string | null;
}

/** `amount` null: the whole lease (its row goes); else at most what it holds comes off it. */
export interface LeaseReturn {
  lease_id: string;
  amount: string | null;
}

export interface GrantStore {
  /** All of `asks` granted in one transaction, or nothing (one refusal row). `now` null: the store's clock. */
  grant(instanceId: string, bucketId: string, asks: GrantAsk[], now: string | null, ttlMs: number): Promise<GrantRow[]>;
  giveBack(returns: LeaseReturn[], now: string | null): Promise<void>;
  /** Extends every lease of the instance; answers each with whether a cap change revoked it (a missing lease was reclaimed). */
  renew(instanceId: string, now: string | null, ttlMs: number): Promise<Array<{ id: string; revoked: boolean }>>;
}

export function sqlGrantStore(client: SqlClient): GrantStore {
  return {
    async grant(instanceId, bucketId, asks, now, ttlMs) {
      const rows = await client
        .$queryRawUnsafe<Array<{ scope: string | null; scope_id: string | null; lease_id: string | null; granted: string | bigint | null; refusal: string | null; replaced: string | null }>>(
          `SELECT scope, scope_id, lease_id, granted::text AS granted, refusal, replaced
             FROM tg_lease_grant($1, $2, $3::jsonb, $4::timestamptz AT TIME ZONE 'UTC', $5::int)`,
          instanceId,
          bucketId,
          JSON.stringify(asks),
          now,
          ttlMs,
        )
        .catch(translateDbError);
      return rows.map((r) => ({ ...r, granted: BigInt(r.granted ?? 0) }));
    },
    async giveBack(returns, now) {
      await client.$queryRawUnsafe(`SELECT tg_lease_return($1::jsonb, $2::timestamptz AT TIME ZONE 'UTC')`, JSON.stringify(returns), now);
    },
    renew(instanceId, now, ttlMs) {
      return client.$queryRawUnsafe<Array<{ id: string; revoked: boolean }>>(`SELECT id, revoked FROM tg_lease_renew($1, $2::timestamptz AT TIME ZONE 'UTC', $3::int)`, instanceId, now, ttlMs);
    },
  };
}
