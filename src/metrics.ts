// Minimal Prometheus exposition of process-level counters.
import { listenerCount } from "./events/index.ts";

export const metrics = {
  startedAt: Date.now(),
  gatewayRequests: 0,
  graphqlRequests: 0,
  /** /v1 requests with a missing or unknown API key (never written to the database). */
  gatewayBadKeys: 0,
  /** /v1 requests refused because their address sent too many bad keys. */
  gatewayBadKeyThrottled: 0,
  /** /v1 requests refused by a key's rate limit, by limit. */
  gatewayRateLimited: { rpm: 0, tpm: 0, concurrent: 0 },
  render(): string {
    const mem = process.memoryUsage();
    return [
      "# HELP tokengate_gateway_requests_total Requests received on /v1/*.",
      "# TYPE tokengate_gateway_requests_total counter",
      `tokengate_gateway_requests_total ${this.gatewayRequests}`,
      "# HELP tokengate_graphql_requests_total HTTP requests received on /graphql.",
      "# TYPE tokengate_graphql_requests_total counter",
      `tokengate_graphql_requests_total ${this.graphqlRequests}`,
      "# HELP tokengate_gateway_bad_keys_total /v1 requests with a missing or unknown API key (not recorded in the database).",
      "# TYPE tokengate_gateway_bad_keys_total counter",
      `tokengate_gateway_bad_keys_total ${this.gatewayBadKeys}`,
      "# HELP tokengate_gateway_bad_key_throttled_total /v1 requests refused (429) because their address sent too many bad keys.",
      "# TYPE tokengate_gateway_bad_key_throttled_total counter",
      `tokengate_gateway_bad_key_throttled_total ${this.gatewayBadKeyThrottled}`,
      "# HELP tokengate_gateway_rate_limited_total /v1 requests refused (429) by a key's rate limit.",
      "# TYPE tokengate_gateway_rate_limited_total counter",
      ...Object.entries(this.gatewayRateLimited).map(([limit, n]) => `tokengate_gateway_rate_limited_total{limit="${limit}"} ${n}`),
      "# HELP tokengate_event_listeners Live event listeners (one per open subscription).",
      "# TYPE tokengate_event_listeners gauge",
      `tokengate_event_listeners ${listenerCount()}`,
      "# HELP process_resident_memory_bytes Resident memory size in bytes.",
      "# TYPE process_resident_memory_bytes gauge",
      `process_resident_memory_bytes ${mem.rss}`,
      "# HELP process_uptime_seconds Seconds since start.",
      "# TYPE process_uptime_seconds gauge",
      `process_uptime_seconds ${((Date.now() - this.startedAt) / 1000).toFixed(0)}`,
      "",
    ].join("\n");
  },
};
