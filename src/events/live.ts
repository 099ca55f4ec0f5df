// What the coalesced streams aggregate, in memory, from the events every instance receives:
// - spend windows (liveSpend): requests, failures, tokens and charge per bucket since the last tick,
//   per key, and the latest standing of every cap window the requests touched;
// - channel statistics (channelStats): one book per process of each channel's recent outcomes
//   (success rate, p50 / p95 latency), today's spend from its CHANNEL_DAILY counter and its health
//   state, shared by every subscriber (stats are computed once per change, not per subscriber);
// - wallet snapshots (walletBalances): one read per organization per interval while it spends,
//   shared by every subscriber of that organization.
// Nothing here reads the database per event or per subscriber.
import { db } from "../db/index.ts";
import type { WalletBucket } from "../generated/prisma/client.ts";
import type { RouteHealthEvent, ScopeStanding, SpendEvent } from "./index.ts";
import { services } from "../installed.ts";

type Bucket = "CREDIT" | "ROUTED";

// ---------------------------------------------------------------------------------------------
// liveSpend

export interface KeyTally {
  keyId: string;
  projectId: string;
  requests: number;
  failed: number;
  promptTokens: number;
  completionTokens: number;
  charge: Map<Bucket, bigint>;
}

export interface SpendTick {
  since: Date;
  at: Date;
  requests: number;
  settled: number;
  failed: number;
  promptTokens: number;
  completionTokens: number;
  charge: Map<Bucket, bigint>;
  keys: KeyTally[];
  scopes: ScopeStanding[];
  lastRequestAt: Date | null;
}

const add = (m: Map<Bucket, bigint>, bucket: Bucket, amount: bigint) => m.set(bucket, (m.get(bucket) ?? 0n) + amount);

/** One subscriber's window: merged into until taken. */
export class SpendWindow {
  private since = new Date();
  private requests = 0;
  private settled = 0;
  private failed = 0;
  private promptTokens = 0;
  private completionTokens = 0;
  private charge = new Map<Bucket, bigint>();
  private keys = new Map<string, KeyTally>();
  private scopes = new Map<string, ScopeStanding>();
  private lastRequestAt: Date | null = null;

  constructor(private readonly showScope: (s: ScopeStanding) => boolean) {}

  add(e: SpendEvent): void {
    const charge = BigInt(e.charge);
    this.requests++;
    if (e.status === "FAILED") this.failed++;
    else this.settled++;
    this.promptTokens += e.promptTokens ?? 0;
    this.completionTokens += e.completionTokens ?? 0;
    add(this.charge, e.bucket, charge);
    let key = this.keys.get(e.keyId);
    if (!key) {
      key = { keyId: e.keyId, projectId: e.projectId, requests: 0, failed: 0, promptTokens: 0, completionTokens: 0, charge: new Map() };
      this.keys.set(e.keyId, key);
    }
    key.requests++;
    if (e.status === "FAILED") key.failed++;
    key.promptTokens += e.promptTokens ?? 0;
    key.completionTokens += e.completionTokens ?? 0;
    add(key.charge, e.bucket, charge);
    for (const s of e.scopes ?? fallbackScopes(e)) {
      if (!this.showScope(s)) continue;
      const k = `${s.scope}|${s.scopeId}|${s.bucket}`;
      const prior = this.scopes.get(k);
      // Spent only grows within a window: an older event arriving late never winds a standing back.
      if (prior && prior.windowStart === s.windowStart && BigInt(prior.spent) > BigInt(s.spent)) continue;
      this.scopes.set(k, s);
    }
    const at = new Date(e.at);
    if (!this.lastRequestAt || at > this.lastRequestAt) this.lastRequestAt = at;
  }

  take(): SpendTick | null {
    if (this.requests === 0) return null;
    const tick: SpendTick = {
      since: this.since,
      at: new Date(),
      requests: this.requests,
      settled: this.settled,
      failed: this.failed,
      promptTokens: this.promptTokens,
      completionTokens: this.completionTokens,
      charge: this.charge,
      keys: [...this.keys.values()],
      scopes: [...this.scopes.values()],
      lastRequestAt: this.lastRequestAt,
    };
    this.since = tick.at;
    this.requests = this.settled = this.failed = this.promptTokens = this.completionTokens = 0;
    this.charge = new Map();
    this.keys = new Map();
    this.scopes = new Map();
    return tick;
  }
}

