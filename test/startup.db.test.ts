// `npm start` as a user runs it: a real process serves /healthz, GraphiQL and the admin API,
// reuses its data on the next start, and exits 0 on SIGTERM.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import { freePort } from "./support/net.ts";

let database: TestDatabase | null = null;
let dataDir: string;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), "tokengate-start-"));
  // PostgreSQL: a fresh (migrated) database from the harness; PGlite: the process makes its own in DATA_DIR.
  if (testDatabaseKind() === "postgres") database = await createTestDatabase();
});
afterAll(async () => {
  await database?.dispose();
  await rm(dataDir, { recursive: true, force: true });
});

interface Started {
  child: ChildProcess;
  port: number;
  output: () => string;
}

async function start(env: Record<string, string>): Promise<Started> {
  const port = await freePort();
  let output = "";
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "serve"], {
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", DATA_DIR: dataDir, ...(database?.url ? { DATABASE_URL: database.url } : { DATABASE_URL: "" }), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early:\n${output}`);
    const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ok) return { child, port, output: () => output };
    if (Date.now() > deadline) throw new Error(`no /healthz within 60 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function stop(s: Started): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => s.child.once("exit", (code) => resolve(code)));
  s.child.kill("SIGTERM");
  return exited;
}

describe("npm start", () => {
  it("serves healthz and GraphiQL, prints a bootstrap token once, keeps data across restarts, exits 0 on SIGTERM", async () => {
    const first = await start({ TOKENGATE_ADMIN_TOKEN: "" });
    const base = `http://127.0.0.1:${first.port}`;
    expect(await (await fetch(`${base}/healthz`)).json()).toEqual({ status: "ok" });
    const graphiql = await fetch(`${base}/graphql`, { headers: { accept: "text/html" } });
    expect(graphiql.status).toBe(200);
    expect(await graphiql.text()).toMatch(/graphiql/i);
    expect((await fetch(`${base}/dashboard`)).status).toBe(200);
    expect(await (await fetch(`${base}/metrics`)).text()).toContain("tokengate_gateway_requests_total");

    const token = /(tgadm_[0-9A-Za-z]{43})/.exec(first.output())?.[1];
    expect(token).toBeDefined();
    const create = await fetch(`${base}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: `mutation { createProject(input: { name: "survives-restart" }) { id } }` }),
    });
    expect((await create.json()).data.createProject.id).toBeTruthy();
    expect(await stop(first)).toBe(0);

    const second = await start({ TOKENGATE_ADMIN_TOKEN: "" });
    expect(second.output()).not.toMatch(/tgadm_/); // the token is printed once, on first start only
    const list = await fetch(`http://127.0.0.1:${second.port}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: `{ projects { edges { node { name } } } }` }),
    });
    expect((await list.json()).data.projects.edges).toEqual([{ node: { name: "survives-restart" } }]);
    expect(await stop(second)).toBe(0);
  }, 180_000);
});
