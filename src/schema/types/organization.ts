import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { ProjectConnection, ProjectOrder } from "./project.ts";
import { zoneChangePendingUntil } from "../../money/windows.ts";

interface TimeZoneChange {
  from: string;
  to: string;
  changedAt: Date;
  completeAt: Date;
}

const TimeZoneChangeRef = builder.objectRef<TimeZoneChange>("TimeZoneChange").implement({
  description:
    "A change of the organization's zone taking effect: the day and month windows open at changedAt (+10 min for instances to hear of it) run on in the old zone to the new zone's next boundary; from completeAt every window is the new zone's.",
  fields: (t) => ({
    from: t.exposeString("from"),
    to: t.exposeString("to"),
    changedAt: t.expose("changedAt", { type: "DateTime" }),
    completeAt: t.expose("completeAt", { type: "DateTime", description: "When the last old-zone window (day or month) ends; another change is refused (CONFLICT) until then." }),
  }),
});

builder.prismaObject("Organization", {
  interfaces: [NodeRef],
  authScopes: (org) => ({ owns: { organizationId: org.id } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    name: t.exposeString("name"),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
    timeZone: t.exposeString("timeZone", {
      description:
        "IANA zone of every day and month window: caps, spendToday, budget alerts, CSV export days (bare dates) and spend series (default). UTC until setOrganizationTimeZone. Windows open at a change run on to the new zone's next boundary.",
    }),
    timeZoneChange: t.field({
      type: TimeZoneChangeRef,
      nullable: true,
      description: "The last zone change while it is still taking effect (its old-zone windows still running); null otherwise.",
      select: { previousTimeZone: true, timeZoneChangedAt: true, timeZone: true },
      resolve: (org) => {
        const completeAt = zoneChangePendingUntil(org, new Date());
        return completeAt && org.previousTimeZone && org.timeZoneChangedAt ? { from: org.previousTimeZone, to: org.timeZone, changedAt: org.timeZoneChangedAt, completeAt } : null;
      },
    }),
    projects: t.relatedConnection(
      "projects",
      {
        cursor: "id",
        totalCount: true,
        args: { orderBy: t.arg({ type: ProjectOrder.Input, required: false, description: ProjectOrder.description }) },
        query: (args) => ({ orderBy: ProjectOrder.orderBy(args.orderBy) }),
      },
      ProjectConnection,
    ),
  }),
});
