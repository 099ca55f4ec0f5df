// Budget alerts for run and channel caps (issue 15, point 5): every capped scope a request touches
// announces its 50 / 80 / 100 % thresholds, once each, through the real passthrough.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { startTestServer, token, wsClient } from "./support/graphql.ts";
import { listenerCount } from "./support/services.ts";
import { startRun } from "../src/runs/index.ts";
import { setChannelLimits } from "../src/routing/index.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function until(check: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("budget alerts of run and channel caps", () => {
  it("a run's cap and a channel's daily cap each announce the thresholds their spend crosses", async () => {
    const w = await f.world({ credit: "50" });
    const model = `al-${w.org.id.slice(-6)}`;
    const { channels } = await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "al-up", price: ["2.5", "10"] }]);
    const channel = channels[0]!;
    await setChannelLimits(w.viewer, { channelId: channel.id, dailyCap: "0.01" });
    const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: "0.01" });
    const client = wsClient(server, await token("ORG_ADMIN", w.org.id));
    const alerts: Array<{ scope: string; scopeId: string; threshold: number }> = [];
    const before = listenerCount();
    const dispose = client.subscribe<{ budgetAlert: (typeof alerts)[number] }>(
      { query: `subscription { budgetAlert { scope scopeId threshold } }` },
      { next: (v) => v.data && alerts.push(v.data.budgetAlert), error: () => undefined, complete: () => undefined },
    );
    await until(() => listenerCount() > before);
    const openai = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000, defaultHeaders: { "x-run-id": run.id } });
    // Small requests until the run's cap refuses one.
    for (let i = 0; i < 200; i++) {
      const ok = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `spend ${i}` }], max_tokens: 16 }).then(
        () => true,
        () => false,
      );
      if (!ok) break;
    }
    const stored = () => database.prisma.budgetAlert.findMany({ where: { scopeId: { in: [run.id, channel.id] } }, orderBy: [{ scope: "asc" }, { threshold: "asc" }] });
    await until(() => alerts.filter((a) => a.scope === "RUN_TOTAL").length >= 2 && alerts.filter((a) => a.scope === "CHANNEL_DAILY").length >= 2);
    const rows = await stored();
    for (const scope of ["RUN_TOTAL", "CHANNEL_DAILY"]) {
      const heard = alerts.filter((a) => a.scope === scope).map((a) => a.threshold);
      expect(heard.slice(0, 2), scope).toEqual([50, 80]);
      expect(new Set(heard).size, `${scope}: once per threshold`).toBe(heard.length);
      expect(rows.filter((r) => r.scope === scope).map((r) => r.threshold)).toEqual(heard.slice().sort((a, b) => a - b));
    }
    dispose();
    await client.dispose();
  });
});
