// Stage 1, authenticate: the bearer secret → the API key it names, if that key may be used now
// (keys are cached ≤ KEY_CACHE_TTL_MS and dropped on keyChanged events: src/keys).
import type { IncomingMessage } from "node:http";
import type { ApiKey } from "../../generated/prisma/client.ts";
import { parseBearer } from "../../auth/index.ts";
import { lookupKey, type KeyLookup } from "../../keys/index.ts";
import { expiredKey, invalidKey, missingKey, pausedKey, revokedKey } from "../errors.ts";
import { header } from "../http.ts";
import type { RequestState } from "./state.ts";

/** Looks up the key of the request's bearer secret (401 missing_api_key without one). Not async: no promise of its own. */
export function lookupBearer(req: IncomingMessage, cacheTtlMs: number): Promise<KeyLookup> {
  const secret = parseBearer(header(req, "authorization"));
  if (!secret) throw missingKey();
  return lookupKey(secret, new Date(), cacheTtlMs);
}

/**
 * The usable key, or the refusal. A paused, revoked or expired key still says whose request it
 * was (its FailedRequest is the key's); an unknown or expired secret says nothing.
 */
export function usableKey(found: KeyLookup, trail: Pick<RequestState, "key">): ApiKey {
  trail.key = found.ok || found.reason !== "KEY_INVALID" ? found.key : null;
  if (found.ok) return found.key;
  switch (found.reason) {
    case "KEY_REVOKED":
      throw revokedKey();
    case "KEY_PAUSED":
      throw pausedKey();
    case "KEY_EXPIRED":
      throw expiredKey();
    default:
      throw invalidKey();
  }
}

/** Both steps, for callers off the hot path (GET /v1/models). */
export async function authenticate(req: IncomingMessage, trail: Pick<RequestState, "key">, cacheTtlMs: number): Promise<ApiKey> {
  return usableKey(await lookupBearer(req, cacheTtlMs), trail);
}
