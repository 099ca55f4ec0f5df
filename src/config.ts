// Every setting tokengate reads from the environment, in one place (README lists them). Nothing
// else in src/ reads process.env: loadConfig is pure over the env object it is given.

export interface HealthConfig {
  /** Outcomes kept per channel. */
  window: number;
  /** Consecutive failures that take a channel DOWN. */
  downAfter: number;
  /** Consecutive successes needed to climb one step (DOWN → DEGRADED → HEALTHY). */
  recoverAfter: number;
  /** Success rate under which a channel is DEGRADED (needs minSamples outcomes). */
  degradedBelow: number;
  minSamples: number;
  /** How long a DOWN channel rests before a probe. */
  cooldownMs: number;
}

export interface Config {
  port: number;
  host: string;
  /** postgres://… selects PostgreSQL; unset selects embedded PGlite in dataDir. */
  databaseUrl: string | undefined;
  dataDir: string;
  redisUrl: string | undefined;
  adminToken: string | undefined;
  secret: string | undefined;
  /** How often Hold rows past their expiry are released (rows of releases before the holds path was retired). */
  sweepIntervalMs: number;
  /** How often a gateway folds the queued spend sums into the rollups (reports read both: exact either way). */
  rollupFoldMs: number;
  upstream: {
    connectTimeoutMs: number;
    firstByteTimeoutMs: number;
    idleTimeoutMs: number;
    totalTimeoutMs: number;
    /**
     * Largest upstream answer the gateway holds in memory: a whole non-stream body, or one event of
     * a stream. A larger one is refused (502 upstream_response_too_large) and charged as billed.
     */
    maxResponseBytes: number;
  };
  /** Largest accepted /v1 request body. */
  maxBodyBytes: number;
  /** How long a key lookup may be served from the in-process cache. */
  keyCacheTtlMs: number;
  logLevel: "debug" | "info" | "warn" | "error" | "silent";
  /** Currency code of each balance bucket (TOKENGATE_CREDIT_CURRENCY / TOKENGATE_ROUTED_CURRENCY). */
  currencies: { CREDIT: string; ROUTED: string };
  /** Channel health (src/health): window, thresholds and the cool-down of a DOWN channel. */
  health: HealthConfig;
  leases: {
    /** A lease admits nothing new this long after its last renewal. */
    ttlMs: number;
    /**
     * A lease whose instance stopped renewing is reclaimed this long after its expiry (the longest a
     * request admitted against it may still run: what it holds in flight stays counted until then).
     */
    reclaimGraceMs: number;
    /** Headroom taken per grant, in worst cases of the request that asked (shrunk near a cap). */
    chunkRequests: number;
    /**
     * 0 (default): a response's receipt is committed before its last byte is sent. N > 0: the
     * response is sent first and its receipt committed within N ms (batched); caps still hold
     * through the leases, but a crash loses the receipts of the last N ms.
     */
    sendBeforeCommitMs: number;
  };
  /** Missing or unknown API keys one client address may send per minute before it gets 429 (0 = no throttle). */
  badKeyLimitPerMinute: number;
  /** Behind a reverse proxy: take the client address from the last x-forwarded-for entry. */
  trustProxy: boolean;
  /** Alert webhook delivery: attempts per event, time-out per attempt, first retry delay (doubling). */
  webhooks: { maxAttempts: number; timeoutMs: number; backoffMs: number };
  /** Admin surface limits (README "Limits and abuse"). */
  admin: {
    /** Largest POST /graphql body; larger ones get 413 before anything is read. */
    graphqlMaxBodyBytes: number;
    /** Largest graphql-ws message; the socket closes with 1009 above it. */
    wsMaxPayloadBytes: number;
    /** Operations open at once on one graphql-ws socket. */
    wsMaxSubscriptions: number;
    /** Unsent bytes one graphql-ws socket may hold; past it the socket closes with 4500. */
    wsMaxBufferedBytes: number;
    /** Events one per-event subscription may queue for a consumer that does not keep up; past it the subscriber is disconnected (4500). */
    liveQueueLimit: number;
    /** Bearer token /metrics requires; unset = /metrics is open. */
    metricsToken: string | undefined;
    /** Let organization admins point channels at loopback / private / link-local addresses. */
    allowPrivateUpstreams: boolean;
  };
}

