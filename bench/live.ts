// `npm run bench -- live` (issue 15): what open dashboards cost the passthrough. One run, one
// gateway process (the whole server: /v1, /graphql + graphql-ws, /dashboard, on PGlite with 1,000
// keys), the fake upstream in another, autocannon here: the gateway cell (16 connections, JSON chat
// completions) with 0, 1 and 10 dashboards open (real Chromium tabs of /dashboard, Debian's
// chromium through playwright-core) and with 10 and 100 graphql-ws clients holding the dashboard's
// five operations. Per cell: gateway req/s and CPU µs per request (utime + stime of the gateway
// process ÷ 2xx answers), what each dashboard sends per second (HTTP requests, WebSocket frames)
// and receives, and event lag commit → client (liveFeed: now − the newest receipt's createdAt;
// liveSpend: now − the tick's newest request). Beside it, in the same run, the 1,000-subscriber
// keySpend fan-out against a bare ws broadcast (bench/events.ts).
import { existsSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";
import { chromium, type Browser, type Page } from "playwright-core";
import { compiled } from "../test/support/build.ts";
import { load, startChild, stopChild } from "./gateway.ts";
import { benchEvents } from "./events.ts";
import { LIVE } from "../src/dashboard/operations.ts";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CONNECTIONS = 16;

interface Viewer {
  /** What this viewer sent / received since the last reset. */
  http: number;
  framesSent: number;
  framesReceived: number;
  close(): Promise<void>;
}

interface Lags {
  receipt: number[];
  spend: number[];
}

interface Cell {
  name: string;
  viewers: number;
  rps: number;
  cpuUs: number;
  /** CPU the Chromium processes used during the cell, in cores (seconds of CPU per second). */
  chromiumCores: number;
  seconds: number;
  httpPerViewer: number;
  sentPerViewer: number;
  receivedPerViewer: number;
  lags: Lags;
  non2xx: number;
  /** Which repetition of the plan it belongs to (BENCH_LIVE_ROUNDS): compared with that round's controls. */
  round: number;
  /** A cell that measures the browser alone (blank tabs): reported, not held to a target. */
  baseline?: boolean;
}

/** utime + stime of every Chromium process (browser, renderers, utility), in seconds (clock ticks of 1/100 s). */
function chromiumCpuSeconds(): number {
  let ticks = 0;
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("chromium")) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // The process ended while it was read.
    }
  }
  return ticks / 100;
}

const percentile = (values: number[], p: number) => {
  if (!values.length) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
};

/** Lag of a graphql-ws `next` message: feed ticks against their newest request's createdAt, spend ticks against their newest request. */
function noteLag(raw: string, lags: Lags): void {
  if (!raw.includes('"next"')) return;
  const now = Date.now();
  const message = JSON.parse(raw) as { type: string; payload?: { data?: { liveFeed?: { items: Array<{ createdAt: string }> }; liveSpend?: { lastRequestAt: string | null } } } };
  const data = message.payload?.data;
  const newest = data?.liveFeed?.items[0];
  if (newest) lags.receipt.push(now - Date.parse(newest.createdAt));
  if (data?.liveSpend?.lastRequestAt) lags.spend.push(now - Date.parse(data.liveSpend.lastRequestAt));
}

async function openTab(browser: Browser, url: string, adminToken: string, lags: Lags): Promise<Viewer> {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const origin = new URL(url).origin;
  await context.route("**/*", (route) => (new URL(route.request().url()).origin === origin ? route.continue() : route.abort("blockedbyclient")));
  const page: Page = await context.newPage();
  const viewer: Viewer = { http: 0, framesSent: 0, framesReceived: 0, close: () => context.close() };
  page.on("request", () => viewer.http++);
  page.on("websocket", (socket) => {
    socket.on("framesent", () => viewer.framesSent++);
    socket.on("framereceived", (frame) => {
      viewer.framesReceived++;
      noteLag(String(frame.payload), lags);
    });
  });
  await page.goto(`${url}/dashboard#token=${encodeURIComponent(adminToken)}`);
  await page.locator("#live-state").filter({ hasText: "live" }).waitFor({ timeout: 60_000 });
  await page.locator("#keys tbody tr[data-key-id]").first().waitFor({ timeout: 60_000 });
  return viewer;
}

