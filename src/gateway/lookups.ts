// What the hot path reads besides the key: route plans (cached like keys, at most `ttlMs`, so a
// route or price change applies within that time), wallet bucket ids (they never change),
// decrypted channel credentials, and the run a request names.
import { db } from "../db/index.ts";
import { SingleFlight } from "../single-flight.ts";
import type { ApiKey } from "../generated/prisma/client.ts";
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { walletBucket } from "../money/index.ts";
import { bucketOf, channelCredential, planRoute, pricedNowWhere, PRICE_ORDER, type PlannedChannel, type RoutePlan } from "../routing/index.ts";

export class Lookups {
  private readonly plans = new Map<string, { plan: RoutePlan | null; until: number }>();
  /** One read per route at a time; forgetPlans keeps reads in flight out of the cache. */
  private readonly reads = new SingleFlight<string, RoutePlan | null>();
  private readonly buckets = new Map<string, string>();
  private readonly credentials = new Map<string, string | null>();

  constructor(private readonly planTtlMs: number) {}

  async plan(organizationId: string, model: string): Promise<RoutePlan | null> {
    const cacheKey = `${organizationId}\u0000${model}`;
    const now = Date.now();
    const hit = this.plans.get(cacheKey);
    if (hit && hit.until > now) return hit.plan;
    if (this.planTtlMs <= 0) return planRoute(organizationId, model);
    return this.reads.run(
      cacheKey,
      () => planRoute(organizationId, model),
      (plan) => {
        if (this.plans.size > 10_000) this.plans.clear();
        this.plans.set(cacheKey, { plan, until: now + this.planTtlMs });
      },
    );
  }

  forgetPlans(): void {
    this.reads.invalidate();
    this.plans.clear();
  }

  async bucketId(organizationId: string, bucket: BalanceBucket): Promise<string> {
    const cacheKey = `${organizationId}:${bucket}`;
    let id = this.buckets.get(cacheKey);
    if (!id) {
      id = (await walletBucket(organizationId, bucket)).id;
      this.buckets.set(cacheKey, id);
    }
    return id;
  }

  credential(channel: PlannedChannel["channel"]): string | null {
    const ciphertext = channel.apiKeyCiphertext;
    if (!ciphertext) return null;
    // Keyed by channel too: a ciphertext only decrypts for the channel it is bound to.
    const cacheKey = `${channel.id}:${ciphertext}`;
    let plain = this.credentials.get(cacheKey);
    if (plain === undefined) {
      plain = channelCredential(channel);
      if (this.credentials.size > 10_000) this.credentials.clear();
      this.credentials.set(cacheKey, plain);
    }
    return plain;
  }

  /** The run named by x-run-id, only if it belongs to this key. */
  async run(runId: string, keyId: string): Promise<{ id: string; status: string } | null> {
    if (runId.length > 200) return null;
    const run = await db.run.findUnique({ where: { id: runId }, select: { id: true, keyId: true, status: true } });
    return run && run.keyId === keyId ? { id: run.id, status: run.status } : null;
  }

  /** Every route of the organization with its enabled channels and current prices (for /v1/models). */
  async allPlans(organizationId: string): Promise<RoutePlan[]> {
    const at = new Date();
    const routes = await db.route.findMany({
      where: { organizationId },
      orderBy: { model: "asc" },
      include: {
        channels: {
          where: { enabled: true },
          orderBy: [{ priority: "asc" }, { createdAt: "asc" }],
          include: { priceSnapshots: { where: pricedNowWhere(at), orderBy: PRICE_ORDER, take: 1 } },
        },
      },
    });
    return routes.map(({ channels, ...route }) => ({
      route,
      channels: channels.map(({ priceSnapshots, ...channel }, i) => ({
        channel,
        price: priceSnapshots[0] ?? null,
        bucket: bucketOf(channel.settlement),
        role: i === 0 ? ("PRIMARY" as const) : ("BACKUP" as const),
      })),
    }));
  }
}

/** Channels of a plan this key may use: its buckets, lower-cost (ROUTED) routes, backup routes. */
export function usableChannels(plan: RoutePlan, key: Pick<ApiKey, "allowedBuckets" | "lowerCostRoutes" | "backupRoutes">): PlannedChannel[] {
  return plan.channels.filter((c) => key.allowedBuckets.includes(c.bucket) && (key.lowerCostRoutes || c.channel.settlement !== "ROUTED") && (key.backupRoutes || c.role === "PRIMARY"));
}

export const modelAllowed = (key: Pick<ApiKey, "allowedModels">, model: string): boolean => key.allowedModels.length === 0 || key.allowedModels.includes(model);
