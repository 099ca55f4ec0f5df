// Money is integer micro-units (1e-6) in BigInt. Decimal strings cross the API boundary; floats never touch money.
import type { BalanceBucket } from "../generated/prisma/enums.ts";
import { badInput } from "../errors.ts";
import { services } from "../installed.ts";

export const MICROS_PER_UNIT = 1_000_000n;
/** 10^12 units: far beyond any real balance, and still exact in BigInt and Postgres bigint. */
export const MAX_AMOUNT_MICROS = 1_000_000_000_000n * MICROS_PER_UNIT;

/** Currency code of each bucket, as the installed Config says (TOKENGATE_CREDIT_CURRENCY / TOKENGATE_ROUTED_CURRENCY). */
export const BUCKET_CURRENCY: Readonly<Record<BalanceBucket, string>> = {
  get CREDIT() {
    return services().config.currencies.CREDIT;
  },
  get ROUTED() {
    return services().config.currencies.ROUTED;
  },
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
  /** Cached input (prompt cache reads); absent / null = the input price. */
  cachedInputPerMillion?: bigint | null;
  /** Prompt cache writes, where an upstream bills them apart; absent / null = the input price. */
  cacheWritePerMillion?: bigint | null;
  /** Audio input tokens; absent / null = the input price. */
  audioInputPerMillion?: bigint | null;
  /** Audio output tokens; absent / null = the output price. */
  audioOutputPerMillion?: bigint | null;
}

export function requestCharge(price: Price, promptTokens: number, completionTokens: number): bigint {
  return tokenCharge(promptTokens, price.inputPerMillion) + tokenCharge(completionTokens, price.outputPerMillion);
}

/**
 * A request's tokens by class. `promptTokens` and `completionTokens` are the totals; the classes
 * are parts of them (cached, cache-write and audio prompt tokens; audio completion tokens; reasoning
 * tokens are generated tokens at the output price, and so need no price of their own).
 */
export interface ClassUsage {
  promptTokens: number;
  completionTokens: number;
  cachedPromptTokens?: number;
  cacheWriteTokens?: number;
  audioPromptTokens?: number;
  audioCompletionTokens?: number;
}

/**
 * The charge for usage by token class, with the DESIGN rounding: ceil(tokens × price / 1e6) per
 * token kind, then summed. A kind is a distinct price on one side (input, output): the tokens of
 * every class that the snapshot does not price apart are summed at the input (or output) price
 * before rounding, so a snapshot without class prices charges exactly requestCharge (as before
 * classes existed). Classes larger than what is left of their total are clamped to it (an upstream
 * that reports more cached than prompt tokens is charged at most its prompt).
 */
export function classCharge(price: Price, usage: ClassUsage): bigint {
  let rest = usage.promptTokens;
  const take = (n: number | undefined) => {
    const t = Math.min(rest, Math.max(0, n ?? 0));
    rest -= t;
    return t;
  };
  const input = new Map<bigint, number>();
  const add = (kinds: Map<bigint, number>, p: bigint, tokens: number) => void kinds.set(p, (kinds.get(p) ?? 0) + tokens);
  add(input, price.cachedInputPerMillion ?? price.inputPerMillion, take(usage.cachedPromptTokens));
  add(input, price.cacheWritePerMillion ?? price.inputPerMillion, take(usage.cacheWriteTokens));
  add(input, price.audioInputPerMillion ?? price.inputPerMillion, take(usage.audioPromptTokens));
  add(input, price.inputPerMillion, rest);
  const audioOut = Math.min(usage.completionTokens, Math.max(0, usage.audioCompletionTokens ?? 0));
  const output = new Map<bigint, number>();
  add(output, price.audioOutputPerMillion ?? price.outputPerMillion, audioOut);
  add(output, price.outputPerMillion, usage.completionTokens - audioOut);
  let charge = 0n;
  for (const kinds of [input, output]) for (const [p, tokens] of kinds) charge += tokenCharge(tokens, p);
  return charge;
}

/** The dearest price on each side, and how many distinct prices (token kinds) each side has. */
function priceSides(price: Price): { input: bigint; output: bigint; extraKinds: number } {
  const inputs = new Set([
    price.inputPerMillion,
    price.cachedInputPerMillion ?? price.inputPerMillion,
    price.cacheWritePerMillion ?? price.inputPerMillion,
    price.audioInputPerMillion ?? price.inputPerMillion,
  ]);
  const outputs = new Set([price.outputPerMillion, price.audioOutputPerMillion ?? price.outputPerMillion]);
  const max = (values: Set<bigint>) => [...values].reduce((a, b) => (b > a ? b : a));
  return { input: max(inputs), output: max(outputs), extraKinds: inputs.size - 1 + outputs.size - 1 };
}

/**
 * The most classCharge can be for at most `promptTokens` prompt and `completionTokens` generated
 * tokens, whatever their classes: every token at its side's dearest price (a cached price below
 * the input price still assumes every prompt token uncached; a cache-write or audio price above
 * it assumes every token is that), plus one micro-unit per extra token kind (each kind rounds up
 * on its own). Without class prices this is exactly requestCharge.
 */
export function classChargeBound(price: Price, promptTokens: number, completionTokens: number): bigint {
  const sides = priceSides(price);
  return tokenCharge(promptTokens, sides.input) + tokenCharge(completionTokens, sides.output) + BigInt(sides.extraKinds);
}

export interface Money {
  amount: bigint;
  currency: string;
}

export const money = (amount: bigint, bucket: BalanceBucket): Money => ({ amount, currency: BUCKET_CURRENCY[bucket] });
