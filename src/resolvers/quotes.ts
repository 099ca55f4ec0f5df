import { builder } from "../schema/builder.ts";
import { badInput } from "../errors.ts";
import { quoteRequest, type BodyBounds } from "../quotes/index.ts";
import { GatewayError } from "../gateway/errors.ts";
import { requestBounds } from "../gateway/pipeline/plan.ts";
import { validateRequest } from "../gateway/validate.ts";
import { RequestQuoteRef } from "../schema/types/quote.ts";
import { viewerOf } from "./viewer.ts";

/**
 * A body is validated and counted by the gateway's own functions (the ones its plan stage runs), so
 * the quote's worst case is the hold the request will take; its refusals are BAD_USER_INPUT here.
 */
const chatBodyBounds: BodyBounds = async (body, plan) => {
  try {
    validateRequest("/v1/chat/completions", body as Parameters<typeof validateRequest>[1], undefined);
    const upstreamModels = plan.channels.filter((c) => c.tried).map((c) => c.channel.upstreamModel);
    return await requestBounds("/v1/chat/completions", body, plan.route!, upstreamModels);
  } catch (error) {
    if (error instanceof GatewayError) throw badInput(error.param ? `body.${error.param}` : "body", error.message);
    throw error;
  }
};

const QuoteRequestInput = builder.inputType("QuoteRequestInput", {
  description: "Either body (a chat completion request) or promptTokens and completionTokens.",
  fields: (t) => ({
    keyId: t.id({ required: true }),
    model: t.string({ required: true, description: "The catalog model (as in the request's model field)." }),
    body: t.field({ type: "JSON", required: false, description: "A chat completion request body (JSON object), counted with the gateway's tokenizer and bounds." }),
    promptTokens: t.int({ required: false, description: "Without a body: the prompt's tokens." }),
    completionTokens: t.int({ required: false, description: "Without a body: the completion's tokens (its bound). With a body: the completion expected (default: the bound)." }),
    runId: t.id({ required: false, description: "A run of this key whose cap applies (as x-run-id)." }),
  }),
});

builder.mutationFields((t) => ({
  quoteRequest: t.field({
    type: RequestQuoteRef,
    description:
      "A dry run of a request's admission (nothing is reserved): channel, bucket, price snapshot, worst-case and expected charge, the binding limit and the headroom, and the gateway's answer now. The quote is kept for 5 minutes: a request sent with header x-tokengate-quote: <id> is charged at its price.",
    args: { input: t.arg({ type: QuoteRequestInput, required: true }) },
    resolve: (_root, { input }, ctx) => {
      const body = input.body ?? null;
      if (body !== null && (typeof body !== "object" || Array.isArray(body))) throw badInput("body", "must be a JSON object (a chat completion request)");
      return quoteRequest(
        viewerOf(ctx),
        {
          keyId: String(input.keyId),
          model: input.model,
          body: body as Record<string, unknown> | null,
          promptTokens: input.promptTokens,
          completionTokens: input.completionTokens,
          runId: input.runId ? String(input.runId) : null,
        },
        chatBodyBounds,
      );
    },
  }),
}));