/** Events published by older code paths carry only the key and project standings. */
function fallbackScopes(e: SpendEvent): ScopeStanding[] {
  const day = new Date(e.at);
  const windowStart = new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate())).toISOString();
  return [
    { scope: "KEY_DAILY", scopeId: e.keyId, bucket: e.bucket, windowStart, spent: e.keySpendToday, held: "0", cap: null, remaining: e.keyRemainingToday },
    { scope: "PROJECT_DAILY", scopeId: e.projectId, bucket: e.bucket, windowStart, spent: e.projectSpendToday, held: "0", cap: null, remaining: e.projectRemainingToday },
  ];
}

// ---------------------------------------------------------------------------------------------
// channelStats

export interface ChannelInfo {
  channelId: string;
  channelName: string;
  routeId: string;
  routeModel: string;
  organizationId: string;
  priority: number;
  settlement: string;
  health: "HEALTHY" | "DEGRADED" | "DOWN";
}

export interface ChannelStats extends ChannelInfo {
  /** Outcomes in the window (at most SAMPLE_LIMIT, at most WINDOW_MS old). */
  requests: number;
  failed: number;
  successRate: number | null;
  p50LatencyMs: number | null;
  p95LatencyMs: number | null;
  spendToday: Map<Bucket, bigint>;
  lastRequestAt: Date | null;
  windowSeconds: number;
}

const WINDOW_MS = 5 * 60_000;
const SAMPLE_LIMIT = 1_000;

interface Sample {
  at: number;
  ok: boolean;
  latencyMs: number | null;
}

interface ChannelBook {
  samples: Sample[];
  /** Today's CHANNEL_DAILY counter per bucket, as the latest batch left it. */
  spend: Map<Bucket, { windowStart: string; spent: bigint }>;
  state: ChannelInfo["health"] | null;
  version: number;
  memo: { version: number; slot: number; stats: Omit<ChannelStats, keyof ChannelInfo | "spendToday"> } | null;
}

const percentileOf = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

/** Every channel's recent outcomes on this instance (from the spend events of every instance). */
class ChannelStatsBook {
  private readonly books = new Map<string, ChannelBook>();
  private readonly watchers = new Set<(channelId: string) => void>();
  private stop: (() => void) | null = null;

  private book(channelId: string): ChannelBook {
    let b = this.books.get(channelId);
    if (!b) {
      if (this.books.size >= 50_000) this.books.clear();
      b = { samples: [], spend: new Map(), state: null, version: 0, memo: null };
      this.books.set(channelId, b);
    }
    return b;
  }

  /** Starts listening with the first watcher, stops with the last. Returns the unwatch. */
  watch(onChange: (channelId: string) => void): () => void {
    this.watchers.add(onChange);
    if (!this.stop) {
      const stopSpend = services().events.listen("spend", (e) => this.onSpend(e));
      const stopHealth = services().events.listen("routeHealth", (e) => this.onHealth(e));
      this.stop = () => {
        stopSpend();
        stopHealth();
      };
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0 && this.stop) {
        this.stop();
        this.stop = null;
        this.books.clear();
      }
    };
  }

  private changed(channelId: string): void {
    for (const w of this.watchers) w(channelId);
  }

  private onSpend(e: SpendEvent): void {
    if (!e.channelId) return;
    const b = this.book(e.channelId);
    b.samples.push({ at: Date.parse(e.at), ok: e.status === "SETTLED", latencyMs: e.latencyMs ?? null });
    if (b.samples.length > SAMPLE_LIMIT) b.samples.splice(0, b.samples.length - SAMPLE_LIMIT);
    for (const s of e.scopes ?? []) {
      if (s.scope !== "CHANNEL_DAILY" || s.scopeId !== e.channelId) continue;
      const prior = b.spend.get(s.bucket);
      const spent = BigInt(s.spent);
      if (prior && prior.windowStart === s.windowStart && prior.spent > spent) continue;
      b.spend.set(s.bucket, { windowStart: s.windowStart, spent });
    }
    b.version++;
    this.changed(e.channelId);
  }

  private onHealth(e: RouteHealthEvent): void {
    const b = this.book(e.channelId);
    b.state = e.state;
    b.version++;
    this.changed(e.channelId);
  }

  /** The channel's stats now; computed once per change (and every 5 s as samples age), shared by every subscriber. */
  /** `today`: the start of the CHANNEL_DAILY window now (of the organization's zone), ISO. */
  stats(info: ChannelInfo, spendAtStart: Map<Bucket, { windowStart: string; spent: bigint }>, today: string, now = Date.now()): ChannelStats {
    const b = this.book(info.channelId);
    const slot = Math.floor(now / 5_000);
    if (!b.memo || b.memo.version !== b.version || b.memo.slot !== slot) {
      const recent = b.samples.filter((s) => s.at >= now - WINDOW_MS);
      const failed = recent.filter((s) => !s.ok).length;
      const latencies = recent.flatMap((s) => (s.ok && s.latencyMs !== null ? [s.latencyMs] : [])).sort((x, y) => x - y);
      b.memo = {
        version: b.version,
        slot,
        stats: {
          requests: recent.length,
          failed,
          successRate: recent.length ? (recent.length - failed) / recent.length : null,
          p50LatencyMs: latencies.length ? percentileOf(latencies, 50) : null,
          p95LatencyMs: latencies.length ? percentileOf(latencies, 95) : null,
          lastRequestAt: recent.length ? new Date(recent.at(-1)!.at) : null,
          windowSeconds: WINDOW_MS / 1000,
        },
      };
    }
    const spendToday = new Map<Bucket, bigint>();
    for (const bucket of ["CREDIT", "ROUTED"] as const) {
      const live = b.spend.get(bucket);
      const start = spendAtStart.get(bucket);
      const best = [live, start].filter((x): x is { windowStart: string; spent: bigint } => !!x && x.windowStart === today).sort((x, y) => (x.spent > y.spent ? -1 : 1))[0];
      if (best) spendToday.set(bucket, best.spent);
    }
    return { ...info, health: b.state ?? info.health, ...b.memo.stats, spendToday };
  }
}

