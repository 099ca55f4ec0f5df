// GraphiQL and the dashboard in real Chromium (Debian's /usr/bin/chromium driven by playwright-core),
// against a real server, database and fake upstream. Every request to another host is blocked and
// fails the test, and so does any console error. Screenshots land in .tmp/artifacts/.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { chromium, type BrowserContext, type Locator, type Page } from "playwright-core";
import OpenAI, { APIError } from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { DEFAULT_TEXT, startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { startTestServer, token } from "./support/graphql.ts";
import { formatMoney } from "../src/money/amounts.ts";
import { createApiKey } from "../src/keys/index.ts";
import type { SpendEvent } from "../src/events/index.ts";
import { events, listenerCount } from "./support/services.ts";
import type { RunningServer } from "../src/server.ts";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARTIFACTS = path.join(import.meta.dirname, "../.tmp/artifacts");
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  const message = `${CHROMIUM} is missing: the browser tests of GraphiQL and the dashboard cannot run (apt-get install -y chromium; .ci/run installs it)`;
  if (process.env.CI) throw new Error(message);
  console.warn(`\n\n!!! SKIPPED: ${message} !!!\n\n`);
}

// Generous: two cores shared by many processes.
const UI_TIMEOUT = 45_000;

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
let context: BrowserContext;
let userDataDir: string;
/** Requests the page tried to send to any other host, and console errors: both must stay empty. */
const outside: string[] = [];
const consoleErrors: string[] = [];

async function newPage(): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${page.url()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(`${page.url()}: ${error.message}`));
  return page;
}

function secretClient(secret: string): OpenAI {
  return new OpenAI({ apiKey: secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000 });
}

/** Waits until the element's text contains text (the page updates live, so poll). */
async function containsSoon(locator: Locator, text: string): Promise<void> {
  await expect.poll(() => locator.innerText({ timeout: 1_000 }).catch(() => ""), { timeout: UI_TIMEOUT, interval: 100 }).toContain(text);
}

/** GraphiQL's schema request succeeded (it carries the Authorization header the page was given). */
function introspection(page: Page) {
  return page.waitForResponse(async (response) => response.request().method() === "POST" && response.url().endsWith("/graphql") && response.ok() && (await response.text()).includes("__schema"));
}

async function openWithToken(page: Page, pathname: string, adminToken: string): Promise<void> {
  await page.goto(`${server.url}${pathname}`);
  const input = page.locator('input[type="password"]').first();
  await input.fill(adminToken);
  await input.press("Enter");
}

