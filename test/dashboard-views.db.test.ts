// The dashboard's detail views in real Chromium (Debian's /usr/bin/chromium through playwright-core)
// against a real server, database and fake upstream, every number compared with what the API says:
// projects with their caps, a key's panel, a run from pre-flight to its charges (pause, cancel),
// the ledger and the audit trail with their CSV downloads. Requests to other hosts and console
// errors fail the test.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from "playwright-core";
import OpenAI from "openai";
import { parseCsv } from "./support/csv.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, startTestServer, token } from "./support/graphql.ts";
import { formatMoney } from "../src/money/amounts.ts";
import type { RunningServer } from "../src/server.ts";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARTIFACTS = path.join(import.meta.dirname, "../.tmp/artifacts");
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  const message = `${CHROMIUM} is missing: the browser tests of the dashboard's views cannot run (apt-get install -y chromium; .ci/run installs it)`;
  if (process.env.CI) throw new Error(message);
  console.warn(`\n\n!!! SKIPPED: ${message} !!!\n\n`);
}

// Generous: two cores shared by many processes.
const UI_TIMEOUT = 45_000;

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
let browser: Browser;
let context: BrowserContext;
let downloads: string;
const outside: string[] = [];
const consoleErrors: string[] = [];

async function containsSoon(locator: Locator, text: string): Promise<void> {
  await expect.poll(() => locator.innerText({ timeout: 1_000 }).catch(() => ""), { timeout: UI_TIMEOUT, interval: 100 }).toContain(text);
}

async function openDashboard(adminToken: string): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${page.url()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(`${page.url()}: ${error.message}`));
  await page.goto(`${server.url}/dashboard#token=${encodeURIComponent(adminToken)}`);
  await containsSoon(page.locator("#live-state"), "live");
  return page;
}

/** Clicks an export button and returns the CSV the browser saved, as records of its columns. */
async function downloadCsv(page: Page, button: Locator): Promise<Array<Record<string, string>>> {
  const [download] = await Promise.all([page.waitForEvent("download"), button.click()]);
  const file = path.join(downloads, download.suggestedFilename());
  await download.saveAs(file);
  const [header, ...records] = parseCsv(readFileSync(file, "utf8"));
  return records.map((r) => Object.fromEntries(header!.map((column, i) => [column, r[i]!])));
}

const usd = (micros: bigint) => `${formatMoney(micros)} USD`;

