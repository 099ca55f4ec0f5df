// Routes (catalog model → ordered channels), channel credentials (encrypted at rest),
// price snapshots (append-only history) and the route plan the gateway follows.
import { db } from "../db/index.ts";
import type { Channel, PriceSnapshot, Prisma, Route } from "../generated/prisma/client.ts";
import type { BalanceBucket, Settlement } from "../generated/prisma/enums.ts";
import { assertCanWrite, isPlatform, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { capsOf, parseCapInput, setCap, type CapInput } from "../budgets/index.ts";
import { badInput, DomainError, notFound, requiredText } from "../errors.ts";
import { BUCKET_CURRENCY, parseMoney } from "../money/amounts.ts";
import type { CredentialCipher } from "../secrets.ts";
import { services } from "../installed.ts";
import { checkUpstreamHost } from "./addresses.ts";

export const bucketOf = (settlement: Settlement): BalanceBucket => (settlement === "OFFICIAL" ? "CREDIT" : "ROUTED");

/** The cipher for secrets stored encrypted (channel credentials, alert webhook secrets): the installed services' one. */
export function credentialCipher(): CredentialCipher {
  const cipher = services().cipher;
  if (!cipher) throw new Error("TOKENGATE_SECRET is not configured");
  return cipher;
}
export function channelCredential(channel: Pick<Channel, "id" | "apiKeyCiphertext">): string | null {
  return channel.apiKeyCiphertext ? credentialCipher().decrypt(channel.apiKeyCiphertext, channel.id) : null;
}

/**
 * Start-up: re-encrypts credentials stored under the earlier scheme (v1: no HKDF, no channel binding)
 * with the current one. Rows are updated only if still unchanged, so instances starting together agree.
 */
export async function upgradeStoredCredentials(): Promise<number> {
  const legacy = await db.channel.findMany({ where: { apiKeyCiphertext: { startsWith: "v1." } }, select: { id: true, apiKeyCiphertext: true } });
  let upgraded = 0;
  for (const channel of legacy) {
    const old = channel.apiKeyCiphertext!;
    const plain = credentialCipher().decrypt(old, channel.id);
    const { count } = await db.channel.updateMany({ where: { id: channel.id, apiKeyCiphertext: old }, data: { apiKeyCiphertext: credentialCipher().encrypt(plain, channel.id) } });
    upgraded += count;
  }
  return upgraded;
}

/** Loopback, private, link-local and metadata addresses are for platform admins (or everyone, when allowed). */
/** Outbound URLs an admin sets (channel base URLs, alert webhooks) may reach internal hosts only when a platform admin sets them. */
export async function assertUpstreamAllowed(viewer: Viewer, baseUrl: string, field: string): Promise<void> {
  // TOKENGATE_ALLOW_PRIVATE_UPSTREAMS: every admin (not only platform admins) may set internal addresses.
  if (isPlatform(viewer) || services().config.admin.allowPrivateUpstreams) return;
  const url = new URL(baseUrl);
  const check = await checkUpstreamHost(url).catch(() => {
    throw badInput(field, `${url.hostname} could not be resolved in time: try again`);
  });
  if (check.internal) {
    throw new DomainError("FORBIDDEN", `${field}: ${url.hostname} is (or resolves to) a loopback, private, link-local or metadata address (${check.address}); only platform admins may set it`, field);
  }
}

export interface ChannelInput {
  name: string;
  baseUrl: string;
  apiKey?: string | null;
  upstreamModel: string;
  settlement?: Settlement | null;
  priority?: number | null;
}

export interface UpsertRouteInput {
  organizationId?: string | null;
  model: string;
  channels: ChannelInput[];
  dailyCap?: CapInput;
  /** The bucket dailyCap counts (default: the primary channel's bucket). */
  capBucket?: BalanceBucket | null;
  defaultMaxTokens?: number | null;
  /** Prompt tokens reserved per audio / file part; 0 refuses such parts; omitted keeps the stored value. */
  maxUnboundedPartTokens?: number | null;
}

interface ValidChannel {
  name: string;
  baseUrl: string;
  apiKey: string | null | undefined;
  upstreamModel: string;
  settlement: Settlement;
  priority: number;
}

function validateChannel(c: ChannelInput, index: number): ValidChannel {
  const field = `channels[${index}]`;
  const name = requiredText(c.name, `${field}.name`, 100);
  let url: URL;
  try {
    url = new URL(c.baseUrl);
  } catch {
    throw badInput(`${field}.baseUrl`, "is not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw badInput(`${field}.baseUrl`, "must be http or https");
  const upstreamModel = requiredText(c.upstreamModel, `${field}.upstreamModel`);
  const priority = c.priority ?? index;
  if (!Number.isInteger(priority) || priority < 0 || priority > 10_000) throw badInput(`${field}.priority`, "must be an integer from 0 to 10000");
  return { name, baseUrl: c.baseUrl.replace(/\/+$/, ""), apiKey: c.apiKey, upstreamModel, settlement: c.settlement ?? "OFFICIAL", priority };
}

function validateMaxTokens(value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 1_000_000) throw badInput("defaultMaxTokens", "must be an integer from 1 to 1000000");
  return value;
}

function validateUnboundedPartTokens(value: number | null | undefined): { maxUnboundedPartTokens?: number | null } {
  if (value == null) return {};
  if (!Number.isInteger(value) || value < 0 || value > 10_000_000) throw badInput("maxUnboundedPartTokens", "must be an integer from 0 (refuse such parts) to 10000000");
  return { maxUnboundedPartTokens: value === 0 ? null : value };
}

/** Creates or replaces a route by catalog model name. Channels are matched by name; ones left out are disabled (receipts keep pointing at them). */
export async function upsertRoute(viewer: Viewer, input: UpsertRouteInput): Promise<Route> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId);
  assertCanWrite(viewer, organizationId);
  const model = requiredText(input.model, "model");
  if (input.channels.length === 0) throw badInput("channels", "a route needs at least one channel");
  const channels = input.channels.map(validateChannel);
  const names = new Set(channels.map((c) => c.name));
  if (names.size !== channels.length) throw badInput("channels", "channel names must be unique within a route");
  for (const [i, c] of channels.entries()) await assertUpstreamAllowed(viewer, c.baseUrl, `channels[${i}].baseUrl`);
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const defaultMaxTokens = input.defaultMaxTokens == null ? undefined : validateMaxTokens(input.defaultMaxTokens);
  const unbounded = validateUnboundedPartTokens(input.maxUnboundedPartTokens);
  credentialCipher();

  return db.$transaction(async (tx) => {
    const existing = await tx.route.findUnique({ where: { organizationId_model: { organizationId, model } }, include: { channels: true } });
    const before = existing ? { ...existing, channels: existing.channels.map(redactChannel), caps: await capsOf(tx, existing.id) } : undefined;
    const route = existing
      ? await tx.route.update({ where: { id: existing.id }, data: { updatedAt: new Date(), ...(defaultMaxTokens ? { defaultMaxTokens } : {}), ...unbounded } })
      : await tx.route.create({ data: { organizationId, model, ...(defaultMaxTokens ? { defaultMaxTokens } : {}), ...unbounded } });
    for (const [i, c] of channels.entries()) {
      const stored = existing?.channels.find((s) => s.name === c.name);
      // A stored credential is never sent to a host it was not given for: moving a channel to another
      // origin needs its credential again (or an explicit null to run without one).
      if (stored?.apiKeyCiphertext && c.apiKey === undefined && new URL(stored.baseUrl).origin !== new URL(c.baseUrl).origin) {
        throw badInput(`channels[${i}].apiKey`, "required when baseUrl moves to another host (the stored credential stays with the old one); pass null to drop it");
      }
      const data = { baseUrl: c.baseUrl, upstreamModel: c.upstreamModel, settlement: c.settlement, priority: c.priority, enabled: true };
      const channel = await tx.channel.upsert({
        where: { routeId_name: { routeId: route.id, name: c.name } },
        create: { organizationId, routeId: route.id, name: c.name, ...data },
        update: data,
      });
      // undefined keeps the stored credential; null clears it; a value is encrypted bound to this channel's id.
      if (c.apiKey !== undefined) {
        await tx.channel.update({ where: { id: channel.id }, data: { apiKeyCiphertext: c.apiKey ? credentialCipher().encrypt(c.apiKey, channel.id) : null } });
      }
    }
    await tx.channel.updateMany({ where: { routeId: route.id, name: { notIn: [...names] } }, data: { enabled: false } });
    const primary = [...channels].sort((a, b) => a.priority - b.priority)[0]!;
    await setCap(tx, { organizationId, scope: "ROUTE_DAILY", scopeId: route.id, bucket: input.capBucket ?? bucketOf(primary.settlement) }, dailyCap);
    const after = await tx.route.findUniqueOrThrow({ where: { id: route.id }, include: { channels: true } });
    await writeAudit(tx, viewer, {
      organizationId,
      action: "upsertRoute",
      targetType: "Route",
      targetId: route.id,
      before,
      after: { ...after, channels: after.channels.map(redactChannel), caps: await capsOf(tx, route.id) },
    });
    return route;
  });
}

