// retry-after of a sliding-window limit: waiting that long is always enough (and never a full
// extra window more than needed).
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { WINDOW_MS, windowRetryMs } from "../src/gateway/rate-limit.ts";

/** The count the limiter sees `waitMs` after a refusal at `elapsedMs` into the current minute, with nothing admitted meanwhile. */
function usedAfter(previous: number, current: number, elapsedMs: number, waitMs: number): number {
  const at = elapsedMs + waitMs;
  if (at < WINDOW_MS) return Math.ceil((previous * (WINDOW_MS - at)) / WINDOW_MS) + current;
  if (at < 2 * WINDOW_MS) return Math.ceil((current * (2 * WINDOW_MS - at)) / WINDOW_MS);
  return 0;
}

describe("windowRetryMs", () => {
  it("examples", () => {
    expect(windowRetryMs(0, 3, 1, 3, 10_000)).toBe(50_000 + 20_000); // into the next minute until a third of this one slid out
    expect(windowRetryMs(3, 0, 1, 3, 0)).toBe(20_000); // until a third of the previous minute slid out
    expect(windowRetryMs(0, 0, 5, 3, 0)).toBe(WINDOW_MS); // a need over the limit never fits
  });

  it("after waiting the returned time the request fits", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 10_000 }),
        fc.integer({ min: 0, max: 10_000 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 0, max: WINDOW_MS - 1 }),
        (previous, current, need, limit, elapsed) => {
          const wait = windowRetryMs(previous, current, need, limit, elapsed);
          expect(wait).toBeGreaterThanOrEqual(0);
          expect(wait).toBeLessThanOrEqual(2 * WINDOW_MS);
          if (need <= limit) expect(usedAfter(previous, current, elapsed, wait) + need).toBeLessThanOrEqual(limit);
        },
      ),
      { seed: 8, numRuns: 2_000 },
    );
  });
});
