// The path of a request (issue 17, point 5): every upstream attempt it made, in order, stored with
// its Receipt or FailedRequest in the same row (column "attemptPath", JSONB; no row per attempt).
//
// A step says which channel was tried, in which role, what the upstream answered (its HTTP status;
// null when no response came: a connect error or a timeout before the headers), why the attempt
// ended (a cause of our own, never the upstream's text) and how long it took. Whether a step was
// charged is not stored: the gateway charges a request once, for the usage of its LAST attempt (the
// answered one of a receipt; for a failed request, the attempt its failed-request policy charge was
// computed from, see src/gateway/pipeline/fail.ts), so a step is charged when it is the last one and
// the row's charge is above 0. Earlier attempts are never charged. Rows written before the column
// existed hold an empty path.
import type { ChannelRole } from "../generated/prisma/enums.ts";

/** Why an attempt ended, in our own words. */
export const ATTEMPT_CAUSES = {
  ANSWERED: "The upstream answered; this attempt's answer is the request's (the receipt).",
  CONNECT_ERROR: "No connection to the upstream (refused, unknown host, unreachable): the request never reached it.",
  CONNECT_TIMEOUT: "The connection to the upstream was not set up within the connect timeout: the request never reached it.",
  TIMEOUT: "The upstream did not answer in time (no first byte, a stall mid-stream, the total timeout), or answered 408.",
  NETWORK_ERROR: "The connection failed after the request was sent (reset, or the response was cut off).",
  UPSTREAM_5XX: "The upstream answered with a 5xx status.",
  RATE_LIMITED: "The upstream answered 429 (its own rate limit).",
  UPSTREAM_AUTH: "The upstream refused the channel's credential (401 / 403).",
  UPSTREAM_NOT_FOUND: "The upstream does not know the channel's model or path (404).",
  BAD_RESPONSE: "The upstream answered 2xx with something unusable (invalid JSON, no event stream, a stream that ended early or reported a failure).",
  RESPONSE_TOO_LARGE: "The upstream's answer was over the relay limit (not relayed, charged as billed, not retried).",
  REJECTED: "The upstream blamed the request (a 4xx other than 401 / 403 / 404 / 408 / 429): passed back to the client, not retried.",
  CLIENT_CLOSED: "The client hung up during the attempt.",
  INTERNAL_ERROR: "The gateway itself failed during the attempt.",
} as const;

export type AttemptCause = keyof typeof ATTEMPT_CAUSES;

const CAUSES = new Set<string>(Object.keys(ATTEMPT_CAUSES));

/** One upstream attempt as it is stored. */
export interface AttemptStep {
  channelId: string;
  role: ChannelRole;
  /** The upstream's HTTP status; null when no response came. */
  status: number | null;
  cause: AttemptCause;
  /** From sending the request to the end of the attempt (the settlement it waited for excluded), whole milliseconds. */
  latencyMs: number;
}

/**
 * More steps than this are never stored (a CHECK on both tables says so too). A request makes at
 * most 1 + its key's retry ceiling attempts (at most 10: src/keys), so the bound is never reached.
 */
export const MAX_ATTEMPT_PATH = 16;

/** The path as the writers store it (clipped to MAX_ATTEMPT_PATH, keeping the last steps: the answer or the final failure). */
export function storedPath(path: readonly AttemptStep[] | undefined): AttemptStep[] {
  if (!path?.length) return [];
  const kept = path.length > MAX_ATTEMPT_PATH ? path.slice(path.length - MAX_ATTEMPT_PATH) : path;
  // Only the stored fields, in a fixed order (a view's step may carry names beside them).
  return kept.map((s) => ({ channelId: s.channelId, role: s.role, status: s.status, cause: s.cause, latencyMs: s.latencyMs }));
}

/** Steps read back from the column (or from an event's view); anything malformed is left out rather than failing the read. */
export function readPath<T extends AttemptStep = AttemptStep>(value: unknown): T[] {
  if (!Array.isArray(value)) return [];
  return value.filter((s: unknown): s is T => {
    if (!s || typeof s !== "object") return false;
    const step = s as Record<string, unknown>;
    return (
      typeof step.channelId === "string" &&
      (step.role === "PRIMARY" || step.role === "BACKUP") &&
      (step.status === null || Number.isInteger(step.status)) &&
      typeof step.cause === "string" &&
      CAUSES.has(step.cause) &&
      Number.isInteger(step.latencyMs)
    );
  });
}

/** Whether the step at `index` of a path of `length` steps carries its row's charge (see the top of this file). */
export const stepCharged = (index: number, length: number, charge: bigint): boolean => index === length - 1 && charge > 0n;

/** The cause of an attempt that ended with an HTTP status the next channel may fix (forward.ts retries these). */
export function statusCause(status: number): AttemptCause {
  if (status >= 500) return "UPSTREAM_5XX";
  if (status === 429) return "RATE_LIMITED";
  if (status === 401 || status === 403) return "UPSTREAM_AUTH";
  if (status === 404) return "UPSTREAM_NOT_FOUND";
  if (status === 408) return "TIMEOUT";
  if (status >= 400) return "REJECTED";
  return "BAD_RESPONSE";
}
