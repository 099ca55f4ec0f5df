// The gateway's key lookups: one KeyCache per process, a service (src/installed.ts) built at start-up
// beside the event bus it listens to. A key change on any instance (keyChanged) drops that key here;
// an entry lives at most KEY_CACHE_TTL_MS (≤ 1 s), so a pause or revocation bites within a second
// even without events. close() stops listening (start-up's one close path calls it).
import { db } from "../db/index.ts";
import { SingleFlight } from "../single-flight.ts";
import type { ApiKey } from "../generated/prisma/client.ts";
import { sha256 } from "../secrets.ts";
import type { EventBus } from "../events/index.ts";

export type KeyContext = ApiKey;

export type KeyLookup = { ok: true; key: KeyContext } | { ok: false; reason: "KEY_INVALID" | "KEY_REVOKED" | "KEY_PAUSED" | "KEY_EXPIRED"; key: KeyContext | null };

interface CacheEntry {
  key: KeyContext | null;
  /** When the matched secret stops working (rotation grace), if ever. */
  secretExpiresAt: Date | null;
  cachedUntil: number;
}

/** Secrets cached at most (all forgotten at once past it: a flood of distinct bad keys cannot grow it). */
const CACHED_SECRETS_MAX = 50_000;
/** How long a secret seen as a usable key counts as recently valid, and how many are remembered. */
const RECENTLY_VALID_MS = 10 * 60_000;
const RECENTLY_VALID_MAX = 100_000;
/** The longest an entry is trusted, whatever the gateway asks: pause / revoke bite within 1 s. */
const CACHE_TTL_MAX_MS = 1_000;

export class KeyCache {
  private readonly entries = new Map<string, CacheEntry>();
  /** One database read per secret at a time; a key change keeps reads in flight out of the cache. */
  private readonly reads = new SingleFlight<string, CacheEntry>();
  /** Hashes of secrets this instance saw as usable keys, until when (in last-seen order, for eviction). */
  private readonly valid = new Map<string, number>();
  private unlisten: (() => void) | null = null;
  private closed = false;

  constructor(private readonly events: EventBus) {}

  /** Drops what this instance cached of a key (its own change, or another instance's event). */
  forget(keyId: string): void {
    this.reads.invalidate();
    for (const [hash, entry] of this.entries) if (entry.key?.id === keyId) this.entries.delete(hash);
  }

  /** Resolves a bearer secret to its key and says whether it may be used now. */
  async lookup(secret: string, now = new Date(), cacheTtlMs = CACHE_TTL_MAX_MS): Promise<KeyLookup> {
    this.listen();
    const hash = sha256(secret);
    let entry = this.entries.get(hash);
    if (!entry || entry.cachedUntil < now.getTime()) entry = await this.read(hash, now, Math.min(cacheTtlMs, CACHE_TTL_MAX_MS));
    const key = entry.key;
    if (!key) return { ok: false, reason: "KEY_INVALID", key: null };
    if (entry.secretExpiresAt && entry.secretExpiresAt <= now) return { ok: false, reason: "KEY_INVALID", key };
    if (key.status === "REVOKED") return { ok: false, reason: "KEY_REVOKED", key };
    if (key.status === "PAUSED") return { ok: false, reason: "KEY_PAUSED", key };
    if (key.expiresAt && key.expiresAt <= now) return { ok: false, reason: "KEY_EXPIRED", key };
    this.rememberValid(hash, now.getTime());
    return { ok: true, key };
  }

  /**
   * Whether this secret was a usable key here in the last 10 minutes. Only the bad-key throttle
   * reads it, to let valid clients through a throttled address; their requests still go through
   * lookup (so a pause or revocation bites as usual).
   */
  recentlyValid(secret: string, now = Date.now()): boolean {
    const until = this.valid.get(sha256(secret));
    return until !== undefined && until > now;
  }

  close(): void {
    this.closed = true;
    this.unlisten?.();
    this.unlisten = null;
  }

  /** Listens from the first lookup on (a process that never serves /v1 holds no listener). */
  private listen(): void {
    if (this.unlisten || this.closed) return;
    this.unlisten = this.events.listen("keyChanged", (event) => this.forget(event.keyId));
  }

  private read(hash: string, now: Date, cacheTtlMs: number): Promise<CacheEntry> {
    return this.reads.run(
      hash,
      async () => {
        const row = await db.apiKeySecret.findUnique({ where: { secretHash: hash }, include: { key: true } });
        return { key: row?.key ?? null, secretExpiresAt: row?.expiresAt ?? null, cachedUntil: now.getTime() + cacheTtlMs };
      },
      (entry) => {
        if (this.entries.size > CACHED_SECRETS_MAX) this.entries.clear();
        this.entries.set(hash, entry);
      },
    );
  }

  private rememberValid(hash: string, now: number): void {
    this.valid.delete(hash); // re-insert: the map stays in last-seen order for eviction
    this.valid.set(hash, now + RECENTLY_VALID_MS);
    if (this.valid.size > RECENTLY_VALID_MAX) this.valid.delete(this.valid.keys().next().value!);
  }
}
