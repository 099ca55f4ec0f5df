// Per-key rate limits (rpmLimit, tpmLimit, maxConcurrent) and the bad-key throttle per client
// address. Counters live in Redis when REDIS_URL is set (so the limits hold across instances),
// else in this process. Rate limits are not money: a small overshoot under a race between
// instances is acceptable, and if Redis is unreachable requests are admitted (logged), never
// refused for the limiter's own failure. Money caps are enforced elsewhere, exactly.
//
// - rpm / tpm: a sliding-window counter over 60 s (the current minute's count plus the previous
//   minute's, weighted by how much of it still falls in the last 60 s). A request is admitted only
//   if every limit of its key has room; then it counts 1 request and its token bound (reserved
//   prompt + output) in the current window. Once recorded, the bound is corrected to the tokens it
//   really used (in the window it was admitted in).
// - maxConcurrent: the key's requests in flight, each held with an expiry (a crashed instance's
//   entries lapse after CONCURRENCY_TTL_MS).
// - Bad keys: a missing or unknown key writes no database row; it is counted per client address,
//   and an address over BAD_KEY_LIMIT_PER_MINUTE gets 429 without any key lookup until its minute ends.
import { Redis } from "ioredis";
import { onRequestRecorded } from "../money/index.ts";
import { gatewayBadKeyThrottled, gatewayBadKeys, gatewayRateLimited } from "../metrics.ts";

export const WINDOW_MS = 60_000;
/** How long a request may count as in flight if its instance never says it ended. */
export const CONCURRENCY_TTL_MS = 15 * 60_000;

export interface KeyRateLimits {
  rpmLimit: number | null;
  tpmLimit: number | null;
  maxConcurrent: number | null;
}

export type RateLimitKind = "rpm" | "tpm" | "concurrent";

/** An admitted request's counts, to correct and free when it ends. */
export interface RateTicket {
  keyId: string;
  requestId: string;
  window: number;
  tokens: number;
  tpm: boolean;
  concurrent: boolean;
}

/** Where a key stands in its limits now: the sliding counts of the last 60 s and its requests in flight (a kind it has no limit on is not counted). */
export interface RateUsage {
  requests: number;
  tokens: number;
  inFlight: number;
}

export type RateAdmission = { ok: true; ticket: RateTicket | null } | { ok: false; limit: RateLimitKind; retryAfterSeconds: number };

/** Where the counters live. Every method is one atomic step (one Lua script on Redis). */
interface CounterStore {
  admit(input: AdmitInput): Promise<StoreVerdict>;
  /** Adds `delta` tokens to a window's tpm count, if that window is still kept. */
  adjustTokens(keyId: string, window: number, delta: number): Promise<void>;
  releaseConcurrent(keyId: string, requestId: string): Promise<void>;
  /** A key's sliding rpm / tpm counts and requests in flight now (read only). */
  usage(keyId: string, now: number): Promise<RateUsage>;
  /** Counts one bad key for an address in `window`; returns the count. */
  countBadKey(address: string, window: number): Promise<number>;
  close(): Promise<void>;
}

/** A refusal carries the refused window counts (previous and current minute), to compute retry-after. */
type StoreVerdict = { ok: true } | { ok: false; limit: RateLimitKind; previous: number; current: number };

interface AdmitInput {
  keyId: string;
  requestId: string;
  limits: KeyRateLimits;
  tokens: number;
  now: number;
}

const windowOf = (now: number) => Math.floor(now / WINDOW_MS);
/** How much of the previous window still lies within the last 60 s (ms); its count weighs remaining / WINDOW_MS. */
const previousRemainingMs = (now: number) => WINDOW_MS - (now % WINDOW_MS);
/** The sliding count: the previous window's share rounded up (integers only: exact) plus the current window's. */
const slidingCount = (previous: number, current: number, remainingMs: number) => Math.ceil((previous * remainingMs) / WINDOW_MS) + current;

