// An in-memory GrantStore for unit tests of LeasePool's own logic: the rules of tg_lease_grant,
// tg_lease_return, tg_lease_renew, tg_lease_revoke and tg_reclaim_leases (prisma/functions.sql) on
// plain maps — one bucket balance, counters per (scope, scopeId, window), caps per (scope, scopeId),
// leases with expiries. The database tests and the money simulation run the pool on the real SQL;
// this store exists so the pool's bookkeeping can be tested in microseconds and without a database.
import type { GrantAsk, GrantRow, GrantStore, LeaseReturn } from "../../src/money/grant-store.ts";

interface MemoryLease {
  id: string;
  instanceId: string;
  bucketId: string;
  scope: string;
  scopeId: string;
  windowStart: string;
  amount: bigint;
  expiresAt: number;
  revoked: boolean;
}

const SCOPE_ORDER = ["KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "CHANNEL_DAILY", "RUN_TOTAL"];

/** tg_lease_size: the grant shrinks as the scope nears its cap, never below the request at hand. */
export function leaseSize(need: bigint, want: bigint, left: bigint, cap: bigint | null, used: bigint): bigint {
  if (left < need) return 0n;
  const share = cap === null ? want : used * 2n < cap ? left / 4n : used * 5n < cap * 4n ? left / 10n : left / 20n;
  const wanted = want < share ? want : share;
  const atLeast = need > wanted ? need : wanted;
  return left < atLeast ? left : atLeast;
}

export class MemoryGrants implements GrantStore {
  readonly balances = new Map<string, { balance: bigint; held: bigint }>();
  /** Cap per `${scope}|${scopeId}`; absent = uncapped. */
  readonly caps = new Map<string, bigint>();
  /** Counter per `${scope}|${scopeId}|${windowStart}`. */
  readonly counters = new Map<string, { spent: bigint; held: bigint }>();
  readonly leases = new Map<string, MemoryLease>();
  /** The store's clock (ms), used when the pool sends no time. */
  now = Date.parse("2031-01-01T00:00:00Z");
  /** Statements received, by kind. */
  readonly calls = { grant: 0, giveBack: 0, renew: 0 };
  /** Makes the next statements throw (a lost connection). */
  failNext = 0;
  private nextId = 1;

  bucket(bucketId: string, balance: bigint): this {
    this.balances.set(bucketId, { balance, held: 0n });
    return this;
  }

  cap(scope: string, scopeId: string, amount: bigint | null): this {
    if (amount === null) this.caps.delete(`${scope}|${scopeId}`);
    else this.caps.set(`${scope}|${scopeId}`, amount);
    return this;
  }

  counter(scope: string, scopeId: string, windowStart: string): { spent: bigint; held: bigint } {
    const k = `${scope}|${scopeId}|${windowStart}`;
    let c = this.counters.get(k);
    if (!c) {
      c = { spent: 0n, held: 0n };
      this.counters.set(k, c);
    }
    return c;
  }

  private time(now: string | null): number {
    return now === null ? this.now : Date.parse(now);
  }

  private maybeFail(): void {
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error("memory grants: simulated lost connection");
    }
  }

  async grant(instanceId: string, bucketId: string, asks: GrantAsk[], now: string | null, ttlMs: number): Promise<GrantRow[]> {
    this.calls.grant++;
    this.maybeFail();
    const bucket = this.balances.get(bucketId);
    if (!bucket) throw new Error(`TG_NOT_FOUND: bucket ${bucketId}`);
    const at = this.time(now);
    const ordered = [...asks].sort((a, b) => {
      const rank = (s: string) => (SCOPE_ORDER.includes(s) ? SCOPE_ORDER.indexOf(s) : 50);
      return rank(a.scope) - rank(b.scope) || a.scope.localeCompare(b.scope) || a.scope_id.localeCompare(b.scope_id) || a.window_start.localeCompare(b.window_start);
    });
    const refusal = (r: string): GrantRow[] => [{ scope: null, scope_id: null, lease_id: null, granted: 0n, refusal: r, replaced: null }];
    const grants: Array<{ ask: GrantAsk; grant: bigint }> = [];
    for (const ask of ordered) {
      const need = BigInt(ask.need);
      const want = BigInt(ask.want);
      if (need < 0n || want < need) throw new Error("TG_BAD_AMOUNT: a lease needs 0 <= need <= want");
      if (ask.scope === "BALANCE") {
        const left = bucket.balance - bucket.held;
        if (left < need) return refusal("INSUFFICIENT_BALANCE");
        grants.push({ ask, grant: leaseSize(need, want, left, bucket.balance, bucket.held) });
        continue;
      }
      const c = this.counter(ask.scope, ask.scope_id, ask.window_start);
      const cap = this.caps.get(`${ask.scope}|${ask.scope_id}`) ?? null;
      if (cap === null) {
        grants.push({ ask, grant: want });
        continue;
      }
      const used = c.spent + c.held;
      if (used + need > cap) return refusal(ask.scope);
      grants.push({ ask, grant: leaseSize(need, want, cap - used, cap, used) });
    }
    const rows: GrantRow[] = [];
    for (const { ask, grant } of grants) {
      if (ask.scope === "BALANCE") bucket.held += grant;
      else this.counter(ask.scope, ask.scope_id, ask.window_start).held += grant;
      let id: string | null = null;
      let replaced: string | null = null;
      if (ask.lease_id) {
        const l = this.leases.get(ask.lease_id);
        if (l && l.instanceId === instanceId && !l.revoked && l.bucketId === bucketId && l.scope === ask.scope && l.scopeId === ask.scope_id && l.windowStart === ask.window_start) {
          l.amount += grant;
          l.expiresAt = Math.max(l.expiresAt, at + ttlMs);
          id = l.id;
        } else replaced = l ? "revoked" : "gone";
      }
      if (!id) {
        id = `lease-${this.nextId++}`;
        this.leases.set(id, { id, instanceId, bucketId, scope: ask.scope, scopeId: ask.scope_id, windowStart: ask.window_start, amount: grant, expiresAt: at + ttlMs, revoked: false });
      }
      rows.push({ scope: ask.scope, scope_id: ask.scope_id, lease_id: id, granted: grant, refusal: null, replaced });
    }
    return rows;
  }

  private unhold(l: MemoryLease, amount: bigint): void {
    if (l.scope === "BALANCE") this.balances.get(l.bucketId)!.held -= amount;
    else this.counter(l.scope, l.scopeId, l.windowStart).held -= amount;
  }

  async giveBack(returns: LeaseReturn[], _now: string | null): Promise<void> {
    this.calls.giveBack++;
    this.maybeFail();
    for (const r of returns) {
      const l = this.leases.get(r.lease_id);
      if (!l) continue;
      const back = r.amount === null ? l.amount : [BigInt(r.amount), 0n, l.amount].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))[1]!;
      this.unhold(l, back);
      if (r.amount === null) this.leases.delete(l.id);
      else l.amount -= back;
    }
  }

  async renew(instanceId: string, now: string | null, ttlMs: number): Promise<Array<{ id: string; revoked: boolean }>> {
    this.calls.renew++;
    this.maybeFail();
    const at = this.time(now);
    const out: Array<{ id: string; revoked: boolean }> = [];
    for (const l of this.leases.values()) {
      if (l.instanceId !== instanceId) continue;
      l.expiresAt = at + ttlMs;
      out.push({ id: l.id, revoked: l.revoked });
    }
    return out;
  }

  /** tg_lease_revoke: a cap change of the scope (its leases admit nothing new once the pool hears). */
  revoke(scope: string, scopeId: string): number {
    let n = 0;
    for (const l of this.leases.values()) {
      if (l.scope === scope && l.scopeId === scopeId && !l.revoked) {
        l.revoked = true;
        n++;
      }
    }
    return n;
  }

  /** tg_reclaim_leases: leases expired past the grace go, and what they held with them. */
  reclaim(now: number, graceMs: number): number {
    let n = 0;
    for (const l of [...this.leases.values()]) {
      if (l.expiresAt <= now - graceMs) {
        this.unhold(l, l.amount);
        this.leases.delete(l.id);
        n++;
      }
    }
    return n;
  }

  /** Σ of an instance's leases' amounts per scope (what the store counts as leased). */
  leased(instanceId?: string): bigint {
    let sum = 0n;
    for (const l of this.leases.values()) if (!instanceId || l.instanceId === instanceId) sum += l.amount;
    return sum;
  }
}

/**
 * What the batched writer (tg_record_batch) does to leases when a charge commits: the charge leaves
 * each lease of the hold and moves from held to spent on its counter (and off the balance).
 */
export function chargeOut(store: MemoryGrants, leaseIds: string[], charge: bigint): void {
  for (const id of leaseIds) {
    const l = store.leases.get(id);
    if (!l) throw new Error(`charge out of a lease the store no longer has: ${id}`);
    l.amount -= charge;
    if (l.scope === "BALANCE") {
      const b = store.balances.get(l.bucketId)!;
      b.held -= charge;
      b.balance -= charge;
    } else {
      const c = store.counter(l.scope, l.scopeId, l.windowStart);
      c.held -= charge;
      c.spent += charge;
    }
  }
}
