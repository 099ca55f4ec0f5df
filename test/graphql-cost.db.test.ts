// The GraphQL cost limit judges an operation with the values it will run with (issue 14, point 8):
// page sizes passed as variables, variable defaults and the default page of a connection without
// first / last, clamped as the server clamps. A nested `receipts(first: $n)` with {"n": 100} read a
// million rows; it must be refused on HTTP, SSE and graphql-ws before any row is read.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import * as f from "./support/fixtures.ts";
import { fakeReceipt } from "./support/records.ts";
import { startTestServer, token, wsClient, wsExecute, type GraphQLResponse } from "./support/graphql.ts";
import { OVERVIEW } from "../src/dashboard/operations.ts";
import { GRAPHQL_LIMITS } from "../src/schema/limits.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
let viewerToken: string;
let statements: string[] = [];

beforeAll(async () => {
  database = await createTestDatabase({ onQuery: (sql) => statements.push(sql) });
  const w = await f.world();
  const { route, channels } = await f.route(w.viewer, w.org.id, "gpt-cost", [{ name: "primary", baseUrl: "http://127.0.0.1:9/v1", upstreamModel: "gpt-cost-upstream", price: ["1", "2"] }]);
  const price = await database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: channels[0]!.id } });
  for (let i = 0; i < 3; i++) await fakeReceipt(w.key, route.id, channels[0]!.id, price.id, 10n);
  server = await startTestServer();
  // The point: any token that can read receipts, a project viewer included.
  viewerToken = await token("PROJECT_VIEWER", w.org.id, w.project.id);
  // A token's first use records its lastUsedAt: done here, not inside a measured request.
  await post({ query: "{ __typename }" });
  await new Promise((resolve) => setTimeout(resolve, 200));
});
afterAll(async () => {
  await server.close();
  await database.dispose();
});

const NESTED = `query Nested($n: Int) {
  receipts(first: $n) { edges { node { requestId key { receipts(first: $n) { edges { node { requestId charge { amount } } } } } } } }
}`;
const WITH_DEFAULT = NESTED.replace("$n: Int)", "$n: Int = 100)");
/** Connections without first / last read the default page (20 rows): three levels of it. */
const DEFAULT_PAGES = `{ receipts { edges { node { requestId key { receipts { edges { node { requestId key { receipts { edges { node { requestId } } } } } } } } } } } }`;
const NESTED_SUBSCRIPTION = `subscription Nested($n: Int) {
  receiptCreated { requestId key { receipts(first: $n) { edges { node { requestId key { receipts(first: $n) { edges { node { requestId charge { amount } } } } } } } } } }
}`;

function post(body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  const send = () =>
    fetch(`${server.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${viewerToken}`, ...headers },
      body: JSON.stringify(body),
    });
  return send().catch(send);
}

/** Statements that read receipts, made while `run` ran. */
async function receiptReads<T>(run: () => Promise<T>): Promise<{ result: T; reads: string[] }> {
  statements = [];
  const result = await run();
  return { result, reads: statements.filter((sql) => /"Receipt"/.test(sql)) };
}

function expectRefused(result: GraphQLResponse) {
  expect(result.data ?? null).toBeNull();
  expect(result.errors).toHaveLength(1);
  expect(result.errors![0]!.extensions?.code).toBe("COST_LIMIT_EXCEEDED");
  expect(result.errors![0]!.message).toMatch(new RegExp(`cost limit of ${GRAPHQL_LIMITS.maxCost} exceeded`, "i"));
}

/** The first `next` payload of a Yoga SSE response. */
async function firstSseEvent(response: Response): Promise<GraphQLResponse> {
  const text = await response.text();
  const data = /^data: (.*)$/m.exec(text);
  if (!data) throw new Error(`no SSE data in ${text.slice(0, 200)}`);
  return JSON.parse(data[1]!) as GraphQLResponse;
}

describe("cost with the values the operation runs with", () => {
  it("over HTTP: page sizes from variables, variable defaults and default pages are counted; nothing is read", async () => {
    for (const [query, variables] of [
      [NESTED, { n: 100 }],
      [WITH_DEFAULT, {}],
      [DEFAULT_PAGES, undefined],
      // A literal above the maximum is counted as the 100 rows the server would read, and refused nested.
      [NESTED.replace("($n: Int)", "").replaceAll("$n", "1000"), undefined],
    ] as const) {
      const { result, reads } = await receiptReads(async () => {
        const response = await post({ query, variables });
        expect(response.status).toBe(200);
        return (await response.json()) as GraphQLResponse;
      });
      expectRefused(result);
      expect(reads).toEqual([]);
    }
    // The same document with a small page runs (and does read receipts).
    const { result, reads } = await receiptReads(async () => (await (await post({ query: NESTED, variables: { n: 5 } })).json()) as GraphQLResponse);
    expect(result.errors).toBeUndefined();
    expect((result.data as { receipts: { edges: unknown[] } }).receipts.edges).toHaveLength(3);
    expect(reads.length).toBeGreaterThan(0);
  });

  it("over SSE: a query and a subscription with page sizes in variables are refused", async () => {
    const sse = { accept: "text/event-stream" };
    const query = await receiptReads(async () => firstSseEvent(await post({ query: NESTED, variables: { n: 100 } }, sse)));
    expectRefused(query.result);
    expect(query.reads).toEqual([]);
    const subscription = await firstSseEvent(await post({ query: NESTED_SUBSCRIPTION, variables: { n: 100 } }, sse));
    expectRefused(subscription);
  });

  it("over graphql-ws: a query and a subscription with page sizes in variables are refused", async () => {
    const client = wsClient(server, viewerToken);
    const query = await receiptReads(() => wsExecute(client, NESTED, { n: 100 }));
    expectRefused(query.result);
    expect(query.reads).toEqual([]);
    expectRefused(await wsExecute(client, NESTED_SUBSCRIPTION, { n: 100 }));
    expectRefused(await wsExecute(client, WITH_DEFAULT, {}));
    const small = await wsExecute(client, NESTED, { n: 5 });
    expect(small.errors).toBeUndefined();
    await client.dispose();
  });

  it("the dashboard's overview still passes on every transport", async () => {
    const admin = await token("PLATFORM_ADMIN");
    const http = (await (await post({ query: OVERVIEW }, { authorization: `Bearer ${admin}` })).json()) as GraphQLResponse;
    expect(http.errors).toBeUndefined();
    const client = wsClient(server, admin);
    expect((await wsExecute(client, OVERVIEW)).errors).toBeUndefined();
    await client.dispose();
  });
});
