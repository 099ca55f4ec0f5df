// Budget leases (issue 9): admission in memory against durable grants of headroom.
//
// An instance (one LeasePool) holds leases, rows of "BudgetLease" granted by tg_lease_grant: for
// each scope-window-bucket counter a request touches (key day, project day / month, route day,
// run) and for the bucket's available balance. A lease's amount is counted in the counter's /
// bucket's `held`, so the database keeps, at all times, spent + Σ leases ≤ cap and Σ leases ≤
// balance, whatever the instances do. A request is admitted by a synchronous check of its worst
// case against the free part of every lease it needs (no database round trip); its hold is a
// number inside those leases, in memory. When a lease is short, the pool takes more in ONE
// statement for all the scopes that are short (all-or-nothing, sized down near a cap by
// tg_lease_size so the cap is reached exactly). Spending leaves the leases through the batched
// writer (tg_record_batch); unused headroom goes back when a lease is idle or the pool closes.
// A cap change revokes a scope's leases: they admit nothing new but keep what is in flight counted
// (issue 14). A dead instance's leases are reclaimed a grace period after their TTL, the longest a
// request admitted against them can run (tg_reclaim_leases); expiry runs on the database's clock.
import { randomUUID } from "node:crypto";
import type { Refusal, SqlClient } from "./sql.ts";
import { LeaseGoneError, translateDbError } from "./sql.ts";
import { sqlGrantStore, type GrantAsk, type GrantStore } from "./grant-store.ts";
import { capWindow, RUN_WINDOW, type ZoneState } from "./windows.ts";
import type { CapScope } from "../generated/prisma/enums.ts";
import { MAX_AMOUNT_MICROS } from "./amounts.ts";
import { services } from "../installed.ts";

// Tuning constants (the settings LEASE_TTL_MS, LEASE_CHUNK_REQUESTS and LEASE_RECLAIM_GRACE_MS are read in config.ts).
/** How long a refused grant is answered from memory (for requests asking as much or more). */
const REFUSAL_MEMORY_MS = 25;
/** Refusals remembered at most (forgotten all at once past it). */
const REFUSAL_MEMORY_MAX = 10_000;
/** Grant statements one admission may send before it is refused with the scope still short. */
const GRANT_TRIES = 4;
/** Waits on this instance's grant in flight for the same bucket, per admission. */
const GRANT_WAITS = 64;
/** Default idle time before an unused lease goes back: the TTL divided by this. */
const IDLE_TTL_DIVISOR = 2;
/** Default margin before expiry within which a lease is not used: the TTL divided by this. */
const SAFETY_TTL_DIVISOR = 4;
/** Re-admissions of a charge batch whose leases the database reclaimed under it (chargeBatch). */
const CHARGE_BATCH_REBACKS = 3;

/** A counter scope, or the bucket's available balance. */
export type LeaseScopeName = CapScope | "BALANCE";

export interface LeaseKey {
  bucketId: string;
  scope: LeaseScopeName;
  scopeId: string;
  windowStart: Date;
}

interface Lease extends LeaseKey {
  id: string;
  /**
   * Granted and not yet spent, as this instance counts it. Never more than the database holds for
   * the lease: whatever is given back leaves this number before the statement is sent.
   */
  amount: bigint;
  /** Part of `amount` promised to requests in flight. */
  inFlight: bigint;
  /** Local time after which the lease admits nothing new until renewed (its expiry minus a safety margin). */
  usableUntil: number;
  lastUsed: number;
  /** Admits nothing new (revoked by a cap change, or replaced); kept until its holds in flight end. */
  draining: boolean;
  /** The database reclaimed it (its instance stopped renewing past the grace): its holds are not backed. */
  gone: boolean;
}

/** A request's worst case, held inside every lease it needs. */
export interface LeaseHold {
  amount: bigint;
  bucketId: string;
  leases: Lease[];
}

export type AdmitResult = { ok: true; hold: LeaseHold } | { ok: false; refusal: Refusal };

export interface AdmitInput {
  bucketId: string;
  amount: bigint;
  keyId: string;
  projectId: string;
  routeId?: string | null;
  runId?: string | null;
  /** The channel the request goes to (its CHANNEL_DAILY cap). */
  channelId?: string | null;
  /** The key's per-request maximum in this bucket, if any (not a counter: checked here). */
  perRequestCap?: bigint | null;
  now?: Date;
  /** The organization's zone: the day and month windows the leases are of (default UTC). */
  zone?: ZoneState;
}