function intFrom(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** A non-negative number (fractions allowed: HEALTH_DEGRADED_BELOW is a rate). */
function numberFrom(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  const value = raw === undefined || raw === "" ? fallback : Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number`);
  return value;
}

function healthFrom(env: NodeJS.ProcessEnv): HealthConfig {
  return {
    window: numberFrom(env, "HEALTH_WINDOW", 20),
    downAfter: numberFrom(env, "HEALTH_DOWN_AFTER", 3),
    recoverAfter: numberFrom(env, "HEALTH_RECOVER_AFTER", 3),
    degradedBelow: numberFrom(env, "HEALTH_DEGRADED_BELOW", 0.8),
    minSamples: numberFrom(env, "HEALTH_MIN_SAMPLES", 5),
    cooldownMs: numberFrom(env, "HEALTH_COOLDOWN_MS", 10_000),
  };
}

export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new Error("DATABASE_URL must start with postgres:// or postgresql://");
  }
  const logLevel = (env.LOG_LEVEL ?? "info") as Config["logLevel"];
  if (!["debug", "info", "warn", "error", "silent"].includes(logLevel)) {
    throw new Error("LOG_LEVEL must be one of debug, info, warn, error, silent");
  }
  const totalTimeoutMs = intFrom(env, "UPSTREAM_TOTAL_TIMEOUT_MS", 600_000);
  checkAdmission(env.GATEWAY_ADMISSION);
  // The credential key is derived from it: a short secret is refused at start-up, not discovered later.
  if (env.TOKENGATE_SECRET && env.TOKENGATE_SECRET.length < 32) {
    throw new Error(`TOKENGATE_SECRET must be at least 32 characters (got ${env.TOKENGATE_SECRET.length}); generate one with: openssl rand -base64 32`);
  }
  return {
    port: intFrom(env, "PORT", 4000),
    host: env.HOST || "127.0.0.1",
    databaseUrl,
    dataDir: env.DATA_DIR || "./data",
    redisUrl: env.REDIS_URL || undefined,
    adminToken: env.TOKENGATE_ADMIN_TOKEN || undefined,
    secret: env.TOKENGATE_SECRET || undefined,
    sweepIntervalMs: intFrom(env, "HOLD_SWEEP_INTERVAL_MS", 15_000),
    rollupFoldMs: Math.max(10, intFrom(env, "ROLLUP_FOLD_MS", 1_000)),
    upstream: {
      connectTimeoutMs: intFrom(env, "UPSTREAM_CONNECT_TIMEOUT_MS", 10_000),
      firstByteTimeoutMs: intFrom(env, "UPSTREAM_FIRST_BYTE_TIMEOUT_MS", 120_000),
      idleTimeoutMs: intFrom(env, "UPSTREAM_IDLE_TIMEOUT_MS", 60_000),
      totalTimeoutMs,
      maxResponseBytes: Math.max(64 * 1024, intFrom(env, "UPSTREAM_MAX_RESPONSE_BYTES", 16 * 1024 * 1024)),
    },
    maxBodyBytes: intFrom(env, "MAX_BODY_BYTES", 4 * 1024 * 1024),
    keyCacheTtlMs: intFrom(env, "KEY_CACHE_TTL_MS", 1_000),
    logLevel,
    currencies: { CREDIT: env.TOKENGATE_CREDIT_CURRENCY || "USD", ROUTED: env.TOKENGATE_ROUTED_CURRENCY || "CNY" },
    health: healthFrom(env),
    leases: {
      ttlMs: Math.max(100, intFrom(env, "LEASE_TTL_MS", 1_000)),
      reclaimGraceMs: Math.max(0, intFrom(env, "LEASE_RECLAIM_GRACE_MS", totalTimeoutMs + 60_000)),
      chunkRequests: Math.max(1, intFrom(env, "LEASE_CHUNK_REQUESTS", 512)),
      sendBeforeCommitMs: Math.min(1_000, Math.max(0, intFrom(env, "SEND_BEFORE_COMMIT_MS", 0))),
    },
    badKeyLimitPerMinute: intFrom(env, "BAD_KEY_LIMIT_PER_MINUTE", 20),
    trustProxy: env.TRUST_PROXY === "1" || env.TRUST_PROXY === "true",
    webhooks: {
      maxAttempts: Math.max(1, intFrom(env, "WEBHOOK_MAX_ATTEMPTS", 5)),
      timeoutMs: Math.max(1, intFrom(env, "WEBHOOK_TIMEOUT_MS", 5_000)),
      backoffMs: intFrom(env, "WEBHOOK_BACKOFF_MS", 2_000),
    },
    admin: {
      graphqlMaxBodyBytes: intFrom(env, "GRAPHQL_MAX_BODY_BYTES", 1024 * 1024),
      wsMaxPayloadBytes: intFrom(env, "WS_MAX_PAYLOAD_BYTES", 1024 * 1024),
      wsMaxSubscriptions: intFrom(env, "WS_MAX_SUBSCRIPTIONS", 100),
      wsMaxBufferedBytes: Math.max(64 * 1024, intFrom(env, "WS_MAX_BUFFERED_BYTES", 8 * 1024 * 1024)),
      liveQueueLimit: Math.max(1, intFrom(env, "LIVE_QUEUE_LIMIT", 2_048)),
      metricsToken: env.METRICS_TOKEN || undefined,
      allowPrivateUpstreams: env.TOKENGATE_ALLOW_PRIVATE_UPSTREAMS === "1" || env.TOKENGATE_ALLOW_PRIVATE_UPSTREAMS === "true",
    },
  };
}

/**
 * GATEWAY_ADMISSION chose between budget leases and a Hold row per request until the holds path was
 * retired (issue 16). "leases" (or unset) still starts; anything else stops start-up rather than
 * run a money path other than the one asked for.
 */
function checkAdmission(raw: string | undefined): void {
  if (raw === undefined || raw === "" || raw === "leases") return;
  throw new Error(
    raw === "holds"
      ? "GATEWAY_ADMISSION=holds was retired: admission is against budget leases only (unset GATEWAY_ADMISSION; README, How a cap is enforced)"
      : `GATEWAY_ADMISSION can only be leases (or unset), got ${JSON.stringify(raw)}`,
  );
}
