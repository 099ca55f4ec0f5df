// A quote (quoteRequest): a dry run of admission, stored for QUOTE_TTL_MS so a request carrying its
// id (header x-tokengate-quote) is charged at the quoted price. See src/quotes.
import { builder } from "../builder.ts";
import { BalanceBucket, CapScope } from "../../generated/prisma/enums.ts";
import { MoneyRef, moneyOrNull } from "./common.ts";
import { KeyModelPlanRef, PlanChannelRef, PlanLimitRef, PlanPriceRef, shownLimits } from "./key-plan.ts";
import { limitsFor, type Refusal } from "../../keys/plan.ts";
import type { RequestQuote } from "../../quotes/index.ts";

export const QuoteRefusalRef = builder.objectRef<Refusal>("QuoteRefusal").implement({
  description: "What the gateway would answer the request now: the same OpenAI error code and HTTP status.",
  fields: (t) => ({
    code: t.exposeString("code", { description: "e.g. budget_exceeded, insufficient_balance, key_paused, model_not_allowed, run_paused, price_unknown." }),
    httpStatus: t.exposeInt("httpStatus"),
    message: t.exposeString("message"),
    capScope: t.field({ type: CapScope, nullable: true, description: "For budget_exceeded: the cap that refuses.", resolve: (r) => r.capScope }),
  }),
});

export const RequestQuoteRef = builder.objectRef<RequestQuote>("RequestQuote").implement({
  description:
    "A dry run of a request's admission. Nothing is reserved. While it is valid (expiresAt), a /v1 request of the same key and model with header `x-tokengate-quote: <id>` is priced with the snapshots quoted here (every channel it may be served by), whatever setPrice did since; its receipt names that snapshot.",
  fields: (t) => {
    const bucketOf = (q: RequestQuote) => q.verdict.channel?.bucket ?? null;
    const money = (pick: (q: RequestQuote) => bigint | null) => (q: RequestQuote) => {
      const bucket = bucketOf(q);
      return bucket ? moneyOrNull(pick(q), bucket) : null;
    };
    return {
      id: t.id({ nullable: true, description: "Send it as header x-tokengate-quote; null when no channel could price the request (nothing to claim).", resolve: (q) => q.id }),
      expiresAt: t.field({ type: "DateTime", nullable: true, description: "5 minutes after the quote was made.", resolve: (q) => q.expiresAt }),
      keyId: t.id({ resolve: (q) => q.keyId }),
      model: t.exposeString("model"),
      admitted: t.boolean({ description: "Whether the request would be admitted now (no reservation is made: another request may take the headroom first).", resolve: (q) => q.verdict.admitted }),
      refusal: t.field({ type: QuoteRefusalRef, nullable: true, resolve: (q) => q.verdict.refusal }),
      channel: t.field({
        type: PlanChannelRef,
        nullable: true,
        description: "The channel that would serve it (when refused on a cap: the channel it was refused on).",
        resolve: (q) => (q.verdict.channel ? { channel: q.verdict.channel, organizationReader: q.organizationReader } : null),
      }),
      bucket: t.field({ type: BalanceBucket, nullable: true, description: "The bucket that would pay.", resolve: bucketOf }),
      price: t.field({ type: PlanPriceRef, nullable: true, description: "The price snapshot it would be charged at.", resolve: (q) => q.verdict.channel?.price ?? null }),
      promptTokens: t.int({ description: "The prompt as counted (or given).", resolve: (q) => q.bounds.promptCounted }),
      promptTokensReserved: t.int({ description: "Prompt tokens the worst case reserves (the count with the tokenizer margin the gateway applies).", resolve: (q) => q.bounds.promptBound }),
      completionTokensReserved: t.int({ description: "Output tokens the worst case reserves (max_tokens, or the route's default).", resolve: (q) => q.bounds.outputBound }),
      expectedCompletionTokens: t.int({ description: "Completion tokens the expected charge assumes (given, else the reserved bound).", resolve: (q) => q.expectedCompletionTokens }),
      worstCase: t.field({ type: MoneyRef, nullable: true, description: "What admission holds for it: the most it can be charged.", resolve: money((q) => q.verdict.worstCase) }),
      expectedCharge: t.field({
        type: MoneyRef,
        nullable: true,
        description: "Its charge if the upstream reports promptTokens and expectedCompletionTokens.",
        resolve: money((q) => q.expectedCharge),
      }),
      bindingLimit: t.field({
        type: PlanLimitRef,
        nullable: true,
        description: "The limit with the least room (the refusing one when refused); null when nothing caps it.",
        resolve: (q) => (q.verdict.binding ? { limit: q.verdict.binding, organizationReader: q.organizationReader } : null),
      }),
      headroom: t.field({
        type: MoneyRef,
        nullable: true,
        description: "bindingLimit.remaining − worstCase: what is left after this request (negative: by how much it does not fit).",
        resolve: money((q) => q.verdict.headroom),
      }),
      skippedChannels: t.field({
        type: [PlanChannelRef],
        description: "Channels passed over because their own daily cap (CHANNEL_DAILY) refuses.",
        resolve: (q) => q.verdict.skippedChannels.map((channel) => ({ channel, organizationReader: q.organizationReader })),
      }),
      limits: t.field({
        type: [PlanLimitRef],
        description: "The limits it is held against on its channel, in the order admission checks them.",
        resolve: (q) => (q.verdict.channel ? shownLimits(limitsFor(q.plan.limits, q.plan, q.verdict.channel), q.organizationReader) : []),
      }),
      plan: t.field({ type: KeyModelPlanRef, description: "The key's whole plan for the model, as priced by this quote.", resolve: (q) => q.plan }),
    };
  },
});