/** A Chromium tab of about:blank: what ten open tabs cost the machine before any page of ours runs. */
async function openBlankTab(browser: Browser): Promise<Viewer> {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page: Page = await context.newPage();
  await page.goto("about:blank");
  return { http: 0, framesSent: 0, framesReceived: 0, close: () => context.close() };
}

/** A graphql-ws client holding the dashboard's five operations, counting its frames. */
function openClient(url: string, adminToken: string, lags: Lags): Viewer {
  const viewer: Viewer = { http: 0, framesSent: 0, framesReceived: 0, close: async () => client.dispose() };
  class Counting extends WebSocket {
    constructor(address: string, protocols?: string | string[]) {
      super(address, protocols);
      this.on("message", (data) => {
        viewer.framesReceived++;
        noteLag(String(data), lags);
      });
      this.on("upgrade", () => undefined);
      const send = WebSocket.prototype.send;
      const self = this;
      this.send = function (this: WebSocket, ...args: unknown[]) {
        viewer.framesSent++;
        return (send as (...a: unknown[]) => void).apply(self, args);
      } as WebSocket["send"];
    }
  }
  const client: Client = createClient({
    url: `${url.replace("http", "ws")}/graphql`,
    webSocketImpl: Counting,
    connectionParams: { authorization: `Bearer ${adminToken}` },
    retryAttempts: 3,
    lazy: false,
  });
  for (const query of Object.values(LIVE)) client.subscribe({ query }, { next: () => undefined, error: () => undefined, complete: () => undefined });
  return viewer;
}

