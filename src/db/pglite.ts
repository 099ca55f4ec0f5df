// Opening the embedded database (PGlite, PostgreSQL compiled to WebAssembly, in this process)
// with a small memory footprint. Two things set it, measured with `npm run bench -- memory`:
//  - shared_buffers: PGlite keeps PostgreSQL's default of 128 MB inside its WebAssembly memory,
//    and a WebAssembly memory never shrinks. Its pages are files of the data directory, which
//    the OS page cache already holds, so a small pool costs a copy, not a disk read.
//  - initdb: creating a new data directory instantiates a second WebAssembly PostgreSQL and
//    peaks at ~800 MB that the process never gives back. A new directory is therefore created
//    and migrated by a short-lived child process; the serving process only ever opens it.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readdir, rename, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite, type PGliteOptions } from "@electric-sql/pglite";
import { applyMigrations, type SqlExecutor } from "./migrate.ts";

/** PGlite's own start parameters, with a smaller buffer pool. */
export const PGLITE_OPTIONS: PGliteOptions = {
  // work_mem: the planner's budget for a spend report's hash (SESSION_WORK_MEM in ./index.ts says why).
  startParams: [...PGlite.defaultStartParams, "-c", "shared_buffers=16MB", "-c", "work_mem=16MB"],
};

export function pgliteSql(pglite: PGlite): SqlExecutor {
  return {
    exec: async (text) => {
      await pglite.exec(text);
    },
    query: async <Row>(text: string, params?: unknown[]) => (await pglite.query<Row>(text, params)).rows,
  };
}

/** Creates and migrates a PGlite data directory in this process (what the child runs). */
export async function initialisePgliteDir(dir: string): Promise<void> {
  const pglite = await PGlite.create(dir, PGLITE_OPTIONS);
  try {
    await applyMigrations(pgliteSql(pglite));
  } finally {
    await pglite.close();
  }
}

/** Node flags that load modules (tsx under `tsx` or vitest): the child must read the same source files. */
function loaderFlags(): string[] {
  const flags: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (/^--(import|require|loader|experimental-loader)=/.test(arg)) flags.push(arg);
    else if (/^(--import|--require|-r|--loader|--experimental-loader)$/.test(arg) && i + 1 < argv.length) flags.push(arg, argv[++i]!);
  }
  return flags;
}

async function isEmptyDir(dir: string): Promise<boolean> {
  try {
    return (await readdir(dir)).length === 0;
  } catch {
    return true; // missing
  }
}

/**
 * Opens the PGlite data directory `dir`. A new (missing or empty) one is first created and
 * migrated in a child process, in a staging directory renamed into place once complete, so a
 * crash half-way through leaves nothing behind.
 */
export async function openPglite(dir: string): Promise<PGlite> {
  if (!existsSync(path.join(dir, "PG_VERSION")) && (await isEmptyDir(dir))) {
    const staging = `${dir}.new-${process.pid}`;
    await rm(staging, { recursive: true, force: true });
    const here = fileURLToPath(import.meta.url);
    const child = spawn(process.execPath, [...loaderFlags(), path.join(path.dirname(here), `pglite-init${path.extname(here)}`), staging], {
      stdio: ["ignore", "inherit", "inherit"],
    });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once("error", reject);
      child.once("exit", resolve);
    });
    if (code !== 0) {
      await rm(staging, { recursive: true, force: true });
      throw new Error(`creating the PGlite data directory ${dir} failed (child process exit code ${code})`);
    }
    await rm(dir, { recursive: true, force: true }); // empty or missing, checked above
    await rename(staging, dir);
  }
  return PGlite.create(dir, PGLITE_OPTIONS);
}
