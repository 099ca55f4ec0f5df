// Minimal Prometheus exposition of process-level counters.
import { listenerCount } from "./events/index.ts";

export const metrics = {
  startedAt: Date.now(),
  gatewayRequests: 0,
  graphqlRequests: 0,
  render(): string {
    const mem = process.memoryUsage();
    return [
      "# HELP tokengate_gateway_requests_total Requests received on /v1/*.",
      "# TYPE tokengate_gateway_requests_total counter",
      `tokengate_gateway_requests_total ${this.gatewayRequests}`,
      "# HELP tokengate_graphql_requests_total HTTP requests received on /graphql.",
      "# TYPE tokengate_graphql_requests_total counter",
      `tokengate_graphql_requests_total ${this.graphqlRequests}`,
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
