// The dashboard's detail views: projects with their caps, a key's panel (limits per bucket, its
// receipts and ledger entries), runs from pre-flight to their final charges (start, live progress,
// pause / resume / finish / cancel), and the ledger and the audit trail with their CSV exports.
// Every number is read from the API; runs refresh when liveSpend says a run's window moved (at most
// every RUNS_EVERY_MS), never once per request.
import { $, h, money, showError, time } from "./dom.js";
import { getToken, gql } from "./api.js";
import { RUN_ACTIONS, VIEWS } from "./queries.js";

const RUNS_EVERY_MS = 2_000;
/** @type {Array<"CREDIT" | "ROUTED">} */
const BUCKETS = ["CREDIT", "ROUTED"];
const report = (what) => (error) => showError(`${what}: ${error?.message ?? error}`);

// ---- CSV exports --------------------------------------------------------------------------
/** Downloads /exports/<kind>.csv with the tab's token (a plain link could not carry the Authorization header). */
export async function downloadCsv(kind, params = {}) {
  const url = new URL(`/exports/${kind}.csv`, location.origin);
  for (const [name, value] of Object.entries(params)) if (value) url.searchParams.set(name, value);
  const response = await fetch(url, { headers: { authorization: `Bearer ${getToken()}` } });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error(body?.error?.message ?? `export failed with ${response.status}`);
  }
  const name = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") ?? "")?.[1] ?? `tokengate-${kind}.csv`;
  const link = h("a", { href: URL.createObjectURL(await response.blob()), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

const exportButton = (label, kind, params) =>
  h("button", { type: "button", className: "export", dataset: { export: kind }, onclick: () => downloadCsv(kind, params).catch(report(`export ${kind}`)) }, label);

// ---- small tables -------------------------------------------------------------------------
function table(headers, rows, empty) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", { className: x.endsWith(" ") ? "num" : "" }, x.trim())))),
    h("tbody", {}, ...(rows.length ? rows : [h("tr", {}, h("td", { colSpan: headers.length, className: "muted" }, empty))])),
  );
}
const num = (text, field) => h("td", { className: "num", dataset: field ? { field } : {} }, text);

function budgetRows(budgets) {
  return budgets.map((b) =>
    h(
      "tr",
      { dataset: { scope: b.scope, bucket: b.bucket } },
      h("td", {}, b.scope.replace("_", " ").toLowerCase()),
      h("td", {}, b.bucket),
      num(money(b.cap, "no cap"), "cap"),
      num(money(b.spent), "spent"),
      num(money(b.held), "held"),
      num(money(b.remaining, "—"), "remaining"),
    ),
  );
}
const BUDGET_HEADERS = ["Window", "Bucket", "Cap ", "Spent ", "Held ", "Remaining "];

function receiptRows(connection) {
  return connection.edges.map(({ node: r }) =>
    h(
      "tr",
      { dataset: { requestId: r.requestId } },
      h("td", {}, time(r.createdAt)),
      h("td", {}, `${r.requestedModel} · ${r.channel?.name ?? "—"}`),
      h("td", {}, r.bucket),
      num(`${r.promptTokens}+${r.completionTokens}`),
      num(money(r.charge), "charge"),
      h("td", {}, h("code", {}, r.requestId)),
    ),
  );
}
const RECEIPT_HEADERS = ["Time", "Model · channel", "Bucket", "Tokens ", "Charge ", "Request id"];

function ledgerRows(connection) {
  return connection.edges.map(({ node: e }) =>
    h(
      "tr",
      { dataset: { entryId: e.id, kind: e.kind } },
      h("td", {}, time(e.createdAt)),
      h("td", {}, e.kind),
      h("td", {}, e.bucket.bucket),
      num(money(e.amount), "amount"),
      num(money(e.balanceAfter), "balanceAfter"),
      h("td", {}, e.receipt?.requestId ?? e.failedRequest?.requestId ?? e.memo ?? ""),
    ),
  );
}
const LEDGER_HEADERS = ["Time", "Kind", "Bucket", "Amount ", "Balance after ", "Request / memo"];

