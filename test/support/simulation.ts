// A deterministic simulation of the money path (issue 14). Several gateway instances, each with
// its LeasePool and its batched writer (the gateway's own writeCharged over GroupCommit and
// recordBatch), run against the real SQL functions of one database. A seeded scheduler interleaves
// what happens to a fleet: requests admitted, answered, failed, hung up on, fallbacks to a backup
// channel with its own cap, batch writes that fail (before their commit, or after it with the
// answer lost), renewals, idle returns, recalls, revocations delivered late or missed, lapses and
// reclaims, clock skew, stalls, deaths and restarts, cap changes (the same value included), price
// and settlement changes, run pauses, top-ups, quotes (a request priced at a quote's pinned
// snapshots, through the gateway's claimQuote, while prices, settlements and caps change and when it
// falls back to a capped backup), changes of the organization's time zone (heard by each instance
// at its own moment, within the change's margin), and pairs of these at once. After every step it
// checks, in SQL, for this schedule's organization: every counter's spent + held ≤ its cap (a
// lowered cap may stay exceeded by what was in flight when it changed, never by more); every
// bucket's available ≥ 0, held = Σ its leases, balance = Σ its ledger; every counter's held = Σ its
// leases; and no instance counts a lease as larger than the database does. At the end: every
// answer delivered has exactly one record with its charge and ledger entry, nothing else was
// recorded (with the attempt path it was written with, through lost commits and retries), and no
// headroom is left leased once every instance stopped and the sweep ran.
//
// One schedule is a seed: `runSchedule(seed)` replays it exactly (same steps, same amounts); its
// log is printed when it fails.
import { randomUUID } from "node:crypto";
import type { Viewer } from "../../src/auth/index.ts";
import type { SqlClient } from "../../src/money/sql.ts";
import { postEntry, walletBucket } from "../../src/money/ledger.ts";
import { failedRequestCharge, holdCovers, usageCharge, worstCase } from "../../src/money/charges.ts";
import { LeasePool, reclaimLeases } from "../../src/money/leases.ts";
import { capWindow, windowFor, zoneChangePendingUntil, type ZoneState } from "../../src/money/windows.ts";
import { setProjectBudget } from "../../src/budgets/index.ts";
import { directSql } from "../../src/db/index.ts";
import type { BalanceBucket, CapScope, FailedChargePolicy, FailureCause } from "../../src/generated/prisma/enums.ts";
import { GroupCommit } from "../../src/money/group-commit.ts";
import { writeCharged, type HeldCharge, type Written } from "../../src/money/index.ts";
import { setKeyCaps } from "../../src/keys/index.ts";
import { formatMoney, parseMoney } from "../../src/money/amounts.ts";
import { recordBatch, recordWritten, type BatchItem } from "../../src/money/writer.ts";
import { planRoute, setChannelLimits, setPrice, setRouteLimits, upsertRoute } from "../../src/routing/index.ts";
import { cancelRun, changeRunPause, startRun } from "../../src/runs/index.ts";
import { claimQuote, QUOTE_TTL_MS } from "../../src/quotes/index.ts";
import { storedPath, type AttemptStep } from "../../src/requests/attempts.ts";
import { db } from "../../src/db/index.ts";
import * as f from "./fixtures.ts";

type Query = <T>(text: string, params?: unknown[]) => Promise<T[]>;