const redactChannel = (c: Channel) => ({ ...c, apiKeyCiphertext: c.apiKeyCiphertext ? "[encrypted]" : null });

export async function setRouteLimits(
  viewer: Viewer,
  input: { routeId: string; dailyCap?: CapInput; capBucket?: BalanceBucket | null; defaultMaxTokens?: number | null; maxUnboundedPartTokens?: number | null },
): Promise<Route> {
  const route = await db.route.findUnique({ where: { id: input.routeId }, include: { channels: { orderBy: { priority: "asc" } } } });
  if (!route) throw notFound("route", input.routeId);
  assertCanWrite(viewer, route.organizationId, { what: "route", id: route.id });
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const defaultMaxTokens = input.defaultMaxTokens == null ? undefined : validateMaxTokens(input.defaultMaxTokens);
  const unbounded = validateUnboundedPartTokens(input.maxUnboundedPartTokens);
  const bucket = input.capBucket ?? bucketOf(route.channels[0]?.settlement ?? "OFFICIAL");
  return db.$transaction(async (tx) => {
    const before = { defaultMaxTokens: route.defaultMaxTokens, maxUnboundedPartTokens: route.maxUnboundedPartTokens, caps: await capsOf(tx, route.id) };
    const next = await tx.route.update({ where: { id: route.id }, data: { updatedAt: new Date(), ...(defaultMaxTokens ? { defaultMaxTokens } : {}), ...unbounded } });
    await setCap(tx, { organizationId: route.organizationId, scope: "ROUTE_DAILY", scopeId: route.id, bucket }, dailyCap);
    await writeAudit(tx, viewer, {
      organizationId: route.organizationId,
      action: "setRouteLimits",
      targetType: "Route",
      targetId: route.id,
      before,
      after: { defaultMaxTokens: next.defaultMaxTokens, maxUnboundedPartTokens: next.maxUnboundedPartTokens, caps: await capsOf(tx, route.id) },
    });
    return next;
  });
}

