// `npm run bench [-- name…]`: runs the benchmarks (all, or the named ones) and prints markdown.
// BENCH_DURATION: seconds per gateway measurement (default 5).
import type { Mode } from "./gateway.ts";

const duration = Number(process.env.BENCH_DURATION ?? 5);

const benches: Array<{ name: string; run: () => Promise<string> }> = [
  {
    name: "gateway",
    run: async () =>
      (await import("./gateway.ts")).benchGateway({
        durationSeconds: duration,
        // BENCH_CONNECTIONS=1,16 / BENCH_DATABASES=pglite / BENCH_MODES=json,responses narrow the grid (default: all cells;
        // modes json, stream, responses, responses-stream).
        connections: process.env.BENCH_CONNECTIONS ? process.env.BENCH_CONNECTIONS.split(",").map(Number) : undefined,
        databases: process.env.BENCH_DATABASES ? (process.env.BENCH_DATABASES.split(",") as Array<"pglite" | "postgres">) : undefined,
        modes: process.env.BENCH_MODES ? (process.env.BENCH_MODES.split(",") as Mode[]) : undefined,
      }),
  },
  {
    name: "accounting",
    run: async () => {
      const { runAccountingBench, accountingTable } = await import("./accounting.ts");
      return accountingTable(await runAccountingBench());
    },
  },
  { name: "events", run: async () => (await import("./events.ts")).benchEvents() },
  // BENCH_LIVE_SECONDS: seconds per live cell (default 10).
  { name: "live", run: async () => (await import("./live.ts")).benchLive({ durationSeconds: Number(process.env.BENCH_LIVE_SECONDS ?? 10) }) },
  { name: "memory", run: async () => (await import("./memory.ts")).benchMemory() },
  { name: "exports", run: async () => (await import("./exports.ts")).benchExports() },
  { name: "series", run: async () => (await import("./series.ts")).benchSeries() },
];

const wanted = process.argv.slice(2);
const unknown = wanted.filter((w) => !benches.some((b) => b.name === w));
if (unknown.length) {
  console.error(`unknown bench: ${unknown.join(", ")} (have: ${benches.map((b) => b.name).join(", ")})`);
  process.exit(2);
}
for (const bench of benches) {
  if (wanted.length && !wanted.includes(bench.name)) continue;
  console.error(`[bench] ${bench.name}…`);
  console.log(await bench.run());
  console.log();
}
