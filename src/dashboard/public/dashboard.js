// The ops dashboard: wallet, spend chart, keys with caps and controls, route health, live feed of
// receipts and failed requests, budget alerts, and the playground. Every number is read from the
// GraphQL API: queries once, then one graphql-ws socket with a fixed set of operations (LIVE in
// queries.js, printed from src/dashboard/operations/*.graphql) keeps it current, whatever the number
// of keys: spend arrives coalesced (liveSpend), the feed carries its own names, channel statistics
// and balances come on an interval. Nothing is re-read per event; the visible page of keys is
// reconciled with the API every RECONCILE_MS.
import { $, h, micros, money, percent, showError, time } from "./dom.js";
import { adoptFragmentToken, getToken, gql, liveClient, setToken, subscribe } from "./api.js";
import { drawSpendChart, rangeFor } from "./chart.js";
import { setUpPlayground } from "./playground.js";
import { KEY_ACTIONS, KEYS_PAGE, LIVE, OVERVIEW, SPEND_CHART } from "./queries.js";
import { loadAudit, loadLedger, loadProjects, loadRuns, noteSpendTick, openKeyPanel, setUpExports, setUpRuns } from "./views.js";

// The results the page handles, as GraphQL Code Generator types them from its documents.
/**
 * @typedef {import("../generated/graphql.ts").KeyFieldsFragment} Key
 * @typedef {Key["budgets"][number]} KeyBudget
 * @typedef {import("../generated/graphql.ts").WalletSubscription["walletBalances"]} Wallet
 * @typedef {import("../generated/graphql.ts").SpendSubscription["liveSpend"]} SpendTick
 * @typedef {SpendTick["scopes"][number]} ScopeStanding
 * @typedef {import("../generated/graphql.ts").OverviewQuery["routes"]} Routes
 * @typedef {import("../generated/graphql.ts").ChannelsSubscription["channelStats"]} ChannelStatsTick
 * @typedef {import("../generated/graphql.ts").FeedSubscription["liveFeed"]} FeedTick
 * @typedef {import("../generated/graphql.ts").AlertsSubscription["budgetAlert"]} BudgetAlert
 * @typedef {import("../generated/graphql.ts").ReceiptFieldsFragment} ReceiptRow
 * @typedef {import("../generated/graphql.ts").FailedRequestFieldsFragment} FailedRow
 */

/**
 * What the page knows, by id, for labels (spend groups and alerts carry ids).
 * @type {{ keys: Map<string, string>, projects: Map<string, string>, routes: Map<string, string> }}
 */
const names = { keys: new Map(), projects: new Map(), routes: new Map() };
/** @type {Map<string, { row: HTMLElement, key: Key }>} */
const keyRows = new Map();
/**
 * The latest standing of every key's windows the page heard of (applied when its row is shown).
 * @type {Map<string, Map<string, ScopeStanding>>}
 */
const standings = new Map();
/** @type {Map<string, HTMLElement>} */
const healthRows = new Map();
const FEED_LIMIT = 50;
/** Keys a page at a time: any number of keys is reachable, by page or by search. */
const KEY_PAGE_SIZE = 50;
const RECONCILE_MS = 30_000;
/** Live ticks are drawn together, at most once per PAINT_EVERY_MS: the four streams tick at different moments of each second, and every separate DOM change costs the browser a layout and a paint. */
const PAINT_EVERY_MS = 1_000;
const CHART_EVERY_MS = 30_000;

/** @param {Wallet} wallet */
function renderWallet(wallet) {
  $("#wallet tbody").replaceChildren(
    ...wallet.balances.map((b) =>
      h(
        "tr",
        { dataset: { bucket: b.bucket } },
        h("td", {}, b.bucket),
        h("td", { className: "num" }, money(b.balance)),
        h("td", { className: "num" }, money(b.held)),
        h("td", { className: "num" }, money(b.available)),
      ),
    ),
  );
}

// ---- keys ---------------------------------------------------------------------------------
/** @param {Key} key */
function capBars(key) {
  const capped = key.budgets.flatMap((b) => (b.cap ? [{ ...b, cap: b.cap }] : []));
  if (!capped.length) return h("span", { className: "muted" }, "no cap");
  return capped.map((b) => {
    const used = percent(micros(b.spent.amount) + micros(b.held.amount), micros(b.cap.amount));
    return h(
      "div",
      { className: "cap", title: `${b.scope} ${b.bucket}: ${money(b.spent)} spent, ${money(b.held)} held of ${money(b.cap)}` },
      h("span", { className: "cap-label" }, `${b.bucket} day`),
      h("span", { className: `bar${used >= 100 ? " full" : used >= 80 ? " high" : ""}` }, h("span", { style: { width: `${used}%` } })),
      h("span", { className: "cap-pct" }, `${used}%`),
    );
  });
}