// ---- projects -----------------------------------------------------------------------------
export async function loadProjects() {
  const { projects } = await gql(VIEWS.projects);
  const rows = projects.edges.flatMap(({ node: p }) =>
    BUCKETS.map((bucket) => {
      const window = (scope) => p.budgets.find((b) => b.scope === scope && b.bucket === bucket);
      const day = window("PROJECT_DAILY");
      const month = window("PROJECT_MONTHLY");
      return h(
        "tr",
        { dataset: { projectId: p.id, bucket } },
        h("td", {}, p.name),
        h("td", {}, bucket),
        num(money(day?.cap, "no cap"), "dailyCap"),
        num(money(day?.spent), "spentToday"),
        num(money(day?.remaining, "—"), "remainingToday"),
        num(money(month?.cap, "no cap"), "monthlyCap"),
        num(money(month?.spent), "spentThisMonth"),
        num(money(month?.remaining, "—"), "remainingThisMonth"),
      );
    }),
  );
  $("#projects-view").replaceChildren(
    table(["Project", "Bucket", "Daily cap ", "Spent today ", "Remaining today ", "Monthly cap ", "Spent this month ", "Remaining this month "], rows, "No project yet."),
  );
}

// ---- a key's panel ------------------------------------------------------------------------
export async function openKeyPanel(keyId) {
  const { apiKey: k, ledgerEntries } = await gql(VIEWS.keyPanel, { id: keyId });
  const limit = (label, value) => h("tr", {}, h("th", {}, label), h("td", { dataset: { field: label } }, value));
  const perBucket = (field) =>
    BUCKETS.filter((b) => k.allowedBuckets.includes(b))
      .map((b) => `${b}: ${money(k[`${field}${b}`], field === "spend" ? "—" : "no cap")}`)
      .join(" · ");
  const panel = $("#key-panel");
  panel.hidden = false;
  panel.dataset.keyId = k.id;
  panel.replaceChildren(
    h("h2", {}, `Key ${k.name} `, h("code", {}, `${k.prefix}…${k.last4}`), " ", h("span", { className: `status ${k.status.toLowerCase()}` }, k.status)),
    h(
      "table",
      { className: "facts" },
      h(
        "tbody",
        {},
        limit("Project", k.project.name),
        limit("Models", k.allowedModels.length ? k.allowedModels.join(", ") : "every routed model"),
        limit("Buckets", k.allowedBuckets.join(", ")),
        limit("Routes", `${k.lowerCostRoutes ? "lower-cost (ROUTED) channels allowed" : "official channels only"}; ${k.backupRoutes ? "backup channels allowed" : "primary channel only"}`),
        limit("Spend today", perBucket("spend")),
        limit("Per request", perBucket("perRequest")),
        limit("Rate", `${k.rpmLimit ?? "∞"} req/min · ${k.tpmLimit ?? "∞"} tokens/min · ${k.maxConcurrent ?? "∞"} at once`),
        limit("Retries", `at most ${k.retryCeiling} attempts; failed requests: ${k.failedChargePolicy}`),
        limit("Expires", k.expiresAt ? time(k.expiresAt) : "never"),
      ),
    ),
    h("h3", {}, "Spend today per bucket"),
    table(
      ["Bucket", "Charged ", "Requests ", "Failed "],
      k.spend.map((s) =>
        h("tr", { dataset: { spendBucket: s.bucket } }, h("td", {}, s.bucket), num(money(s.charged), "charged"), num(String(s.requests), "requests"), num(String(s.failures), "failures")),
      ),
      "No spend.",
    ),
    h("p", { className: "muted" }, `Last used: ${k.lastUsedAt ? time(k.lastUsedAt) : "never"}`),
    ...k.plan.map((p) =>
      h(
        "div",
        { className: "plan", dataset: { planModel: p.model } },
        h("h3", {}, `Plan for ${p.model}: `, h("span", { className: p.callable ? "ok" : "bad" }, p.callable ? "callable" : `refused (${p.reasons.join("; ")})`)),
        h("p", { className: "muted" }, `at most ${p.maxAttempts} attempts${p.fallbackSwitchesBucket ? "; a fallback can move the charge to the other bucket" : ""}`),
        table(
          ["#", "Channel", "Role", "Pays", "Upstream model", "Price in / out per 1M ", "Tried"],
          p.channels.map((c) =>
            h(
              "tr",
              { dataset: { position: String(c.position) } },
              h("td", {}, String(c.position + 1)),
              h("td", {}, c.name ?? "—", h("span", { className: "muted" }, ` · ${c.health.toLowerCase()}`)),
              h("td", {}, c.role),
              h("td", {}, `${c.bucket} · ${c.settlement}`),
              h("td", {}, c.upstreamModel),
              num(c.price ? `${money(c.price.inputPerMillion)} / ${money(c.price.outputPerMillion)}` : "unpriced", "price"),
              h("td", {}, c.tried ? "yes" : `no: ${c.notTriedBecause ?? ""}`),
            ),
          ),
          "No channel.",
        ),
        table(
          ["Limit", "Bucket", "Cap ", "Spent ", "Held ", "Remaining "],
          p.limits.map((l) =>
            h(
              "tr",
              { dataset: { limit: l.kind, bucket: l.bucket } },
              h("td", {}, l.kind.replace("_", " ").toLowerCase()),
              h("td", {}, l.bucket),
              num(money(l.limit, "no cap"), "cap"),
              num(money(l.spent), "spent"),
              num(money(l.held), "held"),
              num(money(l.remaining, "—"), "remaining"),
            ),
          ),
          "No limit.",
        ),
      ),
    ),
    h("h3", {}, "Windows"),
    table(BUDGET_HEADERS, budgetRows(k.budgets), "No window."),
    h("h3", {}, "Latest receipts ", exportButton("Export CSV", "receipts", { keyId: k.id })),
    h("div", { id: "key-receipts" }, table(RECEIPT_HEADERS, receiptRows(k.receipts), "No receipt yet.")),
    h("h3", {}, "Ledger entries ", exportButton("Export CSV", "ledger", { keyId: k.id })),
    h("div", { id: "key-ledger" }, table(LEDGER_HEADERS, ledgerRows(ledgerEntries), "No charge yet.")),
    h("button", { type: "button", onclick: () => (panel.hidden = true) }, "Close"),
  );
  panel.scrollIntoView({ block: "nearest" });
}

