import { describe, expect, it } from "vitest";
import { formatMoney, parseMoney, requestCharge, tokenCharge } from "../src/money/amounts.ts";
import { DomainError } from "../src/errors.ts";

describe("money", () => {
  it("parses decimal strings to micro-units exactly", () => {
    expect(parseMoney("0", "x")).toBe(0n);
    expect(parseMoney("1", "x")).toBe(1_000_000n);
    expect(parseMoney("12.5", "x")).toBe(12_500_000n);
    expect(parseMoney("0.000001", "x")).toBe(1n);
    expect(parseMoney("999999.999999", "x")).toBe(999_999_999_999n);
    expect(parseMoney("-2.25", "x", { allowNegative: true })).toBe(-2_250_000n);
  });

  it.each([
    ["-1", /must not be negative/],
    ["abc", /not a decimal/],
    ["1.0000001", /more than 6 decimal/],
    ["1e6", /not a decimal/],
    ["", /not a decimal/],
    ["1000000000001", /too large/],
  ])("refuses %j as BAD_USER_INPUT naming the field", (input, message) => {
    try {
      parseMoney(input, "dailyCap");
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(DomainError);
      expect((error as DomainError).code).toBe("BAD_USER_INPUT");
      expect((error as DomainError).field).toBe("dailyCap");
      expect((error as DomainError).message).toMatch(message);
    }
  });

  it("formats micro-units with six decimals", () => {
    expect(formatMoney(0n)).toBe("0.000000");
    expect(formatMoney(1n)).toBe("0.000001");
    expect(formatMoney(12_500_000n)).toBe("12.500000");
    expect(formatMoney(-2_250_000n)).toBe("-2.250000");
  });

  it("charges ceil(tokens × price per million / 1e6) per token kind", () => {
    // $0.15 / M input: 1 token costs 0.15 micro-units → rounds up to 1.
    expect(tokenCharge(1, 150_000n)).toBe(1n);
    expect(tokenCharge(0, 150_000n)).toBe(0n);
    // 1,000 tokens at $0.15 / M = 150 micro-units exactly.
    expect(tokenCharge(1_000, 150_000n)).toBe(150n);
    // 1,001 tokens = 150.15 → 151.
    expect(tokenCharge(1_001, 150_000n)).toBe(151n);
    // Rounding is per kind, then summed: 1 prompt + 1 completion at $0.15/$0.60 → 1 + 1.
    expect(requestCharge({ inputPerMillion: 150_000n, outputPerMillion: 600_000n }, 1, 1)).toBe(2n);
    expect(requestCharge({ inputPerMillion: 2_500_000n, outputPerMillion: 10_000_000n }, 1234, 567)).toBe(3085n + 5670n);
    expect(() => tokenCharge(-1, 1n)).toThrow(RangeError);
  });
});
