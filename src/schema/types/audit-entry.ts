import { builder } from "../builder.ts";
import { NodeRef } from "./node.ts";
import { listOrder } from "./common.ts";
import type { Prisma } from "../../generated/prisma/client.ts";
import { AUDIT_ACTIONS, AUDIT_TARGET_TYPES, type AuditAction, type AuditTargetType } from "../../audit/index.ts";

export const AuditActionEnum = builder.enumType("AuditAction", {
  description: "What an audit entry records: the name of the admin mutation that wrote it.",
  values: AUDIT_ACTIONS,
});

export const AuditTargetTypeEnum = builder.enumType("AuditTargetType", {
  description: "The kind of object targetId names (WalletBucket: a WalletBalance).",
  values: AUDIT_TARGET_TYPES,
});

export const AuditEntryRef = builder.prismaObject("AuditEntry", {
  interfaces: [NodeRef],
  description: "One admin mutation: who did what to which object, with the state before and after.",
  authScopes: (a) => ({ owns: { organizationId: a.organizationId } }),
  fields: (t) => ({
    id: t.exposeID("id"),
    actor: t.exposeString("actor"),
    action: t.field({ type: AuditActionEnum, resolve: (a) => a.action as AuditAction }),
    targetType: t.field({ type: AuditTargetTypeEnum, resolve: (a) => a.targetType as AuditTargetType }),
    targetId: t.exposeString("targetId"),
    before: t.expose("before", { type: "JSON", nullable: true }),
    after: t.expose("after", { type: "JSON", nullable: true }),
    createdAt: t.expose("createdAt", { type: "DateTime" }),
  }),
});

export const AuditEntryOrder = listOrder<Prisma.AuditEntryOrderByWithRelationInput>()("AuditEntry", { CREATED_AT: (d) => ({ createdAt: d }) }, (d) => [{ id: d }], {
  field: "CREATED_AT",
  direction: "DESC",
});
export const AuditEntryConnection = builder.connectionObject({ type: AuditEntryRef, name: "AuditEntryConnection" }, { name: "AuditEntryEdge" });
