// Every amount the gateway holds or charges is decided by src/money/charges.ts: worst case,
// the fallback's hold, the usage charge capped at the hold, and the failed-request policy.
import { describe, expect, it } from "vitest";
import { capAtHold, failedRequestCharge, holdable, holdCovers, usageCharge, worstCase } from "../src/money/charges.ts";
import { MAX_AMOUNT_MICROS } from "../src/money/amounts.ts";

// 2.5 per million input tokens, 10.333333 per million output tokens (micro-units).
const PRICE = { inputPerMillion: 2_500_000n, outputPerMillion: 10_333_333n };

describe("charges", () => {
  it("the worst case prices every bound token, each kind rounded up", () => {
    // ceil(1000 × 2.5) + ceil(50 × 10.333333) = 2500 + 517
    expect(worstCase(PRICE, 1000, 50)).toBe(3017n);
    expect(worstCase(PRICE, 0, 0)).toBe(0n);
    expect(holdable(MAX_AMOUNT_MICROS)).toBe(true);
    expect(holdable(MAX_AMOUNT_MICROS + 1n)).toBe(false);
  });

  it("a hold serves only the channel it was admitted for, while it covers the worst case", () => {
    const hold = { channelId: "a", amount: 500n };
    expect(holdCovers(hold, "a", 500n)).toBe(true);
    expect(holdCovers(hold, "a", 501n)).toBe(false);
    // A fallback to another channel is admitted anew (that channel's own cap), even in the same bucket.
    expect(holdCovers(hold, "b", 1n)).toBe(false);
    expect(holdCovers(null, "a", 0n)).toBe(false);
  });

  it("usage is charged at most what was held, and says what it would have cost", () => {
    expect(usageCharge(PRICE, { promptTokens: 7, completionTokens: 3 }, 1_000n)).toEqual({ charge: 18n + 31n, full: 18n + 31n });
    expect(usageCharge(PRICE, { promptTokens: 3_000_000, completionTokens: 0 }, 1_000n)).toEqual({ charge: 1_000n, full: 7_500_000n });
    expect(capAtHold(-5n, 10n)).toBe(0n);
  });

  it("a failed request is charged by the key's policy, CLIENT_CLOSED always at full usage, never without usage, price or hold", () => {
    const usage = { promptTokens: 100, completionTokens: 10 };
    expect(failedRequestCharge("UPSTREAM_ERROR", "NEVER", usage, PRICE, 10_000n)).toBe(0n);
    expect(failedRequestCharge("UPSTREAM_ERROR", null, usage, PRICE, 10_000n)).toBe(0n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "PROMPT_TOKENS", usage, PRICE, 10_000n)).toBe(250n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "FULL_USAGE", usage, PRICE, 10_000n)).toBe(250n + 104n);
    expect(failedRequestCharge("CLIENT_CLOSED", "NEVER", usage, PRICE, 10_000n)).toBe(250n + 104n);
    expect(failedRequestCharge("CLIENT_CLOSED", "NEVER", usage, PRICE, 300n)).toBe(300n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "FULL_USAGE", null, PRICE, 10_000n)).toBe(0n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "FULL_USAGE", usage, null, 10_000n)).toBe(0n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "FULL_USAGE", usage, PRICE, null)).toBe(0n);
  });

  it("an answer the upstream billed but the gateway could not deliver (too large) is charged at full usage whatever the policy, capped at the hold", () => {
    const usage = { promptTokens: 100, completionTokens: 10 };
    expect(failedRequestCharge("UPSTREAM_ERROR", "NEVER", usage, PRICE, 10_000n, true)).toBe(250n + 104n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "PROMPT_TOKENS", usage, PRICE, 10_000n, true)).toBe(250n + 104n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "NEVER", usage, PRICE, 300n, true)).toBe(300n);
    expect(failedRequestCharge("UPSTREAM_ERROR", "NEVER", null, PRICE, 10_000n, true)).toBe(0n);
  });
});