export interface LeasePoolOptions {
  instanceId: string;
  /** How long a grant lives without renewal (after it, plus the sweeper's grace, a dead instance's headroom comes back). */
  ttlMs: number;
  /** How much headroom to ask for beyond the request at hand (the database shrinks it near a cap). */
  chunk: (need: bigint) => bigint;
  /** A lease unused this long goes back (so another instance can have it). Default ttlMs / 2. */
  idleMs?: number;
  /** A lease is not used within this margin of its expiry (renewal may be late). Default ttlMs / 4. */
  safetyMs?: number;
  /** Local clock (tests move it). */
  clock?: () => number;
  /**
   * The database's time for the lease statements. Absent (the gateway): the database uses its own
   * clock, so instances with skewed clocks agree on every expiry. Tests that move time set it.
   */
  databaseTime?: () => Date;
  /** A request was refused by this scope (other instances may hold its headroom: they are asked to give it back). */
  onRefused?: (key: LeaseKey) => void;
  /** A give-back statement failed (the headroom stays leased until the lease is returned whole or reclaimed). */
  onError?: (message: string, error: unknown) => void;
  /** A drained lease is queued to go back whole: the gateway calls flush() at once (tests wait for the heartbeat). */
  onDrained?: () => void;
}

const keyOf = (k: LeaseKey) => `${k.bucketId}|${k.scope}|${k.scopeId}|${k.windowStart.toISOString()}`;
const scopeOfRefusal = (refusal: Refusal): LeaseScopeName => (refusal === "INSUFFICIENT_BALANCE" ? "BALANCE" : refusal === "RUN_PAUSED" || refusal === "RUN_CANCELLED" ? "RUN_TOTAL" : refusal);

/** The leases a request needs: the bucket's balance and every counter scope that applies to it. */
export function leaseScopes(input: Pick<AdmitInput, "bucketId" | "keyId" | "projectId" | "routeId" | "runId" | "channelId" | "zone">, now: Date): LeaseKey[] {
  const day = capWindow("DAY", now, input.zone).start;
  const scopes: LeaseKey[] = [
    { bucketId: input.bucketId, scope: "BALANCE", scopeId: "", windowStart: RUN_WINDOW },
    { bucketId: input.bucketId, scope: "KEY_DAILY", scopeId: input.keyId, windowStart: day },
    { bucketId: input.bucketId, scope: "PROJECT_DAILY", scopeId: input.projectId, windowStart: day },
    { bucketId: input.bucketId, scope: "PROJECT_MONTHLY", scopeId: input.projectId, windowStart: capWindow("MONTH", now, input.zone).start },
  ];
  if (input.routeId) scopes.push({ bucketId: input.bucketId, scope: "ROUTE_DAILY", scopeId: input.routeId, windowStart: day });
  if (input.channelId) scopes.push({ bucketId: input.bucketId, scope: "CHANNEL_DAILY", scopeId: input.channelId, windowStart: day });
  if (input.runId) scopes.push({ bucketId: input.bucketId, scope: "RUN_TOTAL", scopeId: input.runId, windowStart: RUN_WINDOW });
  return scopes;
}

/**
 * One instance's leases. The rule everything here keeps: the database always counts every hold
 * this instance admitted. So a lease is only ever given back in its free part (taken out of
 * `amount` before the statement goes), or whole once nothing is in flight in it and it left the
 * map (no grant names it again); a revoked or replaced lease drains (admits nothing new) until its
 * holds end; and a hold whose lease the database reclaimed is backed anew before it is charged.
 */
export class LeasePool {
  /** The lease each scope admits against. */
  private readonly leases = new Map<string, Lease>();
  /** Leases that admit nothing new but still carry holds in flight. */
  private readonly draining = new Set<Lease>();
  /** Leases to give back whole (drained, or a whole return that failed): sent at the next heartbeat. */
  private closing: string[] = [];
  /** Grants refused in the last REFUSAL_MEMORY_MS, per scope: what was asked, and the refusal. */
  private readonly refused = new Map<string, { until: number; amount: bigint; refusal: Refusal }>();
  /** The grant statement in flight per bucket, if any. */
  private readonly granting = new Map<string, Promise<void>>();
  private readonly clock: () => number;
  private readonly idleMs: number;
  private readonly safetyMs: number;
  /** Grants, renewals and returns the pool made (for tests and metrics). */
  readonly stats = { grants: 0, grantStatements: 0, refusals: 0, returns: 0, renewals: 0, lapsed: 0, recalls: 0, revoked: 0, rebacked: 0 };