/**
 * Backup-route limits: a daily cap per channel (CHANNEL_DAILY, scope id = channel id), enforced by
 * the reservation with every other cap. Default bucket: the channel's own (its settlement's); a
 * cap in the other bucket only would cap the channel's own bucket at zero (the cross-bucket rule).
 */
export async function setChannelLimits(viewer: Viewer, input: { channelId: string; dailyCap?: CapInput; capBucket?: BalanceBucket | null }): Promise<Channel> {
  const channel = await db.channel.findUnique({ where: { id: input.channelId } });
  if (!channel) throw notFound("channel", input.channelId);
  assertCanWrite(viewer, channel.organizationId);
  const dailyCap = parseCapInput(input.dailyCap, "dailyCap");
  const bucket = input.capBucket ?? bucketOf(channel.settlement);
  return db.$transaction(async (tx) => {
    const before = { caps: await capsOf(tx, channel.id) };
    await setCap(tx, { organizationId: channel.organizationId, scope: "CHANNEL_DAILY", scopeId: channel.id, bucket }, dailyCap);
    await writeAudit(tx, viewer, {
      organizationId: channel.organizationId,
      action: "setChannelLimits",
      targetType: "Channel",
      targetId: channel.id,
      before,
      after: { caps: await capsOf(tx, channel.id) },
    });
    return channel;
  });
}

export interface SetPriceInput {
  channelId: string;
  inputPerMillion: string;
  outputPerMillion: string;
  /** Prompt cache reads; omitted / null = the input price. */
  cachedInputPerMillion?: string | null;
  /** Prompt cache writes, where the upstream bills them apart; omitted / null = the input price. */
  cacheWritePerMillion?: string | null;
  /** Audio input tokens; omitted / null = the input price. */
  audioInputPerMillion?: string | null;
  /** Audio output tokens; omitted / null = the output price. */
  audioOutputPerMillion?: string | null;
  validFrom?: Date | null;
}

