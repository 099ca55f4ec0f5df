// Lists must not do N+1 queries: the statement count for a page of keys is small and flat.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, token } from "./support/graphql.ts";
import { fakeReceipt } from "./support/records.ts";

let database: TestDatabase;
let statements: string[] = [];
let adminToken: string;

beforeAll(async () => {
  const count = (sql: string) => void statements.push(sql);
  database = await createTestDatabase({ onQuery: count, onDirectQuery: count });
  const w = await f.world();
  const { route, channels } = await f.route(w.viewer, w.org.id, "gpt-test", [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "gpt-test-upstream", price: ["1", "2"] }]);
  const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: channels[0]!.id } });
  // 50 keys over 5 projects, each with a few receipts.
  const projects = [w.project, ...(await Promise.all([1, 2, 3, 4].map(() => f.project(w.viewer, w.org.id))))];
  for (let i = 0; i < 49; i++) {
    const { apiKey } = await f.apiKey(w.viewer, projects[i % 5]!.id, { dailyCap: "5" });
    for (let r = 0; r < (i % 3) + 1; r++) await fakeReceipt(apiKey, route.id, channels[0]!.id, price.id, 10n);
  }
  adminToken = await token("ORG_ADMIN", w.org.id);
  // A token's first use records its lastUsedAt (at most once a minute): not part of the page's cost.
  await gqlOk(adminToken, `{ __typename }`);
  await new Promise((resolve) => setTimeout(resolve, 200));
});
afterAll(() => database.dispose());

const QUERY = `query($first: Int!) {
  apiKeys(first: $first) {
    totalCount
    edges { node { id name project { id name } receipts(first: 5) { totalCount edges { node { id charge { amount } } } } spendToday { amount } dailyCap { amount } } }
  }
}`;

async function countStatements(first: number): Promise<{ count: number; keys: number }> {
  statements = [];
  const data = await gqlOk(adminToken, QUERY, { first });
  if (process.env.SHOW_SQL)
    console.log(
      statements.length,
      statements.map((s) => s.slice(0, 90)),
    );
  return { count: statements.length, keys: data.apiKeys.edges.length };
}

describe("listing keys with their project and receipts", () => {
  it("takes a handful of statements, the same for 5 keys as for 50", async () => {
    const small = await countStatements(5);
    const large = await countStatements(50);
    expect(small.keys).toBe(5);
    expect(large.keys).toBe(50);
    // auth lookup, keys page (+ project + receipts + counts in plugin-prisma's batched queries),
    // totalCount, caps and counters through dataloaders.
    expect(large.count).toBeGreaterThan(2); // the counter sees statements at all
    expect(large.count).toBeLessThanOrEqual(12);
    expect(large.count).toBe(small.count);
  });
});

describe("spend groups as objects", () => {
  it("are loaded in one statement per type, the same for 5 groups as for 50", async () => {
    const query = `query($top: Int!, $from: DateTime!, $to: DateTime!) {
      spendAnalytics(input: { from: $from, to: $to, interval: HOUR, groupBy: [KEY, PROJECT, ROUTE, CHANNEL], top: $top }) {
        series { other group { key { id name project { id name } } project { id name } route { id model } channel { id name } } total { requests } }
      }
    }`;
    const range = { from: new Date(Date.now() - 3_600_000).toISOString(), to: new Date(Date.now() + 3_600_000).toISOString() };
    const count = async (top: number) => {
      statements = [];
      const data = await gqlOk(adminToken, query, { top, ...range });
      if (process.env.SHOW_SQL)
        console.log(
          statements.length,
          statements.map((s) => s.slice(0, 90)),
        );
      return { count: statements.length, named: data.spendAnalytics.series.filter((s: { group: { key: { name: string } | null } | null }) => s.group?.key?.name).length };
    };
    const small = await count(5);
    const large = await count(50);
    expect(small.named).toBe(5);
    expect(large.named).toBe(49);
    expect(large.count).toBeGreaterThan(2);
    expect(large.count).toBe(small.count);
    // Latency percentiles scan raw receipts: only an operation that asks for them pays for that.
    expect(statements.some((sql) => sql.includes("percentile_disc"))).toBe(false);
    statements = [];
    const timed = await gqlOk(
      adminToken,
      `query($from: DateTime!, $to: DateTime!) { spendAnalytics(input: { from: $from, to: $to, interval: HOUR }) { ...L } } fragment L on SpendAnalytics { latency { receipts } }`,
      range,
    );
    expect(statements.some((sql) => sql.includes("percentile_disc"))).toBe(true);
    expect(timed.spendAnalytics.latency.receipts).toBeGreaterThan(50);
  });
});
