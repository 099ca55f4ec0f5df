// The stored form of attempt paths (src/requests/attempts.ts): what is written, what is read back.
import { describe, expect, it } from "vitest";
import { MAX_ATTEMPT_PATH, readPath, statusCause, stepCharged, storedPath, type AttemptStep } from "../src/requests/attempts.ts";
import { MAX_RETRY_CEILING } from "../src/keys/index.ts";

const stepOf = (i: number): AttemptStep => ({ channelId: `c${i}`, role: i === 0 ? "PRIMARY" : "BACKUP", status: 503, cause: "UPSTREAM_5XX", latencyMs: i });

describe("attempt paths", () => {
  it("are stored with their fields only, and bounded above what a request can make", () => {
    expect(1 + MAX_RETRY_CEILING).toBeLessThanOrEqual(MAX_ATTEMPT_PATH);
    expect(storedPath(undefined)).toEqual([]);
    expect(storedPath([{ ...stepOf(0), channelName: "primary", upstreamModel: "m" } as AttemptStep])).toEqual([stepOf(0)]);
    const long = Array.from({ length: MAX_ATTEMPT_PATH + 3 }, (_, i) => stepOf(i));
    const kept = storedPath(long);
    expect(kept).toHaveLength(MAX_ATTEMPT_PATH);
    // The last steps are kept: the answer or the final failure.
    expect(kept.at(-1)).toEqual(long.at(-1));
  });

  it("read back leaving out what is malformed, never failing the read", () => {
    expect(readPath(null)).toEqual([]);
    expect(readPath({ not: "an array" })).toEqual([]);
    const good = stepOf(1);
    expect(readPath([good, { ...good, cause: "SOMETHING_ELSE" }, { ...good, role: "x" }, { ...good, status: "503" }, { ...good, latencyMs: 1.5 }, 7, null, { ...good, status: null }])).toEqual([
      good,
      { ...good, status: null },
    ]);
  });

  it("charge only the last step, and only a charge above 0", () => {
    expect([0, 1, 2].map((i) => stepCharged(i, 3, 5n))).toEqual([false, false, true]);
    expect(stepCharged(0, 1, 0n)).toBe(false);
  });

  it("name the cause a status says", () => {
    expect([500, 503, 429, 401, 403, 404, 408, 400, 422, 200].map(statusCause)).toEqual([
      "UPSTREAM_5XX",
      "UPSTREAM_5XX",
      "RATE_LIMITED",
      "UPSTREAM_AUTH",
      "UPSTREAM_AUTH",
      "UPSTREAM_NOT_FOUND",
      "TIMEOUT",
      "REJECTED",
      "REJECTED",
      "BAD_RESPONSE",
    ]);
  });
});
