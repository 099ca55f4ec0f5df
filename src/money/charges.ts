// What a request may be charged, decided in one place (the gateway's pipeline only carries the
// numbers): its worst case before the upstream call, whether a hold already covers a fallback,
// the charge for its usage (never more than was held), and a failed request's charge under the
// key's failed-request policy. Integers only; rounding is tokenCharge's (src/money/amounts.ts).
import type { FailedChargePolicy, FailureCause } from "../generated/prisma/enums.ts";
import { MAX_AMOUNT_MICROS, classCharge, classChargeBound, requestCharge, tokenCharge, type ClassUsage, type Price } from "./amounts.ts";

/** Token counts a charge is computed from: the totals, and the classes inside them when the upstream reported them. */
export type TokenUsage = ClassUsage;

/**
 * Worst case of a request on a channel: every prompt token it may send and every output token it
 * may get, each at its side's dearest class price (see classChargeBound: a cheaper cached price
 * never lowers a hold; without class prices it is price × tokens as before).
 */
export function worstCase(price: Price, promptBound: number, outputBound: number): bigint {
  return classChargeBound(price, promptBound, outputBound);
}

/** Whether an amount can be held at all (beyond it no balance or cap could cover it: refused as insufficient balance). */
export function holdable(amount: bigint): boolean {
  return amount <= MAX_AMOUNT_MICROS;
}

/**
 * A hold serves an attempt only on the channel it was admitted for (its channel's own cap is one of
 * the caps it is held against): a fallback to another channel is admitted anew, against that
 * channel's limits. On the same channel it serves while it covers the worst case.
 */
export function holdCovers(hold: { channelId: string; amount: bigint } | null, channelId: string, worst: bigint): boolean {
  return hold !== null && hold.channelId === channelId && worst <= hold.amount;
}

/** A charge is capped at what was held: what the hold did not reserve is never taken. */
export function capAtHold(charge: bigint, held: bigint): bigint {
  return charge > held ? held : charge < 0n ? 0n : charge;
}

/**
 * The charge for a completed request's usage, capped at its hold. `full` > `charge` when the
 * upstream used more than the worst case reserved (another tokenizer, an ignored max_tokens,
 * absurd usage): the caps win, and the receipt says so.
 */
export function usageCharge(price: Price, usage: TokenUsage, held: bigint): { charge: bigint; full: bigint } {
  const full = classCharge(price, usage);
  return { charge: capAtHold(full, held), full };
}

/**
 * A failed request's charge. The key's policy governs failures the client did not cause: NEVER 0;
 * PROMPT_TOKENS the prompt at the input price; FULL_USAGE prompt and generated tokens. A client that
 * hangs up after its request reached the upstream is charged what the upstream bills (FULL_USAGE),
 * whatever the policy; so is an answer the upstream completed (and bills) that the gateway could not
 * deliver (`billed`, e.g. one too large to relay). Nothing is charged without usage (no attempt
 * reached the upstream), a price or a hold; never more than the hold. Failures are charged from
 * their totals at the input / output price (their records keep no token classes; a failure's usage
 * is mostly counted here, not reported).
 */
export function failedRequestCharge(cause: FailureCause, policy: FailedChargePolicy | null, usage: TokenUsage | null, price: Price | null, held: bigint | null, billed = false): bigint {
  const applied = cause === "CLIENT_CLOSED" || billed ? "FULL_USAGE" : (policy ?? "NEVER");
  if (!usage || !price || held === null || applied === "NEVER") return 0n;
  const charge = applied === "PROMPT_TOKENS" ? tokenCharge(usage.promptTokens, price.inputPerMillion) : requestCharge(price, usage.promptTokens, usage.completionTokens);
  return capAtHold(charge, held);
}
