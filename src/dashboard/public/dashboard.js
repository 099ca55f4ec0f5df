// The ops dashboard: wallet, spend chart, keys with caps and controls, route health, live feed of
// receipts and failed requests, budget alerts, and the playground. Every number is read from the
// GraphQL API (queries once, then graphql-ws subscriptions keep it current without a reload).
import { $, h, micros, money, percent, showError, time } from "./dom.js";
import { adoptFragmentToken, getToken, gql, liveClient, setToken, subscribe } from "./api.js";
import { drawSpendChart, rangeFor } from "./chart.js";
import { setUpPlayground } from "./playground.js";
import { FAILED_FIELDS, KEY_FIELDS, MONEY, OVERVIEW, RECEIPT_FIELDS } from "./queries.js";

/** What the page knows, by id, for labels (spend groups and alerts carry ids). */
const names = { keys: new Map(), projects: new Map(), routes: new Map() };
const keyRows = new Map();
const keySubscriptions = new Map();
const healthRows = new Map();
const FEED_LIMIT = 50;

// ---- wallet -------------------------------------------------------------------------------
async function refreshWallet() {
  const { wallet } = await gql(`{ wallet { balances { bucket balance { ${MONEY} } held { ${MONEY} } available { ${MONEY} } } } }`);
  renderWallet(wallet);
}
function renderWallet(wallet) {
  $("#wallet tbody").replaceChildren(
    ...wallet.balances.map((b) =>
      h("tr", { dataset: { bucket: b.bucket } }, h("td", {}, b.bucket), h("td", { className: "num" }, money(b.balance)), h("td", { className: "num" }, money(b.held)), h("td", { className: "num" }, money(b.available))),
    ),
  );
}

// ---- keys ---------------------------------------------------------------------------------
function capBars(key) {
  const capped = key.budgets.filter((b) => b.cap);
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
            const data = await gql(`mutation($id: ID!) { ${mutation}(id: $id) { ${KEY_FIELDS} } }`, { id: key.id });
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
    h("td", { className: "caps" }, capBars(key)),
    h(
      "td",
      { className: "actions" },
      key.status === "ACTIVE" && action("Pause", "pauseKey"),
      key.status === "PAUSED" && action("Resume", "resumeKey"),
      key.status !== "REVOKED" && action("Revoke", "revokeKey", `Revoke ${key.name}? Its secret stops working at once and for good.`),
    ),
  );
}

function upsertKey(key) {
  names.keys.set(key.id, key.name);
  const row = keyRow(key);
  const existing = keyRows.get(key.id);
  if (existing) existing.replaceWith(row);
  else $("#keys tbody").append(row);
  keyRows.set(key.id, row);
  if (!keySubscriptions.has(key.id)) {
    // Spend of this key after every settled or failed request: re-read the row, and feed failures.
    keySubscriptions.set(
      key.id,
      subscribe(`subscription($keyId: ID!) { keySpend(keyId: $keyId) { requestId status } }`, { keyId: key.id }, ({ keySpend }) => {
        refreshKey(key.id);
        refreshWallet().catch(reportError);
        scheduleChart();
        if (keySpend.status === "FAILED") addFailedToFeed(keySpend.requestId);
      }),
    );
  }
}

async function refreshKey(id) {
  try {
    const { apiKey } = await gql(`query($id: ID!) { apiKey(id: $id) { ${KEY_FIELDS} } }`, { id });
    upsertKey(apiKey);
  } catch (error) {
    reportError(error);
  }
}

