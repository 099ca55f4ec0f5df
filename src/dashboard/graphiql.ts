// GraphiQL as Yoga renders it, but with every asset served by tokengate (see static.ts): Yoga's
// own page loads its scripts, styles, Monaco workers and favicon from public hosts.
import type { GraphiQLOptions } from "graphql-yoga";
import { GRAPHIQL_ASSETS, OWN_ASSETS } from "./static.ts";

/** JSON that is safe inside a <script> element. */
export const scriptJson = (value: unknown): string => JSON.stringify(value).replace(/</g, "\\u003c");

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Yoga's `renderGraphiQL`: the admin token is asked for in the page (kept in sessionStorage), never in a URL. */
export function renderGraphiQL(options: GraphiQLOptions = {}): string {
  const boot = {
    options,
    workers: {
      editorWorkerService: `${GRAPHIQL_ASSETS}/monacoeditorwork/editor.worker.bundle.js`,
      json: `${GRAPHIQL_ASSETS}/monacoeditorwork/json.worker.bundle.js`,
      graphql: `${GRAPHIQL_ASSETS}/monacoeditorwork/graphql.worker..bundle.js`,
    },
  };
  const title = escapeHtml(options.title ?? "GraphiQL");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<link rel="icon" href="${OWN_ASSETS}/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="${GRAPHIQL_ASSETS}/graphiql.css">
<link rel="stylesheet" href="${OWN_ASSETS}/dashboard.css">
</head><body id="body" class="no-focus-outline">
<div id="root" class="graphiql-root">Loading ${title}…</div>
<script type="application/json" id="graphiql-boot">${scriptJson(boot)}</script>
<script src="${OWN_ASSETS}/graphiql.js"></script>
<script src="${GRAPHIQL_ASSETS}/yoga-graphiql.umd.js"></script>
</body></html>`;
}
