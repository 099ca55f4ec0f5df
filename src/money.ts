// Money is integer micro-units (1e-6) in BigInt. Decimal strings cross the API boundary; floats never touch money.
import type { BalanceBucket } from "./generated/prisma/enums.ts";
import { badInput } from "./errors.ts";

export const MICROS_PER_UNIT = 1_000_000n;
/** 10^12 units: far beyond any real balance, and still exact in BigInt and Postgres bigint. */
export const MAX_AMOUNT_MICROS = 1_000_000_000_000n * MICROS_PER_UNIT;

export const BUCKET_CURRENCY: Record<BalanceBucket, string> = {
  CREDIT: process.env.TOKENGATE_CREDIT_CURRENCY || "USD",
  ROUTED: process.env.TOKENGATE_ROUTED_CURRENCY || "CNY",
};

const DECIMAL = /^(\d+)(?:\.(\d{1,6}))?$/;

/** Parses a non-negative decimal string with at most 6 decimals into micro-units. */
export function parseMoney(value: string, field: string, options: { allowNegative?: boolean } = {}): bigint {
  if (typeof value !== "string") throw badInput(field, "must be a decimal string");
  const trimmed = value.trim();
  const negative = trimmed.startsWith("-");
  if (negative && !options.allowNegative) throw badInput(field, "must not be negative");
  const body = negative ? trimmed.slice(1) : trimmed;
  const match = DECIMAL.exec(body);
  if (!match) {
    if (/^\d+\.\d{7,}$/.test(body)) throw badInput(field, "has more than 6 decimal places");
    throw badInput(field, `is not a decimal number: ${JSON.stringify(value)}`);
  }
  const micros = BigInt(match[1]!) * MICROS_PER_UNIT + BigInt((match[2] ?? "").padEnd(6, "0"));
  if (micros > MAX_AMOUNT_MICROS) throw badInput(field, "is too large");
  return negative ? -micros : micros;
}

/** Formats micro-units as a plain decimal string with 6 places: 1234500n → "1.234500". */
export function formatMoney(micros: bigint): string {
  const negative = micros < 0n;
  const abs = negative ? -micros : micros;
  const whole = abs / MICROS_PER_UNIT;
  const frac = (abs % MICROS_PER_UNIT).toString().padStart(6, "0");
  return `${negative ? "-" : ""}${whole}.${frac}`;
}

/**
 * Charge for one token kind: ceil(tokens × pricePerMillion / 1e6) micros, where pricePerMillion
 * is in micros. Rounding up per token kind means a request is never under-charged by rounding,
 * and is over-charged by less than one micro-unit per kind.
 */
export function tokenCharge(tokens: number, pricePerMillionMicros: bigint): bigint {
  if (!Number.isInteger(tokens) || tokens < 0) throw new RangeError(`token count must be a non-negative integer: ${tokens}`);
  const product = BigInt(tokens) * pricePerMillionMicros;
  return (product + 999_999n) / 1_000_000n;
}

export interface Price {
  inputPerMillion: bigint;
  outputPerMillion: bigint;
}

export function requestCharge(price: Price, promptTokens: number, completionTokens: number): bigint {
  return tokenCharge(promptTokens, price.inputPerMillion) + tokenCharge(completionTokens, price.outputPerMillion);
}

export interface Money {
  amount: bigint;
  currency: string;
}

export const money = (amount: bigint, bucket: BalanceBucket): Money => ({ amount, currency: BUCKET_CURRENCY[bucket] });
