// What every SQL call of the money folder shares: the client type, the refusals the SQL functions
// answer, and the translation of their TG_* exceptions into domain errors.
import type { RawSqlClient } from "../db/index.ts";
import { DomainError, conflict } from "../errors.ts";
import type { CapScope } from "../generated/prisma/enums.ts";

export type Refusal = CapScope | "INSUFFICIENT_BALANCE" | "RUN_CANCELLED" | "RUN_PAUSED";

/** A timestamp parameter as the SQL functions take it (`$n::timestamptz AT TIME ZONE 'UTC'`). */
export const utc = (d: Date): string => d.toISOString();

/** Anything that can run raw SQL: the process client, a second client in tests, a transaction. */
export type SqlClient = RawSqlClient;

/**
 * tg_record_batch refused a batch: these leases were reclaimed (their instance stalled past the
 * grace) before it learnt so. The charges out of them are admitted anew (LeasePool.backed) and written again.
 */
export class LeaseGoneError extends Error {
  constructor(readonly leaseIds: string[]) {
    super(`leases reclaimed before their charges were written: ${leaseIds.join(", ")}`);
    this.name = "LeaseGoneError";
  }
}

/** The database's own message, wherever the driver adapter put it (adapters differ). */
function databaseMessage(error: unknown): string {
  const meta = (error as { meta?: { driverAdapterError?: { cause?: { message?: string; originalMessage?: string } } } }).meta;
  const cause = meta?.driverAdapterError?.cause;
  return [error instanceof Error ? error.message : String(error), cause?.message, cause?.originalMessage].filter(Boolean).join(" ");
}

/** Turns the SQL functions' TG_* exceptions into domain errors. */
export function translateDbError(error: unknown): never {
  const message = databaseMessage(error);
  const match = /TG_([A-Z_]+): ([^\n"]*)/.exec(message);
  if (match) {
    const [, code, detail] = match;
    switch (code) {
      case "CONFLICT":
        throw conflict(detail!.trim());
      case "NOT_FOUND":
        throw new DomainError("NOT_FOUND", detail!.trim());
      case "INSUFFICIENT_BALANCE":
        throw new DomainError("BAD_USER_INPUT", `amount: ${detail!.trim()}`, "amount");
      case "LEASE_GONE":
        throw new LeaseGoneError(detail!.trim().split(",").filter(Boolean));
      default:
        throw new Error(`TG_${code}: ${detail!.trim()}`, { cause: error });
    }
  }
  throw error;
}
