// Scalars, enums and the small value types shared by every model type.
import { GraphQLError, Kind } from "graphql";
import type { EnumRef } from "@pothos/core";
import { builder } from "../builder.ts";
import { BalanceBucket, CapScope, ChannelRole, FailedChargePolicy, FailureCause, HealthState, KeyStatus, LedgerKind, RunMode, RunStatus, Settlement, AdminRole } from "../../generated/prisma/enums.ts";
import { BUCKET_CURRENCY, formatMoney, type Money } from "../../money/amounts.ts";
import type { BudgetStatus } from "../../budgets/index.ts";
import type { Context } from "../builder.ts";

builder.scalarType("Decimal", {
  description: 'An exact decimal number as a string, e.g. "12.500000" (money: up to 6 decimals, in the bucket\'s currency).',
  serialize: (value) => String(value),
  parseValue: (value) => {
    if (typeof value === "string") return value;
    if (typeof value === "number" && Number.isSafeInteger(value)) return String(value);
    throw new GraphQLError('Decimal must be a string such as "12.50"', { extensions: { code: "BAD_USER_INPUT" } });
  },
  parseLiteral: (ast) => {
    if (ast.kind === Kind.STRING || ast.kind === Kind.INT) return ast.value;
    throw new GraphQLError('Decimal must be a string such as "12.50"', { extensions: { code: "BAD_USER_INPUT" } });
  },
});

/**
 * RFC 3339 / ISO 8601 date-time with an explicit offset: "2026-11-01T00:00:00Z",
 * "2026-11-01T09:30:00.250+08:00". A date alone, a time without an offset (whose zone would be the
 * server's) or prose such as "Nov 1 2026" is refused: new Date() would guess.
 */
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-](\d{2}):(\d{2}))$/;

export function parseDateTime(value: unknown): Date {
  const fail = () =>
    new GraphQLError(
      `DateTime must be an ISO 8601 date-time with an offset, such as "2026-11-01T00:00:00Z" or "2026-11-01T09:00:00+08:00" (got ${JSON.stringify(value)?.slice(0, 60) ?? String(value)})`,
      { extensions: { code: "BAD_USER_INPUT" } },
    );
  if (typeof value !== "string" || value.length > 40) throw fail();
  const m = DATE_TIME.exec(value);
  if (!m) throw fail();
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const [offsetHours, offsetMinutes] = [Number(m[9] ?? 0), Number(m[10] ?? 0)];
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) throw fail();
  // A day the month does not have (2026-02-30) would roll over: refused.
  if (new Date(Date.UTC(year, month - 1, day)).getUTCDate() !== day) throw fail();
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) throw fail();
  return date;
}

builder.scalarType("DateTime", {
  description:
    'An ISO 8601 (RFC 3339) date-time. Output: UTC with milliseconds, e.g. "2026-11-01T00:00:00.000Z". Input: a full date-time with an offset (Z or ±hh:mm), e.g. "2026-11-01T00:00:00Z" or "2026-11-01T09:00:00+08:00"; a date alone or a time without an offset is refused (BAD_USER_INPUT).',
  serialize: (value) => (value instanceof Date ? value.toISOString() : String(value)),
  parseValue: parseDateTime,
  parseLiteral: (ast) => parseDateTime(ast.kind === Kind.STRING ? ast.value : undefined),
});

/** The largest count Count serialises as a JSON number (beyond, as a decimal string, to stay exact). */
const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER);

builder.scalarType("Count", {
  description:
    "A non-negative count or sum (requests, tokens, rows) that may exceed the 32 bits of Int. Serialised as a JSON number while it is exact in a double (up to 2^53 − 1 = 9007199254740991), as a decimal string beyond that. Accepted as a JSON number or a string of digits.",
  serialize: (value) => {
    const n = typeof value === "bigint" ? value : BigInt(value as number);
    return n <= MAX_EXACT && n >= -MAX_EXACT ? Number(n) : n.toString();
  },
  parseValue: (value) => {
    if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
    if (typeof value === "string" && /^\d{1,30}$/.test(value)) return BigInt(value);
    throw new GraphQLError("Count must be a non-negative integer (a number, or a string of digits)", { extensions: { code: "BAD_USER_INPUT" } });
  },
  parseLiteral: (ast) => {
    if ((ast.kind === Kind.INT || ast.kind === Kind.STRING) && /^\d{1,30}$/.test(ast.value)) return BigInt(ast.value);
    throw new GraphQLError("Count must be a non-negative integer (a number, or a string of digits)", { extensions: { code: "BAD_USER_INPUT" } });
  },
});

builder.scalarType("JSON", {
  description: "Arbitrary JSON (audit snapshots).",
  serialize: (value) => value,
  parseValue: (value) => value,
});