  private readonly store: GrantStore;

  constructor(
    /** The database (its SQL functions), or any GrantStore (an in-memory one in unit tests). */
    client: SqlClient | GrantStore,
    private readonly options: LeasePoolOptions,
  ) {
    this.store = typeof (client as SqlClient).$queryRawUnsafe === "function" ? sqlGrantStore(client as SqlClient) : (client as GrantStore);
    this.clock = options.clock ?? Date.now;
    this.idleMs = options.idleMs ?? Math.floor(options.ttlMs / IDLE_TTL_DIVISOR);
    this.safetyMs = options.safetyMs ?? Math.floor(options.ttlMs / SAFETY_TTL_DIVISOR);
  }

  get instanceId(): string {
    return this.options.instanceId;
  }

  private dbNow(): string | null {
    return this.options.databaseTime ? this.options.databaseTime().toISOString() : null;
  }

  /** Leases held now, draining ones included (a copy: amounts and in-flight holds). */
  snapshot(): Array<LeaseKey & { id: string; amount: bigint; inFlight: bigint; draining: boolean; gone: boolean }> {
    return [...this.leases.values(), ...this.draining].map((l) => ({ ...l }));
  }

  /**
   * Admits a request's worst case against this instance's leases, taking more headroom (one
   * statement) when one falls short. Refuses with the scope that cannot cover it.
   */
  async admit(input: AdmitInput): Promise<AdmitResult> {
    if (input.amount < 0n || input.amount > MAX_AMOUNT_MICROS) throw new RangeError("admission amount out of range");
    if (input.perRequestCap != null && input.amount > input.perRequestCap) return { ok: false, refusal: "KEY_PER_REQUEST" };
    return this.admitScopes(leaseScopes(input, input.now ?? new Date(this.clock())), input.amount, input.bucketId);
  }

  private async admitScopes(scopes: LeaseKey[], amount: bigint, bucketId: string): Promise<AdmitResult> {
    // A grant may be taken by concurrent admissions of this instance before ours checks it again.
    for (let attempt = 0, waits = 0; attempt < GRANT_TRIES && waits < GRANT_WAITS; ) {
      const short = this.tryHold(scopes, amount, bucketId);
      if (!Array.isArray(short)) return { ok: true, hold: short };
      // One grant per bucket at a time: requests that fall short together wait for it rather than
      // each taking a chunk (which would strand headroom other instances could use).
      const pending = this.granting.get(bucketId);
      if (pending) {
        waits++;
        await pending;
        continue;
      }
      // A grant refused a moment ago for as much or less: refuse in memory. A client hammering a
      // key at its cap must not turn each request into a statement holding the bucket row (which
      // every request of the organization needs); headroom that comes back is seen within the window.
      const refusedAt = this.recentRefusal(short, amount);
      if (refusedAt) return this.refuse(scopes, refusedAt);
      attempt++;
      const granted = this.grant(short, amount);
      const done = granted.then(
        () => undefined,
        () => undefined,
      );
      this.granting.set(bucketId, done);
      let refusal: Refusal | null;
      try {
        refusal = await granted;
      } finally {
        if (this.granting.get(bucketId) === done) this.granting.delete(bucketId);
      }
      if (refusal) {
        // A concurrent grant of this instance may have brought the headroom meanwhile.
        const again = this.tryHold(scopes, amount, bucketId);
        if (!Array.isArray(again)) return { ok: true, hold: again };
        this.rememberRefusal(short, amount, refusal);
        return this.refuse(scopes, refusal);
      }
    }
    const last = this.tryHold(scopes, amount, bucketId);
    if (!Array.isArray(last)) return { ok: true, hold: last };
    const scope = last[0]!.key.scope;
    return this.refuse(scopes, scope === "BALANCE" ? "INSUFFICIENT_BALANCE" : scope);
  }

