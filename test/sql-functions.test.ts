// prisma/functions.sql is the one place a reader finds every SQL function: the migrator applies
// it after the migrations when it changed, a data directory migrated before the file existed
// takes it on its next start, and no function lives only in a migration.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyMigrations, FUNCTIONS_FILE, FUNCTIONS_STEP } from "../src/db/migrate.ts";
import { pgliteSql } from "../src/db/pglite.ts";

type Definitions = Map<string, string>;

async function definitions(pglite: PGlite): Promise<Definitions> {
  const rows = await pglite.query<{ signature: string; definition: string }>(
    `SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS signature, pg_get_functiondef(p.oid) AS definition
       FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'public' ORDER BY 1`,
  );
  return new Map(rows.rows.map((r) => [r.signature, r.definition]));
}

/** Function names the file defines, in its order. */
function namesIn(sql: string): string[] {
  return [...sql.matchAll(/^CREATE OR REPLACE FUNCTION (\w+)\s*\(/gm)].map((m) => m[1]!);
}

describe("prisma/functions.sql", () => {
  let dir: string;
  let fileSql: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "tg-functions-"));
    fileSql = await readFile(FUNCTIONS_FILE, "utf8");
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("defines every function the database has, once, and a second start applies nothing", async () => {
    const pglite = await PGlite.create();
    try {
      const first = await applyMigrations(pgliteSql(pglite));
      expect(first.at(-1)).toBe(FUNCTIONS_STEP);
      const names = namesIn(fileSql);
      expect(new Set(names).size).toBe(names.length);
      const inDatabase = [...(await definitions(pglite)).keys()].map((s) => s.slice(0, s.indexOf("(")));
      expect([...inDatabase].sort()).toEqual([...names].sort());
      expect(await applyMigrations(pgliteSql(pglite))).toEqual([]);
    } finally {
      await pglite.close();
    }
  });

  it("a migration since the file that redefines a function (its table changed under it) uses the file's exact text", async () => {
    const { readdir } = await import("node:fs/promises");
    const { MIGRATIONS_DIR } = await import("../src/db/migrate.ts");
    const bodyOf = (sql: string, name: string): string | null => {
      const start = new RegExp(`^CREATE (?:OR REPLACE )?FUNCTION ${name}\\s*\\(`, "m").exec(sql);
      if (!start) return null;
      const tag = /AS\s+(\$\w*\$)/.exec(sql.slice(start.index))!;
      const open = start.index + tag.index + tag[0].length;
      const close = sql.indexOf(tag[1]!, open);
      return sql.slice(sql.indexOf("FUNCTION", start.index), sql.indexOf(";", close) + 1);
    };
    // The newest migration that defines a function must use the file's text (an older one was
    // superseded by it: the file has moved on since).
    const newest = new Map<string, { dir: string; body: string | null }>();
    for (const dir of (await readdir(MIGRATIONS_DIR)).filter((d) => d >= "20261203").sort()) {
      const sql = await readFile(path.join(MIGRATIONS_DIR, dir, "migration.sql"), "utf8").catch(() => "");
      for (const [, name] of sql.matchAll(/^CREATE (?:OR REPLACE )?FUNCTION (\w+)\s*\(/gm)) newest.set(name!, { dir, body: bodyOf(sql, name!) });
    }
    for (const [name, { dir, body }] of newest) expect(body, `${dir}: ${name}`).toBe(bodyOf(fileSql, name));
    expect(newest.size).toBeGreaterThan(0);
  });

  it("a data directory migrated before the file existed starts, takes the file, and keeps its rows", async () => {
    const pglite = await PGlite.create();
    try {
      // The previous release: migrations only, and a row written by it.
      const sql = pgliteSql(pglite);
      await applyMigrations(sql, undefined, null);
      await sql.exec(`INSERT INTO "Organization" (id, name) VALUES ('org-before', 'Before the file')`);
      const applied = await applyMigrations(sql);
      expect(applied).toEqual([FUNCTIONS_STEP]);
      const [row] = await sql.query<{ name: string }>(`SELECT name FROM "Organization" WHERE id = 'org-before'`);
      expect(row?.name).toBe("Before the file");
      // What runs is what the file says: a fresh database migrated with the file has the same definitions.
      const fresh = await PGlite.create();
      try {
        await applyMigrations(pgliteSql(fresh));
        expect(await definitions(pglite)).toEqual(await definitions(fresh));
      } finally {
        await fresh.close();
      }
    } finally {
      await pglite.close();
    }
  });

  it("a changed file is applied again on the next start, and a failing one changes nothing", async () => {
    const pglite = await PGlite.create();
    try {
      const sql = pgliteSql(pglite);
      await applyMigrations(sql);
      const edited = path.join(dir, "edited.sql");
      // An edit of one function (its body's comment): the database then holds the edited body.
      const marker = "-- edited by the functions test";
      await writeFile(edited, fileSql.replace(/(CREATE OR REPLACE FUNCTION tg_now\(\)[\s\S]*?\$\w*\$)/, `$1\n${marker}\n`));
      expect(await applyMigrations(sql, undefined, edited)).toEqual([FUNCTIONS_STEP]);
      const [now] = await sql.query<{ definition: string }>(`SELECT pg_get_functiondef('tg_now'::regproc) AS definition`);
      expect(now?.definition).toContain(marker);
      expect(await applyMigrations(sql, undefined, edited)).toEqual([]);

      // A file that fails half-way rolls back whole: the edited tg_now stays, the checksum too.
      const broken = path.join(dir, "broken.sql");
      await writeFile(broken, `${fileSql.replace(marker, "")}\nCREATE OR REPLACE FUNCTION tg_broken() RETURNS int LANGUAGE sql AS $$ SELECT no_such_column FROM "Organization" $$;`);
      await expect(applyMigrations(sql, undefined, broken)).rejects.toThrow(/functions\.sql failed/);
      const [after] = await sql.query<{ definition: string }>(`SELECT pg_get_functiondef('tg_now'::regproc) AS definition`);
      expect(after?.definition).toContain(marker);
      expect(await applyMigrations(sql, undefined, edited)).toEqual([]);
    } finally {
      await pglite.close();
    }
  });
});