/**
 * How long until a sliding-window count leaves room for `need` more: while this minute's count
 * allows it, until enough of the previous minute has slid out; else into the next minute, until
 * enough of this one has. A need larger than the limit itself never fits: one full window.
 */
export function windowRetryMs(previous: number, current: number, need: number, limit: number, elapsedMs: number): number {
  const room = limit - need;
  if (room < 0) return WINDOW_MS;
  if (current <= room) {
    // ceil(previous × (W − t) / W) ≤ room − current  ⇔  t ≥ W × (previous − (room − current)) / previous
    if (previous === 0) return 0;
    const t = Math.ceil((WINDOW_MS * (previous - (room - current))) / previous);
    return Math.max(0, t - elapsedMs);
  }
  // Next minute, this one's count sliding out: ceil(current × (W − t) / W) ≤ room.
  return WINDOW_MS - elapsedMs + Math.ceil((WINDOW_MS * (current - room)) / current);
}

// ---------------------------------------------------------------------------

class MemoryStore implements CounterStore {
  private readonly counts = new Map<string, number>();
  private readonly inFlight = new Map<string, Map<string, number>>();
  private readonly sweeper: NodeJS.Timeout;

  constructor() {
    // Windows older than the previous one are never read again.
    this.sweeper = setInterval(() => {
      const oldest = windowOf(Date.now()) - 1;
      for (const k of this.counts.keys()) if (Number(k.slice(k.lastIndexOf(":") + 1)) < oldest) this.counts.delete(k);
    }, WINDOW_MS);
    this.sweeper.unref();
  }

  private get(k: string): number {
    return this.counts.get(k) ?? 0;
  }

  private add(k: string, delta: number): number {
    const next = this.get(k) + delta;
    this.counts.set(k, next);
    return next;
  }

  async admit({ keyId, requestId, limits, tokens, now }: AdmitInput): Promise<StoreVerdict> {
    const w = windowOf(now);
    const remaining = previousRemainingMs(now);
    const slots = this.inFlight.get(keyId);
    if (limits.maxConcurrent !== null && slots) {
      for (const [id, expires] of slots) if (expires <= now) slots.delete(id);
      if (slots.size >= limits.maxConcurrent) return { ok: false, limit: "concurrent", previous: 0, current: 0 };
    }
    const over = (kind: "rpm" | "tpm", need: number, limit: number): StoreVerdict | null => {
      const previous = this.get(`${keyId}:${kind}:${w - 1}`);
      const current = this.get(`${keyId}:${kind}:${w}`);
      return slidingCount(previous, current, remaining) + need > limit ? { ok: false, limit: kind, previous, current } : null;
    };
    const refused = (limits.rpmLimit !== null && over("rpm", 1, limits.rpmLimit)) || (limits.tpmLimit !== null && over("tpm", tokens, limits.tpmLimit));
    if (refused) return refused;
    if (limits.rpmLimit !== null) this.add(`${keyId}:rpm:${w}`, 1);
    if (limits.tpmLimit !== null) this.add(`${keyId}:tpm:${w}`, tokens);
    if (limits.maxConcurrent !== null) {
      const set = slots ?? new Map<string, number>();
      set.set(requestId, now + CONCURRENCY_TTL_MS);
      this.inFlight.set(keyId, set);
    }
    return { ok: true };
  }

  async adjustTokens(keyId: string, window: number, delta: number): Promise<void> {
    const k = `${keyId}:tpm:${window}`;
    if (this.counts.has(k)) this.add(k, delta);
  }

  async releaseConcurrent(keyId: string, requestId: string): Promise<void> {
    const slots = this.inFlight.get(keyId);
    slots?.delete(requestId);
    if (slots && slots.size === 0) this.inFlight.delete(keyId);
  }

  async countBadKey(address: string, window: number): Promise<number> {
    return this.add(`bad:${address}:${window}`, 1);
  }