builder.enumType(BalanceBucket, { name: "BalanceBucket", description: "CREDIT: official model credit. ROUTED: lower-cost routed balance. Each has its own currency." });
builder.enumType(KeyStatus, { name: "KeyStatus" });
builder.enumType(FailedChargePolicy, { name: "FailedChargePolicy", description: "What a failed request costs: nothing, its prompt tokens, or everything used." });
builder.enumType(RunMode, { name: "RunMode" });
builder.enumType(RunStatus, { name: "RunStatus" });
builder.enumType(Settlement, { name: "Settlement", description: "OFFICIAL settles against CREDIT, ROUTED against ROUTED." });
builder.enumType(HealthState, { name: "HealthState" });
builder.enumType(ChannelRole, { name: "ChannelRole" });
builder.enumType(LedgerKind, { name: "LedgerKind" });
builder.enumType(CapScope, { name: "CapScope" });
builder.enumType(FailureCause, { name: "FailureCause" });
builder.enumType(AdminRole, { name: "AdminRole" });

export const MoneyRef = builder.objectRef<Money>("Money").implement({
  description: "An amount in one currency. Amounts of different buckets are never summed.",
  fields: (t) => ({
    amount: t.field({ type: "Decimal", resolve: (m) => formatMoney(m.amount) }),
    currency: t.exposeString("currency"),
  }),
});

export const moneyOf = (amount: bigint, bucket: BalanceBucket): Money => ({ amount, currency: BUCKET_CURRENCY[bucket] });
export const moneyOrNull = (amount: bigint | null | undefined, bucket: BalanceBucket): Money | null => (amount === null || amount === undefined ? null : moneyOf(amount, bucket));

/** The key, project, route, channel or run a cap belongs to: its window follows its organization's zone. */
export type ScopeOwner = { id: string; organizationId: string };

/** One number of a scope's current window (cap, settled spend, or what remains) as Money, batched. */
export function budgetMoney(ctx: Context, scope: CapScope, owner: ScopeOwner, bucket: BalanceBucket, pick: "spent"): Promise<Money>;
export function budgetMoney(ctx: Context, scope: CapScope, owner: ScopeOwner, bucket: BalanceBucket, pick: "cap" | "remaining"): Promise<Money | null>;
export async function budgetMoney(ctx: Context, scope: CapScope, owner: ScopeOwner, bucket: BalanceBucket, pick: "cap" | "spent" | "remaining"): Promise<Money | null> {
  const status = await ctx.loaders.budget(scope, owner, bucket);
  return moneyOrNull(status[pick], bucket);
}

export const BudgetStatusRef = builder.objectRef<BudgetStatus>("BudgetStatus").implement({
  description: "One cap and where its window stands: spent (settled), held (in flight) and what remains.",
  fields: (t) => ({
    scope: t.field({ type: CapScope, resolve: (b) => b.scope }),
    bucket: t.field({ type: BalanceBucket, resolve: (b) => b.bucket }),
    cap: t.field({ type: MoneyRef, nullable: true, resolve: (b) => moneyOrNull(b.cap, b.bucket) }),
    spent: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.spent, b.bucket) }),
    held: t.field({ type: MoneyRef, resolve: (b) => moneyOf(b.held, b.bucket) }),
    remaining: t.field({ type: MoneyRef, nullable: true, resolve: (b) => moneyOrNull(b.remaining, b.bucket) }),
  }),
});

/** Request history (receipts, failed requests) and runs: newest first, with totalCount. */
export const NEWEST_FIRST = {
  cursor: "id" as const,
  totalCount: true as const,
  query: () => ({ orderBy: [{ createdAt: "desc" as const }, { id: "desc" as const }] }),
};

export const OrderDirection = builder.enumType("OrderDirection", { values: ["ASC", "DESC"] as const });
type Direction = "asc" | "desc";

/**
 * A list's orderBy argument: `{ field, direction }` with an enum of the columns it can sort on.
 * Rows of equal value are ordered by `tiebreak` (ending with the id), so pages never overlap. The
 * defaults are the list's order before orderBy existed.
 */
export const listOrder = <O>() =>
  function order<const F extends string>(
    typeName: string,
    columns: Record<F, (direction: Direction) => O>,
    tiebreak: (direction: Direction) => O[],
    defaults: { field: NoInfer<F>; direction: "ASC" | "DESC" },
  ) {
    const fields = Object.keys(columns) as F[];
    const FieldEnum = builder.enumType(`${typeName}OrderField`, { values: fields }) as unknown as EnumRef<typeof builder.$inferSchemaTypes, F, F>;
    const Input = builder.inputType(`${typeName}Order`, {
      description: `How ${typeName} rows are sorted. Default: ${defaults.field} ${defaults.direction}.`,
      fields: (t) => ({
        field: t.field({ type: FieldEnum, required: true, defaultValue: defaults.field }),
        direction: t.field({ type: OrderDirection, required: true, defaultValue: defaults.direction }),
      }),
    });
    const orderBy = (arg: { field?: F | null; direction?: "ASC" | "DESC" | null } | null | undefined): O[] => {
      const direction = (arg?.direction ?? defaults.direction) === "ASC" ? "asc" : "desc";
      return [columns[arg?.field ?? defaults.field](direction), ...tiebreak(direction)];
    };
    return { Input, orderBy, description: `Default: ${defaults.field} ${defaults.direction}.` };
  };