/** @param {Key} key */
function keyRow(key) {
  const action = (label, mutation, confirmText) =>
    h(
      "button",
      {
        type: "button",
        dataset: { action: mutation },
        onclick: async (event) => {
          if (confirmText && !confirm(confirmText)) return;
          event.target.disabled = true;
          try {
            const data = await gql(KEY_ACTIONS[mutation], { id: key.id });
            upsertKey(data[mutation]);
            showError("");
          } catch (error) {
            showError(`${label} ${key.name}: ${error.message}`);
            event.target.disabled = false;
          }
        },
      },
      label,
    );
  return h(
    "tr",
    { dataset: { keyId: key.id, status: key.status } },
    h("td", {}, h("strong", {}, key.name), h("br"), h("code", {}, `${key.prefix}…${key.last4}`)),
    h("td", {}, key.project.name),
    h("td", {}, h("span", { className: `status ${key.status.toLowerCase()}` }, key.status)),
    h("td", { className: "num" }, money(key.dailyCap, "no cap")),
    h("td", { className: "num" }, money(key.perRequestMaxCharge, "no cap")),
    h("td", { className: "num", dataset: { field: "spendToday" } }, money(key.spendToday)),
    h("td", { className: "num", dataset: { field: "remainingToday" } }, money(key.remainingToday, "no cap")),
    h("td", { className: "caps", dataset: { field: "caps" } }, capBars(key)),
    h(
      "td",
      { className: "actions" },
      h("button", { type: "button", dataset: { action: "details" }, onclick: () => openKeyPanel(key.id).catch(reportError) }, "Details"),
      key.status === "ACTIVE" && action("Pause", "pauseKey"),
      key.status === "PAUSED" && action("Resume", "resumeKey"),
      key.status !== "REVOKED" && action("Revoke", "revokeKey", `Revoke ${key.name}? Its secret stops working at once and for good.`),
    ),
  );
}

/** @param {Key} key */
function upsertKey(key) {
  names.keys.set(key.id, key.name);
  const known = applyStandings(key);
  const row = keyRow(known);
  const existing = keyRows.get(key.id);
  if (existing) existing.row.replaceWith(row);
  else $("#keys tbody").append(row);
  keyRows.set(key.id, { row, key: known });
}

/**
 * A live tick redraws a shown key's spend cells in place: the row and its buttons stay the same
 * elements, so a click that lands between ticks lands on what the user aimed at.
 * @param {string} keyId
 */
function refreshKeyStanding(keyId) {
  const shown = keyRows.get(keyId);
  if (!shown) return;
  const known = applyStandings(shown.key);
  shown.key = known;
  /** @param {string} field @param {Array<Node | string>} content */
  const fill = (field, ...content) => shown.row.querySelector(`[data-field="${field}"]`)?.replaceChildren(...content);
  fill("spendToday", money(known.spendToday));
  fill("remainingToday", money(known.remainingToday, "no cap"));
  fill("caps", ...[capBars(known)].flat());
}

/**
 * A key as the API returned it, with any newer window standing heard from liveSpend since.
 * @param {Key} key
 * @returns {Key}
 */
function applyStandings(key) {
  const heard = standings.get(key.id);
  if (!heard) return key;
  const budgets = key.budgets.map((b) => {
    const s = heard.get(`${b.scope}|${b.bucket}`);
    return s && micros(s.spent.amount) >= micros(b.spent.amount) ? { ...b, spent: s.spent, held: s.held, cap: s.cap ?? b.cap } : b;
  });
  // spendToday / remainingToday are the KEY_DAILY window of the key's cap bucket (the one its spendToday is in).
  const window = [...heard.values()].find((s) => s.scope === "KEY_DAILY" && s.spent.currency === key.spendToday.currency);
  if (!window || micros(window.spent.amount) < micros(key.spendToday.amount)) return { ...key, budgets };
  return { ...key, budgets, spendToday: window.spent, remainingToday: key.dailyCap ? window.remaining : key.remainingToday };
}

