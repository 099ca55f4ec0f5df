// Quotes (issue 17, point 2): a dry run of admission. For a key, a model and a request (its body,
// or token counts) it says which channel and bucket would serve it, at which price snapshot, its
// worst-case and expected charge, the limit that binds and the headroom left, and whether it would
// be admitted now with the code the gateway would answer (src/keys/plan.ts judges, by the
// gateway's rules). Nothing is reserved.
//
// A quote is stored for QUOTE_TTL_MS (5 minutes) with the price snapshot of every channel the
// request may be served by. A /v1 request of the same key and model that carries its id in the
// `x-tokengate-quote` header before it expires is priced with those snapshots, on every instance
// (they read the row), even if setPrice ran in between: its hold and its charge use the same
// price, and its receipt names the snapshot. An unknown, expired, other key's or other model's quote
// is refused (4xx), never silently priced otherwise.
import { db } from "../db/index.ts";
import type { ApiKey, PriceSnapshot, Quote } from "../generated/prisma/client.ts";
import { assertCanWrite, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { badInput } from "../errors.ts";
import { worstCase } from "../money/index.ts";
import { classCharge } from "../money/amounts.ts";
import { bucketOf } from "../routing/index.ts";
import { judgeAdmission, keyPlans, readableKey, type AdmissionVerdict, type KeyModelPlan, type PlanChannel } from "../keys/plan.ts";

/** How long a quote's price may be claimed. Long enough to quote and then send; short enough that a price change soon applies to everyone. */
export const QUOTE_TTL_MS = 5 * 60_000;
/** The request header that claims a quote's price. */
export const QUOTE_HEADER = "x-tokengate-quote";

const MAX_TOKENS = 100_000_000;

/** Token bounds of a request, as the gateway's plan stage computes them (prompt with its tokenizer margin, output bound). */
export interface RequestBounds {
  /** The prompt as counted (no margin): what the expected charge uses. */
  promptCounted: number;
  /** What admission reserves for the prompt. */
  promptBound: number;
  outputBound: number;
}

/** Counts a chat completion request body the way the gateway does, for this route and its channels. */
export type BodyBounds = (body: Record<string, unknown>, plan: KeyModelPlan) => Promise<RequestBounds>;

export interface QuoteInput {
  keyId: string;
  model: string;
  /** A chat completion request body (JSON object); its model, if given, must be `model`. */
  body?: Record<string, unknown> | null;
  /** Without a body: the request's prompt and completion tokens (both bounds and expectation). */
  promptTokens?: number | null;
  completionTokens?: number | null;
  runId?: string | null;
}

export interface RequestQuote {
  /** null when no channel could price the request (nothing to claim). */
  id: string | null;
  expiresAt: Date | null;
  keyId: string;
  model: string;
  plan: KeyModelPlan;
  verdict: AdmissionVerdict;
  bounds: RequestBounds;
  /** Completion tokens the expected charge assumes (given, or the output bound). */
  expectedCompletionTokens: number;
  expectedCharge: bigint | null;
  organizationReader: boolean;
}

function tokenCount(value: number | null | undefined, field: string): number | null {
  if (value === null || value === undefined) return null;
  if (!Number.isInteger(value) || value < 0 || value > MAX_TOKENS) throw badInput(field, `must be an integer from 0 to ${MAX_TOKENS}`);
  return value;
}

export async function quoteRequest(viewer: Viewer, input: QuoteInput, bodyBounds: BodyBounds): Promise<RequestQuote> {
  const key = await readableKey(viewer, input.keyId);
  assertCanWrite(viewer, key.organizationId, { what: "API key", id: key.id, projectId: key.projectId });
  const model = input.model.trim();
  if (!model || model.length > 256) throw badInput("model", "must be 1–256 characters");
  const promptTokens = tokenCount(input.promptTokens, "promptTokens");
  const completionTokens = tokenCount(input.completionTokens, "completionTokens");
  const body = input.body ?? null;
  if (body !== null) {
    if (typeof body !== "object" || Array.isArray(body)) throw badInput("body", "must be a JSON object (a chat completion request)");
    if (body.model !== undefined && body.model !== model) throw badInput("body", "its model must be the quoted model");
    if (promptTokens !== null) throw badInput("promptTokens", "give either a body or token counts, not both");
  } else if (promptTokens === null || completionTokens === null) {
    throw badInput(promptTokens === null ? "promptTokens" : "completionTokens", "required without a body (or give the request body)");
  }

  const [plan] = await keyPlans(viewer, key, { model, runId: input.runId });
  const now = new Date();
  const bounds: RequestBounds =
    body !== null && plan!.route ? await bodyBounds({ ...body, model }, plan!) : { promptCounted: promptTokens ?? 0, promptBound: promptTokens ?? 0, outputBound: completionTokens ?? 0 };
  const expectedCompletionTokens = completionTokens ?? bounds.outputBound;
  const verdict = await judgeAdmission(key, plan!, (c) => worstCase(c.price!, bounds.promptBound, bounds.outputBound), bounds.promptBound + bounds.outputBound, now);
  const served = verdict.channel ?? plan!.channels.find((c) => c.tried) ?? null;
  const expectedCharge = served?.price ? classCharge(served.price, { promptTokens: bounds.promptCounted, completionTokens: expectedCompletionTokens }) : null;

  let stored: Quote | null = null;
  if (served?.price) {
    const pinned = plan!.channels.filter((c) => c.tried && c.price).map((c) => c.price!.id);
    const worst = verdict.worstCase ?? worstCase(served.price, bounds.promptBound, bounds.outputBound);
    stored = await db.$transaction(async (tx) => {
      const quote = await tx.quote.create({
        data: {
          organizationId: key.organizationId,
          keyId: key.id,
          model,
          runId: plan!.runId,
          channelId: served.channel.id,
          priceSnapshotId: served.price!.id,
          pinnedSnapshotIds: pinned,
          worstCase: worst,
          expectedCharge: expectedCharge!,
          createdById: viewer.tokenId,
          expiresAt: new Date(now.getTime() + QUOTE_TTL_MS),
        },
      });
      await writeAudit(tx, viewer, { organizationId: key.organizationId, action: "quoteRequest", targetType: "Quote", targetId: quote.id, after: quote });
      return quote;
    });
  }
  return {
    id: stored?.id ?? null,
    expiresAt: stored?.expiresAt ?? null,
    keyId: key.id,
    model,
    plan: plan!,
    verdict: { ...verdict, channel: verdict.channel ?? (verdict.admitted ? null : served) },
    bounds,
    expectedCompletionTokens,
    expectedCharge,
    organizationReader: plan!.organizationReader,
  };
}

/** Why a claimed quote cannot price a request (the gateway answers 4xx with this code). */
export type QuoteProblem = { code: "quote_not_found" | "quote_expired" | "quote_model_mismatch" | "quote_stale"; message: string };

/**
 * The snapshots a quote pins, if `quoteId` may price a request of `key` for `model` now; else the
 * problem. Another key's (or organization's) quote is not found, like an unknown one.
 */
export async function claimQuote(
  quoteId: string,
  key: Pick<ApiKey, "id" | "organizationId">,
  model: string,
  now = new Date(),
): Promise<{ ok: true; snapshots: PriceSnapshot[]; quote: Quote } | { ok: false; problem: QuoteProblem }> {
  const id = quoteId.trim();
  const quote = id.length > 0 && id.length <= 64 ? await db.quote.findUnique({ where: { id } }) : null;
  if (!quote || quote.keyId !== key.id || quote.organizationId !== key.organizationId) {
    return { ok: false, problem: { code: "quote_not_found", message: `Quote '${clipId(id)}' does not exist or was not made for this API key.` } };
  }
  if (quote.expiresAt <= now) return { ok: false, problem: { code: "quote_expired", message: `Quote '${quote.id}' expired at ${quote.expiresAt.toISOString()}; ask for a new one.` } };
  if (quote.model !== model) return { ok: false, problem: { code: "quote_model_mismatch", message: `Quote '${quote.id}' is for model '${quote.model}', not '${clipId(model)}'.` } };
  const snapshots = await db.priceSnapshot.findMany({ where: { id: { in: quote.pinnedSnapshotIds } }, include: { channel: { select: { settlement: true } } } });
  // A channel whose settlement changed since prices from another bucket now: its old price cannot apply.
  const usable = snapshots.filter((s) => s.bucket === bucketOf(s.channel.settlement)).map(({ channel: _channel, ...s }) => s);
  if (!usable.some((s) => s.id === quote.priceSnapshotId)) {
    return { ok: false, problem: { code: "quote_stale", message: `Quote '${quote.id}' priced a channel whose bucket has changed since; ask for a new one.` } };
  }
  return { ok: true, snapshots: usable, quote };
}

const clipId = (text: string) => (text.length > 64 ? `${text.slice(0, 64)}…` : text);

export type { PlanChannel };
