// Builds the objects tests need through the same domain functions the API uses.
import { createAdminToken, type Viewer } from "../../src/auth/index.ts";
import { postEntry, walletBucket } from "../../src/money/ledger.ts";
import { createProject } from "../../src/budgets/index.ts";
import { createApiKey, type KeyCapsInput } from "../../src/keys/index.ts";
import { ensureDefaultOrganization, ensureOrganization } from "../../src/orgs/index.ts";
import { setPrice, upsertRoute, type ChannelInput } from "../../src/routing/index.ts";
import { parseMoney } from "../../src/money/amounts.ts";
import { db } from "../../src/db/index.ts";
import type { BalanceBucket } from "../../src/generated/prisma/enums.ts";

// Installs the test services with the credential key the channels below are encrypted with.
import "./services.ts";

let counter = 0;
const unique = (name: string) => `${name}-${++counter}-${Math.random().toString(36).slice(2, 6)}`;

export async function platformViewer(): Promise<Viewer> {
  const { id } = await createAdminToken({ name: unique("platform"), role: "PLATFORM_ADMIN" });
  return { tokenId: id, role: "PLATFORM_ADMIN", organizationId: null, projectId: null, label: "test platform admin" };
}

export async function organization(name = unique("org")) {
  return name === "default" ? ensureDefaultOrganization() : ensureOrganization(name);
}

export async function topUp(organizationId: string, bucket: BalanceBucket, amount: string) {
  const b = await walletBucket(organizationId, bucket);
  return postEntry({ bucketId: b.id, kind: "TOPUP", amount: parseMoney(amount, "amount"), idempotencyKey: unique("topup") });
}

export async function project(viewer: Viewer, organizationId: string, caps: { dailyCap?: string; monthlyCap?: string; bucket?: BalanceBucket } = {}) {
  return createProject(viewer, { organizationId, name: unique("project"), ...caps });
}

export async function apiKey(viewer: Viewer, projectId: string, input: KeyCapsInput = {}) {
  return createApiKey(viewer, { projectId, name: unique("key"), ...input });
}

export async function route(
  viewer: Viewer,
  organizationId: string,
  model: string,
  channels: Array<ChannelInput & { price?: [string, string] }>,
  extra: { dailyCap?: string; defaultMaxTokens?: number } = {},
) {
  const created = await upsertRoute(viewer, { organizationId, model, channels, ...extra });
  const stored = await db.channel.findMany({ where: { routeId: created.id }, orderBy: { priority: "asc" } });
  for (const c of channels) {
    if (!c.price) continue;
    const ch = stored.find((s) => s.name === c.name)!;
    await setPrice(viewer, { channelId: ch.id, inputPerMillion: c.price[0], outputPerMillion: c.price[1] });
  }
  return { route: created, channels: stored };
}

/** An organization with a project, a funded CREDIT bucket and a key: the common starting point. */
export async function world(options: { credit?: string; routed?: string; key?: KeyCapsInput; project?: { dailyCap?: string; monthlyCap?: string } } = {}) {
  const viewer = await platformViewer();
  const org = await organization();
  if (options.credit !== "0") await topUp(org.id, "CREDIT", options.credit ?? "100");
  if (options.routed) await topUp(org.id, "ROUTED", options.routed);
  const proj = await project(viewer, org.id, options.project);
  const key = await apiKey(viewer, proj.id, options.key);
  return { viewer, org, project: proj, key: key.apiKey, secret: key.secret };
}