  private recentRefusal(short: Array<{ key: LeaseKey }>, amount: bigint): Refusal | null {
    const now = this.clock();
    for (const { key } of short) {
      const refused = this.refused.get(keyOf(key));
      if (refused && refused.until > now && amount >= refused.amount) return refused.refusal;
    }
    return null;
  }

  private rememberRefusal(short: Array<{ key: LeaseKey }>, amount: bigint, refusal: Refusal): void {
    const scope = scopeOfRefusal(refusal);
    const key = short.find((s) => s.key.scope === scope)?.key;
    if (!key) return;
    if (this.refused.size > REFUSAL_MEMORY_MAX) this.refused.clear();
    this.refused.set(keyOf(key), { until: this.clock() + REFUSAL_MEMORY_MS, amount, refusal });
  }

  private refuse(scopes: LeaseKey[], refusal: Refusal): AdmitResult {
    this.stats.refusals++;
    const scope = scopeOfRefusal(refusal);
    const key = scopes.find((k) => k.scope === scope);
    if (key && refusal !== "RUN_PAUSED" && refusal !== "RUN_CANCELLED") this.options.onRefused?.(key);
    return { ok: false, refusal };
  }

  /** Synchronous: holds `amount` in every lease, or returns the leases that are short (and by how much). */
  private tryHold(scopes: LeaseKey[], amount: bigint, bucketId: string): LeaseHold | Array<{ key: LeaseKey; need: bigint }> {
    const now = this.clock();
    const short: Array<{ key: LeaseKey; need: bigint }> = [];
    const found: Lease[] = [];
    for (const key of scopes) {
      const lease = this.leases.get(keyOf(key));
      // Not renewed in time (this instance stalled): nothing new until a grant naming it confirms it.
      const fresh = lease !== undefined && lease.usableUntil > now;
      const usable = fresh ? lease.amount - lease.inFlight : 0n;
      if (lease && !fresh) short.push({ key, need: amount });
      else if (usable < amount) short.push({ key, need: amount - usable });
      else if (lease) found.push(lease); // a zero worst case needs no lease
    }
    if (short.length) return short;
    for (const lease of found) {
      lease.inFlight += amount;
      lease.lastUsed = now;
    }
    return { amount, bucketId, leases: found };
  }

  /** One statement for all short scopes (all-or-nothing); returns the refusal if one cannot be covered. */
  private async grant(short: Array<{ key: LeaseKey; need: bigint }>, amount: bigint): Promise<Refusal | null> {
    const bucketId = short[0]!.key.bucketId;
    const sentAt = this.clock();
    const named = new Map<string, Lease>();
    const payload = short.map(({ key, need }): GrantAsk => {
      const want = this.options.chunk(amount);
      const lease = this.leases.get(keyOf(key));
      if (lease) named.set(keyOf(key), lease);
      return {
        scope: key.scope,
        scope_id: key.scopeId,
        window_start: key.windowStart.toISOString(),
        need: need.toString(),
        want: (want > need ? want : need).toString(),
        lease_id: lease?.id ?? null,
      };
    });
    this.stats.grantStatements++;
    const rows = await this.store.grant(this.options.instanceId, bucketId, payload, this.dbNow(), this.options.ttlMs);
    if (rows.length === 1 && rows[0]!.refusal) {
      const refusal = rows[0]!.refusal;
      return refusal === "BALANCE" ? "INSUFFICIENT_BALANCE" : (refusal as Refusal);
    }
    const byScope = new Map(short.map((s) => [`${s.key.scope}|${s.key.scopeId}`, s.key]));
    // Expiry is reckoned from when the statement was sent: the database stamped it no earlier.
    const usableUntil = sentAt + this.options.ttlMs - this.safetyMs;
    for (const row of rows) {
      // The function answers in its lock order, not ours.
      const key = byScope.get(`${row.scope}|${row.scope_id ?? ""}`);
      if (!key) throw new Error(`tg_lease_grant answered an unasked scope ${row.scope}`);
      const granted = row.granted;
      const k = keyOf(key);
      const named_ = named.get(k);
      const current = this.leases.get(k);
      if (current && current.id === row.lease_id) {
        current.amount += granted;
        current.usableUntil = Math.max(current.usableUntil, usableUntil);
      } else if (named_ && named_.id === row.lease_id) {
        // Topped up, but retired meanwhile (a revocation heard while the grant ran): the grant is
        // counted on it and goes back with its free part (or with the whole lease, once closed);
        // the request asks again, for a new lease.
        if (!this.draining.has(named_)) continue;
        named_.amount += granted;
        void this.returnFree([named_]);
      } else {
        // The lease we named was revoked or reclaimed meanwhile: it drains (its holds keep it), and
        // the new row admits from now on.
        const old = current ?? named_;
        if (old && old.id !== row.lease_id) this.retire(old, row.replaced === "gone");
        this.leases.set(k, { ...key, id: row.lease_id!, amount: granted, inFlight: 0n, usableUntil, lastUsed: this.clock(), draining: false, gone: false });
      }
      this.stats.grants++;
    }
    return null;
  }