// ---- runs ---------------------------------------------------------------------------------
/** @type {{ openRunId: string | null, timer: ReturnType<typeof setTimeout> | null }} */
const runState = { openRunId: null, timer: null };

function chargesText(totals) {
  return totals.charges.length ? totals.charges.map((c) => money(c.amount)).join(" · ") : "—";
}

function runRow(run) {
  const cap = run.budgets.find((b) => b.cap);
  const act = (label, mutation) =>
    h(
      "button",
      {
        type: "button",
        dataset: { action: mutation },
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await gql(RUN_ACTIONS[mutation], { id: run.id });
            await Promise.all([loadRuns(), loadAudit()]);
            showError("");
          } catch (error) {
            report(`${label} run`)(error);
            event.target.disabled = false;
          }
        },
      },
      label,
    );
  const open = run.status === "ACTIVE" || run.status === "PAUSED";
  return h(
    "tr",
    { dataset: { runId: run.id, status: run.status } },
    h("td", {}, run.label ?? h("span", { className: "muted" }, "no label"), h("br"), h("code", {}, run.id)),
    h("td", {}, run.key.name),
    h("td", {}, `${run.model ?? "any model"} · ${run.mode}`),
    h("td", { dataset: { field: "status" } }, h("span", { className: `status ${run.status.toLowerCase()}` }, run.status)),
    num(String(run.totals.requests), "requests"),
    num(String(run.totals.failures), "failures"),
    num(chargesText(run.totals), "charged"),
    num(cap ? `${money(cap.remaining)} of ${money(cap.cap)}` : "no cap", "remaining"),
    num(run.durationMs == null ? "—" : `${(run.durationMs / 1000).toFixed(1)} s`, "duration"),
    h(
      "td",
      { className: "actions" },
      h("button", { type: "button", dataset: { action: "open" }, onclick: () => openRun(run.id).catch(report("open run")) }, "Open"),
      run.status === "ACTIVE" && act("Pause", "pauseRun"),
      run.status === "PAUSED" && act("Resume", "resumeRun"),
      open && act("Finish", "finishRun"),
      open && act("Cancel", "cancelRun"),
    ),
  );
}