export const channelStatsBook = new ChannelStatsBook();

// ---------------------------------------------------------------------------------------------
// walletBalances

interface WalletWatch {
  organizationId: string;
  snapshot: WalletBucket[] | null;
  version: number;
  dirty: boolean;
  reading: boolean;
  lastRead: number;
  watchers: Set<() => void>;
  timer: NodeJS.Timeout;
  stopListening: () => void;
}

/** Reads while the organization spends: at most once per WALLET_READ_MS, and every WALLET_REFRESH_MS anyway (top-ups, idle leases). */
const WALLET_READ_MS = 250;
const WALLET_REFRESH_MS = 15_000;
const wallets = new Map<string, WalletWatch>();

/** Statements the wallet watches have run (the SQL-count test reads it). */
export const walletReads = { count: 0 };

async function readWallet(w: WalletWatch): Promise<void> {
  if (w.reading) return;
  w.reading = true;
  w.dirty = false;
  try {
    walletReads.count++;
    const rows = await db.walletBucket.findMany({ where: { wallet: { organizationId: w.organizationId } }, orderBy: { bucket: "asc" } });
    w.lastRead = Date.now();
    const same = w.snapshot && w.snapshot.length === rows.length && w.snapshot.every((r, i) => r.balance === rows[i]!.balance && r.held === rows[i]!.held);
    w.snapshot = rows;
    if (!same) {
      w.version++;
      for (const watcher of w.watchers) watcher();
    }
  } finally {
    w.reading = false;
  }
}

/** Shares one wallet read among every subscriber of the organization; `onChange` runs after each new snapshot. */
export function watchWallet(organizationId: string, onChange: () => void): { snapshot: () => WalletBucket[] | null; first: Promise<void>; stop: () => void } {
  let w = wallets.get(organizationId);
  if (!w) {
    const watch: WalletWatch = {
      organizationId,
      snapshot: null,
      version: 0,
      dirty: true,
      reading: false,
      lastRead: 0,
      watchers: new Set(),
      timer: setInterval(() => {
        if (watch.dirty || Date.now() - watch.lastRead >= WALLET_REFRESH_MS) void readWallet(watch).catch(() => undefined);
      }, WALLET_READ_MS),
      stopListening: both(
        services().events.listen("spend", (e) => {
          if (e.organizationId === organizationId) watch.dirty = true;
        }),
        services().events.listen("walletChanged", (e) => {
          if (e.organizationId === organizationId) watch.dirty = true;
        }),
      ),
    };
    watch.timer.unref();
    wallets.set(organizationId, watch);
    w = watch;
  }
  const watch = w;
  watch.watchers.add(onChange);
  const first = watch.snapshot ? Promise.resolve() : readWallet(watch);
  return {
    snapshot: () => watch.snapshot,
    first,
    stop: () => {
      watch.watchers.delete(onChange);
      if (watch.watchers.size === 0) {
        clearInterval(watch.timer);
        watch.stopListening();
        wallets.delete(organizationId);
      }
    },
  };
}

const both = (a: () => void, b: () => void) => () => {
  a();
  b();
};