describe.skipIf(!haveChromium)("the dashboard's views in Chromium", { timeout: 300_000 }, () => {
  beforeAll(async () => {
    database = await createTestDatabase();
    fake = await startFakeUpstream();
    server = await startTestServer();
    mkdirSync(ARTIFACTS, { recursive: true });
    downloads = mkdtempSync(path.join(tmpdir(), "tokengate-downloads-"));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
    const origin = new URL(server.url).origin;
    await context.route("**/*", async (route) => {
      const url = route.request().url();
      if (url.startsWith("blob:") || new URL(url).origin === origin) return route.continue();
      outside.push(url);
      return route.abort("blockedbyclient");
    });
  });

  afterEach(() => {
    expect(outside, "requests to other hosts").toEqual([]);
    expect(consoleErrors, "console errors").toEqual([]);
  });

  afterAll(async () => {
    await context?.close();
    await browser?.close();
    if (downloads) rmSync(downloads, { recursive: true, force: true });
    await server?.close();
    await fake?.close();
    await database?.dispose();
  });

  it("projects show their caps and spend, and a key's panel its limits, receipts and ledger entries, as the API has them", async () => {
    const w = await f.world({ credit: "20", key: { dailyCap: "3", perRequestMaxCharge: "1" }, project: { dailyCap: "5", monthlyCap: "40" } });
    const model = `views-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-views", price: ["2.5", "10"] }]);
    const openai = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0 });
    const requestIds: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `hello ${i}` }], max_tokens: 20 }).withResponse();
      requestIds.push(response.headers.get("x-request-id")!);
    }
    const adminToken = await token("ORG_ADMIN", w.org.id);
    const page = await openDashboard(adminToken);

    const api = await gqlOk<{
      project: { spendToday: { amount: string }; spendThisMonth: { amount: string }; remainingToday: { amount: string } | null };
      apiKey: { spendToday: { amount: string }; remainingToday: { amount: string } };
      ledgerEntries: { edges: Array<{ node: { amount: { amount: string }; receipt: { requestId: string } } }> };
    }>(
      adminToken,
      `query($p: ID!, $k: ID!) {
        project(id: $p) { spendToday { amount } spendThisMonth { amount } remainingToday { amount } }
        apiKey(id: $k) { spendToday { amount } remainingToday { amount } }
        ledgerEntries(keyId: $k, first: 10) { edges { node { amount { amount } receipt { requestId } } } }
      }`,
      { p: w.project.id, k: w.key.id },
    );
    const receipts = await database.prisma.receipt.findMany({ where: { keyId: w.key.id } });
    const spent = receipts.reduce((s, r) => s + r.charge, 0n);
    expect(spent).toBeGreaterThan(0n);
    expect(api.project.spendToday.amount).toBe(formatMoney(spent));

    const projectRow = page.locator(`#projects-view tr[data-project-id="${w.project.id}"][data-bucket="CREDIT"]`);
    await containsSoon(projectRow.locator('[data-field="dailyCap"]'), "5.000000 USD");
    await containsSoon(projectRow.locator('[data-field="monthlyCap"]'), "40.000000 USD");
    await containsSoon(projectRow.locator('[data-field="spentToday"]'), usd(spent));
    await containsSoon(projectRow.locator('[data-field="spentThisMonth"]'), `${api.project.spendThisMonth.amount} USD`);

    // The key's panel: its caps, spend per bucket, and the same receipts and ledger entries.
    await page.locator(`#keys tr[data-key-id="${w.key.id}"] button[data-action="details"]`).click();
    const panel = page.locator(`#key-panel[data-key-id="${w.key.id}"]`);
    await containsSoon(panel.locator('[data-field="Spend today"]'), `CREDIT: ${api.apiKey.spendToday.amount} USD`);
    await containsSoon(panel.locator('[data-field="Per request"]'), "CREDIT: 1.000000 USD");
    const keyWindow = panel.locator('tr[data-scope="KEY_DAILY"][data-bucket="CREDIT"]');
    await containsSoon(keyWindow.locator('[data-field="cap"]'), "3.000000 USD");
    await containsSoon(keyWindow.locator('[data-field="spent"]'), usd(spent));
    for (const requestId of requestIds) {
      const receipt = receipts.find((r) => r.requestId === requestId)!;
      await containsSoon(panel.locator(`#key-receipts tr[data-request-id="${requestId}"] [data-field="charge"]`), usd(receipt.charge));
    }
    // Its plan for the model: the channel it would use with its price, and every limit per bucket as the API has it.
    const { apiKey: planned } = await gqlOk<{
      apiKey: { plan: Array<{ model: string; limits: Array<{ kind: string; bucket: string; limit: { amount: string } | null; spent: { amount: string } }> }> };
    }>(adminToken, `query($k: ID!, $m: String!) { apiKey(id: $k) { plan(model: $m) { model limits { kind bucket limit { amount } spent { amount } } } } }`, { k: w.key.id, m: model });
    const plan = panel.locator(`.plan[data-plan-model="${model}"]`);
    await containsSoon(plan, "callable");
    await containsSoon(plan.locator('tr[data-position="0"] [data-field="price"]'), "2.500000 USD / 10.000000 USD");
    for (const l of planned.plan[0]!.limits.filter((x) => x.bucket === "CREDIT" && x.kind !== "BALANCE")) {
      const shown = plan.locator(`tr[data-limit="${l.kind}"][data-bucket="CREDIT"]`);
      await containsSoon(shown.locator('[data-field="spent"]'), `${l.spent.amount} USD`);
      if (l.limit) await containsSoon(shown.locator('[data-field="cap"]'), `${l.limit.amount} USD`);
    }
    await containsSoon(panel.locator('tr[data-spend-bucket="CREDIT"] [data-field="charged"]'), usd(spent));
    const shownLedger = await panel.locator('#key-ledger [data-field="amount"]').allInnerTexts();
    expect(shownLedger).toEqual(api.ledgerEntries.edges.map((e) => `${e.node.amount.amount} USD`));
    expect(api.ledgerEntries.edges.map((e) => e.node.receipt.requestId).sort()).toEqual([...requestIds].sort());

    // Its CSV export link downloads exactly its receipts.
    const csv = await downloadCsv(page, panel.locator('button[data-export="receipts"]'));
    expect(csv.map((r) => r.requestId).sort()).toEqual([...requestIds].sort());
    expect(csv.map((r) => r.charge).sort()).toEqual(receipts.map((r) => formatMoney(r.charge)).sort());
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-key-panel.png"), fullPage: true });
    await page.close();
  });

  it("a run from pre-flight to its charges: estimate, start, live progress, pause, cancel, its receipts and ledger entries", async () => {
    const w = await f.world({ credit: "30" });
    const model = `runs-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-runs", price: ["2.5", "10"] }]);
    const adminToken = await token("ORG_ADMIN", w.org.id);
    const page = await openDashboard(adminToken);

    // Pre-flight: the page shows what estimateRun says.
    await page.locator("#pf-key").selectOption(w.key.id);
    await page.locator("#pf-model").selectOption(model);
    await page.locator("#pf-mode").selectOption("QUICK");
    await page.locator("#pf-estimate").click();
    const { estimateRun } = await gqlOk<{ estimateRun: { costMin: { amount: string }; costMax: { amount: string }; minimumRecommendedBalance: { amount: string } } }>(
      adminToken,
      `query($i: EstimateRunInput!) { estimateRun(input: $i) { costMin { amount } costMax { amount } minimumRecommendedBalance { amount } } }`,
      { i: { keyId: w.key.id, model, mode: "QUICK" } },
    );
    await containsSoon(page.locator('#pf-result [data-field="verdict"]'), "Would be admitted");
    await containsSoon(page.locator('#pf-result [data-field="cost"]'), `${estimateRun.costMin.amount} USD – ${estimateRun.costMax.amount} USD`);
    await containsSoon(page.locator('#pf-result [data-field="minimumRecommendedBalance"]'), `${estimateRun.minimumRecommendedBalance.amount} USD`);
    await containsSoon(page.locator('#pf-result [data-field="basis"]'), "built-in profile");

    // Start: the run appears, ACTIVE, with its cap.
    await page.locator("#pf-cap").fill("2");
    await page.locator("#pf-label").fill("nightly triage");
    await page.locator("#pf-start").click();
    await expect.poll(() => database.prisma.run.count({ where: { keyId: w.key.id } }), { timeout: UI_TIMEOUT }).toBe(1);
    const run = await database.prisma.run.findFirstOrThrow({ where: { keyId: w.key.id } });
    expect(run.label).toBe("nightly triage");
    expect(run.model).toBe(model);
    const row = page.locator(`#runs tr[data-run-id="${run.id}"]`);
    await containsSoon(row.locator('[data-field="status"]'), "ACTIVE");
    await containsSoon(row.locator('[data-field="remaining"]'), "2.000000 USD of 2.000000 USD");

    // Live progress: requests sent with the run's id show up in its row without a reload.
    const openai = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0, defaultHeaders: { "x-run-id": run.id } });
    const requestIds: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `step ${i}` }], max_tokens: 30 }).withResponse();
      requestIds.push(response.headers.get("x-request-id")!);
    }
    const receipts = await database.prisma.receipt.findMany({ where: { runId: run.id } });
    const charged = receipts.reduce((s, r) => s + r.charge, 0n);
    await containsSoon(row.locator('[data-field="requests"]'), "2");
    await containsSoon(row.locator('[data-field="charged"]'), usd(charged));
    const { run: apiRun } = await gqlOk<{ run: { totals: { charges: Array<{ amount: { amount: string } }> }; budgets: Array<{ remaining: { amount: string } | null }> } }>(
      adminToken,
      `query($id: ID!) { run(id: $id) { totals { charges { amount { amount } } } budgets { remaining { amount } } } }`,
      { id: run.id },
    );
    expect(apiRun.totals.charges.map((c) => c.amount.amount)).toEqual([formatMoney(charged)]);
    await containsSoon(row.locator('[data-field="remaining"]'), `${apiRun.budgets.find((b) => b.remaining)!.remaining!.amount} USD of 2.000000 USD`);

    // Its detail: the receipts and ledger entries of the run.
    await row.locator('button[data-action="open"]').click();
    const detail = page.locator(`#run-detail[data-run-id="${run.id}"]`);
    for (const r of receipts) await containsSoon(detail.locator(`tr[data-request-id="${r.requestId}"] [data-field="charge"]`), usd(r.charge));
    const entries = await database.prisma.ledgerEntry.findMany({ where: { receiptId: { in: receipts.map((r) => r.id) } } });
    expect(entries).toHaveLength(2);
    await expect.poll(async () => (await detail.locator('[data-field="amount"]').allInnerTexts()).sort(), { timeout: UI_TIMEOUT }).toEqual(entries.map((e) => usd(e.amount)).sort());
    const ledgerCsv = await downloadCsv(page, detail.locator('button[data-export="ledger"]'));
    expect(ledgerCsv.map((r) => r.amount).sort()).toEqual(entries.map((e) => formatMoney(e.amount)).sort());

    // Pause: the API says PAUSED and the next request is refused; cancel ends it.
    await row.locator('button[data-action="pauseRun"]').click();
    await containsSoon(row.locator('[data-field="status"]'), "PAUSED");
    expect((await database.prisma.run.findUniqueOrThrow({ where: { id: run.id } })).status).toBe("PAUSED");
    await expect(openai.chat.completions.create({ model, messages: [{ role: "user", content: "paused?" }], max_tokens: 5 })).rejects.toMatchObject({ status: 402 });
    await row.locator('button[data-action="cancelRun"]').click();
    await containsSoon(row.locator('[data-field="status"]'), "CANCELLED");
    expect((await database.prisma.run.findUniqueOrThrow({ where: { id: run.id } })).status).toBe("CANCELLED");
    // The page's own changes are in its audit trail at once.
    for (const action of ["startRun", "pauseRun", "cancelRun"]) await containsSoon(page.locator("#audit-view"), action);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-runs.png"), fullPage: true });
    await page.close();
  });

  it("the ledger and the audit trail show the API's newest entries and download as CSV", async () => {
    const w = await f.world({ credit: "9" });
    await f.topUp(w.org.id, "CREDIT", "1.5");
    const adminToken = await token("ORG_ADMIN", w.org.id);
    await gqlOk(adminToken, `mutation($id: ID!) { pauseKey(id: $id) { id } }`, { id: w.key.id });
    const page = await openDashboard(adminToken);

    const { ledgerEntries, auditEntries } = await gqlOk<{
      ledgerEntries: { edges: Array<{ node: { id: string; amount: { amount: string }; balanceAfter: { amount: string } } }> };
      auditEntries: { edges: Array<{ node: { id: string; action: string; targetId: string } }> };
    }>(adminToken, `{ ledgerEntries(first: 20) { edges { node { id amount { amount } balanceAfter { amount } } } } auditEntries(first: 20) { edges { node { id action targetId } } } }`);
    expect(ledgerEntries.edges.map((e) => e.node.amount.amount)).toEqual(["1.500000", "9.000000"]);
    for (const { node } of ledgerEntries.edges) {
      const shown = page.locator(`#ledger-view tr[data-entry-id="${node.id}"]`);
      await containsSoon(shown.locator('[data-field="amount"]'), `${node.amount.amount} USD`);
      await containsSoon(shown.locator('[data-field="balanceAfter"]'), `${node.balanceAfter.amount} USD`);
    }
    const paused = auditEntries.edges.find((e) => e.node.action === "pauseKey" && e.node.targetId === w.key.id);
    expect(paused).toBeDefined();
    await containsSoon(page.locator(`#audit-view tr[data-audit-id="${paused!.node.id}"]`), "pauseKey");

    const ledgerCsv = await downloadCsv(page, page.locator("#ledger-export"));
    expect(ledgerCsv.map((r) => [r.id, r.amount])).toEqual([...ledgerEntries.edges].reverse().map((e) => [e.node.id, e.node.amount.amount]));
    const auditCsv = await downloadCsv(page, page.locator("#audit-export"));
    expect(auditCsv.map((r) => r.id).sort()).toEqual(auditEntries.edges.map((e) => e.node.id).sort());
    await page.close();
  });
});
