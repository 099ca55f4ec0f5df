// The organization's time zone: every day and month window (caps, spend today, budget alerts,
// export days, series) follows it. How a change takes effect: src/money/windows.ts.
import { db } from "../db/index.ts";
import type { Organization } from "../generated/prisma/client.ts";
import { UTC_ZONE, zoneChangePendingUntil, type ZoneState } from "../money/windows.ts";
import { checkTimeZone } from "../analytics/zones.ts";
import { writeAudit } from "../audit/index.ts";
import { assertCanWrite, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import { conflict, notFound } from "../errors.ts";
import { SingleFlight } from "../single-flight.ts";

/** How long an instance answers an organization's zone from memory: far below ZONE_CHANGE_MARGIN_MS, which a change waits out. */
const ZONE_CACHE_MS = 5_000;
const zones = new Map<string, { zone: ZoneState; until: number }>();
const zoneReads = new SingleFlight<string, ZoneState>();

export const zoneOf = (org: Pick<Organization, "timeZone" | "previousTimeZone" | "timeZoneChangedAt">): ZoneState => ({
  timeZone: org.timeZone,
  previousTimeZone: org.previousTimeZone,
  timeZoneChangedAt: org.timeZoneChangedAt,
});

/** Zone states of many organizations in one statement (GraphQL reads them once per operation; unknown ids: UTC). */
export async function organizationZones(organizationIds: readonly string[]): Promise<ZoneState[]> {
  const rows = await db.organization.findMany({ where: { id: { in: [...new Set(organizationIds)] } }, select: { id: true, timeZone: true, previousTimeZone: true, timeZoneChangedAt: true } });
  const byId = new Map(rows.map((r) => [r.id, zoneOf(r)]));
  return organizationIds.map((id) => byId.get(id) ?? UTC_ZONE);
}

/** The organization's zone state, what every day and month window is computed from (src/money/windows.ts). */
export async function organizationZone(organizationId: string): Promise<ZoneState> {
  const hit = zones.get(organizationId);
  if (hit && hit.until > Date.now()) return hit.zone;
  return zoneReads.run(
    organizationId,
    async () => {
      const org = await db.organization.findUnique({ where: { id: organizationId }, select: { timeZone: true, previousTimeZone: true, timeZoneChangedAt: true } });
      return org ? zoneOf(org) : UTC_ZONE;
    },
    (zone) => {
      if (zones.size > 10_000) zones.clear();
      zones.set(organizationId, { zone, until: Date.now() + ZONE_CACHE_MS });
    },
  );
}

/** The organization's time zone name: what spend series and exports follow when a request names none. */
export async function organizationTimeZone(organizationId: string): Promise<string> {
  return (await organizationZone(organizationId)).timeZone;
}

/**
 * Sets the organization's IANA zone (audited). Windows already open run on to the new zone's next
 * boundary (see src/money/windows.ts), so the change is complete at `zoneChangePendingUntil`;
 * another change before then is refused (CONFLICT), the same zone is a no-op.
 */
export async function setOrganizationTimeZone(viewer: Viewer, input: { organizationId: string | null; timeZone: string }, now = new Date()): Promise<Organization> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId);
  assertCanWrite(viewer, organizationId);
  const timeZone = checkTimeZone(input.timeZone);
  const updated = await db.$transaction(async (tx) => {
    // The row lock orders concurrent changes: the second sees the first's pending transition.
    await tx.$queryRaw`SELECT id FROM "Organization" WHERE id = ${organizationId} FOR UPDATE`;
    const org = await tx.organization.findUnique({ where: { id: organizationId } });
    if (!org) throw notFound("organization", organizationId);
    if (org.timeZone === timeZone) return org;
    const pending = zoneChangePendingUntil(zoneOf(org), now);
    if (pending) {
      throw conflict(
        `the change from ${org.previousTimeZone} to ${org.timeZone} is still taking effect: its day and month windows run until ${pending.toISOString()}; change the zone again after that`,
      );
    }
    const next = await tx.organization.update({ where: { id: organizationId }, data: { timeZone, previousTimeZone: org.timeZone, timeZoneChangedAt: now } });
    await writeAudit(tx, viewer, {
      organizationId,
      action: "setOrganizationTimeZone",
      targetType: "Organization",
      targetId: organizationId,
      before: { timeZone: org.timeZone },
      after: { timeZone, changedAt: now, completeAt: zoneChangePendingUntil(zoneOf(next), now) },
    });
    return next;
  });
  zones.delete(organizationId);
  return updated;
}