export async function benchLive(options: { durationSeconds?: number } = {}): Promise<string> {
  const duration = options.durationSeconds ?? 10;
  const upstream = await startChild("./upstream-process.ts", {});
  const upstreamOrigin = `http://127.0.0.1:${upstream.info.port as number}`;
  const gateway = await startChild(compiled("bench/live-process.ts"), { BENCH_UPSTREAM_URL: `${upstreamOrigin}/v1` });
  const url = gateway.info.url as string;
  const adminToken = gateway.info.adminToken as string;
  const body = JSON.stringify({ model: gateway.info.model, messages: [{ role: "user", content: "Say hello in five words." }], max_tokens: 16 });
  const auth = { authorization: `Bearer ${gateway.info.secret as string}` };
  const haveChromium = existsSync(CHROMIUM);
  const browser = haveChromium
    ? await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      })
    : null;
  const cells: Cell[] = [];
  const notes: string[] = [];
  try {
    // Warm-up: JIT, pools, caches, lease headroom.
    await load(`${url}/v1/chat/completions`, body, auth, CONNECTIONS, 3);
    const plan: Array<{ name: string; baseline?: boolean; open: (lags: Lags) => Promise<Viewer[]> }> = [
      { name: "no dashboard", open: async () => [] },
      ...(browser
        ? [
            { name: "10 blank Chromium tabs (the browser alone)", baseline: true, open: async () => Promise.all(Array.from({ length: 10 }, () => openBlankTab(browser))) },
            { name: "1 dashboard (Chromium tab)", open: async (lags: Lags) => [await openTab(browser, url, adminToken, lags)] },
            { name: "10 dashboards (Chromium tabs)", open: async (lags: Lags) => Promise.all(Array.from({ length: 10 }, () => openTab(browser, url, adminToken, lags))) },
          ]
        : []),
      { name: "10 graphql-ws clients (the dashboard's 5 operations)", open: async (lags: Lags) => Array.from({ length: 10 }, () => openClient(url, adminToken, lags)) },
      { name: "100 graphql-ws clients (the dashboard's 5 operations)", open: async (lags: Lags) => Array.from({ length: 100 }, () => openClient(url, adminToken, lags)) },
      // The control again, last: the machine and the database drift over a run (±25 % seen here), so
      // every cell is compared with the mean of the first and the last no-dashboard cells.
      { name: "no dashboard (control, last)", open: async () => [] },
    ];
    if (!browser) notes.push(`${CHROMIUM} is missing: the Chromium cells were skipped.`);
    // BENCH_LIVE_ONLY="no dashboard,100 graphql-ws" runs only the cells whose names start so (e.g. to profile one with BENCH_CPU_PROF).
    const only = process.env.BENCH_LIVE_ONLY?.split(",").map((s) => s.trim());
    // BENCH_LIVE_ROUNDS=3 runs the whole plan three times: each cell is compared with its own round's
    // controls, and the table shows the median over rounds (the machine drifts within a run).
    const rounds = Math.max(1, Number(process.env.BENCH_LIVE_ROUNDS ?? 1));
    for (let round = 1; round <= rounds; round++)
      for (const step of plan.filter((p) => !only || only.some((o) => p.name.startsWith(o)))) {
        const lags: Lags = { receipt: [], spend: [] };
        const viewers = await step.open(lags);
        // Let the page load and its subscriptions start before measuring.
        await new Promise((r) => setTimeout(r, viewers.length ? 3_000 : 500));
        for (const v of viewers) v.http = v.framesSent = v.framesReceived = 0;
        lags.receipt.length = lags.spend.length = 0;
        const started = performance.now();
        const chromiumBefore = chromiumCpuSeconds();
        const m = await load(`${url}/v1/chat/completions`, body, auth, CONNECTIONS, duration, gateway.child.pid);
        const seconds = (performance.now() - started) / 1000;
        const chromiumCores = (chromiumCpuSeconds() - chromiumBefore) / seconds;
        const per = (f: (v: Viewer) => number) => (viewers.length ? viewers.reduce((s, v) => s + f(v), 0) / viewers.length / seconds : 0);
        cells.push({
          name: step.name,
          viewers: viewers.length,
          rps: m.rps,
          cpuUs: m.cpuUsPerRequest,
          chromiumCores,
          seconds,
          httpPerViewer: per((v) => v.http),
          sentPerViewer: per((v) => v.framesSent),
          receivedPerViewer: per((v) => v.framesReceived),
          lags: { receipt: [...lags.receipt], spend: [...lags.spend] },
          non2xx: m.non2xx + m.errors,
          round,
          baseline: step.baseline,
        });
        console.error(`[bench] live round ${round} ${step.name}: ${m.rps.toFixed(0)} req/s, ${m.cpuUsPerRequest.toFixed(0)} µs/req, Chromium ${chromiumCores.toFixed(2)} cores`);
        await Promise.all(viewers.map((v) => v.close()));
        await new Promise((r) => setTimeout(r, 1_000));
      }
  } finally {
    await browser?.close();
    await stopChild(gateway.child);
    await stopChild(upstream.child);
  }
  const fanout = await benchEvents();

  // Per round: the mean of its no-dashboard cells is "none"; each cell's ratios are against its own round's.
  const roundBase = new Map<number, { rps: number; cpuUs: number }>();
  for (const round of new Set(cells.map((c) => c.round))) {
    const controls = cells.filter((c) => c.round === round && c.viewers === 0);
    const mean = (f: (c: Cell) => number) => controls.reduce((sum, c) => sum + f(c), 0) / controls.length;
    roundBase.set(round, { rps: mean((c) => c.rps), cpuUs: mean((c) => c.cpuUs) });
  }
  const median = (values: number[]) => {
    const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
    if (!sorted.length) return Number.NaN;
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  };
  // One row per cell name: medians over the rounds, lags pooled.
  const summary = [...new Set(cells.map((c) => c.name))].map((name) => {
    const runs = cells.filter((c) => c.name === name);
    const ratio = (f: (c: Cell) => number, g: (b: { rps: number; cpuUs: number }) => number) => median(runs.map((c) => f(c) / g(roundBase.get(c.round)!)));
    return {
      ...runs[0]!,
      rps: median(runs.map((c) => c.rps)),
      cpuUs: median(runs.map((c) => c.cpuUs)),
      rpsRatio: ratio(
        (c) => c.rps,
        (b) => b.rps,
      ),
      cpuRatio: ratio(
        (c) => c.cpuUs,
        (b) => b.cpuUs,
      ),
      rpsRatios: runs.map((c) => c.rps / roundBase.get(c.round)!.rps),
      chromiumCores: median(runs.map((c) => c.chromiumCores)),
      httpPerViewer: median(runs.map((c) => c.httpPerViewer)),
      sentPerViewer: median(runs.map((c) => c.sentPerViewer)),
      receivedPerViewer: median(runs.map((c) => c.receivedPerViewer)),
      lags: { receipt: runs.flatMap((c) => c.lags.receipt), spend: runs.flatMap((c) => c.lags.spend) },
      non2xx: runs.reduce((sum, c) => sum + c.non2xx, 0),
    };
  });
  const rounds = roundBase.size;
  const f0 = (v: number) => (Number.isFinite(v) ? v.toFixed(0) : "n/a");
  const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : "n/a");
  const r2 = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : "n/a");
  const rows = summary.map(
    (c) =>
      `| ${c.name} | ${f0(c.rps)} | ${r2(c.rpsRatio)}${rounds > 1 ? ` (${c.rpsRatios.map((v) => v.toFixed(2)).join(", ")})` : ""} | ${f0(c.cpuUs)} | ${r2(c.cpuRatio)} | ${c.viewers && !c.baseline ? f1(c.httpPerViewer) : "—"} | ${c.viewers && !c.baseline ? f1(c.sentPerViewer) : "—"} | ${c.viewers && !c.baseline ? f1(c.receivedPerViewer) : "—"} | ${c.lags.receipt.length ? `${f0(percentile(c.lags.receipt, 50))} / ${f0(percentile(c.lags.receipt, 99))}` : "—"} | ${c.lags.spend.length ? `${f0(percentile(c.lags.spend, 50))} / ${f0(percentile(c.lags.spend, 99))}` : "—"} | ${c.non2xx} | ${c.name.includes("Chromium") ? c.chromiumCores.toFixed(2) : "—"} |`,
  );
  const checks: string[] = [];
  const target = (name: string, ok: boolean, detail: string) => checks.push(`- ${ok ? "met" : "**missed**"}: ${name} (${detail})`);
  for (const c of summary.filter((cell) => cell.viewers > 0 && !cell.baseline)) {
    const one = c.viewers === 1;
    const [rpsMin, cpuMax] = one ? [0.95, 1.05] : [0.9, 1.1];
    target(
      `${c.name}: req/s ≥ ${rpsMin} × and CPU/request ≤ ${cpuMax} × the no-dashboard cell${rounds > 1 ? ` (medians of ${rounds} rounds)` : ""}`,
      c.rpsRatio >= rpsMin && c.cpuRatio <= cpuMax,
      `${r2(c.rpsRatio)}, ${r2(c.cpuRatio)}`,
    );
    if (c.lags.receipt.length) target(`${c.name}: liveFeed lag p99 ≤ its 1,000 ms interval + 100 ms`, percentile(c.lags.receipt, 99) <= 1_100, `${f0(percentile(c.lags.receipt, 99))} ms`);
    if (c.lags.spend.length) target(`${c.name}: liveSpend lag p99 ≤ its 1,000 ms interval + 100 ms`, percentile(c.lags.spend, 99) <= 1_100, `${f0(percentile(c.lags.spend, 99))} ms`);
  }
  return [
    `### Live views under load (\`npm run bench -- live\`, ${duration} s per cell, ${rounds} round${rounds > 1 ? "s" : ""}, ${CONNECTIONS} connections, JSON; PGlite; 1,000 keys)`,
    "",
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}. Gateway (whole server), fake upstream, Chromium and the load generator share the machine; CPU µs/req is the gateway process's only.`,
    "",
    "| cell | gateway req/s | × none | CPU µs/req | × none | per dashboard: HTTP req/s sent | WS frames/s sent | WS frames/s received | liveFeed lag p50 / p99 ms | liveSpend lag p50 / p99 ms | non-2xx | Chromium CPU (cores) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows,
    "",
    ...checks,
    ...notes.map((n) => `- ${n}`),
    "",
    fanout,
  ].join("\n");
}