// ---- keys, a page at a time ----------------------------------------------------------------
/** @type {{ search: string, cursors: Array<string | null>, index: number, total: number, hasNext: boolean }} */
const keyPage = { search: "", cursors: [null], index: 0, total: 0, hasNext: false };

async function loadKeys() {
  const after = keyPage.cursors[keyPage.index];
  const { apiKeys } = await gql(KEYS_PAGE, { first: KEY_PAGE_SIZE, after, search: keyPage.search || null });
  keyPage.total = Number(apiKeys.totalCount);
  keyPage.hasNext = apiKeys.pageInfo.hasNextPage;
  keyPage.cursors[keyPage.index + 1] = apiKeys.pageInfo.endCursor;
  keyRows.clear();
  $("#keys tbody").replaceChildren();
  for (const { node } of apiKeys.edges) upsertKey(node);
  if (!apiKeys.edges.length) $("#keys tbody").append(h("tr", {}, h("td", { colSpan: 9, className: "muted" }, keyPage.search ? "No key matches." : "No key yet.")));
  const first = keyPage.index * KEY_PAGE_SIZE;
  $("#keys-range").textContent = keyPage.total ? `${first + 1}–${first + apiKeys.edges.length} of ${keyPage.total}` : "";
  $("#keys-prev").disabled = keyPage.index === 0;
  $("#keys-next").disabled = !keyPage.hasNext;
}

function setUpKeyControls() {
  let searchTimer = null;
  $("#key-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      keyPage.search = $("#key-search").value.trim();
      keyPage.cursors = [null];
      keyPage.index = 0;
      loadKeys().catch(reportError);
    }, 250);
  });
  $("#keys-next").addEventListener("click", () => {
    if (!keyPage.hasNext) return;
    keyPage.index++;
    loadKeys().catch(reportError);
  });
  $("#keys-prev").addEventListener("click", () => {
    if (keyPage.index === 0) return;
    keyPage.index--;
    loadKeys().catch(reportError);
  });
}

/**
 * A liveSpend tick: remember every key window it carries, and redraw the rows on this page.
 * @param {SpendTick} tick
 */
function applySpendTick(tick) {
  for (const s of tick.scopes) {
    if (s.scope !== "KEY_DAILY") continue;
    let heard = standings.get(s.scopeId);
    if (!heard) {
      heard = new Map();
      standings.set(s.scopeId, heard);
    }
    heard.set(`${s.scope}|${s.bucket}`, s);
  }
  // Only keys this tick touched, and only those shown: a thousand keys cost nothing off-page.
  for (const { keyId } of tick.keys) refreshKeyStanding(keyId);
  scheduleChart();
}

