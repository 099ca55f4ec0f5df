import { builder } from "../schema/builder.ts";
import { db } from "../db/index.ts";
import { canReadOrganization, resolveOrganizationId } from "../auth/index.ts";
import { forbidden } from "../errors.ts";
import { setAlertWebhook } from "../webhooks/index.ts";
import type { AlertWebhook } from "../generated/prisma/client.ts";
import { AlertWebhookRef } from "../schema/types/alert-webhook.ts";
import { viewerOf } from "./viewer.ts";

const SetAlertWebhookInput = builder.inputType("SetAlertWebhookInput", {
  fields: (t) => ({
    organizationId: t.id({ required: false, description: "Default: the token's organization (or the default one)." }),
    url: t.string({ required: true, description: "http or https URL that receives every budgetAlert as a signed JSON POST." }),
    secret: t.string({ required: false, description: "HMAC-SHA256 key for x-tokengate-signature (16–200 characters). Omitted: one is generated and returned once." }),
  }),
});

const SetAlertWebhookPayload = builder.objectRef<{ webhook: AlertWebhook; generatedSecret: string | null }>("SetAlertWebhookPayload").implement({
  fields: (t) => ({
    alertWebhook: t.field({ type: AlertWebhookRef, resolve: (p) => p.webhook }),
    generatedSecret: t.string({ nullable: true, description: "The generated secret when none was given: shown once, stored encrypted.", resolve: (p) => p.generatedSecret }),
  }),
});

builder.queryFields((t) => ({
  alertWebhook: t.prismaField({
    type: "AlertWebhook",
    nullable: true,
    description: "The organization's alert webhook and its delivery attempts (null when none is set).",
    args: { organizationId: t.arg.id({ required: false }) },
    resolve: async (query, _root, args, ctx) => {
      const viewer = viewerOf(ctx);
      const organizationId = await resolveOrganizationId(viewer, args.organizationId ? String(args.organizationId) : null);
      if (!canReadOrganization(viewer, organizationId)) throw forbidden();
      return db.alertWebhook.findUnique({ ...query, where: { organizationId } });
    },
  }),
}));

builder.mutationFields((t) => ({
  setAlertWebhook: t.field({
    type: SetAlertWebhookPayload,
    description: "Registers (or replaces) the organization's budget alert webhook. Audited.",
    args: { input: t.arg({ type: SetAlertWebhookInput, required: true }) },
    resolve: (_root, { input }, ctx) => setAlertWebhook(viewerOf(ctx), { organizationId: input.organizationId ? String(input.organizationId) : null, url: input.url, secret: input.secret }),
  }),
}));