// ---- route health -------------------------------------------------------------------------
function renderHealth(routes) {
  const rows = routes.flatMap((route) =>
    [...route.channels]
      .sort((a, b) => a.priority - b.priority)
      .map((channel, i) => {
        const row = h(
          "tr",
          { dataset: { channelId: channel.id } },
          h("td", {}, route.model),
          h("td", {}, channel.name, h("span", { className: "muted" }, ` · ${channel.settlement.toLowerCase()}`)),
          h("td", {}, i === 0 ? "primary" : "backup"),
          h("td", { dataset: { field: "state" } }, h("span", { className: `health ${channel.health.toLowerCase()}` }, channel.health)),
          h("td", { className: "num", dataset: { field: "successRate" } }, "—"),
          h("td", { className: "num", dataset: { field: "p50" } }, "—"),
        );
        healthRows.set(channel.id, row);
        return row;
      }),
  );
  $("#health tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colSpan: 6, className: "muted" }, "No route yet."))]));
}

function applyHealth(event) {
  const row = healthRows.get(event.channelId);
  if (!row) return;
  row.querySelector('[data-field="state"]').replaceChildren(h("span", { className: `health ${event.state.toLowerCase()}` }, event.state));
  row.querySelector('[data-field="successRate"]').textContent = `${(event.successRate * 100).toFixed(1)} %`;
  row.querySelector('[data-field="p50"]').textContent = `${event.p50LatencyMs} ms`;
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
    h("td", {}, kind === "receipt" ? h("span", { className: "ok" }, "200") : h("span", { className: "bad" }, `${item.httpStatus} ${item.cause}`)),
    h("td", {}, item.key?.name ?? "—"),
    h("td", {}, `${item.requestedModel ?? "—"}${item.route ? ` → ${item.route.model}` : ""}${item.channel ? ` · ${item.channel.name}` : ""}`),
    h("td", {}, kind === "receipt" ? (item.fallback ? "yes" : "no") : "—"),
    h("td", { className: "num" }, `${item.promptTokens}+${item.completionTokens}${tokenClasses(item)}`),
    h("td", { className: "num", dataset: { field: "charge" } }, money(item.charge)),
    h("td", {}, h("code", {}, item.requestId)),
  );
}

function addToFeed(item, kind, { append = false } = {}) {
  const body = $("#feed tbody");
  if (body.querySelector(`tr[data-request-id="${CSS.escape(item.requestId)}"]`)) return;
  const row = feedRow(item, kind);
  if (append) body.append(row);
  else body.prepend(row);
  while (body.rows.length > FEED_LIMIT) body.lastElementChild.remove();
}

async function addFailedToFeed(requestId) {
  try {
    const data = await gql(`query($id: String!) { failedRequests(first: 1, filter: { requestId: $id }) { edges { node { ${FAILED_FIELDS} } } } }`, { id: requestId });
    const failed = data.failedRequests.edges[0]?.node;
    if (failed) addToFeed(failed, "failed");
  } catch (error) {
    reportError(error);
  }
}

// ---- budget alerts ------------------------------------------------------------------------
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
function scheduleChart() {
  clearTimeout(chartTimer);
  chartTimer = setTimeout(() => drawChart().catch(reportError), 1500);
}

async function drawChart() {
  const groupBy = $("#spend-group").value;
  const interval = $("#spend-interval").value;
  const bucket = $("#spend-bucket").value;
  const { from, to } = rangeFor(interval);
  const { spendSeries } = await gql(
    `query Spend($input: SpendSeriesInput!) { spendSeries(input: $input) { bucketStart group bucket spend { ${MONEY} } requests } }`,
    { input: { from: from.toISOString(), to: to.toISOString(), interval, groupBy } },
  );
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
  for (const { node } of data.apiKeys.edges) upsertKey(node);
  renderHealth(data.routes);
  const history = [
    ...data.receipts.edges.map(({ node }) => ({ node, kind: "receipt" })),
    ...data.failedRequests.edges.map(({ node }) => ({ node, kind: "failed" })),
  ].sort((a, b) => b.node.createdAt.localeCompare(a.node.createdAt));
  for (const { node, kind } of history) addToFeed(node, kind, { append: true });

  subscribe(`subscription { receiptCreated { ${RECEIPT_FIELDS} } }`, {}, ({ receiptCreated }) => addToFeed(receiptCreated, "receipt"));
  subscribe(`subscription { routeHealth { channelId state successRate p50LatencyMs } }`, {}, ({ routeHealth }) => applyHealth(routeHealth));
  subscribe(`subscription { budgetAlert { scope scopeId bucket threshold spent { ${MONEY} } cap { ${MONEY} } } }`, {}, ({ budgetAlert }) => addAlert(budgetAlert));
  for (const id of ["#spend-group", "#spend-interval", "#spend-bucket"]) $(id).addEventListener("change", () => drawChart().catch(reportError));
  window.addEventListener("resize", () => chart?.setSize({ width: Math.max(320, $("#spend-chart").clientWidth), height: 240 }));
  await drawChart();
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
