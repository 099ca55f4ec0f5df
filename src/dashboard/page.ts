// The live ops page: a static HTML shell; the scripts under /assets/tokengate (src/dashboard/public)
// fetch every number from /graphql with the admin token the operator enters once (kept in the
// tab's sessionStorage). Every script and style is served by tokengate itself (static.ts).
import type http from "node:http";
import { GRAPHQL_WS_ASSETS, OWN_ASSETS, UPLOT_ASSETS } from "./static.ts";

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokengate · dashboard</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="${OWN_ASSETS}/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="${UPLOT_ASSETS}/uPlot.min.css">
<link rel="stylesheet" href="${OWN_ASSETS}/dashboard.css">
<script src="${UPLOT_ASSETS}/uPlot.iife.min.js"></script>
<script src="${GRAPHQL_WS_ASSETS}/graphql-ws.min.js"></script>
<script type="module" src="${OWN_ASSETS}/dashboard.js"></script>
</head><body>
<header>
  <h1>tokengate</h1>
  <span id="live-state" class="live-state" data-state="offline">offline</span>
  <nav><a href="/graphql">GraphiQL</a> <button id="sign-out" type="button" hidden>Forget token</button></nav>
</header>
<form id="token-form" class="token-form" hidden>
  <label>Admin token <input id="token" name="token" type="password" autocomplete="off" placeholder="tgadm_…"></label>
  <button type="submit">Open dashboard</button>
  <p>Kept in this tab's session storage only.</p>
</form>
<p id="error" class="error" role="alert"></p>
<main id="main" hidden>
  <section id="wallet-section"><h2>Wallet</h2>
    <table id="wallet"><thead><tr><th>Bucket</th><th class="num">Balance</th><th class="num">Held</th><th class="num">Available</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="spend-section"><h2>Spend over time</h2>
    <div class="controls">
      <label>Group by <select id="spend-group"><option value="KEY">key</option><option value="PROJECT">project</option><option value="MODEL">model</option><option value="ROUTE">route</option></select></label>
      <label>Interval <select id="spend-interval"><option value="HOUR">hour (48 h)</option><option value="DAY" selected>day (30 days)</option><option value="MONTH">month (12 months)</option></select></label>
      <label>Balance <select id="spend-bucket"><option value="CREDIT">CREDIT</option><option value="ROUTED">ROUTED</option></select></label>
      <span id="spend-total" class="muted"></span>
    </div>
    <div id="spend-chart" class="chart"></div>
  </section>
  <section id="keys-section"><h2>API keys</h2>
    <div class="controls">
      <label>Search <input id="key-search" type="search" maxlength="100" autocomplete="off" placeholder="name, prefix or last 4"></label>
      <button id="keys-prev" type="button" disabled>← Previous</button>
      <button id="keys-next" type="button" disabled>Next →</button>
      <span id="keys-range" class="muted"></span>
    </div>
    <table id="keys"><thead><tr><th>Key</th><th>Project</th><th>Status</th><th class="num">Daily cap</th><th class="num">Per request</th><th class="num">Spend today</th><th class="num">Remaining today</th><th>Caps used</th><th></th></tr></thead><tbody></tbody></table>
  </section>
  <section id="key-panel" class="panel" hidden></section>
  <section id="projects-section"><h2>Projects and their caps</h2><div id="projects-view"></div></section>
  <section id="runs-section"><h2>Runs</h2>
    <form id="preflight" class="controls">
      <label>Key <select id="pf-key"></select></label>
      <label>Model <select id="pf-model"></select></label>
      <label>Mode <select id="pf-mode"><option value="QUICK">quick</option><option value="STANDARD" selected>standard</option><option value="DEEP">deep</option></select></label>
      <button id="pf-estimate" type="button">Pre-flight</button>
      <label>Cap <input id="pf-cap" inputmode="decimal" maxlength="30" placeholder="no cap" size="8"></label>
      <label>Label <input id="pf-label" maxlength="200" placeholder="the agent's task"></label>
      <button id="pf-start" type="button">Start run</button>
    </form>
    <div id="pf-result"></div>
    <p id="pf-started" class="muted"></p>
    <table id="runs"><thead><tr><th>Run</th><th>Key</th><th>Model · mode</th><th>Status</th><th class="num">Requests</th><th class="num">Failed</th><th class="num">Charged</th><th class="num">Cap left</th><th class="num">Duration</th><th></th></tr></thead><tbody></tbody></table>
    <div id="run-detail" hidden></div>
  </section>
  <div class="columns">
    <section id="ledger-section"><h2>Ledger <button id="ledger-export" type="button" class="export">Export CSV</button></h2><div id="ledger-view"></div></section>
    <section id="audit-section"><h2>Audit trail <button id="audit-export" type="button" class="export">Export CSV</button></h2><div id="audit-view"></div></section>
  </div>
  <div class="columns">
    <section id="health-section"><h2>Route health</h2>
      <table id="health"><thead><tr><th>Route</th><th>Channel</th><th>Role</th><th>State</th><th class="num">Requests</th><th class="num">Success</th><th class="num">p50</th><th class="num">p95</th><th class="num">Spend today</th></tr></thead><tbody></tbody></table>
    </section>
    <section id="alerts-section"><h2>Budget alerts</h2>
      <ul id="alerts" class="feed"><li class="muted empty">No alert since this page opened.</li></ul>
    </section>
  </div>
  <section id="feed-section"><h2>Live requests</h2>
    <table id="feed"><thead><tr><th>Time</th><th>Result</th><th>Key</th><th>Model → route · channel</th><th>Fallback</th><th class="num">Latency</th><th class="num">Tokens</th><th class="num">Charge</th><th>Request id</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="playground-section"><h2>Playground</h2>
    <form id="playground" class="playground">
      <label>API key secret <input id="pg-secret" type="password" autocomplete="off" placeholder="tg_…"></label>
      <button id="pg-models" type="button">Load models</button>
      <label>Model <select id="pg-model" disabled></select></label>
      <label class="wide">Prompt <textarea id="pg-prompt" rows="3">Say hello in five words.</textarea></label>
      <button id="pg-send" type="submit" disabled>Send</button>
      <span id="pg-status" class="muted"></span>
    </form>
    <pre id="pg-output" class="output"></pre>
    <table id="pg-receipt" class="receipt" hidden><tbody></tbody></table>
  </section>
</main>
</body></html>`;

/**
 * The page runs only its own scripts and talks only to this origin: a Content-Security-Policy
 * makes an injected script or a request elsewhere fail even if an escaping bug slipped in.
 */
export const DASHBOARD_HEADERS: http.OutgoingHttpHeaders = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-cache",
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff",
};
