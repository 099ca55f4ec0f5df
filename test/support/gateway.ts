// Runs the passthrough on a real node:http server for tests (the server wiring is not needed:
// every /v1/ request goes to createGateway(config).handle, as src/server.ts does).
import http from "node:http";
import type { AddressInfo } from "node:net";
import OpenAI from "openai";
import { afterAll, beforeAll } from "vitest";
import { createTestDatabase, type TestDatabase } from "./db.ts";
import { startFakeUpstream, type FakeUpstream } from "./fake-upstream.ts";
import { loadConfig, type Config } from "../../src/config.ts";
import { createGateway, type Gateway, type GatewayOptions } from "../../src/gateway/index.ts";

export interface TestGateway {
  /** Base URL for OpenAI SDKs, e.g. http://127.0.0.1:1234/v1 */
  url: string;
  origin: string;
  config: Config;
  gateway: Gateway;
  client(secret: string, options?: { headers?: Record<string, string> }): OpenAI;
  close(): Promise<void>;
}

export async function startGateway(env: Record<string, string> = {}, options: GatewayOptions = { routeCacheTtlMs: 0 }): Promise<TestGateway> {
  const config = loadConfig({
    LOG_LEVEL: "silent",
    UPSTREAM_CONNECT_TIMEOUT_MS: "2000",
    UPSTREAM_FIRST_BYTE_TIMEOUT_MS: "15000",
    UPSTREAM_IDLE_TIMEOUT_MS: "15000",
    UPSTREAM_TOTAL_TIMEOUT_MS: "30000",
    MAX_BODY_BYTES: String(256 * 1024),
    ...env,
  });
  const gateway = createGateway(config, options);
  const server = http.createServer((req, res) => {
    if (req.url?.startsWith("/v1/")) void gateway.handle(req, res);
    else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: `${origin}/v1`,
    origin,
    config,
    gateway,
    client: (secret, opts = {}) => new OpenAI({ apiKey: secret, baseURL: `${origin}/v1`, maxRetries: 0, timeout: 60_000, defaultHeaders: opts.headers }),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await gateway.close();
    },
  };
}

export interface GatewayHarness {
  database: TestDatabase;
  fake: FakeUpstream;
  gw: TestGateway;
}

/** For a test file: a fresh database, a fake upstream and a gateway before its tests, all closed after. */
export function useGatewayHarness(env: Record<string, string> = {}, options?: GatewayOptions): GatewayHarness {
  const harness = {} as GatewayHarness;
  beforeAll(async () => {
    harness.database = await createTestDatabase();
    harness.fake = await startFakeUpstream();
    harness.gw = await startGateway(env, options);
  });
  afterAll(async () => {
    await harness.gw?.close();
    await harness.fake?.close();
    await harness.database?.dispose();
  });
  return harness;
}

/**
 * Waits until nothing is held for requests any more. A bucket's and a counter's `held` is this
 * instance's leased headroom, which goes back once the instance is idle: the gateway is asked to
 * give it back now (recallLeases, what shutdown does), again while a request's settlement is still
 * finishing, until no lease holds anything. Callers then assert `held`.
 */
export async function leasesReturned(h: { gw: TestGateway; database: Pick<TestDatabase, "sql"> }, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await h.gw.gateway.recallLeases();
    const [row] = await h.database.sql.query<{ leased: string }>(`SELECT COALESCE(SUM(amount), 0)::text AS leased FROM "BudgetLease"`);
    if (row!.leased === "0" || Date.now() > deadline) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

let counter = 0;
/** A name no other test in the run uses. */
export const uid = (prefix: string) => `${prefix}-${++counter}-${Math.random().toString(36).slice(2, 7)}`;
