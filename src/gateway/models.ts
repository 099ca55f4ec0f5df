// GET /v1/models and /v1/models/{id}: only the models this key may call (allowed models, a
// usable and priced channel), each with the price of the channel that would serve it first.
import type { ApiKey } from "../generated/prisma/client.ts";
import { formatMoney } from "../money/amounts.ts";
import type { RoutePlan } from "../routing/index.ts";
import { modelAllowed, usableChannels, type Lookups } from "./lookups.ts";

/**
 * A channel's price per million tokens as decimal strings in its bucket's currency, every token
 * class at the price it is charged (a class the snapshot does not price apart shows the input, or
 * for audio output the output, price).
 */
export interface ModelPricing {
  bucket: string;
  currency: string;
  input_per_million: string;
  output_per_million: string;
  cached_input_per_million: string;
  cache_write_per_million: string;
  audio_input_per_million: string;
  audio_output_per_million: string;
}

export interface ModelEntry {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
  pricing: ModelPricing;
  /** Usable channels after the first (fallbacks), with their prices. */
  fallbacks: ModelPricing[];
  default_max_tokens: number;
}

function entry(plan: RoutePlan, key: ApiKey): ModelEntry | null {
  if (!modelAllowed(key, plan.route.model)) return null;
  const priced = usableChannels(plan, key).filter((c) => c.price);
  const first = priced[0];
  if (!first) return null;
  const price = (c: (typeof priced)[number]): ModelPricing => {
    const p = c.price!;
    return {
      bucket: c.bucket,
      currency: p.currency,
      input_per_million: formatMoney(p.inputPerMillion),
      output_per_million: formatMoney(p.outputPerMillion),
      cached_input_per_million: formatMoney(p.cachedInputPerMillion ?? p.inputPerMillion),
      cache_write_per_million: formatMoney(p.cacheWritePerMillion ?? p.inputPerMillion),
      audio_input_per_million: formatMoney(p.audioInputPerMillion ?? p.inputPerMillion),
      audio_output_per_million: formatMoney(p.audioOutputPerMillion ?? p.outputPerMillion),
    };
  };
  return {
    id: plan.route.model,
    object: "model",
    created: Math.floor(plan.route.createdAt.getTime() / 1000),
    owned_by: "tokengate",
    pricing: price(first),
    fallbacks: priced.slice(1).map(price),
    default_max_tokens: plan.route.defaultMaxTokens,
  };
}

export async function listModels(lookups: Lookups, key: ApiKey): Promise<{ object: "list"; data: ModelEntry[] }> {
  const plans = await lookups.allPlans(key.organizationId);
  return { object: "list", data: plans.map((p) => entry(p, key)).filter((e): e is ModelEntry => e !== null) };
}

export async function findModel(lookups: Lookups, key: ApiKey, model: string): Promise<ModelEntry | null> {
  const plan = await lookups.plan(key.organizationId, model);
  return plan ? entry(plan, key) : null;
}