  /** The batched writer's view of a hold: which leases (and counters) its charge leaves. */
  chargeLeases(hold: LeaseHold): ChargeLease[] {
    return hold.leases.filter((l) => !l.gone).map((l) => ({ lease_id: l.id, scope: l.scope, scope_id: l.scopeId, window_start: l.windowStart.toISOString() }));
  }

  /** Whether every lease of the hold still exists in the database (else its charge needs backing anew: see backed). */
  isBacked(hold: LeaseHold): boolean {
    return hold.leases.every((l) => !l.gone);
  }

  /**
   * A hold whose lease the database reclaimed (its instance stalled past the grace) cannot be
   * charged out of it: its charge is admitted anew, against every cap as any request, before it is
   * written. Answers the hold to charge, and what it may charge (0 when nothing can cover it now:
   * the record is still written, uncharged; the caller says so loudly).
   */
  async backed(hold: LeaseHold, charge: bigint): Promise<{ hold: LeaseHold; charge: bigint }> {
    // Never more than the hold (a hold that was settled or released holds nothing).
    if (charge > hold.amount) throw new RangeError(`charge ${charge} above its hold ${hold.amount}`);
    if (this.isBacked(hold) || charge === 0n) return { hold, charge };
    const scopes: LeaseKey[] = hold.leases.map((l) => ({ bucketId: l.bucketId, scope: l.scope, scopeId: l.scopeId, windowStart: l.windowStart }));
    if (!scopes.some((s) => s.scope === "BALANCE")) scopes.push({ bucketId: hold.bucketId, scope: "BALANCE", scopeId: "", windowStart: RUN_WINDOW });
    this.release(hold);
    this.stats.rebacked++;
    const again = await this.admitScopes(scopes, charge, hold.bucketId);
    if (again.ok) return { hold: again.hold, charge };
    return { hold: { amount: 0n, bucketId: hold.bucketId, leases: [] }, charge: 0n };
  }

  /**
   * The database no longer has these leases: a write found them reclaimed before a renewal told
   * this instance (it stalled past the grace). They admit nothing more; holds in them need backing anew.
   */
  markGone(ids: Iterable<string>): void {
    const gone = new Set(ids);
    for (const lease of [...this.leases.values(), ...this.draining]) {
      if (!gone.has(lease.id) || lease.gone) continue;
      this.stats.lapsed++;
      if (this.draining.has(lease)) lease.gone = true;
      else this.retire(lease, true);
    }
  }

  /** After the charge committed (tg_record_batch): the charge left the leases, the rest of the hold is free again. */
  settled(hold: LeaseHold, charge: bigint): void {
    if (charge < 0n || charge > hold.amount) throw new RangeError("charge outside its hold");
    for (const lease of hold.leases) {
      lease.inFlight -= hold.amount;
      lease.amount -= charge;
      if (lease.amount < 0n) lease.amount = 0n;
      if (lease.inFlight < 0n) lease.inFlight = 0n;
      if (lease.draining && lease.inFlight === 0n) this.close(lease);
    }
    hold.amount = 0n;
    hold.leases = [];
  }

  /** A hold dropped without a charge. */
  release(hold: LeaseHold): void {
    this.settled(hold, 0n);
  }

