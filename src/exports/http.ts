// GET /exports/{receipts,ledger,failed-requests,audit}.csv: the admin bearer token, GraphQL's tenancy,
// RFC 4180 CSV (CRLF records, fields with a comma, quote or line break quoted, quotes doubled)
// streamed with backpressure from the database to the socket, one string per database batch.
import type http from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { authenticateAdmin } from "../auth/index.ts";
import { DomainError } from "../errors.ts";
import { EXPORT_KINDS, exportCsv, exportDaysIn, parseExportFilter, type ExportKind } from "./index.ts";
import { organizationTimeZone } from "../orgs/time-zone.ts";

export const EXPORT_PATHS = EXPORT_KINDS.map((k) => `/exports/${k}.csv`);

const ERROR_STATUS = { UNAUTHENTICATED: 401, FORBIDDEN: 403, NOT_FOUND: 404, BAD_USER_INPUT: 400, CONFLICT: 409 } as const;
const ERROR_TYPE = {
  UNAUTHENTICATED: "authentication_error",
  FORBIDDEN: "permission_error",
  NOT_FOUND: "not_found_error",
  BAD_USER_INPUT: "invalid_request_error",
  CONFLICT: "invalid_request_error",
} as const;

function sendError(res: http.ServerResponse, error: DomainError, headers: Record<string, string> = {}): void {
  res.writeHead(ERROR_STATUS[error.code], { "content-type": "application/json", ...headers });
  res.end(JSON.stringify({ error: { message: error.message, type: ERROR_TYPE[error.code], code: error.code, param: error.field ?? null } }));
}

/** Handles a request whose path starts with /exports/. */
export async function handleExport(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://tokengate.local");
  const kind = EXPORT_KINDS.find((k) => url.pathname === `/exports/${k}.csv`) as ExportKind | undefined;
  if (!kind) return sendError(res, new DomainError("NOT_FOUND", `no such export; have ${EXPORT_PATHS.join(", ")}`));
  if (req.method !== "GET" && req.method !== "HEAD") {
    return sendError(res, new DomainError("BAD_USER_INPUT", "exports are read with GET"), { allow: "GET, HEAD" });
  }
  let chunks: AsyncGenerator<string, void, undefined>;
  let first: IteratorResult<string, void>;
  try {
    const viewer = await authenticateAdmin(req.headers.authorization);
    if (!viewer) {
      return sendError(res, new DomainError("UNAUTHENTICATED", "an admin token is required: Authorization: Bearer <admin token>"), {
        "www-authenticate": "Bearer",
      });
    }
    const parsed = parseExportFilter(url.searchParams);
    // Bare dates are days of the exported organization's zone (UTC for a platform export of every organization).
    const organizationId = viewer.organizationId ?? parsed.organizationId ?? null;
    const filter = exportDaysIn(parsed, organizationId ? await organizationTimeZone(organizationId) : "UTC");
    chunks = exportCsv(viewer, kind, filter);
    // The header and first batch are read before the status line, so a failing query still gets a proper error.
    first = await chunks.next();
  } catch (error) {
    if (error instanceof DomainError) return sendError(res, error);
    throw error;
  }
  const stamp = new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  res.writeHead(200, {
    "content-type": "text/csv; charset=utf-8",
    "content-disposition": `attachment; filename="tokengate-${kind}-${stamp}.csv"`,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  if (req.method === "HEAD") {
    await chunks.return();
    res.end();
    return;
  }
  const body = (async function* () {
    if (!first.done) yield first.value;
    yield* chunks;
  })();
  // pipeline pulls batches only as fast as the socket drains (a byte stream with the default
  // high-water mark holds about one batch), and on a broken connection or a failing query destroys
  // every stage (closing the cursor); a cut-short body is how the client learns of it.
  try {
    await pipeline(Readable.from(body, { objectMode: false }), res);
  } catch (error) {
    if (!res.destroyed) res.destroy();
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ERR_STREAM_PREMATURE_CLOSE") console.error(`[exports] ${kind} export failed: ${(error as Error).message}`);
  }
}