/** Records a new price for a channel, in its bucket's currency (with its token-class prices, if any). Earlier snapshots are never changed. */
export async function setPrice(viewer: Viewer, input: SetPriceInput): Promise<PriceSnapshot> {
  const channel = await db.channel.findUnique({ where: { id: input.channelId }, include: { route: true } });
  if (!channel) throw notFound("channel", input.channelId);
  assertCanWrite(viewer, channel.route.organizationId, { what: "channel", id: channel.id });
  const inputPerMillion = parseMoney(input.inputPerMillion, "inputPerMillion");
  const outputPerMillion = parseMoney(input.outputPerMillion, "outputPerMillion");
  const optional = (value: string | null | undefined, field: string) => (value == null ? null : parseMoney(value, field));
  const classPrices = {
    cachedInputPerMillion: optional(input.cachedInputPerMillion, "cachedInputPerMillion"),
    cacheWritePerMillion: optional(input.cacheWritePerMillion, "cacheWritePerMillion"),
    audioInputPerMillion: optional(input.audioInputPerMillion, "audioInputPerMillion"),
    audioOutputPerMillion: optional(input.audioOutputPerMillion, "audioOutputPerMillion"),
  };
  const bucket = bucketOf(channel.settlement);
  return db.$transaction(async (tx) => {
    const snapshot = await tx.priceSnapshot.create({
      data: {
        organizationId: channel.organizationId,
        channelId: channel.id,
        bucket,
        currency: BUCKET_CURRENCY[bucket],
        inputPerMillion,
        outputPerMillion,
        ...classPrices,
        validFrom: input.validFrom ?? new Date(),
        createdById: viewer.tokenId,
      },
    });
    await writeAudit(tx, viewer, {
      organizationId: channel.route.organizationId,
      action: "setPrice",
      targetType: "Channel",
      targetId: channel.id,
      after: snapshot,
    });
    return snapshot;
  });
}

const SETTLEMENTS: Settlement[] = ["OFFICIAL", "ROUTED"];

/**
 * Snapshots that can price a channel now: in force at `at`, and in the bucket (and that bucket's
 * currency) of the channel's current settlement. A price belongs to one bucket: after a settlement
 * change the old bucket's snapshots price nothing (the channel is unpriced until setPrice), so a
 * USD number is never charged from the CNY bucket.
 */
export function pricedNowWhere(at: Date): Prisma.PriceSnapshotWhereInput {
  return {
    validFrom: { lte: at },
    OR: SETTLEMENTS.map((settlement) => ({ channel: { settlement }, bucket: bucketOf(settlement), currency: BUCKET_CURRENCY[bucketOf(settlement)] })),
  };
}
/** Latest first: the first snapshot of pricedNowWhere is the one in force. */
export const PRICE_ORDER: Prisma.PriceSnapshotOrderByWithRelationInput[] = [{ validFrom: "desc" }, { createdAt: "desc" }];

/** The snapshot in force at `at` in the channel's current bucket (latest validFrom ≤ at), or null when the channel is unpriced. */
export async function currentPrice(channelId: string, at = new Date()): Promise<PriceSnapshot | null> {
  return db.priceSnapshot.findFirst({ where: { channelId, ...pricedNowWhere(at) }, orderBy: PRICE_ORDER });
}

export interface PlannedChannel {
  channel: Channel;
  price: PriceSnapshot | null;
  bucket: BalanceBucket;
  role: "PRIMARY" | "BACKUP";
}

export interface RoutePlan {
  route: Route;
  /** Enabled channels by priority, with their current price. */
  channels: PlannedChannel[];
}

/** The route for a catalog model in an organization, with its enabled channels in order. */
export async function planRoute(organizationId: string, model: string, at = new Date()): Promise<RoutePlan | null> {
  const route = await db.route.findUnique({
    where: { organizationId_model: { organizationId, model } },
    include: {
      channels: {
        where: { enabled: true },
        orderBy: [{ priority: "asc" }, { createdAt: "asc" }],
        include: { priceSnapshots: { where: pricedNowWhere(at), orderBy: PRICE_ORDER, take: 1 } },
      },
    },
  });
  if (!route) return null;
  const { channels, ...rest } = route;
  return {
    route: rest,
    channels: channels.map(({ priceSnapshots, ...channel }, i) => ({
      channel,
      price: priceSnapshots[0] ?? null,
      bucket: bucketOf(channel.settlement),
      role: i === 0 ? "PRIMARY" : "BACKUP",
    })),
  };
}