  /** A lease admits nothing new from now on: its free part goes back at once, the rest when its holds end. */
  private retire(lease: Lease, gone: boolean): void {
    if (this.leases.get(keyOf(lease)) === lease) this.leases.delete(keyOf(lease));
    lease.draining = true;
    lease.gone ||= gone;
    if (lease.inFlight === 0n) {
      this.close(lease);
      return;
    }
    this.draining.add(lease);
    if (!lease.gone && lease.amount > lease.inFlight) void this.returnFree([lease]);
  }

  /** Out of every map: the whole lease (its row) goes at the next heartbeat. */
  private close(lease: Lease): void {
    if (this.leases.get(keyOf(lease)) === lease) this.leases.delete(keyOf(lease));
    this.draining.delete(lease);
    lease.draining = true;
    lease.amount = 0n;
    if (!lease.gone) {
      this.closing.push(lease.id);
      this.options.onDrained?.();
    }
  }

  /** Gives back the free part of leases still in use: taken out of `amount` before the statement goes. */
  private async returnFree(leases: Lease[]): Promise<void> {
    const returns: Array<{ lease_id: string; amount: string | null }> = [];
    for (const lease of leases) {
      const free = lease.amount - lease.inFlight;
      if (free <= 0n || lease.gone) continue;
      lease.amount -= free;
      returns.push({ lease_id: lease.id, amount: free.toString() });
    }
    if (!returns.length) return;
    this.stats.returns += returns.length;
    // A failed partial return leaves the database holding more than we count: safe, and the whole
    // return that ends the lease gives it all back.
    await this.store.giveBack(returns, this.dbNow()).catch((e: unknown) => this.options.onError?.("could not give back leased headroom", e));
  }

  /** Gives back the drained leases queued (also done by every heartbeat). */
  flush(): Promise<void> {
    return this.flushClosing();
  }

  /** Sends the whole returns queued (retried at the next heartbeat if the statement fails: a row only ever shrinks once closed). */
  private async flushClosing(): Promise<void> {
    if (!this.closing.length) return;
    const ids = this.closing;
    this.closing = [];
    this.stats.returns += ids.length;
    try {
      await this.store.giveBack(
        ids.map((id) => ({ lease_id: id, amount: null })),
        this.dbNow(),
      );
    } catch (e) {
      this.closing.push(...ids);
      this.options.onError?.("could not give back leases (retried at the next heartbeat)", e);
    }
  }

  /** Gives leases back: whole when nothing is in flight in them, else their free part. */
  private async giveBack(leases: Lease[]): Promise<void> {
    const inUse: Lease[] = [];
    for (const lease of leases) {
      if (lease.inFlight === 0n) this.close(lease);
      else inUse.push(lease);
    }
    await this.returnFree(inUse);
    await this.flushClosing();
  }

  /**
   * Heartbeat: gives back leases idle for `idleMs`, renews every lease of this instance, and learns
   * which were revoked (a cap change whose event it missed) or reclaimed. Run every ~ttl / 3.
   */
  async maintain(): Promise<void> {
    const now = this.clock();
    const idle = [...this.leases.values()].filter((l) => l.inFlight === 0n && now - l.lastUsed >= this.idleMs);
    await this.giveBack(idle);
    if (this.leases.size === 0 && this.draining.size === 0) return;
    // Only leases that exist before the renewal is sent can be missing from its answer.
    const known = [...this.leases.values()];
    const knownDraining = [...this.draining];
    const sentAt = this.clock();
    const rows = await this.store.renew(this.options.instanceId, this.dbNow(), this.options.ttlMs);
    this.stats.renewals++;
    const present = new Map(rows.map((r) => [r.id, r.revoked]));
    for (const lease of known) {
      if (this.leases.get(keyOf(lease)) !== lease) continue;
      const revoked = present.get(lease.id);
      if (revoked === undefined) {
        // Reclaimed: this instance stalled past its expiry and the grace.
        this.stats.lapsed++;
        this.retire(lease, true);
      } else if (revoked) {
        this.stats.revoked++;
        this.retire(lease, false);
      } else {
        // Renewed: usable again even if this instance stalled past its expiry (the grace kept it).
        lease.usableUntil = Math.max(lease.usableUntil, sentAt + this.options.ttlMs - this.safetyMs);
      }
    }
    for (const lease of knownDraining) if (this.draining.has(lease) && !present.has(lease.id)) lease.gone = true;
    await this.flushClosing();
  }

