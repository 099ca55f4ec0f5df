// Logs: a real server process (LOG_LEVEL=debug, the most verbose) writes pino JSON lines carrying
// request ids, and its whole output never contains a secret it was given or created: admin tokens,
// API keys, channel credentials, webhook secrets, TOKENGATE_SECRET, nor bad keys sent in
// Authorization. The one documented exception is the first-start admin token, printed once as
// plain text (not a log line).
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { freePort } from "./support/net.ts";

let database: TestDatabase | null = null;
let fake: FakeUpstream;
let dataDir: string;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), "tokengate-logs-"));
  if (testDatabaseKind() === "postgres") database = await createTestDatabase();
  fake = await startFakeUpstream();
});
afterAll(async () => {
  await fake.close();
  await database?.dispose();
  await rm(dataDir, { recursive: true, force: true });
});

const TOKENGATE_SECRET = "process-wide-credential-secret-7f3a9c";

describe("logs", () => {
  it("are JSON lines with request ids, and contain none of the secrets the run created or received", async () => {
    const port = await freePort();
    let stdout = "";
    let stderr = "";
    const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "src/main.ts", "serve"], {
      env: {
        ...process.env,
        PORT: String(port),
        HOST: "127.0.0.1",
        DATA_DIR: dataDir,
        DATABASE_URL: database?.url ?? "",
        TOKENGATE_ADMIN_TOKEN: "",
        TOKENGATE_SECRET,
        LOG_LEVEL: "debug",
        // The fake upstreams listen on loopback; an org admin sets the channels, as an operator allows.
        TOKENGATE_ALLOW_PRIVATE_UPSTREAMS: "1",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    const base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    while (
      !(await fetch(`${base}/healthz`).then(
        (r) => r.status === 200,
        () => false,
      ))
    ) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server did not start:\n${stdout}${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }

    const bootstrap = /(tgadm_[0-9A-Za-z]{43})/.exec(stdout)?.[1];
    expect(bootstrap).toBeDefined();
    const gql = async (tokenValue: string, query: string, variables?: Record<string, unknown>) => {
      const response = await fetch(`${base}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${tokenValue}` },
        body: JSON.stringify({ query, variables }),
      });
      return (await response.json()) as { data?: Record<string, any>; errors?: unknown[] };
    };
    const ok = async (tokenValue: string, query: string, variables?: Record<string, unknown>) => {
      const result = await gql(tokenValue, query, variables);
      expect(result.errors).toBeUndefined();
      return result.data!;
    };

    // Secrets created through the API.
    const org = (await ok(bootstrap!, `mutation { createOrganization(name: "logs-org") { id } }`)).createOrganization.id as string;
    const orgAdmin = (await ok(bootstrap!, `mutation($o: ID) { createAdminToken(input: { name: "ops", role: ORG_ADMIN, organizationId: $o }) { secret } }`, { o: org })).createAdminToken
      .secret as string;
    await ok(bootstrap!, `mutation($o: ID) { topUp(input: { organizationId: $o, bucket: CREDIT, amount: "10", idempotencyKey: "logs-topup" }) { id } }`, { o: org });
    const project = (await ok(orgAdmin, `mutation($o: ID) { createProject(input: { organizationId: $o, name: "logs" }) { id } }`, { o: org })).createProject.id as string;
    const apiKey = (await ok(orgAdmin, `mutation($p: ID!) { createApiKey(input: { projectId: $p, name: "k" }) { secret } }`, { p: project })).createApiKey.secret as string;
    const primaryCredential = "sk-upstream-primary-credential-0a1b2c3d4e";
    const backupCredential = "sk-upstream-backup-credential-9z8y7x6w5v";
    const route = await ok(
      orgAdmin,
      `mutation($o: ID, $url: String!, $k1: String, $k2: String) { upsertRoute(input: { organizationId: $o, model: "logs-model", channels: [
         { name: "primary", baseUrl: $url, apiKey: $k1, upstreamModel: "logs-primary" },
         { name: "backup", baseUrl: $url, apiKey: $k2, upstreamModel: "logs-backup" } ] }) { channels { id } } }`,
      { o: org, url: fake.url, k1: primaryCredential, k2: backupCredential },
    );
    for (const channel of route.upsertRoute.channels as Array<{ id: string }>) {
      await ok(orgAdmin, `mutation($c: ID!) { setPrice(input: { channelId: $c, inputPerMillion: "1", outputPerMillion: "2" }) { id } }`, { c: channel.id });
    }
    const webhookSecret = "webhook-signing-secret-5e6f7a8b";
    await ok(orgAdmin, `mutation($o: ID, $s: String) { setAlertWebhook(input: { organizationId: $o, url: "http://127.0.0.1:9/hook", secret: $s }) { alertWebhook { id } } }`, {
      o: org,
      s: webhookSecret,
    });
    const generatedWebhookSecret = (await ok(orgAdmin, `mutation($o: ID) { setAlertWebhook(input: { organizationId: $o, url: "http://127.0.0.1:9/hook" }) { generatedSecret } }`, { o: org }))
      .setAlertWebhook.generatedSecret as string;

    // Traffic: a fallback (primary 500, debug-logged), a stream, refusals, bad keys and tokens.
    fake.set("logs-primary", { type: "status", status: 500, body: { error: { message: "primary is down" } } });
    const client = new OpenAI({ apiKey, baseURL: `${base}/v1`, maxRetries: 0 });
    const { response } = await client.chat.completions.create({ model: "logs-model", messages: [{ role: "user", content: "hello" }], max_tokens: 20 }).withResponse();
    const requestId = response.headers.get("x-request-id")!;
    fake.set("logs-primary", { type: "ok" });
    const stream = await client.chat.completions.create({ model: "logs-model", messages: [{ role: "user", content: "stream" }], max_tokens: 20, stream: true });
    for await (const _chunk of stream) void _chunk;
    expect(fake.requests.some((r) => r.headers.authorization === `Bearer ${primaryCredential}`)).toBe(true);
    expect(fake.requests.some((r) => r.headers.authorization === `Bearer ${backupCredential}`)).toBe(true);
    await expect(client.chat.completions.create({ model: "not-routed", messages: [{ role: "user", content: "x" }] })).rejects.toMatchObject({ status: 404 });
    const badKey = "sk-tg-this-is-not-a-real-key-4d5e6f";
    const badKeyLookingReal = `${apiKey.slice(0, -6)}ZZZZZZ`;
    for (const secret of [badKey, badKeyLookingReal]) {
      const bad = new OpenAI({ apiKey: secret, baseURL: `${base}/v1`, maxRetries: 0 });
      await expect(bad.chat.completions.create({ model: "logs-model", messages: [{ role: "user", content: "x" }] })).rejects.toMatchObject({ status: 401 });
    }
    const badAdmin = "tgadm_notarealtokennotarealtokennotarealtoke";
    expect((await gql(badAdmin, `{ projects { totalCount } }`)).errors).toBeDefined();
    expect((await gql(orgAdmin, `mutation { setAlertWebhook(input: { url: "http://x/h", secret: "short-secret" }) { generatedSecret } }`)).errors).toBeDefined();

    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);

    const output = stdout + stderr;
    const secrets = { orgAdmin, apiKey, primaryCredential, backupCredential, webhookSecret, generatedWebhookSecret, TOKENGATE_SECRET, badKey, badKeyLookingReal, badAdmin };
    for (const [name, secret] of Object.entries(secrets)) expect(output.includes(secret), `${name} appears in the log`).toBe(false);
    // The bootstrap token: printed once, as plain text, never inside a log line.
    expect(output.split(bootstrap!).length - 1).toBe(1);

    // Every other line is a pino JSON line with a level; the request log carries the request id.
    const lines = output.split("\n").filter((l) => l.trim() && !l.includes(bootstrap!) && !/^\s*(A platform admin token|Use it as)/.test(l));
    const parsed = lines.map((l) => JSON.parse(l) as { level: string; msg: string; requestId?: string; time: string });
    for (const line of parsed) {
      expect(["debug", "info", "warn", "error"]).toContain(line.level);
      expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT/);
    }
    expect(parsed.find((l) => l.msg === "request" && l.requestId === requestId)).toMatchObject({ level: "info", status: 200, channel: "backup", attempts: 2 });
    expect(parsed.some((l) => l.level === "debug" && l.requestId === requestId && l.msg === "upstream attempt failed")).toBe(true);
    expect(parsed.some((l) => l.msg === "request" && (l as { status?: number }).status === 401)).toBe(true);
  }, 180_000);
});