describe.skipIf(!haveChromium)("GraphiQL and the dashboard in Chromium", { timeout: 240_000 }, () => {
  beforeAll(async () => {
    database = await createTestDatabase();
    fake = await startFakeUpstream();
    server = await startTestServer();
    mkdirSync(ARTIFACTS, { recursive: true });
    userDataDir = mkdtempSync(path.join(tmpdir(), "tokengate-chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const origin = new URL(server.url).origin;
    await context.route("**/*", async (route) => {
      const url = route.request().url();
      if (new URL(url).origin === origin) return route.continue();
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
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
    await server?.close();
    await fake?.close();
    await database?.dispose();
  });

  it("GraphiQL renders from local assets, runs a query and a live subscription with the token it asked for", async () => {
    const w = await f.world({ credit: "7" });
    const model = `gql-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-graphiql", price: ["2.5", "10"] }]);
    const page = await newPage();
    const introspected = introspection(page);
    await openWithToken(page, "/graphql", await token("ORG_ADMIN", w.org.id));
    await page.locator(".graphiql-container .monaco-editor").first().waitFor({ state: "visible" });
    await introspected; // the schema (fetched with the token) is loaded: GraphiQL is ready
    // Every script, style and worker came from this server (the route handler saw no other host).

    // The default query reads the wallet of the token's organization.
    await page.locator(".graphiql-execute-button").click();
    await expect.poll(() => page.locator(".result-window").innerText(), { timeout: UI_TIMEOUT }).toContain("7.000000");

    // A subscription typed into the editor streams over SSE with the same Authorization header.
    const queryEditor = page.locator(".graphiql-query-editor .monaco-editor").first();
    // The editor's text lines only (not its line-number gutter), to compare exactly.
    const queryLines = page.locator(".graphiql-query-editor .monaco-editor .view-lines").first();
    const subscription = "subscription Live { receiptCreated { requestId charge { amount } } }";
    await expect
      .poll(
        async () => {
          // Monaco may not hold the focus yet under load: type again until the editor shows the text.
          await queryEditor.click();
          await page.keyboard.press("Control+A");
          await page.keyboard.press("Delete");
          await page.keyboard.insertText(subscription);
          return (await queryLines.innerText()).replace(/\s+/g, " ").trim();
        },
        { timeout: UI_TIMEOUT, interval: 500 },
      )
      // Exactly the subscription: an auto-closed bracket or a stray character would make it another document.
      .toBe(subscription);
    const listening = listenerCount();
    // Under load GraphiQL may swallow the click while Monaco's workers still load (no request leaves
    // the page); click again only as long as no subscription request was sent (a second click on a
    // running subscription would stop it).
    let subscriptionRequests = 0;
    page.on("request", (r) => {
      if (r.url().includes("/graphql") && (r.headers().accept ?? "").includes("text/event-stream")) subscriptionRequests++;
    });
    await expect
      .poll(
        async () => {
          if (subscriptionRequests === 0) await page.locator(".graphiql-execute-button").click();
          return listenerCount();
        },
        { timeout: UI_TIMEOUT, interval: 3_000 },
      )
      .toBeGreaterThan(listening); // subscribed on the server
    const { response } = await secretClient(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 20 })
      .withResponse();
    const requestId = response.headers.get("x-request-id")!;
    await expect.poll(() => page.locator(".result-window").innerText(), { timeout: UI_TIMEOUT }).toContain(requestId);
    expect(await page.locator(".result-window").innerText()).toContain(response.headers.get("x-tokengate-charge")!);
    await page.screenshot({ path: path.join(ARTIFACTS, "graphiql.png") });
    await page.close();
  });

  it("the dashboard shows the wallet, a /v1 request live in the feed and the key's spend, and pauses, resumes and revokes the key", async () => {
    const w = await f.world({ credit: "12.5", key: { dailyCap: "2" } });
    const model = `dash-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-dash", price: ["2.5", "10"] }]);
    // Token classes inside the totals: the feed row shows them from the liveFeed tick itself.
    fake.set("up-dash", { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 50 }, details: { cached_tokens: 900, reasoning_tokens: 20 } });
    // Key names are user input: this one must show as text, never as markup.
    const hostile = await createApiKey(w.viewer, { projectId: w.project.id, name: `<img src=x onerror="document.title='pwned'">` });
    const page = await newPage();
    await openWithToken(page, "/dashboard", await token("ORG_ADMIN", w.org.id));
    await containsSoon(page.locator('#wallet tr[data-bucket="CREDIT"]'), "12.500000 USD");
    const row = page.locator(`#keys tr[data-key-id="${w.key.id}"]`);
    await containsSoon(row, "ACTIVE");
    await containsSoon(row.locator('[data-field="spendToday"]'), "0.000000 USD");
    await containsSoon(page.locator(`#keys tr[data-key-id="${hostile.apiKey.id}"]`), `<img src=x onerror=`);
    expect(await page.locator("#keys img").count()).toBe(0);
    await containsSoon(page.locator("#live-state"), "live");

    // A request through /v1 with the official SDK: its receipt appears in the feed and in the key's spend, no reload.
    const spends = events.subscribe("spend");
    const spendEvent = (async () => {
      for await (const event of spends as AsyncIterable<SpendEvent>) if (event.keyId === w.key.id) return event;
      return null;
    })();
    const { response } = await secretClient(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "hello dashboard" }], max_tokens: 40 })
      .withResponse();
    const requestId = response.headers.get("x-request-id")!;
    const charge = response.headers.get("x-tokengate-charge")!;
    const receipt = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId } });
    expect(formatMoney(receipt.charge)).toBe(charge);
    expect(receipt.charge).toBeGreaterThan(0n);
    const feedRow = page.locator(`#feed tr[data-request-id="${requestId}"]`);
    await containsSoon(feedRow.locator('[data-field="charge"]'), `${charge} USD`);
    await containsSoon(feedRow, `${model} → ${model} · main`);
    await containsSoon(feedRow, "1000+50 (cached 900, reasoning 20)");
    await containsSoon(row.locator('[data-field="spendToday"]'), `${charge} USD`);
    // Remaining = cap − spent − held, as the batch that recorded the request left the counter. On
    // leases (the default) held is the instance's leased headroom, so remaining is at most cap − charge.
    const event = (await spendEvent)!;
    await spends.return?.();
    expect(event.keySpendToday).toBe(receipt.charge.toString());
    const remainingMicros = BigInt(event.keyRemainingToday!);
    expect(remainingMicros).toBeLessThanOrEqual(2_000_000n - receipt.charge);
    expect(remainingMicros).toBeGreaterThanOrEqual(0n);
    await containsSoon(row.locator('[data-field="remainingToday"]'), `${formatMoney(remainingMicros)} USD`);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png"), fullPage: true });

    // Pause from the page: /v1 answers 403 key_paused, and the refusal shows in the feed.
    await row.locator('button[data-action="pauseKey"]').click();
    await containsSoon(row.locator(".status"), "PAUSED");
    const refused = await secretClient(w.secret)
      .chat.completions.create({ model, messages: [{ role: "user", content: "still there?" }], max_tokens: 40 })
      .then(
        () => null,
        (error: unknown) => error as APIError,
      );
    expect(refused).toBeInstanceOf(APIError);
    expect(refused!.status).toBe(403);
    expect(refused!.code).toBe("key_paused");
    const refusedId = refused!.headers!.get("x-request-id")!;
    await containsSoon(page.locator(`#feed tr[data-request-id="${refusedId}"]`), "403 KEY_PAUSED");
    const audit = await database.prisma.auditEntry.findFirst({ where: { targetId: w.key.id, action: { contains: "pause" } } });
    expect(audit).not.toBeNull();

    await row.locator('button[data-action="resumeKey"]').click();
    await containsSoon(row.locator(".status"), "ACTIVE");
    await expect(secretClient(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "back" }], max_tokens: 40 })).resolves.toBeTruthy();

    // Revoke asks first; once confirmed the secret stops working: 401 key_revoked.
    page.once("dialog", (dialog) => void dialog.accept());
    await row.locator('button[data-action="revokeKey"]').click();
    await containsSoon(row.locator(".status"), "REVOKED");
    // No state change is offered for a revoked key (its Details view stays).
    expect(await row.locator('button:not([data-action="details"])').count()).toBe(0);
    expect(await row.locator('button[data-action="details"]').count()).toBe(1);
    await expect(secretClient(w.secret).chat.completions.create({ model, messages: [{ role: "user", content: "gone" }], max_tokens: 40 })).rejects.toMatchObject({
      status: 401,
      code: "key_revoked",
    });
    await page.close();
  });

  it("the playground streams an answer and shows its receipt with the exact charge and its ledger entry", async () => {
    const w = await f.world({ credit: "3" });
    const model = `play-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-play", price: ["2.5", "10"] }]);
    fake.set("up-play", { type: "ok", delayMs: 20 });
    const page = await newPage();
    await openWithToken(page, "/dashboard", await token("ORG_ADMIN", w.org.id));
    await containsSoon(page.locator('#wallet tr[data-bucket="CREDIT"]'), "3.000000 USD");

    await page.locator("#pg-secret").fill(w.secret);
    await page.locator("#pg-models").click();
    await page.locator(`#pg-model option[value="${model}"]`).waitFor({ state: "attached" });
    await page.locator("#pg-model").selectOption(model);
    await page.locator("#pg-prompt").fill("Tell me about foxes.");
    await page.locator("#pg-send").click();
    await containsSoon(page.locator("#pg-output"), DEFAULT_TEXT);
    const requestId = (await page.locator('#pg-receipt [data-field="requestId"]').innerText({ timeout: UI_TIMEOUT })).trim();
    const receipt = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId }, include: { ledgerEntry: true } });
    expect(receipt.stream).toBe(true);
    expect(receipt.keyId).toBe(w.key.id);
    await containsSoon(page.locator('#pg-receipt [data-field="charge"]'), `${formatMoney(receipt.charge)} USD`);
    await containsSoon(page.locator('#pg-receipt [data-field="bucket"]'), "CREDIT");
    await containsSoon(page.locator('#pg-receipt [data-field="channel"]'), "main (primary)");
    await containsSoon(page.locator('#pg-receipt [data-field="fallback"]'), "no");
    await containsSoon(page.locator('#pg-receipt [data-field="tokens"]'), `${receipt.promptTokens} prompt + ${receipt.completionTokens} completion`);
    const ledger = receipt.ledgerEntry!;
    expect(ledger.amount).toBe(-receipt.charge);
    await containsSoon(page.locator('#pg-receipt [data-field="ledger"]'), `CHARGE ${formatMoney(ledger.amount)} USD, balance after ${formatMoney(ledger.balanceAfter)} USD`);
    await page.locator("#playground-section").screenshot({ path: path.join(ARTIFACTS, "playground.png") });
    await page.close();
  });
});
