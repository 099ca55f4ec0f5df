// Scalars, enums and the small value types shared by every model type.
import { GraphQLError, Kind } from "graphql";
import { builder } from "../builder.ts";
import { BalanceBucket, CapScope, ChannelRole, FailedChargePolicy, FailureCause, HealthState, HoldStatus, KeyStatus, LedgerKind, RunMode, RunStatus, Settlement, AdminRole } from "../../generated/prisma/enums.ts";
import { BUCKET_CURRENCY, formatMoney, type Money } from "../../money.ts";
import type { BudgetStatus } from "../../budgets/index.ts";
import type { Context } from "../builder.ts";

builder.scalarType("Decimal", {
  description: "An exact decimal number as a string, e.g. \"12.500000\" (money: up to 6 decimals, in the bucket's currency).",
  serialize: (value) => String(value),
  parseValue: (value) => {
    if (typeof value === "string") return value;
    if (typeof value === "number" && Number.isSafeInteger(value)) return String(value);
    throw new GraphQLError("Decimal must be a string such as \"12.50\"", { extensions: { code: "BAD_USER_INPUT" } });
  },
  parseLiteral: (ast) => {
    if (ast.kind === Kind.STRING || ast.kind === Kind.INT) return ast.value;
    throw new GraphQLError("Decimal must be a string such as \"12.50\"", { extensions: { code: "BAD_USER_INPUT" } });
  },
});

function parseDate(value: unknown): Date {
  const date = typeof value === "string" ? new Date(value) : new Date(NaN);
  if (Number.isNaN(date.getTime())) {
    throw new GraphQLError("DateTime must be an ISO 8601 string", { extensions: { code: "BAD_USER_INPUT" } });
  }
  return date;
}

builder.scalarType("DateTime", {
  description: "An ISO 8601 date-time in UTC.",
  serialize: (value) => (value instanceof Date ? value.toISOString() : String(value)),
  parseValue: parseDate,
  parseLiteral: (ast) => parseDate(ast.kind === Kind.STRING ? ast.value : undefined),
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
builder.enumType(HoldStatus, { name: "HoldStatus" });
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
export const moneyOrNull = (amount: bigint | null | undefined, bucket: BalanceBucket): Money | null =>
  amount === null || amount === undefined ? null : moneyOf(amount, bucket);

/** One number of a scope's current window (cap, settled spend, or what remains) as Money, batched. */
export function budgetMoney(ctx: Context, scope: CapScope, scopeId: string, bucket: BalanceBucket, pick: "spent"): Promise<Money>;
export function budgetMoney(ctx: Context, scope: CapScope, scopeId: string, bucket: BalanceBucket, pick: "cap" | "remaining"): Promise<Money | null>;
export async function budgetMoney(
  ctx: Context,
  scope: CapScope,
  scopeId: string,
  bucket: BalanceBucket,
  pick: "cap" | "spent" | "remaining",
): Promise<Money | null> {
  const status = await ctx.loaders.budget(scope, scopeId, bucket);
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
