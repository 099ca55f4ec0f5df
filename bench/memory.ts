// Memory by stage (issue 9, point 7): bench/memory-process.ts in a child process, on PGlite and on
// PostgreSQL, as a markdown table of RSS / heap / external after each stage of start-up.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { startEmbeddedPostgres } from "../test/support/global-setup.ts";

interface StageRow {
  stage: string;
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

async function stages(env: Record<string, string>): Promise<StageRow[]> {
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./memory-process.ts", import.meta.url))], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  await new Promise((resolve) => child.once("exit", resolve));
  return out
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as StageRow)
    .filter((row) => typeof row.stage === "string"); // other JSON lines (a log) are not stages
}

export async function benchMemory(): Promise<string> {
  const lines = ["### Memory at start-up, by stage (MB)", "", "| database | stage | RSS | JS heap used | external | ArrayBuffers |", "|---|---|---:|---:|---:|---:|"];
  for (const row of await stages({ DATABASE_URL: "" })) lines.push(`| pglite | ${row.stage} | ${row.rss} | ${row.heapUsed} | ${row.external} | ${row.arrayBuffers} |`);
  const pg = await startEmbeddedPostgres({ durable: true });
  try {
    for (const row of await stages({ DATABASE_URL: pg.url })) lines.push(`| postgres | ${row.stage} | ${row.rss} | ${row.heapUsed} | ${row.external} | ${row.arrayBuffers} |`);
  } finally {
    await pg.stop();
  }
  lines.push("", "Stages are cumulative; `external` / `ArrayBuffers` include WebAssembly memory (PGlite's Postgres, Prisma's query compiler).");
  return lines.join("\n");
}
