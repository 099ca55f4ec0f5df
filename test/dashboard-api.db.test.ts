// What the dashboard and GraphiQL need from the server, over real HTTP: local assets with their
// content types and caching, pages that name no other host, and receipts / failed requests found
// by request id within the token's tenancy.
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { APIError } from "openai";
import OpenAI from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, startTestServer, token } from "./support/graphql.ts";
import { formatMoney } from "../src/money/amounts.ts";
import { browserModule } from "../src/dashboard/operations.ts";
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
  await server?.close();
  await fake?.close();
  await database?.dispose();
});

const get = (path: string, headers: Record<string, string> = {}) => fetch(`${server.url}${path}`, { headers });

describe("pages and assets", () => {
  it("GraphiQL and the dashboard load every asset from this server", async () => {
    const graphiql = await (await get("/graphql", { accept: "text/html" })).text();
    const dashboardResponse = await get("/dashboard");
    const dashboard = await dashboardResponse.text();
    expect(dashboardResponse.headers.get("content-security-policy")).toContain("connect-src 'self'");
    for (const html of [graphiql, dashboard]) {
      const urls = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
      expect(urls.length).toBeGreaterThan(2);
      for (const url of urls.filter((u) => u !== "/graphql")) {
        expect(url.startsWith("/assets/"), url).toBe(true);
        const response = await get(url);
        expect(response.status, url).toBe(200);
      }
    }
    // The Monaco workers GraphiQL starts are listed in its boot data.
    const boot = JSON.parse(/<script type="application\/json" id="graphiql-boot">(.*?)<\/script>/s.exec(graphiql)![1]!) as { workers: Record<string, string> };
    for (const url of Object.values(boot.workers)) expect((await get(url)).headers.get("content-type")).toBe("text/javascript; charset=utf-8");
  });

  it("serves npm assets immutable and gzipped, its own assets revalidated, and nothing else", async () => {
    const html = await (await get("/graphql", { accept: "text/html" })).text();
    const bundle = /src="(\/assets\/graphiql\/[^"]+\.js)"/.exec(html)![1]!;
    const plain = await get(bundle, { "accept-encoding": "identity" });
    expect(plain.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
    const body = Buffer.from(await plain.arrayBuffer());
    expect(body.length).toBeGreaterThan(1_000_000);
    // undici decompresses transparently; read raw bytes through node:http to check the encoding.
    const http = await import("node:http");
    const raw = await new Promise<{ encoding: string | undefined; bytes: Buffer }>((resolve, reject) => {
      http
        .get(`${server.url}${bundle}`, { headers: { "accept-encoding": "gzip" } }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c)).on("end", () => resolve({ encoding: res.headers["content-encoding"], bytes: Buffer.concat(chunks) }));
        })
        .on("error", reject);
    });
    expect(raw.encoding).toBe("gzip");
    expect(raw.bytes.length).toBeLessThan(body.length / 2);
    expect(gunzipSync(raw.bytes).equals(body)).toBe(true);

    const own = await get("/assets/tokengate/dashboard.js");
    expect(own.headers.get("cache-control")).toBe("no-cache");
    const etag = own.headers.get("etag")!;
    expect((await get("/assets/tokengate/dashboard.js", { "if-none-match": etag })).status).toBe(304);
    expect((await get("/assets/tokengate/dashboard.css")).headers.get("content-type")).toBe("text/css; charset=utf-8");
    // The page's GraphQL documents: printed from src/dashboard/operations/*.graphql, revalidated like the files.
    const queries = await get("/assets/tokengate/queries.js");
    expect(queries.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(queries.headers.get("cache-control")).toBe("no-cache");
    expect(await queries.text()).toBe(browserModule());
    expect((await get("/assets/tokengate/queries.js", { "if-none-match": queries.headers.get("etag")! })).status).toBe(304);

    for (const path of ["/assets/tokengate/nope.js", "/assets/tokengate/../../package.json", "/assets/tokengate/%2e%2e/%2e%2e/package.json", "/assets/graphiql/0.0.1/graphiql.css"]) {
      expect((await get(path)).status, path).toBe(404);
    }
    expect((await fetch(`${server.url}/assets/tokengate/dashboard.js`, { method: "POST" })).status).toBe(405);
  });
});

describe("receipts and failed requests by request id", () => {
  it("finds exactly the request, and only within the token's organization", async () => {
    const w = await f.world({ credit: "5" });
    const model = `rid-${w.org.id.slice(-6)}`;
    await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-rid", price: ["2.5", "10"] }]);
    await f.route(w.viewer, w.org.id, `${model}-bad`, [{ name: "main", baseUrl: fake.url, upstreamModel: "up-rid-bad", price: ["2.5", "10"] }]);
    fake.set("up-rid-bad", { type: "status", status: 500 });
    const openai = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const { response } = await openai.chat.completions.create({ model, messages: [{ role: "user", content: `n${i}` }], max_tokens: 20 }).withResponse();
      ids.push(response.headers.get("x-request-id")!);
    }
    const failed = await openai.chat.completions.create({ model: `${model}-bad`, messages: [{ role: "user", content: "x" }], max_tokens: 20 }).catch((e: APIError) => e);
    const failedId = (failed as APIError).headers!.get("x-request-id")!;

    const admin = await token("ORG_ADMIN", w.org.id);
    const query = `query($id: String!) {
      receipts(filter: { requestId: $id }) { totalCount edges { node { requestId charge { amount } } } }
      failedRequests(filter: { requestId: $id }) { totalCount edges { node { requestId cause } } } }`;
    const one = await gqlOk<{ receipts: { totalCount: number; edges: Array<{ node: { requestId: string; charge: { amount: string } } }> }; failedRequests: { totalCount: number } }>(admin, query, {
      id: ids[1],
    });
    expect(one.receipts.totalCount).toBe(1);
    expect(one.receipts.edges[0]!.node.requestId).toBe(ids[1]);
    const stored = await database.prisma.receipt.findUniqueOrThrow({ where: { requestId: ids[1]! } });
    expect(one.receipts.edges[0]!.node.charge.amount).toBe(formatMoney(stored.charge));
    expect(one.failedRequests.totalCount).toBe(0);

    const bad = await gqlOk<{ receipts: { totalCount: number }; failedRequests: { totalCount: number; edges: Array<{ node: { cause: string } }> } }>(admin, query, { id: failedId });
    expect(bad.receipts.totalCount).toBe(0);
    expect(bad.failedRequests.edges.map((e) => e.node.cause)).toEqual(["UPSTREAM_ERROR"]);

    // Another organization's token does not see it.
    const other = await f.organization();
    const stranger = await gqlOk<{ receipts: { totalCount: number } }>(await token("ORG_ADMIN", other.id), query, { id: ids[1] });
    expect(stranger.receipts.totalCount).toBe(0);
  });
});