  async usage(keyId: string, now: number): Promise<RateUsage> {
    const w = windowOf(now);
    const remaining = previousRemainingMs(now);
    const sliding = (kind: "rpm" | "tpm") => slidingCount(this.get(`${keyId}:${kind}:${w - 1}`), this.get(`${keyId}:${kind}:${w}`), remaining);
    let inFlight = 0;
    for (const expires of this.inFlight.get(keyId)?.values() ?? []) if (expires > now) inFlight++;
    return { requests: sliding("rpm"), tokens: sliding("tpm"), inFlight };
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }
}

// ---------------------------------------------------------------------------

// KEYS: rpm current, rpm previous, tpm current, tpm previous, in-flight set.
// ARGV: rpm limit, tpm limit, concurrency limit (-1 = none), tokens, ms of the previous window still inside the last 60 s,
//       now (ms), request id, in-flight expiry (ms), window key expiry (ms).
const ADMIT_LUA = `
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, remaining, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if conc >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= conc then return {'concurrent', 0, 0} end
end
local function over(cur, prev, need, limit)
  local p = tonumber(redis.call('GET', prev) or '0')
  local c = tonumber(redis.call('GET', cur) or '0')
  if math.ceil(p * remaining / ${WINDOW_MS}) + c + need > limit then return {p, c} end
  return nil
end
if rpm >= 0 then
  local r = over(KEYS[1], KEYS[2], 1, rpm)
  if r then return {'rpm', r[1], r[2]} end
end
if tpm >= 0 then
  local r = over(KEYS[3], KEYS[4], tokens, tpm)
  if r then return {'tpm', r[1], r[2]} end
end
if rpm >= 0 then
  redis.call('INCRBY', KEYS[1], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end
if tpm >= 0 then
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
end
if conc >= 0 then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[5], ARGV[8])
end
return {'ok', 0, 0}
`;

// Corrects a window's token count only while that window is kept (never recreates an expired one).
const ADJUST_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 1
`;

const COUNT_LUA = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
`;

class RedisStore implements CounterStore {
  private connectedOnce = false;

  constructor(private readonly redis: Redis) {
    redis.on("ready", () => (this.connectedOnce = true));
  }

  /** Once connected, a lost connection fails fast instead of queueing behind reconnects. */
  private ready(): void {
    if (this.connectedOnce && this.redis.status !== "ready") throw new Error(`Redis is ${this.redis.status}`);
  }

  private static k(keyId: string, kind: string, window?: number): string {
    // The hash tag keeps one key's counters in one slot (a Redis Cluster runs the script on one node).
    return window === undefined ? `tg:rl:{${keyId}}:${kind}` : `tg:rl:{${keyId}}:${kind}:${window}`;
  }

  async admit({ keyId, requestId, limits, tokens, now }: AdmitInput): Promise<StoreVerdict> {
    this.ready();
    const w = windowOf(now);
    const k = RedisStore.k;
    const [verdict, previous, current] = (await this.redis.eval(
      ADMIT_LUA,
      5,
      k(keyId, "rpm", w),
      k(keyId, "rpm", w - 1),
      k(keyId, "tpm", w),
      k(keyId, "tpm", w - 1),
      k(keyId, "inflight"),
      limits.rpmLimit ?? -1,
      limits.tpmLimit ?? -1,
      limits.maxConcurrent ?? -1,
      tokens,
      previousRemainingMs(now),
      now,
      requestId,
      CONCURRENCY_TTL_MS,
      2 * WINDOW_MS + 5_000,
    )) as [string, number, number];
    return verdict === "ok" ? { ok: true } : { ok: false, limit: verdict as RateLimitKind, previous: Number(previous), current: Number(current) };
  }

  async adjustTokens(keyId: string, window: number, delta: number): Promise<void> {
    this.ready();
    await this.redis.eval(ADJUST_LUA, 1, RedisStore.k(keyId, "tpm", window), delta);
  }

  async releaseConcurrent(keyId: string, requestId: string): Promise<void> {
    this.ready();
    await this.redis.zrem(RedisStore.k(keyId, "inflight"), requestId);
  }