export async function loadRuns() {
  const { runs } = await gql(VIEWS.runs);
  $("#runs tbody").replaceChildren(...(runs.edges.length ? runs.edges.map(({ node }) => runRow(node)) : [h("tr", {}, h("td", { colSpan: 10, className: "muted" }, "No run yet."))]));
  if (runState.openRunId) await openRun(runState.openRunId);
}

async function openRun(id) {
  runState.openRunId = id;
  const { run, ledgerEntries } = await gql(VIEWS.runDetail, { id });
  const detail = $("#run-detail");
  detail.hidden = false;
  detail.dataset.runId = run.id;
  detail.replaceChildren(
    h("h3", {}, `Run ${run.label ?? run.id} `, h("span", { className: `status ${run.status.toLowerCase()}` }, run.status)),
    h(
      "p",
      { className: "muted" },
      `${run.totals.requests} requests, ${run.totals.failures} failed, ${run.totals.promptTokens}+${run.totals.completionTokens} tokens, charged ${chargesText(run.totals)}`,
      run.endedAt ? `, ended ${time(run.endedAt)}` : "",
    ),
    table(BUDGET_HEADERS, budgetRows(run.budgets), "No cap."),
    h("h3", {}, "Receipts ", exportButton("Export CSV", "receipts", { runId: run.id })),
    table(RECEIPT_HEADERS, receiptRows(run.receipts), "No receipt yet."),
    h("h3", {}, "Ledger entries ", exportButton("Export CSV", "ledger", { runId: run.id })),
    table(LEDGER_HEADERS, ledgerRows(ledgerEntries), "No charge yet."),
  );
}

/**
 * A liveSpend tick. A project's windows are applied to its shown rows from the tick itself (no
 * query); a run's window moved, so the runs are re-read (one query, at most every RUNS_EVERY_MS).
 */
export function noteSpendTick(tick) {
  for (const scope of tick.scopes) {
    const fields = { PROJECT_DAILY: ["dailyCap", "spentToday", "remainingToday"], PROJECT_MONTHLY: ["monthlyCap", "spentThisMonth", "remainingThisMonth"] }[scope.scope];
    const row = fields && document.querySelector(`#projects-view tr[data-project-id="${CSS.escape(scope.scopeId)}"][data-bucket="${scope.bucket}"]`);
    if (!fields || !row) continue;
    const set = (field, text) => {
      const cell = row.querySelector(`[data-field="${field}"]`);
      if (cell) cell.textContent = text;
    };
    set(fields[0], money(scope.cap, "no cap"));
    set(fields[1], money(scope.spent));
    set(fields[2], money(scope.remaining, "—"));
  }
  if (tick.scopes.some((s) => s.scope === "RUN_TOTAL") && !runState.timer) {
    runState.timer = setTimeout(() => {
      runState.timer = null;
      loadRuns().catch(report("runs"));
    }, RUNS_EVERY_MS);
  }
}

function preflightInput() {
  const keyId = $("#pf-key").value;
  const model = $("#pf-model").value.trim();
  if (!keyId || !model) throw new Error("choose a key and a model");
  return { keyId, model, mode: $("#pf-mode").value };
}

