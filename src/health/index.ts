// Channel health: a rolling window of outcomes per channel → HEALTHY / DEGRADED / DOWN, with
// hysteresis so it does not flap. A DOWN channel is skipped until its cool-down ends; then one
// probe request goes through (half-open): success starts recovery, failure restarts the cool-down.
// Every state change is stored (Channel.health, ChannelHealthEvent) and published.
import { directSql } from "../db/index.ts";
import type { HealthState } from "../generated/prisma/enums.ts";
import type { HealthConfig } from "../config.ts";
import type { EventBus } from "../events/index.ts";

export type { HealthConfig };

interface Outcome {
  ok: boolean;
  latencyMs: number;
}

interface ChannelState {
  state: HealthState;
  outcomes: Outcome[];
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  downSince: number;
  probeInFlight: boolean;
}

export interface ChannelRef {
  id: string;
  routeId: string;
  organizationId: string;
  health: HealthState;
}

export type Admission = "yes" | "probe" | "no";

export class HealthTracker {
  private readonly channels = new Map<string, ChannelState>();
  constructor(
    readonly config: HealthConfig,
    /** Where state changes are published (routeHealth). */
    private readonly events: Pick<EventBus, "publish">,
  ) {}

  private stateOf(channel: ChannelRef): ChannelState {
    let s = this.channels.get(channel.id);
    if (!s) {
      // Start from the stored state (another instance, or before a restart, may have seen it fail).
      s = { state: channel.health, outcomes: [], consecutiveFailures: 0, consecutiveSuccesses: 0, downSince: 0, probeInFlight: false };
      this.channels.set(channel.id, s);
    }
    return s;
  }

  /** May a request use this channel now? "probe" means: yes, as the single half-open trial. */
  admit(channel: ChannelRef, now = Date.now()): Admission {
    const s = this.stateOf(channel);
    if (s.state !== "DOWN") return "yes";
    if (s.probeInFlight || now - s.downSince < this.config.cooldownMs) return "no";
    s.probeInFlight = true;
    return "probe";
  }

  /**
   * Gives back a probe slot whose attempt never started (reservation refused, client gone, an error
   * before the upstream call): nothing was learnt about the channel, so the next request may probe.
   */
  releaseProbe(channel: ChannelRef): void {
    const s = this.channels.get(channel.id);
    if (s) s.probeInFlight = false;
  }

  snapshot(channelId: string): { successRate: number; p50LatencyMs: number; state: HealthState | null } {
    const s = this.channels.get(channelId);
    if (!s) return { successRate: 1, p50LatencyMs: 0, state: null };
    return { ...stats(s.outcomes), state: s.state };
  }

  /** Records an attempt's outcome; stores and publishes the new state if it changed. */
  async record(channel: ChannelRef, outcome: Outcome, now = Date.now()): Promise<HealthState> {
    const s = this.stateOf(channel);
    s.probeInFlight = false;
    s.outcomes.push(outcome);
    if (s.outcomes.length > this.config.window) s.outcomes.shift();
    if (outcome.ok) {
      s.consecutiveSuccesses++;
      s.consecutiveFailures = 0;
    } else {
      s.consecutiveFailures++;
      s.consecutiveSuccesses = 0;
    }
    const previous = s.state;
    s.state = this.next(s, previous);
    if (s.state === "DOWN" && (previous !== "DOWN" || !outcome.ok)) s.downSince = now;
    if (s.state !== previous) await this.persist(channel, previous, s, now);
    return s.state;
  }

  private next(s: ChannelState, current: HealthState): HealthState {
    const { successRate } = stats(s.outcomes);
    const c = this.config;
    if (s.consecutiveFailures >= c.downAfter) return "DOWN";
    if (current === "DOWN") {
      // Leave DOWN only on a successful probe, and only one step.
      return s.consecutiveSuccesses >= 1 ? "DEGRADED" : "DOWN";
    }
    const poor = s.outcomes.length >= c.minSamples && successRate < c.degradedBelow;
    // One failure is noise; two in a row, or a poor rate over the window, is degradation.
    if (current === "HEALTHY") return poor || s.consecutiveFailures >= 2 ? "DEGRADED" : "HEALTHY";
    // DEGRADED: climb back only after a run of successes and a good rate (hysteresis).
    if (s.consecutiveSuccesses >= c.recoverAfter && !poor) return "HEALTHY";
    return "DEGRADED";
  }

  private async persist(channel: ChannelRef, previous: HealthState, s: ChannelState, now: number): Promise<void> {
    const { successRate, p50LatencyMs } = stats(s.outcomes);
    const at = new Date(now);
    // One statement (state and its history row commit together), straight to the driver: this runs
    // off the request path and must not hold a Prisma transaction open across a shutdown.
    await directSql().$queryRawUnsafe(
      `WITH changed AS (
         UPDATE "Channel" SET health = $2::"HealthState", "healthChangedAt" = $6::timestamptz AT TIME ZONE 'UTC' WHERE id = $1 RETURNING id, "organizationId", "routeId")
       INSERT INTO "ChannelHealthEvent" ("channelId", "organizationId", "routeId", "fromState", "toState", "successRate", "p50LatencyMs", "createdAt")
       SELECT id, "organizationId", "routeId", $3::"HealthState", $2::"HealthState", $4::float8, $5::int, $6::timestamptz AT TIME ZONE 'UTC' FROM changed`,
      channel.id,
      s.state,
      previous,
      successRate,
      p50LatencyMs,
      at.toISOString(),
    );
    this.events.publish("routeHealth", {
      organizationId: channel.organizationId,
      routeId: channel.routeId,
      channelId: channel.id,
      state: s.state,
      previousState: previous,
      successRate,
      p50LatencyMs,
      at: at.toISOString(),
    });
  }
}

function stats(outcomes: Outcome[]): { successRate: number; p50LatencyMs: number } {
  if (outcomes.length === 0) return { successRate: 1, p50LatencyMs: 0 };
  const ok = outcomes.filter((o) => o.ok).length;
  const latencies = outcomes.map((o) => o.latencyMs).sort((a, b) => a - b);
  return { successRate: ok / outcomes.length, p50LatencyMs: Math.round(latencies[Math.floor((latencies.length - 1) / 2)]!) };
}