  async usage(keyId: string, now: number): Promise<RateUsage> {
    this.ready();
    const w = windowOf(now);
    const k = RedisStore.k;
    const [counts, inFlight] = await Promise.all([
      this.redis.mget(k(keyId, "rpm", w - 1), k(keyId, "rpm", w), k(keyId, "tpm", w - 1), k(keyId, "tpm", w)),
      this.redis.zcount(k(keyId, "inflight"), `(${now}`, "+inf"),
    ]);
    const [rp, rc, tp, tc] = counts.map((v) => Number(v ?? 0)) as [number, number, number, number];
    const remaining = previousRemainingMs(now);
    return { requests: slidingCount(rp, rc, remaining), tokens: slidingCount(tp, tc, remaining), inFlight: Number(inFlight) };
  }

  async countBadKey(address: string, window: number): Promise<number> {
    this.ready();
    return Number(await this.redis.eval(COUNT_LUA, 1, `tg:badkey:{${address}}:${window}`, 2 * WINDOW_MS));
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

// ---------------------------------------------------------------------------

export interface RateLimiterOptions {
  redisUrl?: string;
  /** Bad (missing or unknown) keys one client address may send per minute; 0 = no throttle. */
  badKeyLimitPerMinute: number;
  log: (level: "warn" | "error", message: string, extra?: Record<string, unknown>) => void;
}

export interface RateLimiterStats {
  rateLimited: Record<RateLimitKind, number>;
  badKeys: number;
  badKeyThrottled: number;
}

/** A throttled address may have one unknown key looked up this often. */
const THROTTLED_LOOKUP_INTERVAL_MS = 1_000;

export class RateLimiter {
  readonly stats: RateLimiterStats = { rateLimited: { rpm: 0, tpm: 0, concurrent: 0 }, badKeys: 0, badKeyThrottled: 0 };
  private readonly store: CounterStore;
  private readonly tickets = new Map<string, RateTicket>();
  private readonly unsubscribe: () => void;
  /** Addresses over the bad-key limit, until when (ms). Checked in memory: good traffic never waits on it. */
  private readonly blocked = new Map<string, number>();
  /** Throttled addresses: when their last key lookup was let through (ms). */
  private readonly lookups = new Map<string, number>();

  private constructor(
    store: CounterStore,
    private readonly options: RateLimiterOptions,
  ) {
    this.store = store;
    // The real usage of an admitted request replaces its token bound once its record committed.
    this.unsubscribe = onRequestRecorded((event) => {
      const ticket = this.tickets.get(event.record.requestId);
      if (!ticket?.tpm) return;
      this.tickets.delete(ticket.requestId);
      const used = event.record.promptTokens + event.record.completionTokens;
      if (used !== ticket.tokens) this.safely("correct tpm", this.store.adjustTokens(ticket.keyId, ticket.window, used - ticket.tokens));
    });
  }

  static create(options: RateLimiterOptions): RateLimiter {
    if (!options.redisUrl) return new RateLimiter(new MemoryStore(), options);
    // Commands wait for the first connection at start-up; after that, a lost connection fails them
    // at once (see RedisStore.ready) and a slow Redis after 500 ms: the request is then admitted.
    const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: 1, commandTimeout: 500 });
    redis.on("error", (e: Error) => options.log("warn", "rate-limit Redis error", { error: e.message }));
    return new RateLimiter(new RedisStore(redis), options);
  }