// ---- route health -------------------------------------------------------------------------
/** @param {Routes} routes */
function renderHealth(routes) {
  const rows = routes.flatMap((route) =>
    [...route.channels]
      .sort((a, b) => a.priority - b.priority)
      .map((channel, i) => {
        const cell = (field) => h("td", { className: "num", dataset: { field } }, "—");
        const row = h(
          "tr",
          { dataset: { channelId: channel.id } },
          h("td", {}, route.model),
          h("td", {}, channel.name, h("span", { className: "muted" }, ` · ${channel.settlement.toLowerCase()}`)),
          h("td", {}, i === 0 ? "primary" : "backup"),
          h("td", { dataset: { field: "state" } }, h("span", { className: `health ${channel.health.toLowerCase()}` }, channel.health)),
          cell("requests"),
          cell("successRate"),
          cell("p50"),
          cell("p95"),
          cell("spendToday"),
        );
        healthRows.set(channel.id, row);
        return row;
      }),
  );
  $("#health tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colSpan: 9, className: "muted" }, "No route yet."))]));
}

/**
 * A channelStats tick: every channel's state, success rate and latency over the last minutes.
 * @param {ChannelStatsTick} tick
 */
function applyChannelStats(tick) {
  for (const c of tick.channels) {
    const row = healthRows.get(c.channelId);
    if (!row) continue;
    // The row's cells, made by renderHealth.
    const cell = (field) => /** @type {HTMLElement} */ (row.querySelector(`[data-field="${field}"]`));
    const set = (field, text) => (cell(field).textContent = text);
    cell("state").replaceChildren(h("span", { className: `health ${c.state.toLowerCase()}` }, c.state));
    set("requests", String(c.requests));
    set("successRate", c.successRate === null ? "—" : `${(c.successRate * 100).toFixed(1)} %`);
    set("p50", c.p50LatencyMs === null ? "—" : `${c.p50LatencyMs} ms`);
    set("p95", c.p95LatencyMs === null ? "—" : `${c.p95LatencyMs} ms`);
    set("spendToday", c.spendToday.length ? c.spendToday.map((s) => money(s.amount)).join(" · ") : "—");
  }
}

// ---- live feed ----------------------------------------------------------------------------
/** A receipt's token classes inside its totals, when it has any: " (cached 900, reasoning 12)". */
function tokenClasses(item) {
  const parts = [];
  if (item.cachedPromptTokens) parts.push(`cached ${item.cachedPromptTokens}`);
  if (item.reasoningTokens) parts.push(`reasoning ${item.reasoningTokens}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function feedRow(item, kind) {
  return h(
    "tr",
    { className: kind, dataset: { requestId: item.requestId } },
    h("td", {}, time(item.createdAt)),
    h("td", { dataset: { field: "status" } }, kind === "receipt" ? h("span", { className: "ok" }, String(item.status ?? 200)) : h("span", { className: "bad" }, `${item.httpStatus} ${item.cause}`)),
    h("td", {}, item.key?.name ?? "—"),
    h("td", {}, `${item.requestedModel ?? "—"}${item.route ? ` → ${item.route.model}` : ""}${item.channel ? ` · ${item.channel.name}` : ""}`),
    h("td", {}, kind === "receipt" ? (item.fallback ? "yes" : "no") : "—"),
    h("td", { className: "num", dataset: { field: "latency" } }, item.latencyMs != null ? `${item.latencyMs} ms` : "—"),
    h("td", { className: "num" }, `${item.promptTokens}+${item.completionTokens}${tokenClasses(item)}`),
    h("td", { className: "num", dataset: { field: "charge" } }, money(item.charge)),
    h("td", {}, h("code", {}, item.requestId)),
  );
}

/**
 * A liveFeed tick: its items newest first, in the shape of the receipts / failed requests the overview read.
 * @param {FeedTick} tick
 */
function applyFeedTick(tick) {
  for (const item of [...tick.items].reverse()) {
    const row = {
      ...item,
      status: item.httpStatus,
      key: item.keyName === null ? null : { id: item.keyId, name: item.keyName },
      route: item.routeModel === null ? null : { model: item.routeModel },
      channel: item.channelName === null ? null : { name: item.channelName },
    };
    addToFeed(row, item.kind === "RECEIPT" ? "receipt" : "failed");
  }
}

function addToFeed(item, kind, { append = false } = {}) {
  const body = $("#feed tbody");
  if (body.querySelector(`tr[data-request-id="${CSS.escape(item.requestId)}"]`)) return;
  const row = feedRow(item, kind);
  if (append) body.append(row);
  else body.prepend(row);
  while (body.rows.length > FEED_LIMIT) body.lastElementChild.remove();
}

// ---- budget alerts ------------------------------------------------------------------------
/** @param {BudgetAlert} alert */
function addAlert(alert) {
  const list = $("#alerts");
  list.querySelector(".empty")?.remove();
  const scopeName = names.keys.get(alert.scopeId) ?? names.projects.get(alert.scopeId) ?? names.routes.get(alert.scopeId) ?? alert.scopeId;
  list.prepend(
    h(
      "li",
      { className: `alert t${alert.threshold}` },
      h("strong", {}, `${alert.threshold} %`),
      ` ${alert.scope.replace("_", " ").toLowerCase()} of `,
      h("em", {}, scopeName),
      `: ${money(alert.spent)} of ${money(alert.cap)} (${alert.bucket}) · ${time(new Date().toISOString())}`,
    ),
  );
}

// ---- spend chart --------------------------------------------------------------------------
let chart = null;
let chartTimer = null;
/** Spend moved: redraw the chart, at most once per CHART_EVERY_MS (one query, never one per event). */
function scheduleChart() {
  if (chartTimer) return;
  chartTimer = setTimeout(() => {
    chartTimer = null;
    drawChart().catch(reportError);
  }, CHART_EVERY_MS);
}

async function drawChart() {
  const groupBy = $("#spend-group").value;
  const interval = $("#spend-interval").value;
  const bucket = $("#spend-bucket").value;
  const { from, to } = rangeFor(interval);
  const { spendSeries } = await gql(SPEND_CHART, { input: { from: from.toISOString(), to: to.toISOString(), interval, groupBy } });
  const labels = { KEY: names.keys, PROJECT: names.projects, ROUTE: names.routes }[groupBy];
  const drawn = drawSpendChart($("#spend-chart"), chart, {
    points: spendSeries.filter((p) => p.bucket === bucket),
    interval,
    from,
    to,
    labelOf: (group) => labels?.get(group) ?? group,
  });
  chart = drawn.chart;
  $("#spend-total").textContent = drawn.currency ? `total ${drawn.total} ${drawn.currency}` : "";
}

// ---- painting live ticks -------------------------------------------------------------------
/** @type {Array<() => void>} */
let unpainted = [];
let lastPaint = 0;
let paintTimer = null;
/** Queues a tick's DOM changes; queued changes run in their order, in one task. */
function paint(change) {
  unpainted.push(change);
  if (paintTimer) return;
  paintTimer = setTimeout(
    () => {
      paintTimer = null;
      lastPaint = performance.now();
      const changes = unpainted;
      unpainted = [];
      for (const c of changes) {
        try {
          c();
        } catch (error) {
          reportError(error);
        }
      }
    },
    Math.max(0, lastPaint + PAINT_EVERY_MS - performance.now()),
  );
}

// ---- start-up -----------------------------------------------------------------------------
function reportError(error) {
  showError(String(error?.message ?? error));
}

function setLiveState(state) {
  const badge = $("#live-state");
  badge.dataset.state = state;
  badge.textContent = state;
}

async function start() {
  $("#token-form").hidden = true;
  $("#sign-out").hidden = false;
  const data = await gql(OVERVIEW);
  $("#main").hidden = false;
  showError("");
  renderWallet(data.wallet);
  for (const { node } of data.projects.edges) names.projects.set(node.id, node.name);
  for (const route of data.routes) names.routes.set(route.id, route.model);
  liveClient(setLiveState);
  setUpKeyControls();
  await loadKeys();
  renderHealth(data.routes);
  const history = [...data.receipts.edges.map(({ node }) => ({ node, kind: "receipt" })), ...data.failedRequests.edges.map(({ node }) => ({ node, kind: "failed" }))].sort((a, b) =>
    b.node.createdAt.localeCompare(a.node.createdAt),
  );
  for (const { node, kind } of history) addToFeed(node, kind, { append: true });

  // The page's five live operations, on one socket, whatever the number of keys or the request rate.
  subscribe(
    LIVE.spend,
    {},
    ({ liveSpend }) =>
      paint(() => {
        applySpendTick(liveSpend);
        noteSpendTick(liveSpend);
      }),
    reportError,
  );
  subscribe(LIVE.wallet, {}, ({ walletBalances }) => paint(() => renderWallet(walletBalances)), reportError);
  subscribe(LIVE.feed, {}, ({ liveFeed }) => paint(() => applyFeedTick(liveFeed)), reportError);
  subscribe(LIVE.channels, {}, ({ channelStats }) => paint(() => applyChannelStats(channelStats)), reportError);
  subscribe(LIVE.alerts, {}, ({ budgetAlert }) => addAlert(budgetAlert), reportError);
  // A periodic reconcile of what is shown (one query): the API is the truth, streams keep it fresh between.
  setInterval(() => loadKeys().catch(reportError), RECONCILE_MS);
  for (const id of ["#spend-group", "#spend-interval", "#spend-bucket"]) $(id).addEventListener("change", () => drawChart().catch(reportError));
  window.addEventListener("resize", () => chart?.setSize({ width: Math.max(320, $("#spend-chart").clientWidth), height: 240 }));
  await drawChart();
  // The detail views: read once, then on their own triggers (projects and runs from liveSpend, ledger and audit after the page's own changes).
  setUpRuns({ keys: [...keyRows.values()].map((r) => r.key), models: [...new Set(data.routes.map((r) => r.model))] });
  setUpExports();
  await Promise.all([loadProjects(), loadRuns(), loadLedger(), loadAudit()]);
  // Every view has been read once; from here the page asks the API only on its own triggers.
  document.body.dataset.loaded = "true";
}

function askForToken(message) {
  $("#token-form").hidden = false;
  $("#main").hidden = true;
  showError(message ?? "");
  $("#token").focus();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("#token").value.trim());
  $("#token").value = "";
  start().catch((error) => askForToken(error.message));
});
$("#sign-out").addEventListener("click", () => {
  setToken("");
  location.reload();
});
setUpPlayground();
adoptFragmentToken();
if (getToken()) start().catch((error) => askForToken(error.message));
else askForToken();
