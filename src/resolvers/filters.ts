// Shared list arguments (by key, project, route, run, model, time range) and the tenancy-scoped where they build.
import type { InputFieldRef } from "@pothos/core";
import { builder } from "../schema/builder.ts";
import { isPlatform, tenancyWhere, type Viewer } from "../auth/index.ts";
import { badInput, forbidden } from "../errors.ts";

export const RequestFilter = builder.inputType("RequestFilter", {
  description: "Narrows receipts and failed requests. All given conditions must hold.",
  fields: (t) => ({
    keyId: t.id({ required: false }),
    projectId: t.id({ required: false }),
    routeId: t.id({ required: false }),
    runId: t.id({ required: false }),
    model: t.string({ required: false, description: "The requested (catalog) model." }),
    requestId: t.string({ required: false, description: "The x-request-id of one request." }),
    from: t.field({ type: "DateTime", required: false, description: "Inclusive." }),
    to: t.field({ type: "DateTime", required: false, description: "Exclusive." }),
  }),
});

export interface RequestFilterInput {
  keyId?: string | number | null;
  projectId?: string | number | null;
  routeId?: string | number | null;
  runId?: string | number | null;
  model?: string | null;
  requestId?: string | null;
  from?: Date | null;
  to?: Date | null;
}

export function timeRange(from?: Date | null, to?: Date | null): { gte?: Date; lt?: Date } | undefined {
  if (from && to && from >= to) throw badInput("to", "must be after from");
  if (!from && !to) return undefined;
  return { ...(from ? { gte: from } : {}), ...(to ? { lt: to } : {}) };
}

/** where for Receipt / FailedRequest lists: the filter AND what the viewer may see. */
export function requestWhere(viewer: Viewer, filter: RequestFilterInput | null | undefined) {
  return { AND: [tenancyWhere(viewer), requestFilterWhere(filter)] };
}

/** The filter alone: for lists under an object the viewer already reads (ApiKey.receipts, ...). */
export function requestFilterWhere(filter: RequestFilterInput | null | undefined) {
  const f = filter ?? {};
  return {
    ...(f.keyId ? { keyId: String(f.keyId) } : {}),
    ...(f.projectId ? { projectId: String(f.projectId) } : {}),
    ...(f.routeId ? { routeId: String(f.routeId) } : {}),
    ...(f.runId ? { runId: String(f.runId) } : {}),
    ...(f.model ? { requestedModel: f.model } : {}),
    ...(f.requestId ? { requestId: f.requestId } : {}),
    ...(timeRange(f.from, f.to) ? { createdAt: timeRange(f.from, f.to) } : {}),
  };
}

export type { InputFieldRef };

export interface LedgerArgs {
  bucket?: "CREDIT" | "ROUTED" | null;
  kind?: string | null;
  from?: Date | null;
  to?: Date | null;
  organizationId?: string | number | null;
  keyId?: string | number | null;
  projectId?: string | number | null;
  routeId?: string | number | null;
  runId?: string | number | null;
  model?: string | null;
}

/** The root ledgerEntries filter (and ApiKey.ledgerEntries, with its key): tenancy-scoped; project viewers cannot read the ledger. */
export function ledgerWhere(viewer: Viewer, args: LedgerArgs) {
  if (viewer.role === "PROJECT_VIEWER") throw forbidden("project viewers cannot read the wallet ledger");
  const range = timeRange(args.from, args.to);
  // Charges belong to a key, project and route through their receipt or failed request (and, on the
  // retired hold path, their hold); top-ups and adjustments to none.
  const owner = {
    ...(args.keyId ? { keyId: String(args.keyId) } : {}),
    ...(args.projectId ? { projectId: String(args.projectId) } : {}),
    ...(args.routeId ? { routeId: String(args.routeId) } : {}),
    ...(args.runId ? { runId: String(args.runId) } : {}),
  };
  const and = [
    ...(Object.keys(owner).length ? [{ OR: [{ hold: owner }, { receipt: owner }, { failedRequest: owner }] }] : []),
    ...(args.model ? [{ OR: [{ receipt: { requestedModel: args.model } }, { failedRequest: { requestedModel: args.model } }] }] : []),
  ];
  return {
    ...(and.length ? { AND: and } : {}),
    ...(isPlatform(viewer) ? (args.organizationId ? { organizationId: String(args.organizationId) } : {}) : { organizationId: tenancyWhere(viewer).organizationId }),
    ...(args.bucket ? { bucket: { bucket: args.bucket } } : {}),
    ...(args.kind ? { kind: args.kind as "TOPUP" } : {}),
    ...(range ? { createdAt: range } : {}),
  };
}