  /** Admits a request of a key with limits, counting it; a key without limits costs nothing. */
  async admit(keyId: string, requestId: string, limits: KeyRateLimits, tokens: number, now = Date.now()): Promise<RateAdmission> {
    if (limits.rpmLimit === null && limits.tpmLimit === null && limits.maxConcurrent === null) return { ok: true, ticket: null };
    let result: StoreVerdict;
    try {
      result = await this.store.admit({ keyId, requestId, limits, tokens, now });
    } catch (error) {
      this.options.log("warn", "rate limiter unavailable: request admitted", { error: String(error) });
      return { ok: true, ticket: null };
    }
    if (!result.ok) {
      this.stats.rateLimited[result.limit]++;
      gatewayRateLimited.inc({ limit: result.limit });
      // Concurrency frees up when a request ends: retry soon. A window limit: when the window has slid far enough.
      const limit = result.limit === "rpm" ? limits.rpmLimit : limits.tpmLimit;
      const retryAfterSeconds =
        result.limit === "concurrent" || limit === null
          ? 1
          : Math.max(1, Math.ceil(windowRetryMs(result.previous, result.current, result.limit === "rpm" ? 1 : tokens, limit, now % WINDOW_MS) / 1000));
      return { ok: false, limit: result.limit, retryAfterSeconds };
    }
    const ticket: RateTicket = { keyId, requestId, window: windowOf(now), tokens, tpm: limits.tpmLimit !== null, concurrent: limits.maxConcurrent !== null };
    if (ticket.tpm) this.tickets.set(requestId, ticket);
    return { ok: true, ticket };
  }

  /** Where a key stands in its rate limits now (for key plans and quotes); null if the store cannot say. */
  async usage(keyId: string, now = Date.now()): Promise<RateUsage | null> {
    try {
      return await this.store.usage(keyId, now);
    } catch (error) {
      this.options.log("warn", "rate limiter unavailable: usage unknown", { error: String(error) });
      return null;
    }
  }

  /** The request ended (its record, if any, has committed): frees its concurrency slot. */
  async finish(ticket: RateTicket): Promise<void> {
    // No record came (nothing to correct from): its bound stays counted.
    this.tickets.delete(ticket.requestId);
    if (ticket.concurrent) await this.safely("release a concurrency slot", this.store.releaseConcurrent(ticket.keyId, ticket.requestId));
  }

  /**
   * Seconds a request from this address must wait, or 0 when it may go on. A throttled address is
   * slowed, not shut out: a key this instance saw valid in the last minutes passes (and is looked up
   * as usual, so pause and revocation bite), and one
   * other key may be looked up per second, so a valid client sharing the address (NAT, a proxy
   * without TRUST_PROXY) keeps working while a key-guessing flood gets one guess a second.
   */
  throttled(address: string, recentlyValidKey: () => boolean, now = Date.now()): number {
    const until = this.blocked.get(address);
    if (until === undefined) return 0;
    if (until <= now) {
      this.blocked.delete(address);
      this.lookups.delete(address);
      return 0;
    }
    if (recentlyValidKey()) return 0;
    const last = this.lookups.get(address) ?? 0;
    if (now - last >= THROTTLED_LOOKUP_INTERVAL_MS) {
      this.lookups.set(address, now);
      return 0;
    }
    this.stats.badKeyThrottled++;
    gatewayBadKeyThrottled.inc();
    return Math.max(1, Math.ceil((last + THROTTLED_LOOKUP_INTERVAL_MS - now) / 1000));
  }

  /** A missing or unknown key came from this address. */
  async badKey(address: string, now = Date.now()): Promise<void> {
    this.stats.badKeys++;
    gatewayBadKeys.inc();
    if (this.options.badKeyLimitPerMinute <= 0) return;
    const w = windowOf(now);
    let count: number;
    try {
      count = await this.store.countBadKey(address, w);
    } catch (error) {
      this.options.log("warn", "rate limiter unavailable: bad key not counted", { error: String(error) });
      return;
    }
    if (count >= this.options.badKeyLimitPerMinute) {
      if (!this.blocked.has(address)) this.lookups.set(address, now); // the next lookup waits its interval
      this.blocked.set(address, (w + 1) * WINDOW_MS);
      if (this.blocked.size > 100_000) {
        const oldest = this.blocked.keys().next().value!;
        this.blocked.delete(oldest);
        this.lookups.delete(oldest);
      }
    }
  }

  async close(): Promise<void> {
    this.unsubscribe();
    await this.store.close();
  }

  private async safely(what: string, p: Promise<void>): Promise<void> {
    await p.catch((error: unknown) => this.options.log("warn", `rate limiter: could not ${what}`, { error: String(error) }));
  }
}