  /** Gives back every lease's free headroom, and every unused lease whole (on stop, or when asked). */
  async returnAll(): Promise<void> {
    await this.giveBack([...this.leases.values(), ...this.draining]);
  }

  /**
   * A cap of this scope changed (or its run was paused or cancelled) and its leases were revoked in
   * the database: admit nothing more against them and give back their free part; holds in flight
   * keep them (counted against the new cap) until they end. The next request takes a new grant.
   */
  async forgetScope(scope: string, scopeId: string): Promise<void> {
    for (const lease of [...this.leases.values()]) {
      if (lease.scope === scope && lease.scopeId === scopeId) {
        this.stats.revoked++;
        this.retire(lease, false);
      }
    }
    // A raised cap (or a resumed run) admits at once.
    for (const k of this.refused.keys()) if (k.includes(`|${scope}|${scopeId}|`)) this.refused.delete(k);
    await this.flushClosing();
  }

  /** Another instance was refused near this scope's cap: give back the free part of our leases of it. */
  async recall(bucketId: string, scope: string, scopeId: string): Promise<void> {
    const leases = [...this.leases.values()].filter((l) => l.bucketId === bucketId && l.scope === scope && l.scopeId === scopeId && l.amount > l.inFlight);
    await this.giveBack(leases);
    this.stats.recalls++;
  }

  /** Forgets everything without telling the database (what a killed process does; tests use it). */
  abandon(): void {
    this.leases.clear();
    this.draining.clear();
    this.closing = [];
  }
}

/**
 * A cap of a scope is about to change (or its run to pause / stop): call in the change's
 * transaction BEFORE the cap is written. Locks the organization's buckets (a racing grant commits
 * first and is revoked here, or waits and reads the new cap), then revokes the scope's leases: they
 * admit nothing new but keep what is in flight counted. The instances are told (leasesRevoked; a
 * missed event is learnt at the next renewal, TTL / 3) and give back the free part. Publishing
 * before the commit is safe: a new grant waits on the bucket rows this transaction locked.
 */
export async function revokeLeases(client: SqlClient, scope: CapScope, scopeId: string, organizationId: string): Promise<void> {
  await client.$queryRawUnsafe(`SELECT tg_lease_revoke($1, $2, $3)`, scope, scopeId, organizationId).catch(translateDbError);
  services().events.publish("leasesRevoked", { scope, scopeId });
}

/**
 * Reclaims the leases of instances that stopped renewing, `graceMs` after their expiry (the longest
 * a request admitted against them can still run): their headroom comes back. `now` only in tests
 * that move time; the gateway uses the database's clock.
 */
export async function reclaimLeases(client: SqlClient, graceMs: number, now: Date | null = null): Promise<number> {
  const rows = await client.$queryRawUnsafe<Array<{ n: number }>>(`SELECT tg_reclaim_leases($1::timestamptz AT TIME ZONE 'UTC', $2::int) AS n`, now?.toISOString() ?? null, graceMs);
  return Number(rows[0]!.n);
}

export interface ChargeItem {
  requestId: string;
  bucketId: string;
  charge: bigint;
  hold: LeaseHold;
  receiptId?: string | null;
  failedRequestId?: string | null;
}

/** Which lease (and counter) a charge leaves: pool.chargeLeases(hold). */
export interface ChargeLease {
  lease_id: string;
  scope: LeaseScopeName;
  scope_id: string;
  window_start: string;
}

/** One charge as the batched writer sends it. */
export interface ChargeRow {
  requestId: string;
  bucketId: string;
  charge: bigint;
  receiptId: string | null;
  failedRequestId: string | null;
  ledgerEntryId: string;
  leases: ChargeLease[];
}

/**
 * The money parameters of tg_record_batch (after p_now, p_receipts, p_failures): per charge in
 * request order, then the totals per lease and per (counter, lease), aggregated here so the
 * database applies one delta per row whatever the batch size.
 */
