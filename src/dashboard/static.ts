// Browser assets served by tokengate itself, so /graphql (GraphiQL) and /dashboard work on a
// machine without internet: every file comes from an installed npm package or from
// src/dashboard/public, and queries.js is printed from src/dashboard/operations/*.graphql. Only the
// assets listed here are served (no path from the URL ever reaches the file system).
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { gzip } from "node:zlib";
import { promisify } from "node:util";
import { createHash } from "node:crypto";
import type http from "node:http";
import { PACKAGE_ROOT } from "../paths.ts";
import { browserModule } from "./operations.ts";

const require = createRequire(import.meta.url);
const gzipAsync = promisify(gzip);

/** Directory of an installed package (its package.json is exported by each of these). */
function packageDir(name: string): string {
  return path.dirname(require.resolve(`${name}/package.json`));
}
function packageVersion(name: string): string {
  return (require(`${name}/package.json`) as { version: string }).version;
}

const CONTENT_TYPES: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".html": "text/html; charset=utf-8",
  ".svg": "image/svg+xml",
};

interface Asset {
  /** The file served; for a generated asset, only a name (its extension gives the content type). */
  file: string;
  /** Files from npm packages carry the package version in their URL: cache them for a year. */
  immutable: boolean;
  /** Builds the body in the process instead of reading `file`. */
  generate?: () => string;
}

const graphiqlDir = path.join(packageDir("@graphql-yoga/graphiql"), "dist");
const uplotDir = path.join(packageDir("uplot"), "dist");
const graphqlWsDir = path.join(packageDir("graphql-ws"), "umd");
// Served from the source tree, also when the server runs compiled from dist/.
const publicDir = path.join(PACKAGE_ROOT, "src", "dashboard", "public");

/** URL prefixes, versioned so a package upgrade never meets a stale cached file. */
export const GRAPHIQL_ASSETS = `/assets/graphiql/${packageVersion("@graphql-yoga/graphiql")}`;
export const UPLOT_ASSETS = `/assets/uplot/${packageVersion("uplot")}`;
export const GRAPHQL_WS_ASSETS = `/assets/graphql-ws/${packageVersion("graphql-ws")}`;
export const OWN_ASSETS = "/assets/tokengate";

const ASSETS = new Map<string, Asset>([
  [`${GRAPHIQL_ASSETS}/yoga-graphiql.umd.js`, { file: path.join(graphiqlDir, "yoga-graphiql.umd.js"), immutable: true }],
  [`${GRAPHIQL_ASSETS}/graphiql.css`, { file: path.join(graphiqlDir, "graphiql.css"), immutable: true }],
  ...["editor.worker.bundle.js", "json.worker.bundle.js", "graphql.worker..bundle.js"].map((name): [string, Asset] => [
    `${GRAPHIQL_ASSETS}/monacoeditorwork/${name}`,
    { file: path.join(graphiqlDir, "monacoeditorwork", name), immutable: true },
  ]),
  [`${UPLOT_ASSETS}/uPlot.iife.min.js`, { file: path.join(uplotDir, "uPlot.iife.min.js"), immutable: true }],
  [`${UPLOT_ASSETS}/uPlot.min.css`, { file: path.join(uplotDir, "uPlot.min.css"), immutable: true }],
  [`${GRAPHQL_WS_ASSETS}/graphql-ws.min.js`, { file: path.join(graphqlWsDir, "graphql-ws.min.js"), immutable: true }],
  // Our own files change with the code: revalidated on every load (ETag).
  ...["dashboard.css", "dashboard.js", "api.js", "dom.js", "chart.js", "playground.js", "views.js", "graphiql.js", "favicon.svg"].map((name): [string, Asset] => [
    `${OWN_ASSETS}/${name}`,
    { file: path.join(publicDir, name), immutable: false },
  ]),
  // The page's GraphQL documents, from the same .graphql files the tests and the codegen read.
  [`${OWN_ASSETS}/queries.js`, { file: "queries.js", immutable: false, generate: browserModule }],
]);

interface Loaded {
  body: Buffer;
  gzipped: Buffer | null;
  etag: string;
  type: string;
}

// Loaded once per process on first request; the largest (GraphiQL, 5 MB) compresses to ~1.5 MB.
const cache = new Map<string, Promise<Loaded>>();

async function load(asset: Asset): Promise<Loaded> {
  const body = asset.generate ? Buffer.from(asset.generate(), "utf8") : await readFile(asset.file);
  const compressible = body.length > 1024 && !asset.file.endsWith(".svg");
  return {
    body,
    gzipped: compressible ? await gzipAsync(body) : null,
    etag: `"${createHash("sha1").update(body).digest("base64url")}"`,
    type: CONTENT_TYPES[path.extname(asset.file)] ?? "application/octet-stream",
  };
}

/** Serves a known asset and returns true, or returns false when the path is not one. */
export function serveAsset(req: http.IncomingMessage, res: http.ServerResponse, pathname: string): boolean {
  const asset = ASSETS.get(pathname);
  if (!asset) return false;
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { allow: "GET, HEAD", "content-type": "application/json" });
    res.end(JSON.stringify({ error: "method not allowed" }));
    return true;
  }
  let loaded = cache.get(asset.file);
  if (!loaded) {
    loaded = load(asset);
    cache.set(asset.file, loaded);
    // A failed read is retried on the next request rather than cached.
    loaded.catch(() => cache.delete(asset.file));
  }
  loaded.then(
    (file) => {
      const headers: http.OutgoingHttpHeaders = {
        "content-type": file.type,
        etag: file.etag,
        "cache-control": asset.immutable ? "public, max-age=31536000, immutable" : "no-cache",
        "x-content-type-options": "nosniff",
        vary: "accept-encoding",
      };
      if (req.headers["if-none-match"] === file.etag) {
        res.writeHead(304, headers);
        res.end();
        return;
      }
      const useGzip = file.gzipped !== null && /\bgzip\b/.test(String(req.headers["accept-encoding"] ?? ""));
      const body = useGzip ? file.gzipped! : file.body;
      if (useGzip) headers["content-encoding"] = "gzip";
      headers["content-length"] = body.length;
      res.writeHead(200, headers);
      res.end(req.method === "HEAD" ? undefined : body);
    },
    (error: unknown) => {
      console.error("[assets] cannot read", asset.file, error);
      res.writeHead(500, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: "asset unavailable" }));
    },
  );
  return true;
}