/** mulberry32: small, fast, and the same sequence on every machine for a seed. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  /** A UUID-shaped id from the sequence (ids in a schedule's log are the same on every replay). */
  uuid(): string {
    const hex = Array.from({ length: 32 }, () => Math.floor(this.next() * 16).toString(16)).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20)}`;
  }
  weighted<T extends string>(weights: Record<T, number>): T {
    const entries = Object.entries(weights) as Array<[T, number]>;
    let r = this.next() * entries.reduce((s, [, w]) => s + w, 0);
    for (const [k, w] of entries) {
      r -= w;
      if (r < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }
}

const TTL_MS = 1_000;
/** The zones an organization moves between: whole-hour ahead, DST behind, a half-hour zone. */
const ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Asia/Kolkata"];
const BUCKETS: BalanceBucket[] = ["CREDIT", "ROUTED"];
const bucketOfSettlement = (s: "OFFICIAL" | "ROUTED"): BalanceBucket => (s === "OFFICIAL" ? "CREDIT" : "ROUTED");

interface Instance {
  name: string;
  pool: LeasePool;
  /** Its clock's skew from the database's. */
  offsetMs: number;
  /** Frozen (a long GC pause, a blocked loop) until this database time: it does nothing. */
  stalledUntil: number;
  /** Its next heartbeat (renewal, idle returns, the sweep), every TTL / 3 of database time while it runs. */
  nextBeat: number;
  /** Writes waiting for the next batch (answers received, records not yet written). */
  queue: Array<{ request: SimRequest; item: BatchItem }>;
  /** Revocations published (leasesRevoked) and not yet received. */
  inbox: Array<{ scope: string; scopeId: string }>;
  /** The organization's zone as this instance last read it, and changes it has not read yet (database time it reads them). */
  zone: ZoneState;
  zoneNews: Array<{ at: number; zone: ZoneState }>;
  /** The writer's next statements fail: before their commit, or after it with the answer lost. */
  faults: Array<"before" | "after">;
  writer: GroupCommit<BatchItem, Written>;
}

interface SimChannel {
  id: string;
  name: string;
  settlement: "OFFICIAL" | "ROUTED";
}

interface SimRequest {
  id: string;
  instance: Instance;
  key: number;
  runId: string | null;
  /** Index into the route's channels of the channel it is admitted on. */
  channel: number;
  channelId: string;
  bucket: BalanceBucket;
  bucketId: string;
  price: { id: string; inputPerMillion: bigint; outputPerMillion: bigint };
  /** A quoted request: its price on each channel of the plan (the quote's pinned snapshot, else the current one), as plan.ts sets it. */
  quotedPrices: Array<SimRequest["price"] | null> | null;
  /** The attempts that ended before the current one (a fallback adds the failed one). */
  path: AttemptStep[];
  promptBound: number;
  outputBound: number;
  worst: bigint;
  held: HeldCharge;
  attempts: number;
  state: "admitted" | "writing";
  /** Its instance stalled while it was in flight: its leases may have been reclaimed under it (the one case it may go uncharged). */
  mayLapse: boolean;
}

/** What the simulation expects in the database at the end: one record per answer delivered. */
interface Delivered {
  kind: "receipt" | "failure";
  id: string;
  charge: bigint;
  worst: bigint;
  path: AttemptStep[];
  priceSnapshotId: string;
}

export interface ScheduleResult {
  seed: number;
  steps: number;
  violations: string[];
  log: string[];
  stats: Record<string, number>;
}

export interface ScheduleOptions {
  steps?: number;
  /** Stop at the first violation (default) or run the schedule to its end. */
  keepGoing?: boolean;
}

/** Runs one schedule; never throws for what it finds (violations), only for a broken harness. */
export async function runSchedule(seed: number, options: ScheduleOptions = {}): Promise<ScheduleResult> {
  const sim = new Simulation(seed, options.steps ?? 80);
  await sim.setUp();
  await sim.run(options.keepGoing ?? false);
  return { seed, steps: sim.stepCount, violations: sim.violations, log: sim.log, stats: sim.stats };
}

class Simulation {
  readonly rng: Rng;
  readonly log: string[] = [];
  readonly violations: string[] = [];
  readonly stats: Record<string, number> = {};
  stepCount = 0;
  private readonly sql: SqlClient = directSql();
  private readonly query: Query;
  /** The database's clock (ms); instances read it with their skew. */
  private g: number;
  private graceMs = 0;
  private chunkRequests = 1;
  private instances: Instance[] = [];
  private instanceNo = 0;
  private readonly requests = new Map<string, SimRequest>();
  private readonly delivered: Delivered[] = [];
  /** Per counter (scope|scopeId|bucket|window): spent + held when a cap was lowered below it (allowed until it drains). */
  private readonly ceilings = new Map<string, bigint>();
  /** Caps as set, to re-save one with the same value. */
  private readonly caps = new Map<string, string | null>();
  private viewer!: Viewer;
  private organizationId!: string;
  private projectId!: string;
  private keyIds: string[] = [];
  private routeId!: string;
  private model!: string;
  private channels: SimChannel[] = [];
  private runId: string | null = null;
  private runStatus: "ACTIVE" | "PAUSED" | "CANCELLED" = "ACTIVE";
  private bucketIds = new Map<BalanceBucket, string>();
  /** The organization's zone as the database holds it (setOrganizationTimeZone's row). */
  private zone: ZoneState;
  /** The route as the gateway's lookup cache holds it: refreshed after every admin change. */
  private plan: Array<{ channel: SimChannel; bucket: BalanceBucket; price: SimRequest["price"] | null }> = [];
  /** Quotes made (rows in the database), per key index. */
  private readonly quotes: Array<{ id: string; key: number }> = [];

  constructor(
    readonly seed: number,
    private readonly steps: number,
  ) {
    this.rng = new Rng(seed);
    // Each schedule starts on a day of its own, in a zone of its own, sometimes just before midnight in
    // one of the zones (its own: windows roll over; another: a change to it meets that zone's midnight).
    const day = Date.UTC(2031, 0, 1) + (seed % 20_000) * 86_400_000;
    const pickZone = () => ZONES[this.rng.int(0, ZONES.length - 1)]!;
    this.zone = { timeZone: pickZone(), previousTimeZone: null, timeZoneChangedAt: null };
    const start = day + this.rng.int(0, 80_000_000);
    const near: ZoneState = { timeZone: pickZone(), previousTimeZone: null, timeZoneChangedAt: null };
    this.g = this.rng.chance(0.3) ? capWindow("DAY", new Date(start), near).end.getTime() - this.rng.int(200, 5_000) : start;
    this.query = (text, params) => (this.sql as unknown as { $queryRawUnsafe: <T>(q: string, ...p: unknown[]) => Promise<T[]> }).$queryRawUnsafe(text, ...(params ?? []));
  }

  private say(line: string): void {
    this.log.push(`#${this.stepCount} t+${this.g % 86_400_000}ms ${line}`);
  }

  private count(what: string): void {
    this.stats[what] = (this.stats[what] ?? 0) + 1;
  }

  private money(n: number): string {
    return formatMoney(BigInt(n));
  }

  async setUp(): Promise<void> {
    const r = this.rng;
    this.viewer = await f.platformViewer();
    const org = await f.organization();
    this.organizationId = org.id;
    for (const bucket of BUCKETS) {
      const b = await walletBucket(org.id, bucket);
      this.bucketIds.set(bucket, b.id);
      const amount = r.int(100_000, 1_500_000);
      await postEntry({ bucketId: b.id, kind: "TOPUP", amount: BigInt(amount), idempotencyKey: randomUUID() });
    }
    const project = await f.project(this.viewer, org.id);
    this.projectId = project.id;
    for (let i = 0; i < 2; i++) {
      const { apiKey } = await f.apiKey(this.viewer, project.id, { allowedBuckets: ["CREDIT", "ROUTED"], lowerCostRoutes: true, backupRoutes: true });
      this.keyIds.push(apiKey.id);
    }
    this.model = `sim-${this.seed}-${randomUUID().slice(0, 8)}`;
    const backupSettlement = r.chance(0.5) ? "OFFICIAL" : "ROUTED";
    const { route, channels } = await f.route(this.viewer, org.id, this.model, [
      { name: "primary", baseUrl: "http://127.0.0.1:9", upstreamModel: "a", price: [this.money(r.int(500_000, 10_000_000)), this.money(r.int(1_000_000, 30_000_000))] },
      { name: "backup", baseUrl: "http://127.0.0.1:9", upstreamModel: "b", settlement: backupSettlement, price: [this.money(r.int(500_000, 10_000_000)), this.money(r.int(1_000_000, 30_000_000))] },
    ]);
    this.routeId = route.id;
    this.channels = channels.map((c) => ({ id: c.id, name: c.name, settlement: c.settlement }));
    if (r.chance(0.7)) {
      const run = await startRun(this.viewer, { keyId: this.keyIds[0]!, mode: "QUICK", cap: this.money(r.int(50_000, 1_500_000)) });
      this.runId = run.id;
    }
    // Starting caps: each scope capped with some chance.
    for (let i = 0; i < 2; i++) if (r.chance(0.7)) await this.setCapOf("KEY_DAILY", i, this.randomCap());
    if (r.chance(0.4)) await this.setCapOf("KEY_PER_REQUEST", 0, this.randomCap(20_000, 100_000));
    if (r.chance(0.5)) await this.setCapOf("PROJECT_DAILY", 0, this.randomCap());
    if (r.chance(0.3)) await this.setCapOf("PROJECT_MONTHLY", 0, this.randomCap());
    if (r.chance(0.5)) await this.setCapOf("ROUTE_DAILY", 0, this.randomCap());
    for (let i = 0; i < 2; i++) if (r.chance(0.6)) await this.setCapOf("CHANNEL_DAILY", i, this.randomCap());
    this.graceMs = r.pick([0, 200, 1_000, 3_000]);
    this.chunkRequests = r.pick([1, 2, 4]);
    const n = r.int(2, 3);
    for (let i = 0; i < n; i++) this.instances.push(this.newInstance());
    await this.refreshPlan();
    this.say(`set up: ${n} instances, grace ${this.graceMs} ms, chunk ×${this.chunkRequests}, backup ${backupSettlement}, run ${this.runId ? "yes" : "no"}`);
    // Nothing set up so far may be counted against the simulation's ceilings.
    this.ceilings.clear();
  }

  private randomCap(lo = 0, hi = 600_000): string {
    return this.money(this.rng.int(lo, hi));
  }

  private newInstance(): Instance {
    const name = `i${++this.instanceNo}`;
    const offsetMs = this.rng.int(-1_500, 1_500);
    const instance: Instance = {
      name,
      offsetMs,
      stalledUntil: 0,
      nextBeat: this.g + Math.floor(TTL_MS / 3),
      queue: [],
      inbox: [],
      zone: this.zone,
      zoneNews: [],
      faults: [],
      writer: undefined as unknown as GroupCommit<BatchItem, Written>,
      pool: new LeasePool(this.sql, {
        instanceId: `sim-${this.seed}-${name}-${randomUUID()}`,
        ttlMs: TTL_MS,
        chunk: (need) => need * BigInt(this.chunkRequests),
        clock: () => this.g + offsetMs,
        // Every instance reads the database's one clock for expiries: skew moves nothing there.
        databaseTime: () => new Date(this.g),
        onError: () => this.count("give-back errors"),
      }),
    };
    const write = async (items: BatchItem[]): Promise<Written[]> => {
      const fault = instance.faults.shift();
      if (fault === "before") throw new Error("simulated: connection lost before the commit");
      const written = await recordBatch(items, new Date(this.g));
      if (fault === "after") throw new Error("simulated: connection lost after the commit");
      return written;
    };
    instance.writer = new GroupCommit<BatchItem, Written>(write, async (item) => (await write([item]))[0]!, { maxBatch: 256, maxInFlight: 1 });
    return instance;
  }

  /**
   * Moves the database's clock; every instance that runs beats on the way (as the gateway's timer
   * does: renew, give back what idles, sweep), so only a stalled or dead instance's leases lapse.
   */
  private async advance(ms: number): Promise<void> {
    const target = this.g + ms;
    for (;;) {
      const next = this.instances.reduce<Instance | null>((a, i) => (i.nextBeat <= target && (!a || i.nextBeat < a.nextBeat) ? i : a), null);
      if (!next) break;
      this.g = Math.max(this.g, next.nextBeat);
      if (next.stalledUntil > this.g) {
        next.nextBeat = next.stalledUntil;
        continue;
      }
      next.nextBeat = this.g + Math.floor(TTL_MS / 3);
      await next.pool.maintain();
      await reclaimLeases(this.sql, this.graceMs, new Date(this.g));
    }
    this.g = target;
  }

  private alive(): Instance[] {
    return this.instances.filter((i) => i.stalledUntil <= this.g);
  }

  private async refreshPlan(): Promise<void> {
    const plan = await planRoute(this.organizationId, this.model, new Date(this.g));
    this.plan = (plan?.channels ?? []).map((c) => ({
      channel: this.channels.find((s) => s.id === c.channel.id)!,
      bucket: c.bucket,
      price: c.price ? { id: c.price.id, inputPerMillion: c.price.inputPerMillion, outputPerMillion: c.price.outputPerMillion } : null,
    }));
    for (const c of this.channels) c.settlement = plan?.channels.find((p) => p.channel.id === c.id)?.channel.settlement ?? c.settlement;
  }

  // ---- caps -------------------------------------------------------------------------------

  private capKey(scope: CapScope, scopeId: string, bucket: BalanceBucket): string {
    return `${scope}|${scopeId}|${bucket}`;
  }

  /** Sets a cap through the admin API's domain functions (they revoke the scope's leases first). */
  private async setCapOf(scope: CapScope, index: number, value: string | null, bucket?: BalanceBucket): Promise<void> {
    let scopeId: string;
    let capBucket: BalanceBucket;
    switch (scope) {
      case "KEY_DAILY":
      case "KEY_PER_REQUEST": {
        scopeId = this.keyIds[index]!;
        capBucket = bucket ?? "CREDIT";
        const field = scope === "KEY_DAILY" ? "dailyCap" : "perRequestMaxCharge";
        await setKeyCaps(this.viewer, { keyId: scopeId, [field]: value, capBucket });
        break;
      }
      case "PROJECT_DAILY":
      case "PROJECT_MONTHLY":
        scopeId = this.projectId;
        capBucket = bucket ?? "CREDIT";
        await setProjectBudget(this.viewer, { projectId: scopeId, [scope === "PROJECT_DAILY" ? "dailyCap" : "monthlyCap"]: value, bucket: capBucket });
        break;
      case "ROUTE_DAILY":
        scopeId = this.routeId;
        capBucket = bucket ?? "CREDIT";
        await setRouteLimits(this.viewer, { routeId: scopeId, dailyCap: value, capBucket });
        break;
      case "CHANNEL_DAILY": {
        const channel = this.channels[index]!;
        scopeId = channel.id;
        capBucket = bucket ?? bucketOfSettlement(channel.settlement);
        await setChannelLimits(this.viewer, { channelId: scopeId, dailyCap: value, capBucket });
        break;
      }
      default:
        throw new Error(`no cap setter for ${scope}`);
    }
    this.caps.set(this.capKey(scope, scopeId, capBucket), value);
    this.publishRevocation(scope, scopeId);
    await this.raiseCeilings(scope, scopeId);
  }

  /** leasesRevoked reaches each instance later, or (a lost message) never: the renewal tells it then. */
  private publishRevocation(scope: string, scopeId: string): void {
    for (const instance of this.instances) if (!this.rng.chance(0.25)) instance.inbox.push({ scope, scopeId });
  }

  /** After a cap change: what is in flight stays counted, so a counter may sit above its new cap; it may never rise there. */
  private async raiseCeilings(scope: string, scopeId: string): Promise<void> {
    const rows = await this.query<{ k: string; used: string; cap: string | null }>(
      `SELECT c.scope::text || '|' || c."scopeId" || '|' || c.bucket::text || '|' || c."windowStart"::text AS k, (c.spent + c.held)::text AS used,
              tg_effective_cap(c.scope, c."scopeId", c.bucket)::text AS cap
         FROM "SpendCounter" c WHERE c.scope::text = $1 AND c."scopeId" = $2`,
      [scope, scopeId],
    );
    for (const row of rows) {
      if (row.cap !== null && BigInt(row.used) > BigInt(row.cap)) {
        const before = this.ceilings.get(row.k) ?? 0n;
        if (BigInt(row.used) > before) this.ceilings.set(row.k, BigInt(row.used));
      }
    }
  }

  // ---- the steps --------------------------------------------------------------------------

  async run(keepGoing: boolean): Promise<void> {
    for (this.stepCount = 1; this.stepCount <= this.steps; this.stepCount++) {
      try {
        await this.step();
      } catch (e) {
        this.violations.push(`step ${this.stepCount} threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        return;
      }
      const found = await this.check();
      if (found.length) {
        this.violations.push(...found.map((v) => `after step ${this.stepCount}: ${v}`));
        if (!keepGoing) return;
      }
    }
    try {
      await this.finish();
    } catch (e) {
      this.violations.push(`finish threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  private async step(): Promise<void> {
    const op = this.rng.weighted({
      admit: 18,
      fallback: 4,
      answer: 9,
      fail: 3,
      hangUp: 2,
      drop: 2,
      flush: 8,
      faultyFlush: 3,
      maintain: 5,
      sweep: 3,
      tick: 9,
      zoneChange: 2,
      lapse: 2,
      capChange: 5,
      deliverRevocations: 4,
      recall: 2,
      price: 2,
      settlement: 1,
      topUp: 1,
      run: 1,
      die: 1,
      stop: 1,
      stall: 1,
      together: 4,
      quote: 2,
      admitQuoted: 6,
    });
    this.count(op);
    this.hearZoneNews();
    await this.do(op);
  }

  /**
   * setOrganizationTimeZone: refused while the last change still takes effect (as the mutation
   * does); each instance reads the new zone at its own moment, a few seconds at most (the gateway
   * caches it for 5 s), some at once: well within the change's margin.
   */
  private zoneChange(): void {
    if (zoneChangePendingUntil(this.zone, new Date(this.g))) {
      this.count("zone change refused (one pending)");
      return;
    }
    const others = ZONES.filter((z) => z !== this.zone.timeZone);
    const next: ZoneState = { timeZone: others[this.rng.int(0, others.length - 1)]!, previousTimeZone: this.zone.timeZone, timeZoneChangedAt: new Date(this.g) };
    this.say(`zone ${this.zone.timeZone} → ${next.timeZone}`);
    this.zone = next;
    for (const instance of this.instances) instance.zoneNews.push({ at: this.g + (this.rng.chance(0.3) ? 0 : this.rng.int(0, 5_000)), zone: next });
  }

  private hearZoneNews(): void {
    for (const instance of this.instances) {
      while (instance.zoneNews.length && instance.zoneNews[0]!.at <= this.g) instance.zone = instance.zoneNews.shift()!.zone;
    }
  }

  private async do(op: string): Promise<void> {
    switch (op) {
      case "admit":
        return this.admit();
      case "fallback":
        return this.fallback();
      case "zoneChange":
        return this.zoneChange();
      case "quote":
        return this.quote();
      case "admitQuoted":
        return this.admitQuoted();
      case "answer":
        return this.answer();
      case "fail":
        return this.fail("UPSTREAM_ERROR");
      case "hangUp":
        return this.fail("CLIENT_CLOSED");
      case "drop":
        return this.drop();
      case "flush":
        return this.flush(false);
      case "faultyFlush":
        return this.flush(true);
      case "maintain": {
        const instance = this.pickAlive();
        if (!instance) return;
        this.say(`${instance.name} renews`);
        return instance.pool.maintain();
      }
      case "sweep": {
        const n = await reclaimLeases(this.sql, this.graceMs, new Date(this.g));
        this.say(`sweep reclaimed ${n}`);
        if (n) this.count("reclaimed");
        return;
      }
      case "tick": {
        const ms = this.rng.chance(0.8) ? this.rng.int(1, 400) : this.rng.int(400, 2_500);
        this.say(`tick ${ms} ms`);
        return this.advance(ms);
      }
      case "lapse": {
        // Long enough for leases of an instance that stops renewing to pass their TTL and the grace.
        const ms = TTL_MS + this.graceMs + this.rng.int(1, 1_500);
        this.say(`lapse ${ms} ms`);
        return this.advance(ms);
      }
      case "capChange":
        return this.capChange();
      case "deliverRevocations": {
        const instance = this.pickAlive();
        if (!instance) return;
        const inbox = instance.inbox.splice(0);
        this.say(`${instance.name} receives ${inbox.length} revocations`);
        for (const notice of inbox) await instance.pool.forgetScope(notice.scope, notice.scopeId);
        return;
      }
      case "recall": {
        const instance = this.pickAlive();
        const lease = instance ? this.rng.pick([...this.instances.flatMap((i) => i.pool.snapshot()), null]) : null;
        if (!instance || !lease) return;
        this.say(`${instance.name} recalled on ${lease.scope}`);
        return instance.pool.recall(lease.bucketId, lease.scope, lease.scopeId);
      }
      case "price":
        return this.priceChange();
      case "settlement":
        return this.settlementChange();
      case "topUp": {
        const bucket = this.rng.pick(BUCKETS);
        const amount = this.rng.int(1, 500_000);
        this.say(`top up ${bucket} ${amount}`);
        await postEntry({ bucketId: this.bucketIds.get(bucket)!, kind: "TOPUP", amount: BigInt(amount), idempotencyKey: randomUUID() });
        return;
      }
      case "run":
        return this.runChange();
      case "die":
        return this.die();
      case "stop":
        return this.stop();
      case "stall": {
        const instance = this.pickAlive();
        if (!instance) return;
        const ms = this.rng.int(300, TTL_MS + this.graceMs + 2_000);
        instance.stalledUntil = this.g + ms;
        for (const request of this.requests.values()) if (request.instance === instance) request.mayLapse = true;
        this.say(`${instance.name} stalls ${ms} ms`);
        return;
      }
      case "together": {
        // Two things at once: their statements interleave on the database as the event loop orders them.
        const ops = ["admit", "admit", "admitQuoted", "capChange", "maintain", "flush", "faultyFlush", "sweep", "recall", "deliverRevocations", "answer", "fallback", "price", "quote"];
        const a = this.rng.pick(ops);
        const b = this.rng.pick(ops);
        this.say(`together: ${a} + ${b}`);
        await Promise.all([this.do(a), this.do(b)]);
        return;
      }
      default:
        throw new Error(`unknown op ${op}`);
    }
  }

  private pickAlive(): Instance | null {
    const alive = this.alive();
    return alive.length ? this.rng.pick(alive) : null;
  }

  private pickRequest(state: SimRequest["state"]): SimRequest | null {
    const candidates = [...this.requests.values()].filter((r) => r.state === state && r.instance.stalledUntil <= this.g && this.instances.includes(r.instance));
    return candidates.length ? this.rng.pick(candidates) : null;
  }

  private async perRequestCap(keyId: string, bucketId: string): Promise<bigint | null> {
    const rows = await this.query<{ cap: string | null }>(`SELECT tg_effective_cap('KEY_PER_REQUEST', $1, b.bucket)::text AS cap FROM "WalletBucket" b WHERE b.id = $2`, [keyId, bucketId]);
    return rows[0]?.cap == null ? null : BigInt(rows[0].cap);
  }

  /** Admits on one channel of the plan as the gateway's admit stage does; null when refused. */
  private async admitOn(
    instance: Instance,
    request: Omit<SimRequest, "channel" | "channelId" | "bucket" | "bucketId" | "price" | "worst" | "held" | "state">,
    channel: number,
  ): Promise<SimRequest | null> {
    const current = this.plan[channel];
    const planned = current && request.quotedPrices ? { ...current, price: request.quotedPrices[channel] ?? null } : current;
    if (!planned?.price) {
      this.say(`${instance.name} ${request.id.slice(0, 6)}: channel ${channel} unpriced`);
      return null;
    }
    const worst = worstCase(planned.price, request.promptBound, request.outputBound);
    const bucketId = this.bucketIds.get(planned.bucket)!;
    const result = await instance.pool.admit({
      bucketId,
      amount: worst,
      keyId: this.keyIds[request.key]!,
      projectId: this.projectId,
      routeId: this.routeId,
      runId: request.runId,
      channelId: planned.channel.id,
      zone: instance.zone,
      perRequestCap: await this.perRequestCap(this.keyIds[request.key]!, bucketId),
    });
    // Every lease it is held in is of the window the database's zone puts this instant in, whether
    // or not this instance has heard of a change yet: one counter per window across the fleet.
    if (result.ok) {
      const now = new Date(this.g + instance.offsetMs);
      for (const lease of result.hold.leases) {
        if (lease.scope === "BALANCE") continue;
        const expected = windowFor(lease.scope, now, this.zone);
        if (lease.windowStart.getTime() !== expected.getTime()) {
          this.violations.push(
            `${request.id}: ${instance.name} leased ${lease.scope} of window ${lease.windowStart.toISOString()}, the organization's zone (${this.zone.timeZone}) puts ${now.toISOString()} in ${expected.toISOString()}`,
          );
        }
      }
    }
    this.say(`${instance.name} ${request.id.slice(0, 6)} admit ${worst} on ${planned.channel.name}/${planned.bucket}: ${result.ok ? "ok" : result.refusal}`);
    if (!result.ok) {
      this.count(`refused ${result.refusal}`);
      return null;
    }
    return { ...request, channel, channelId: planned.channel.id, bucket: planned.bucket, bucketId, price: planned.price, worst, held: { hold: result.hold }, state: "admitted" };
  }

  private async admit(): Promise<void> {
    const instance = this.pickAlive();
    if (!instance) return;
    const key = this.rng.int(0, 1);
    const base = {
      id: this.rng.uuid(),
      instance,
      key,
      runId: key === 0 && this.runId && this.rng.chance(0.6) ? this.runId : null,
      promptBound: this.rng.int(100, 4_000),
      outputBound: this.rng.int(16, 1_000),
      attempts: 1,
      quotedPrices: null,
      path: [],
    };
    const admitted = await this.admitOn(instance, { ...base, mayLapse: false }, 0);
    if (admitted) this.requests.set(admitted.id, admitted);
  }

  /** quoteRequest's row: the snapshots of every channel the plan tries now, pinned for QUOTE_TTL_MS (of the database's clock). */
  private async quote(): Promise<void> {
    const key = this.rng.int(0, 1);
    const priced = this.plan.filter((c) => c.price);
    if (!priced.length) return;
    const row = await db.quote.create({
      data: {
        organizationId: this.organizationId,
        keyId: this.keyIds[key]!,
        model: this.model,
        channelId: priced[0]!.channel.id,
        priceSnapshotId: priced[0]!.price!.id,
        pinnedSnapshotIds: priced.map((c) => c.price!.id),
        worstCase: 0n,
        expectedCharge: 0n,
        // Now and then a quote made almost QUOTE_TTL_MS ago: it expires within the schedule.
        expiresAt: new Date(this.g + (this.rng.chance(0.3) ? this.rng.int(0, 3_000) : QUOTE_TTL_MS)),
      },
    });
    this.quotes.push({ id: row.id, key });
    this.say(`quote ${row.id.slice(0, 6)} for key ${key}: ${priced.map((c) => `${c.channel.name} ${c.price!.inputPerMillion}/${c.price!.outputPerMillion}`).join(", ")}`);
  }

  /** A request carrying a quote's id: claimed as the gateway's plan stage claims it, priced at its pinned snapshots on every channel. */
  private async admitQuoted(): Promise<void> {
    const instance = this.pickAlive();
    if (!instance || !this.quotes.length) return;
    const quote = this.rng.pick(this.quotes);
    const claimed = await claimQuote(quote.id, { id: this.keyIds[quote.key]!, organizationId: this.organizationId }, this.model, new Date(this.g));
    if (!claimed.ok) {
      this.say(`${instance.name} quote ${quote.id.slice(0, 6)} refused: ${claimed.problem.code}`);
      this.count(`quote refused ${claimed.problem.code}`);
      return;
    }
    const quotedPrices = this.plan.map((c) => {
      const pinned = claimed.snapshots.find((p) => p.channelId === c.channel.id);
      return pinned ? { id: pinned.id, inputPerMillion: pinned.inputPerMillion, outputPerMillion: pinned.outputPerMillion } : c.price;
    });
    const request = {
      id: this.rng.uuid(),
      instance,
      key: quote.key,
      runId: quote.key === 0 && this.runId && this.rng.chance(0.6) ? this.runId : null,
      promptBound: this.rng.int(100, 4_000),
      outputBound: this.rng.int(16, 1_000),
      attempts: 1,
      quotedPrices,
      path: [],
      mayLapse: false,
    };
    this.count("quoted admit");
    const admitted = await this.admitOn(instance, request, 0);
    if (admitted) this.requests.set(admitted.id, admitted);
  }

  private failedStep(request: SimRequest): AttemptStep {
    return { channelId: request.channelId, role: request.channel === 0 ? "PRIMARY" : "BACKUP", status: 503, cause: "UPSTREAM_5XX", latencyMs: this.rng.int(1, 900) };
  }

  /** The channel failed (503): the next one is tried, admitted anew against its own caps unless the hold covers it there. */
  private async fallback(): Promise<void> {
    const request = this.pickRequest("admitted");
    if (!request || request.channel + 1 >= this.plan.length) return;
    const current = this.plan[request.channel + 1]!;
    const next = request.quotedPrices ? { ...current, price: request.quotedPrices[request.channel + 1] ?? null } : current;
    const worst = next.price ? worstCase(next.price, request.promptBound, request.outputBound) : 0n;
    const path = [...request.path, this.failedStep(request)];
    if (next.price && holdCovers({ channelId: request.channelId, amount: request.held.hold.amount }, next.channel.id, worst)) {
      // The hold covers the next attempt (forward.ts keeps it): the request moves to that channel as it is.
      Object.assign(request, { channel: request.channel + 1, channelId: next.channel.id, price: next.price, attempts: request.attempts + 1, path });
      this.say(`${request.instance.name} ${request.id.slice(0, 6)} falls back to ${next.channel.name} on its hold`);
      return;
    }
    request.instance.pool.release(request.held.hold);
    this.requests.delete(request.id);
    const again = await this.admitOn(request.instance, { ...request, attempts: request.attempts + 1, path }, request.channel + 1);
    if (again) this.requests.set(again.id, again);
  }

  private usage(request: SimRequest): { promptTokens: number; completionTokens: number } {
    // Now and then the upstream reports more than the bounds (another tokenizer, an ignored max): the hold caps it.
    const over = this.rng.chance(0.05) ? 3 : 1;
    return { promptTokens: this.rng.int(0, request.promptBound * over), completionTokens: this.rng.int(0, request.outputBound * over) };
  }

  private record(request: SimRequest) {
    return {
      requestId: request.id,
      organizationId: this.organizationId,
      keyId: this.keyIds[request.key]!,
      projectId: this.projectId,
      runId: request.runId,
      routeId: this.routeId,
      channelId: request.channelId,
    };
  }

  /** The upstream answered: its record joins the instance's next batch. */
  private async answer(): Promise<void> {
    const request = this.pickRequest("admitted");
    if (!request) return;
    const usage = this.usage(request);
    const { charge } = usageCharge(request.price, usage, request.held.hold.amount);
    const item: BatchItem = {
      kind: "receipt",
      id: this.rng.uuid(),
      bucketId: request.bucketId,
      leases: [],
      record: {
        ...this.record(request),
        requestedModel: this.model,
        upstreamModel: "m",
        endpoint: "/v1/chat/completions",
        channelRole: request.channel === 0 ? "PRIMARY" : "BACKUP",
        fallback: request.channel > 0,
        attempts: request.attempts,
        bucket: request.bucket,
        currency: request.bucket === "CREDIT" ? "USD" : "CNY",
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
        priceSnapshotId: request.price.id,
        charge,
        stream: this.rng.chance(0.5),
        latencyMs: 1,
        status: 200,
        attemptPath: [...request.path, { channelId: request.channelId, role: request.channel === 0 ? "PRIMARY" : "BACKUP", status: 200, cause: "ANSWERED", latencyMs: 1 }],
      },
    };
    request.state = "writing";
    request.instance.queue.push({ request, item });
    this.say(`${request.instance.name} ${request.id.slice(0, 6)} answered: charge ${charge} of ${request.held.hold.amount}`);
  }

  /** The attempt failed after reaching the upstream (or the client hung up): a failed request, charged by policy. */
  private async fail(cause: FailureCause): Promise<void> {
    const request = this.pickRequest("admitted");
    if (!request) return;
    const usage = this.usage(request);
    const policy = this.rng.pick<FailedChargePolicy>(["NEVER", "PROMPT_TOKENS", "FULL_USAGE"]);
    const charge = failedRequestCharge(cause, policy, usage, request.price, request.held.hold.amount);
    const item: BatchItem = {
      kind: "failure",
      id: this.rng.uuid(),
      bucketId: request.bucketId,
      leases: [],
      record: {
        ...this.record(request),
        requestedModel: this.model,
        endpoint: "/v1/chat/completions",
        cause,
        capScope: null,
        message: "simulated failure",
        httpStatus: cause === "CLIENT_CLOSED" ? 499 : 502,
        upstreamStatus: 503,
        attempts: request.attempts,
        bucket: request.bucket,
        currency: request.bucket === "CREDIT" ? "USD" : "CNY",
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
        priceSnapshotId: request.price.id,
        charge,
        estimated: false,
        attemptPath: [...request.path, { ...this.failedStep(request), status: cause === "CLIENT_CLOSED" ? null : 503, cause: cause === "CLIENT_CLOSED" ? "CLIENT_CLOSED" : "UPSTREAM_5XX" }],
      },
    };
    request.state = "writing";
    request.instance.queue.push({ request, item });
    this.say(`${request.instance.name} ${request.id.slice(0, 6)} ${cause} (${policy}): charge ${charge}`);
  }

  /** The request ends before any upstream answered (refused before it reached one): its hold goes uncharged. */
  private async drop(): Promise<void> {
    const request = this.pickRequest("admitted");
    if (!request) return;
    request.instance.pool.release(request.held.hold);
    this.requests.delete(request.id);
    this.say(`${request.instance.name} ${request.id.slice(0, 6)} dropped`);
  }

  /** One instance's queued records go out in a batch through the gateway's writer (writeCharged). */
  private async flush(faulty: boolean): Promise<void> {
    const instance = this.pickAlive();
    if (!instance || instance.queue.length === 0) return;
    const queued = instance.queue.splice(0);
    if (faulty) for (let i = 0; i < 8; i++) instance.faults.push(this.rng.pick(["before", "after", "before", "after"] as const));
    this.say(`${instance.name} writes ${queued.length}${faulty ? " (faulty connection)" : ""}`);
    await Promise.all(queued.map(({ request, item }) => this.write(instance, request, item)));
    instance.faults = [];
  }

  private async write(instance: Instance, request: SimRequest, item: BatchItem): Promise<void> {
    try {
      const { item: entry } = await writeCharged(
        {
          pool: instance.pool,
          submit: (e) => instance.writer.submit(e),
          written: recordWritten,
          onError: (message) => {
            if (!message.includes("uncharged")) return;
            this.count("written uncharged (lease reclaimed, nothing covers it)");
            // Only an instance that stalled past the grace loses its leases: anything else is a hold the database forgot.
            if (!request.mayLapse) this.violations.push(`${request.id}: written uncharged although its instance never stalled (its leases were given back under it)`);
          },
          // As the gateway: a stream's answer was delivered before its receipt is written, so that write never gives up.
          tries: item.kind === "receipt" && item.record.stream ? Infinity : 6,
          sleep: async () => {},
        },
        item,
        request.held,
      );
      instance.pool.settled(request.held.hold, entry.record.charge);
      this.delivered.push({
        kind: entry.kind,
        id: entry.id!,
        charge: entry.record.charge,
        worst: request.worst,
        path: [...(item.record.attemptPath ?? [])],
        priceSnapshotId: item.record.priceSnapshotId!,
      });
      this.say(`${instance.name} ${request.id.slice(0, 6)} written, charge ${entry.record.charge}`);
      this.count("written");
    } catch (e) {
      // Not written after its tries: the client is told it was not charged (nothing was delivered).
      if (item.kind === "receipt" && item.record.stream) this.violations.push(`stream ${request.id}: delivered, and its receipt was given up`);
      instance.pool.release(request.held.hold);
      this.say(`${instance.name} ${request.id.slice(0, 6)} not written: ${e instanceof Error ? e.message.slice(0, 80) : String(e)}`);
      this.count("write given up");
    } finally {
      this.requests.delete(request.id);
    }
  }

  private async capChange(): Promise<void> {
    const scope = this.rng.pick<CapScope>(["KEY_DAILY", "KEY_DAILY", "KEY_PER_REQUEST", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "CHANNEL_DAILY", "CHANNEL_DAILY"]);
    const index = this.rng.int(0, 1);
    const bucket = scope === "CHANNEL_DAILY" ? undefined : this.rng.chance(0.8) ? "CREDIT" : "ROUTED";
    const scopeId = scope.startsWith("KEY") ? this.keyIds[index]! : scope.startsWith("PROJECT") ? this.projectId : scope === "ROUTE_DAILY" ? this.routeId : this.channels[index]!.id;
    const current = this.caps.get(this.capKey(scope, scopeId, bucket ?? bucketOfSettlement(this.channels[index]!.settlement)));
    const kind = this.rng.weighted({ same: 3, lower: 3, higher: 2, remove: 1 });
    const now = current == null ? null : Number(parseMoney(current, "cap"));
    const value =
      kind === "same" && current !== undefined
        ? current
        : kind === "remove"
          ? null
          : kind === "lower" && now !== null
            ? this.money(this.rng.int(0, now))
            : this.randomCap(now ?? 0, (now ?? 0) + 600_000);
    this.say(`cap ${scope}[${index}] ${bucket ?? ""} ${current ?? "none"} -> ${value ?? "none"} (${kind})`);
    await this.setCapOf(scope, index, value, bucket);
  }

  private async priceChange(): Promise<void> {
    const channel = this.rng.pick(this.channels);
    const input = this.money(this.rng.int(500_000, 10_000_000));
    const output = this.money(this.rng.int(1_000_000, 30_000_000));
    this.say(`price of ${channel.name}: ${input} / ${output}`);
    await setPrice(this.viewer, { channelId: channel.id, inputPerMillion: input, outputPerMillion: output, validFrom: new Date(this.g - 1) });
    await this.refreshPlan();
  }

  /** The backup channel changes settlement: it pays from the other bucket, unpriced until setPrice there. */
  private async settlementChange(): Promise<void> {
    const backup = this.channels[1]!;
    const next = backup.settlement === "OFFICIAL" ? "ROUTED" : "OFFICIAL";
    this.say(`backup settles ${next}`);
    await upsertRoute(this.viewer, {
      organizationId: this.organizationId,
      model: this.model,
      channels: this.channels.map((c) => ({ name: c.name, baseUrl: "http://127.0.0.1:9", upstreamModel: c.name === "primary" ? "a" : "b", settlement: c === backup ? next : c.settlement })),
    });
    await this.refreshPlan();
  }

  private async runChange(): Promise<void> {
    if (!this.runId || this.runStatus === "CANCELLED") return;
    const action = this.rng.weighted({ pause: 3, resume: 3, cancel: 1 });
    this.say(`run ${action} (was ${this.runStatus})`);
    if (action === "cancel") {
      await cancelRun(this.viewer, this.runId);
      this.runStatus = "CANCELLED";
    } else if (action === "pause" && this.runStatus === "ACTIVE") {
      await changeRunPause(this.viewer, this.runId, "pauseRun");
      this.runStatus = "PAUSED";
    } else if (action === "resume" && this.runStatus === "PAUSED") {
      await changeRunPause(this.viewer, this.runId, "resumeRun");
      this.runStatus = "ACTIVE";
    } else return;
    this.publishRevocation("RUN_TOTAL", this.runId);
  }

  /** An instance is killed: what it held in memory is gone (its answers not yet written were never delivered); it restarts fresh. */
  private async die(): Promise<void> {
    const instance = this.rng.pick(this.instances);
    instance.pool.abandon();
    for (const [id, request] of this.requests) if (request.instance === instance) this.requests.delete(id);
    const next = this.newInstance();
    this.instances[this.instances.indexOf(instance)] = next;
    this.say(`${instance.name} dies; ${next.name} starts`);
  }

  /** A graceful stop (nothing in flight): every lease goes back; a new instance takes its place. */
  private async stop(): Promise<void> {
    const instance = this.pickAlive();
    if (!instance || instance.queue.length || [...this.requests.values()].some((r) => r.instance === instance)) return;
    await instance.pool.returnAll();
    this.instances[this.instances.indexOf(instance)] = this.newInstance();
    this.say(`${instance.name} stops`);
  }

  // ---- checks -----------------------------------------------------------------------------

  /** The invariants after a step, for this schedule's organization and scopes. */
  private async check(): Promise<string[]> {
    const out: string[] = [];
    for (const row of await this.query<{ id: string; bucket: string; balance: string; held: string; ledger: string; leases: string }>(
      `SELECT b.id, b.bucket::text, b.balance::text, b.held::text,
              COALESCE((SELECT SUM(amount) FROM "LedgerEntry" e WHERE e."bucketId" = b.id), 0)::text AS ledger,
              COALESCE((SELECT SUM(amount) FROM "BudgetLease" l WHERE l."bucketId" = b.id AND l.scope = 'BALANCE'), 0)::text AS leases
         FROM "WalletBucket" b WHERE b."organizationId" = $1`,
      [this.organizationId],
    )) {
      if (row.balance !== row.ledger) out.push(`${row.bucket}: balance ${row.balance} != Σ ledger ${row.ledger}`);
      if (row.held !== row.leases) out.push(`${row.bucket}: held ${row.held} != Σ balance leases ${row.leases}`);
      if (BigInt(row.balance) < BigInt(row.held)) out.push(`${row.bucket}: available ${BigInt(row.balance) - BigInt(row.held)} < 0`);
    }
    const scopeIds = [...this.keyIds, this.projectId, this.routeId, ...this.channels.map((c) => c.id), ...(this.runId ? [this.runId] : [])];
    for (const row of await this.query<{ k: string; spent: string; held: string; leases: string; cap: string | null }>(
      `SELECT c.scope::text || '|' || c."scopeId" || '|' || c.bucket::text || '|' || c."windowStart"::text AS k, c.spent::text, c.held::text,
              tg_effective_cap(c.scope, c."scopeId", c.bucket)::text AS cap,
              COALESCE((SELECT SUM(l.amount) FROM "BudgetLease" l JOIN "WalletBucket" b ON b.id = l."bucketId"
                         WHERE l.scope = c.scope::text AND l."scopeId" = c."scopeId" AND b.bucket = c.bucket AND l."windowStart" = c."windowStart"), 0)::text AS leases
         FROM "SpendCounter" c WHERE c."scopeId" = ANY($1)`,
      [scopeIds],
    )) {
      const used = BigInt(row.spent) + BigInt(row.held);
      if (row.held !== row.leases) out.push(`counter ${row.k}: held ${row.held} != Σ leases ${row.leases}`);
      if (row.cap !== null && used > BigInt(row.cap)) {
        const ceiling = this.ceilings.get(row.k);
        if (ceiling === undefined || used > ceiling)
          out.push(`counter ${row.k}: spent ${row.spent} + held ${row.held} > cap ${row.cap}${ceiling !== undefined ? ` (and above ${ceiling}, what was in flight when it was lowered)` : ""}`);
        else this.ceilings.set(row.k, used); // it may drain, never rise again
      }
    }
    // Counted where it was spent: each scope's counters (all windows) hold the charges of the records naming it.
    const spent = new Map(
      (
        await this.query<{ k: string; spent: string }>(
          `SELECT c.scope::text || '|' || c."scopeId" || '|' || c.bucket::text AS k, SUM(c.spent)::text AS spent
             FROM "SpendCounter" c WHERE c."scopeId" = ANY($1) GROUP BY 1 HAVING SUM(c.spent) <> 0`,
          [scopeIds],
        )
      ).map((r) => [r.k, r.spent]),
    );
    for (const row of await this.query<{ k: string; charged: string }>(
      `SELECT v.scope || '|' || v.scope_id || '|' || x.bucket AS k, SUM(x.charge)::text AS charged
         FROM (SELECT b.bucket::text AS bucket, -e.amount AS charge, COALESCE(r."keyId", f."keyId") AS key_id, COALESCE(r."projectId", f."projectId") AS project_id,
                      COALESCE(r."routeId", f."routeId") AS route_id, COALESCE(r."channelId", f."channelId") AS channel_id, COALESCE(r."runId", f."runId") AS run_id
                 FROM "LedgerEntry" e JOIN "WalletBucket" b ON b.id = e."bucketId"
                 LEFT JOIN "Receipt" r ON r.id = e."receiptId" LEFT JOIN "FailedRequest" f ON f.id = e."failedRequestId"
                WHERE e.kind = 'CHARGE' AND b."organizationId" = $1) x
        CROSS JOIN LATERAL (VALUES ('KEY_DAILY', x.key_id), ('PROJECT_DAILY', x.project_id), ('PROJECT_MONTHLY', x.project_id), ('ROUTE_DAILY', x.route_id),
                                   ('CHANNEL_DAILY', x.channel_id), ('RUN_TOTAL', x.run_id)) AS v(scope, scope_id)
        WHERE v.scope_id IS NOT NULL GROUP BY 1`,
      [this.organizationId],
    )) {
      const counted = spent.get(row.k) ?? "0";
      spent.delete(row.k);
      if (counted !== row.charged) out.push(`${row.k}: counters spent ${counted}, its records were charged ${row.charged}`);
    }
    for (const [k, counted] of spent) out.push(`${k}: counters spent ${counted}, no record charged there`);
    // The database knows every hold in flight: each lives in leases it still has, as large as the holds in them
    // (unless the request's instance stalled past the grace: then the write backs its charge anew).
    const holds = [...this.requests.values()].filter((r) => !r.mayLapse);
    if (holds.length) {
      const ids = [...new Set(holds.flatMap((r) => r.held.hold.leases.map((l) => l.id)))];
      const stored = new Map((await this.query<{ id: string; amount: string }>(`SELECT id, amount::text FROM "BudgetLease" WHERE id = ANY($1)`, [ids])).map((r) => [r.id, BigInt(r.amount)]));
      const inLease = new Map<string, bigint>();
      for (const r of holds) for (const l of r.held.hold.leases) inLease.set(l.id, (inLease.get(l.id) ?? 0n) + r.held.hold.amount);
      for (const [id, amount] of inLease) {
        const have = stored.get(id);
        if (have === undefined) out.push(`lease ${id} carries ${amount} of holds in flight and the database no longer has it`);
        else if (have < amount) out.push(`lease ${id} carries ${amount} of holds in flight, the database holds ${have}`);
      }
    }
    // No instance counts a lease as larger than the database does (the database knows every hold admitted).
    const local = this.instances.flatMap((i) => i.pool.snapshot().map((l) => ({ ...l, instance: i.name })));
    if (local.length) {
      const stored = new Map(
        (await this.query<{ id: string; amount: string }>(`SELECT id, amount::text FROM "BudgetLease" WHERE id = ANY($1)`, [local.map((l) => l.id)])).map((r) => [r.id, BigInt(r.amount)]),
      );
      for (const lease of local) {
        const amount = stored.get(lease.id);
        if (amount === undefined) continue; // reclaimed: the pool learns it at its renewal or its next write
        if (lease.amount > amount) out.push(`${lease.instance} counts lease ${lease.scope} as ${lease.amount}, the database holds ${amount}`);
        if (lease.inFlight > amount) out.push(`${lease.instance} holds ${lease.inFlight} in flight in lease ${lease.scope}, the database holds ${amount}`);
      }
    }
    return out;
  }

  /** Every request ends, every instance stops, the sweep runs: then nothing is left leased, and every answer has its record. */
  private async finish(): Promise<void> {
    this.say("finish");
    for (const instance of this.instances) instance.stalledUntil = 0;
    for (const request of [...this.requests.values()]) if (request.state === "admitted") request.instance.pool.release(request.held.hold);
    for (const [id, request] of this.requests) if (request.state === "admitted") this.requests.delete(id);
    for (const instance of this.instances) {
      const queued = instance.queue.splice(0);
      await Promise.all(queued.map(({ request, item }) => this.write(instance, request, item)));
      for (const notice of instance.inbox.splice(0)) await instance.pool.forgetScope(notice.scope, notice.scopeId);
      await instance.pool.maintain();
      await instance.pool.returnAll();
    }
    this.g += TTL_MS + this.graceMs + 1;
    // One sweep: it reclaims every lease past its grace.
    this.say(`the final sweep reclaimed ${await reclaimLeases(this.sql, this.graceMs, new Date(this.g))}`);
    const found = await this.check();
    this.violations.push(...found.map((v) => `at the end: ${v}`));
    const left = await this.query<{ scope: string; amount: string; instance: string; expires: string; revoked: boolean }>(
      `SELECT l.scope, l.amount::text, l."instanceId" AS instance, l."expiresAt"::text AS expires, l.revoked
         FROM "BudgetLease" l JOIN "WalletBucket" b ON b.id = l."bucketId" WHERE b."organizationId" = $1`,
      [this.organizationId],
    );
    for (const lease of left) {
      this.violations.push(
        `at the end (${new Date(this.g).toISOString()}): lease ${lease.scope} of ${lease.instance} still holds ${lease.amount} (expires ${lease.expires}${lease.revoked ? ", revoked" : ""})`,
      );
    }
    const held = await this.query<{ k: string; held: string }>(`SELECT c.scope::text || '|' || c."scopeId" AS k, c.held::text FROM "SpendCounter" c WHERE c."scopeId" = ANY($1) AND c.held <> 0`, [
      [...this.keyIds, this.projectId, this.routeId, ...this.channels.map((c) => c.id), ...(this.runId ? [this.runId] : [])],
    ]);
    for (const row of held) this.violations.push(`at the end: counter ${row.k} still holds ${row.held}`);
    // Every answer delivered has its one record, charged what the simulation wrote, with its ledger entry; nothing else was recorded.
    type Row = { id: string; charge: string; ledger: string | null; path: string; snapshot: string | null };
    const receipts = await this.query<Row>(
      `SELECT r.id, r.charge::text, (SELECT -e.amount FROM "LedgerEntry" e WHERE e."receiptId" = r.id)::text AS ledger, r."attemptPath"::text AS path, r."priceSnapshotId" AS snapshot
         FROM "Receipt" r WHERE r."organizationId" = $1`,
      [this.organizationId],
    );
    const failures = await this.query<Row>(
      `SELECT r.id, r.charge::text, (SELECT -e.amount FROM "LedgerEntry" e WHERE e."failedRequestId" = r.id)::text AS ledger, r."attemptPath"::text AS path, r."priceSnapshotId" AS snapshot
         FROM "FailedRequest" r WHERE r."organizationId" = $1`,
      [this.organizationId],
    );
    const stored = new Map([...receipts, ...failures].map((r) => [r.id, r]));
    for (const d of this.delivered) {
      const row = stored.get(d.id);
      if (!row) {
        this.violations.push(`${d.kind} ${d.id} was delivered but is not recorded`);
        continue;
      }
      stored.delete(d.id);
      if (BigInt(row.charge) !== d.charge) this.violations.push(`${d.kind} ${d.id}: recorded charge ${row.charge}, written ${d.charge}`);
      if (d.charge > d.worst) this.violations.push(`${d.kind} ${d.id}: charge ${d.charge} above its worst case ${d.worst}`);
      if (d.charge > 0n ? row.ledger !== row.charge : row.ledger !== null) this.violations.push(`${d.kind} ${d.id}: ledger ${row.ledger} for charge ${row.charge}`);
      // The path and the price it was charged at, as written (once, whatever commits were lost and retried).
      // (JSONB keeps its own key order: both sides go through storedPath's fixed one.)
      if (JSON.stringify(storedPath(JSON.parse(row.path) as AttemptStep[])) !== JSON.stringify(storedPath(d.path)))
        this.violations.push(`${d.kind} ${d.id}: attempt path ${row.path}, written ${JSON.stringify(d.path)}`);
      if (row.snapshot !== d.priceSnapshotId) this.violations.push(`${d.kind} ${d.id}: priced at snapshot ${row.snapshot}, written ${d.priceSnapshotId}`);
    }
    for (const id of stored.keys()) this.violations.push(`record ${id} is in the database but no answer was delivered for it`);
  }
}