export function chargeBatchParams(rows: ChargeRow[]): unknown[] {
  const requestIds: string[] = [];
  const bucketIds: string[] = [];
  const charges: string[] = [];
  const receiptIds: Array<string | null> = [];
  const failedIds: Array<string | null> = [];
  const ledgerIds: string[] = [];
  const balanceLeases: Array<string | null> = [];
  const perLease = new Map<string, bigint>();
  const perCounter = new Map<string, { scope: string; scopeId: string; bucketId: string; window: string; leaseId: string; amount: bigint }>();
  for (const row of rows) {
    if (row.charge < 0n) throw new RangeError("a charge must be >= 0");
    requestIds.push(row.requestId);
    bucketIds.push(row.bucketId);
    charges.push(row.charge.toString());
    receiptIds.push(row.receiptId);
    failedIds.push(row.failedRequestId);
    ledgerIds.push(row.ledgerEntryId);
    let balanceLease: string | null = null;
    for (const lease of row.leases) {
      if (lease.scope === "BALANCE") balanceLease = lease.lease_id;
      if (row.charge === 0n) continue;
      perLease.set(lease.lease_id, (perLease.get(lease.lease_id) ?? 0n) + row.charge);
      if (lease.scope === "BALANCE") continue;
      const key = `${lease.lease_id}|${lease.scope}|${lease.scope_id}|${row.bucketId}|${lease.window_start}`;
      const counter = perCounter.get(key);
      if (counter) counter.amount += row.charge;
      else perCounter.set(key, { scope: lease.scope, scopeId: lease.scope_id, bucketId: row.bucketId, window: lease.window_start, leaseId: lease.lease_id, amount: row.charge });
    }
    balanceLeases.push(balanceLease);
  }
  const counters = [...perCounter.values()];
  return [
    requestIds,
    bucketIds,
    charges,
    receiptIds,
    failedIds,
    ledgerIds,
    balanceLeases,
    [...perLease.keys()],
    [...perLease.values()].map(String),
    counters.map((c) => c.scope),
    counters.map((c) => c.scopeId),
    counters.map((c) => c.bucketId),
    counters.map((c) => c.window),
    counters.map((c) => c.leaseId),
    counters.map((c) => c.amount.toString()),
  ];
}

/** tg_record_batch's call: $1 now, $2 receipts JSON, $3 failures JSON, then chargeBatchParams. */
export const RECORD_BATCH_SQL = `SELECT request_id, ledger_entry_id, balance_after::text AS balance_after, scope, scope_id, bucket, window_start,
       spent::text AS spent, held::text AS held, cap::text AS cap
  FROM tg_record_batch($1::timestamptz AT TIME ZONE 'UTC', $2::json, $3::json, ${Array.from({ length: 15 }, (_, i) => `$${i + 4}`).join(", ")})`;

/** Charges only (no receipts): the lease property test's writer, the same statement the gateway's batches use. */
export async function chargeBatch(pool: LeasePool, items: ChargeItem[], client: SqlClient, now = new Date()): Promise<Map<string, { ledgerEntryId: string; balanceAfter: bigint }>> {
  for (const item of items) if (item.charge < 0n || item.charge > item.hold.amount) throw new RangeError("charge outside its hold");
  for (let rebacks = 0; ; rebacks++) {
    // A hold whose lease was reclaimed is admitted anew first (its charge may drop to what fits: 0).
    for (const item of items) Object.assign(item, await pool.backed(item.hold, item.charge));
    try {
      const rows = await client
        .$queryRawUnsafe<Array<{ request_id: string | null; ledger_entry_id: string; balance_after: string }>>(
          RECORD_BATCH_SQL,
          now.toISOString(),
          null,
          null,
          ...chargeBatchParams(
            items.map((item) => ({
              requestId: item.requestId,
              bucketId: item.bucketId,
              charge: item.charge,
              receiptId: item.receiptId ?? null,
              failedRequestId: item.failedRequestId ?? null,
              ledgerEntryId: randomUUID(),
              leases: pool.chargeLeases(item.hold),
            })),
          ),
        )
        .catch(translateDbError);
      for (const item of items) pool.settled(item.hold, item.charge);
      return new Map(rows.filter((r) => r.request_id !== null).map((r) => [r.request_id!, { ledgerEntryId: r.ledger_entry_id, balanceAfter: BigInt(r.balance_after) }]));
    } catch (e) {
      // Reclaimed before a renewal told the pool: back those charges anew and write again.
      if (!(e instanceof LeaseGoneError) || rebacks >= CHARGE_BATCH_REBACKS) throw e;
      pool.markGone(e.leaseIds);
    }
  }
}
