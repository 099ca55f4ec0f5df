// Per-request batching for values that are not Prisma relations (caps and spend counters, the
// channels of attempt paths), so a list of 50 keys with their spend costs two queries, not a hundred.
import DataLoader from "dataloader";
import { db } from "../db/index.ts";
import type { ApiKey, BudgetCap, Channel, Project, Route, Run } from "../generated/prisma/client.ts";
import type { BalanceBucket, CapScope } from "../generated/prisma/enums.ts";
import type { ScopeSpend } from "../money/index.ts";
import { windowFor } from "../money/windows.ts";
import { organizationZones } from "../orgs/time-zone.ts";
import type { ZoneState } from "../money/windows.ts";
import { effectiveCap, type BudgetStatus } from "../budgets/index.ts";
import { keysLastUsedAt, keysSpend, type BucketSpend } from "../keys/spend.ts";
import { nodeTenancy } from "../nodes/index.ts";
import type { Viewer } from "../auth/index.ts";

interface CounterKey {
  scope: CapScope;
  scopeId: string;
  bucket: BalanceBucket;
  windowStart: Date;
}

const counterKey = (k: CounterKey) => `${k.scope}|${k.scopeId}|${k.bucket}|${k.windowStart.toISOString()}`;

const byId = <T extends { id: string }>(ids: readonly string[], rows: T[]): Array<T | null> => {
  const found = new Map(rows.map((r) => [r.id, r]));
  return ids.map((id) => found.get(id) ?? null);
};

export function createLoaders() {
  const caps = new DataLoader<string, BudgetCap[]>(async (scopeIds) => {
    const rows = await db.budgetCap.findMany({ where: { scopeId: { in: [...scopeIds] } } });
    return scopeIds.map((id) => rows.filter((r) => r.scopeId === id));
  });
  const counters = new DataLoader<CounterKey, ScopeSpend, string>(
    async (keys) => {
      const rows = await db.spendCounter.findMany({
        where: { OR: keys.map((k) => ({ scope: k.scope, scopeId: k.scopeId, bucket: k.bucket, windowStart: k.windowStart })) },
      });
      const byKey = new Map(rows.map((r) => [counterKey(r), r]));
      return keys.map((k) => {
        const row = byKey.get(counterKey(k));
        return { spent: row?.spent ?? 0n, held: row?.held ?? 0n };
      });
    },
    { cacheKeyFn: counterKey },
  );
  // The upstream's own text of failed requests (admins only: see FailedRequest.upstreamMessage).
  const upstreamMessages = new DataLoader<string, string | null>(async (requestIds) => {
    const rows = await db.failedRequestUpstreamMessage.findMany({ where: { requestId: { in: [...requestIds] } } });
    const byId = new Map(rows.map((r) => [r.requestId, r.message]));
    return requestIds.map((id) => byId.get(id) ?? null);
  });
  // Channels by id: the attempts of a page of receipts (a JSON column, not a relation) name theirs in one read.
  const channels = new DataLoader<string, Channel | null>(async (ids) => {
    const rows = await db.channel.findMany({ where: { id: { in: [...ids] } } });
    const byId = new Map(rows.map((r) => [r.id, r]));
    return ids.map((id) => byId.get(id) ?? null);
  });
  // Organizations' zones (every day and month window follows its organization's): read once per operation, in one statement.
  const zones = new DataLoader<string, ZoneState>((organizationIds) => organizationZones(organizationIds));
  // ApiKey.lastUsedAt and ApiKey.spend of a list of keys: two grouped statements each.
  const keyLastUsed = new DataLoader<string, Date | null>(async (keyIds) => {
    const last = await keysLastUsedAt(keyIds);
    return keyIds.map((id) => last.get(id) ?? null);
  });
  // The default range is the key's organization's current day, so the organization is part of the range.
  const rangeOf = (k: { organizationId: string; from: Date | null; to: Date | null }) => `${k.organizationId}|${k.from?.toISOString() ?? ""}|${k.to?.toISOString() ?? ""}`;
  const keySpend = new DataLoader<{ keyId: string; organizationId: string; from: Date | null; to: Date | null }, BucketSpend[], string>(
    async (keys) => {
      // One statement pair per distinct range (a query normally asks one).
      const ranges = new Map<string, { organizationId: string; from: Date | null; to: Date | null; keyIds: string[] }>();
      for (const k of keys) {
        const range = ranges.get(rangeOf(k)) ?? { organizationId: k.organizationId, from: k.from, to: k.to, keyIds: [] };
        range.keyIds.push(k.keyId);
        ranges.set(rangeOf(k), range);
      }
      const spent = new Map(await Promise.all([...ranges].map(async ([name, r]) => [name, await keysSpend(r.keyIds, r, new Date(), await zones.load(r.organizationId))] as const)));
      return keys.map((k) => spent.get(rangeOf(k))!.get(k.keyId)!);
    },
    { cacheKeyFn: (k) => `${k.keyId}|${rangeOf(k)}` },
  );
  let viewerForRows: Viewer | null = null;
  const tenancy = (type: "ApiKey" | "Project" | "Route" | "Channel" | "Run"): Record<string, unknown> => (viewerForRows ? nodeTenancy(viewerForRows, type) : { id: { in: [] as string[] } });
  // Rows by id within the viewer's tenancy (null when absent or not the viewer's): spend groups name their objects.
  const visible = {
    ApiKey: new DataLoader<string, ApiKey | null>(async (ids) => byId(ids, await db.apiKey.findMany({ where: { id: { in: [...ids] }, ...tenancy("ApiKey") } }))),
    Project: new DataLoader<string, Project | null>(async (ids) => byId(ids, await db.project.findMany({ where: { id: { in: [...ids] }, ...tenancy("Project") } }))),
    Route: new DataLoader<string, Route | null>(async (ids) => byId(ids, await db.route.findMany({ where: { id: { in: [...ids] }, ...tenancy("Route") } }))),
    Channel: new DataLoader<string, Channel | null>(async (ids) => byId(ids, await db.channel.findMany({ where: { id: { in: [...ids] }, ...tenancy("Channel") } }))),
    Run: new DataLoader<string, Run | null>(async (ids) => byId(ids, await db.run.findMany({ where: { id: { in: [...ids] }, ...tenancy("Run") } }))),
  };
  return {
    caps,
    /** The loaders of visible rows, for this operation's viewer (one viewer per operation). */
    visible(viewer: Viewer) {
      viewerForRows = viewer;
      return visible;
    },
    counters,
    zones,
    upstreamMessages,
    channels,
    keyLastUsed,
    keySpend,
    /** A cap's current window (of its organization's zone): spent, held, cap and what remains. */
    async budget(scope: CapScope, owner: { id: string; organizationId: string }, bucket: BalanceBucket, now = new Date()): Promise<BudgetStatus> {
      const scopeId = owner.id;
      const windowStart = windowFor(scope, now, await zones.load(owner.organizationId));
      const [spend, scopeCaps] = await Promise.all([counters.load({ scope, scopeId, bucket, windowStart }), caps.load(scopeId)]);
      const cap = effectiveCap(scopeCaps, scope, bucket);
      const left = cap === null ? null : cap - spend.spent - spend.held;
      return { scope, bucket, cap, remaining: left === null ? null : left > 0n ? left : 0n, ...spend };
    },
  };
}

export type Loaders = ReturnType<typeof createLoaders>;
