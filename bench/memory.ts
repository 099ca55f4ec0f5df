// Memory by stage (issue 9, point 7): bench/memory-process.ts in a child process, on PGlite and on
// PostgreSQL, as a markdown table of RSS / heap / external after each stage of start-up. The
// process runs compiled under plain node, as `npm start` runs the server; the last column is the
// same stage run from the TypeScript sources through tsx, for comparison.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";
import { compiled } from "../test/support/build.ts";

interface StageRow {
  stage: string;
  rss: number;
  peakRss: number | null;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

async function stages(args: string[], env: Record<string, string>): Promise<StageRow[]> {
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  const code = await new Promise((resolve) => child.once("exit", resolve));
  if (code !== 0) throw new Error(`memory-process exited with ${String(code)}`);
  return out
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as StageRow)
    .filter((row) => typeof row.stage === "string"); // other JSON lines (a log) are not stages
}

async function rows(database: string, env: Record<string, string>): Promise<string[]> {
  const node = await stages(compiled("bench/memory-process.ts"), env);
  const tsx = await stages(["--import", "tsx", fileURLToPath(new URL("./memory-process.ts", import.meta.url))], env);
  return node.map((row, i) => `| ${database} | ${row.stage} | ${row.rss} | ${row.peakRss ?? "n/a"} | ${row.heapUsed} | ${row.external} | ${row.arrayBuffers} | ${tsx[i]?.rss ?? "n/a"} |`);
}

export async function benchMemory(): Promise<string> {
  const lines = [
    "### Memory at start-up, by stage (MB)",
    "",
    "| database | stage (cumulative) | RSS | peak RSS | JS heap used | external | ArrayBuffers | RSS through tsx |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ];
  lines.push(...(await rows("pglite", { DATABASE_URL: "" })));
  const pg = await startEmbeddedPostgres({ durable: true });
  try {
    lines.push(...(await rows("postgres", { DATABASE_URL: pg.url })));
  } finally {
    await pg.stop();
  }
  lines.push(
    "",
    "Compiled JavaScript under plain node, as `npm start` runs it; the last column runs the same stages from the TypeScript sources through tsx. " +
      "`external` / `ArrayBuffers` include WebAssembly memory (PGlite's Postgres, Prisma's query compiler).",
  );
  return lines.join("\n");
}
