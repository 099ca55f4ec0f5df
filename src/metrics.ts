// Prometheus metrics (prom-client), one registry per process, served at /metrics.
// Label values are bounded by configuration, never by traffic: routes are the route's catalog model
// (or "none" before one was resolved), channels the channel's name, GraphQL operations their root
// field (schema-bounded; client-chosen operation names are not used). No request ids, no key ids.
// README "Metrics" lists every series.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { services } from "./installed.ts";
import { currentDatabase } from "./db/index.ts";

export const registry = new Registry();
collectDefaultMetrics({ register: registry });

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** The gateway's own time per request is small: finer buckets. */
const OVERHEAD_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export const NONE = "none";

export const gatewayRequests = new Counter({
  name: "tokengate_gateway_requests_total",
  help: "Requests answered on /v1/*, by route (catalog model), channel (last one tried) and HTTP status.",
  labelNames: ["route", "channel", "status"] as const,
  registers: [registry],
});

export const gatewayDuration = new Histogram({
  name: "tokengate_gateway_request_duration_seconds",
  help: "Time from receiving a /v1 request to its last byte, by route, channel and HTTP status.",
  labelNames: ["route", "channel", "status"] as const,
  buckets: LATENCY_BUCKETS,
  registers: [registry],
});

export const gatewayOverhead = new Histogram({
  name: "tokengate_gateway_overhead_seconds",
  help: "The gateway's own time per /v1 request: total time minus time spent in upstream attempts (key check, reservation, settlement, receipt).",
  labelNames: ["route"] as const,
  buckets: OVERHEAD_BUCKETS,
  registers: [registry],
});

export const upstreamAttempts = new Counter({
  name: "tokengate_upstream_attempts_total",
  help: "Upstream attempts by route, channel and outcome (ok, failed).",
  labelNames: ["route", "channel", "outcome"] as const,
  registers: [registry],
});

export const upstreamDuration = new Histogram({
  name: "tokengate_upstream_attempt_duration_seconds",
  help: "Duration of one upstream attempt (until its response was relayed), by route and channel.",
  labelNames: ["route", "channel"] as const,
  buckets: LATENCY_BUCKETS,
  registers: [registry],
});

export const fallbacks = new Counter({
  name: "tokengate_fallbacks_total",
  help: "Moves to a next channel after a failed attempt, by route and the channel moved to.",
  labelNames: ["route", "channel"] as const,
  registers: [registry],
});

export const spendMicros = new Counter({
  name: "tokengate_spend_micros_total",
  help: "Money charged, in micro-units (1e-6) of the currency, by bucket, currency and source (receipt, failed_request). Counted after the charge committed.",
  labelNames: ["bucket", "currency", "source"] as const,
  registers: [registry],
});

export const gatewayBadKeys = new Counter({
  name: "tokengate_gateway_bad_keys_total",
  help: "/v1 requests with a missing or unknown API key (never written to the database).",
  registers: [registry],
});

export const gatewayBadKeyThrottled = new Counter({
  name: "tokengate_gateway_bad_key_throttled_total",
  help: "/v1 requests refused (429) because their address sent too many bad keys.",
  registers: [registry],
});

export const gatewayRateLimited = new Counter({
  name: "tokengate_gateway_rate_limited_total",
  help: "/v1 requests refused (429) by a key's rate limit, by limit (rpm, tpm, concurrent).",
  labelNames: ["limit"] as const,
  registers: [registry],
});

export const graphqlHttpRequests = new Counter({
  name: "tokengate_graphql_requests_total",
  help: "HTTP requests received on /graphql (queries, mutations, SSE, GraphiQL).",
  registers: [registry],
});

export const graphqlOperations = new Counter({
  name: "tokengate_graphql_operations_total",
  help: "GraphQL operations executed (HTTP and graphql-ws) by type (query, mutation, subscription), root field and outcome (ok, error, invalid).",
  labelNames: ["type", "field", "outcome"] as const,
  registers: [registry],
});

export const graphqlDuration = new Histogram({
  name: "tokengate_graphql_operation_duration_seconds",
  help: "Execution time of GraphQL queries and mutations by type and root field.",
  labelNames: ["type", "field"] as const,
  buckets: LATENCY_BUCKETS,
  registers: [registry],
});

new Gauge({
  name: "tokengate_subscriptions_live",
  help: "Live GraphQL subscriptions in this process (one event listener each, graphql-ws and SSE).",
  registers: [registry],
  collect() {
    this.set(services().events.listenerCount());
  },
});

/** A scrape-time read; null when there is no database or it does not answer (the gauge keeps its last value, /metrics still answers). */
async function fromDatabase<Row>(sql: string): Promise<Row[] | null> {
  const database = currentDatabase();
  if (!database) return null;
  try {
    return await database.sql.query<Row>(sql);
  } catch {
    return null;
  }
}

new Gauge({
  name: "tokengate_holds_outstanding",
  help: "Hold rows not yet settled or released, all instances (from the database): an earlier release's holds path left them; the sweeper expires them.",
  registers: [registry],
  async collect() {
    const rows = await fromDatabase<{ n: string | number }>(`SELECT count(*) AS n FROM "Hold" WHERE status = 'ACTIVE'`);
    if (rows) this.set(Number(rows[0]?.n ?? 0));
  },
});

new Gauge({
  name: "tokengate_held_micros",
  help: "Money held for requests in flight (on leases: leased headroom not yet spent), in micro-units, by bucket and currency, all instances (wallet buckets' held).",
  labelNames: ["bucket", "currency"] as const,
  registers: [registry],
  async collect() {
    const rows = await fromDatabase<{ bucket: string; currency: string; held: string | number }>(
      `SELECT bucket::text AS bucket, currency, COALESCE(sum(held), 0)::text AS held FROM "WalletBucket" GROUP BY bucket, currency`,
    );
    if (!rows) return;
    this.reset();
    for (const r of rows) this.set({ bucket: r.bucket, currency: r.currency }, Number(r.held));
  },
});

new Gauge({
  name: "tokengate_db_pool_connections",
  help: "Database connections by state (total, idle, waiting = queued clients). PGlite is one in-process connection.",
  labelNames: ["state"] as const,
  registers: [registry],
  collect() {
    const pool = currentDatabase()?.pool();
    if (!pool) return;
    this.set({ state: "total" }, pool.total);
    this.set({ state: "idle" }, pool.idle);
    this.set({ state: "waiting" }, pool.waiting);
  },
});

/** The text /metrics answers with. */
export async function renderMetrics(): Promise<{ contentType: string; body: string }> {
  return { contentType: registry.contentType, body: await registry.metrics() };
}