function renderEstimate(e) {
  const row = (label, value, field) => h("tr", {}, h("th", {}, label), h("td", { dataset: { field } }, value));
  const range = (a, b, unit = "") => `${a}${unit} – ${b}${unit}`;
  $("#pf-result").replaceChildren(
    h("p", { className: e.allowed ? "ok" : "bad", dataset: { field: "verdict" } }, e.allowed ? "Would be admitted" : `Would be refused: ${e.reasons.join("; ")}`),
    ...e.warnings.map((w) => h("p", { className: "warn", dataset: { field: "warning" } }, w)),
    h(
      "table",
      { className: "facts" },
      h(
        "tbody",
        {},
        row("Basis", e.basis === "PROFILE" ? "built-in profile" : `history of ${e.basisRunCount} finished runs${e.basis === "HISTORY_ANY_MODEL" ? " (any model)" : ""}`, "basis"),
        row("Pays", `${e.bucket ?? "—"} · ${e.settlement ?? "—"} · ${e.channelName ?? "—"} → ${e.upstreamModel ?? "—"}${e.backupAvailable ? " (backup available)" : ""}`, "pays"),
        row("Calls", range(e.estimatedCallsMin, e.estimatedCallsMax), "calls"),
        row("Time", range(e.estimatedSecondsMin, e.estimatedSecondsMax, " s"), "seconds"),
        row("Cost", `${money(e.costMin)} – ${money(e.costMax)}`, "cost"),
        row("Recommended balance", money(e.minimumRecommendedBalance), "minimumRecommendedBalance"),
        row("Available", money(e.available), "available"),
        row("Key today", e.keyDaily ? `${money(e.keyDaily.spent)} spent of ${money(e.keyDaily.cap, "no cap")}` : "—", "keyDaily"),
        row("Retries", `at most ${e.retryCeiling} attempts; failed requests: ${e.failedChargePolicy}`, "retries"),
      ),
    ),
  );
}

export function setUpRuns({ keys, models }) {
  $("#preflight").addEventListener("submit", (event) => event.preventDefault());
  $("#pf-key").replaceChildren(...keys.map((k) => h("option", { value: k.id }, `${k.name} (${k.prefix}…${k.last4})`)));
  $("#pf-model").replaceChildren(...models.map((m) => h("option", { value: m }, m)));
  $("#pf-estimate").addEventListener("click", async () => {
    try {
      const { estimateRun } = await gql(VIEWS.estimate, { input: preflightInput() });
      renderEstimate(estimateRun);
      showError("");
    } catch (error) {
      report("estimate")(error);
    }
  });
  $("#pf-start").addEventListener("click", async () => {
    try {
      const cap = $("#pf-cap").value.trim();
      const label = $("#pf-label").value.trim();
      const { startRun } = await gql(VIEWS.startRun, { input: { ...preflightInput(), ...(cap ? { cap } : {}), ...(label ? { label } : {}) } });
      runState.openRunId = startRun.id;
      $("#pf-started").textContent = `Started run ${startRun.id}: send its requests with the header x-run-id: ${startRun.id}`;
      await Promise.all([loadRuns(), loadAudit()]);
      showError("");
    } catch (error) {
      report("start run")(error);
    }
  });
}

// ---- ledger and audit ---------------------------------------------------------------------
export async function loadLedger() {
  const { ledgerEntries } = await gql(VIEWS.ledger);
  $("#ledger-view").replaceChildren(table(LEDGER_HEADERS, ledgerRows(ledgerEntries), "No entry yet."));
}

export async function loadAudit() {
  const { auditEntries } = await gql(VIEWS.audit);
  const rows = auditEntries.edges.map(({ node: a }) =>
    h(
      "tr",
      { dataset: { auditId: a.id, action: a.action } },
      h("td", {}, time(a.createdAt)),
      h("td", {}, a.actor),
      h("td", {}, a.action),
      h("td", {}, a.targetType),
      h("td", {}, h("code", {}, a.targetId)),
    ),
  );
  $("#audit-view").replaceChildren(table(["Time", "Actor", "Action", "Target", "Target id"], rows, "No change yet."));
}

export function setUpExports() {
  $("#ledger-export").addEventListener("click", () => downloadCsv("ledger").catch(report("export ledger")));
  $("#audit-export").addEventListener("click", () => downloadCsv("audit").catch(report("export audit")));
}
