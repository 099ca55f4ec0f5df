// Typed events, published only after the transaction that caused them committed.
// In-process by default; with REDIS_URL (createEventBus) every instance receives every event.
// Payloads are JSON-safe (money as micro-unit strings) so they cross Redis unchanged.
import { setMaxListeners } from "node:events";
import { createPubSub, type PubSub, type PubSubEventTarget } from "graphql-yoga";

export interface KeyChangedEvent {
  keyId: string;
  status: string;
}

/**
 * Where one cap window stands, as the batch that recorded a request left its counter (micro-unit
 * strings). `remaining` = cap − spent − held, at least 0; null when the scope has no cap.
 */
export interface ScopeStanding {
  scope: "KEY_DAILY" | "PROJECT_DAILY" | "PROJECT_MONTHLY" | "ROUTE_DAILY" | "RUN_TOTAL" | "CHANNEL_DAILY";
  scopeId: string;
  bucket: "CREDIT" | "ROUTED";
  windowStart: string;
  spent: string;
  held: string;
  cap: string | null;
  remaining: string | null;
}

/**
 * What a view shows of one recorded request, built once when it is published (from the record its
 * batch committed and the names this instance holds in memory): subscribers resolve every field of
 * it, names included, without reading the database. Names are null when the publisher did not know
 * them (then the resolvers read them once per event, shared by every subscriber).
 */
export interface RequestView {
  kind: "receipt" | "failure";
  /** Receipt id or FailedRequest id. */
  id: string;
  requestId: string;
  organizationId: string;
  projectId: string;
  projectName: string | null;
  keyId: string;
  keyName: string | null;
  keyPrefix: string | null;
  runId: string | null;
  routeId: string | null;
  routeModel: string | null;
  channelId: string | null;
  channelName: string | null;
  requestedModel: string | null;
  upstreamModel: string | null;
  endpoint: string;
  channelRole: "PRIMARY" | "BACKUP" | null;
  fallback: boolean;
  attempts: number;
  bucket: "CREDIT" | "ROUTED" | null;
  currency: string | null;
  promptTokens: number;
  completionTokens: number;
  /** Token classes inside the totals (receipts; 0 for failures). */
  cachedPromptTokens: number;
  cacheWriteTokens: number;
  audioPromptTokens: number;
  reasoningTokens: number;
  audioCompletionTokens: number;
  /** What the upstream reported the request cost (usage.cost), as it said it; null when it did not. */
  upstreamCost: string | null;
  priceSnapshotId: string | null;
  /** micro-units */
  charge: string;
  stream: boolean;
  usageExceededReservation: boolean;
  estimated: boolean;
  /** Wall time of the request as the gateway measured it (receipts; null for failures). */
  latencyMs: number | null;
  /** HTTP status the client got. */
  httpStatus: number;
  upstreamStatus: number | null;
  cause: string | null;
  capScope: string | null;
  message: string | null;
  createdAt: string;
  /**
   * Every upstream attempt, in order, with its channel's name and upstream model (so a subscriber
   * resolves Receipt.attemptPath { channel { name } } without a read). Absent from publishers that
   * do not know it: then the field is read once per event.
   */
  attemptPath?: AttemptViewStep[];
}

/** One step of a view's attempt path: the stored step (src/requests/attempts.ts) and the names the publisher held. */
export interface AttemptViewStep {
  channelId: string;
  role: "PRIMARY" | "BACKUP";
  status: number | null;
  cause: string;
  latencyMs: number;
  channelName: string | null;
  upstreamModel: string | null;
}

/** After every settled or failed request: what it cost and where its key / project stand. */
export interface SpendEvent {
  organizationId: string;
  projectId: string;
  keyId: string;
  requestId: string;
  bucket: "CREDIT" | "ROUTED";
  /** micro-units */
  charge: string;
  keySpendToday: string;
  keyRemainingToday: string | null;
  projectSpendToday: string;
  projectRemainingToday: string | null;
  status: "SETTLED" | "FAILED";
  at: string;
  /** Route of the request (null: refused before a route was chosen). */
  routeId?: string | null;
  runId?: string | null;
  channelId?: string | null;
  promptTokens?: number;
  completionTokens?: number;
  latencyMs?: number | null;
  /** Every cap window the request touched, as its batch left them. */
  scopes?: ScopeStanding[];
}

export interface RouteHealthEvent {
  organizationId: string;
  routeId: string;
  channelId: string;
  state: "HEALTHY" | "DEGRADED" | "DOWN";
  previousState: "HEALTHY" | "DEGRADED" | "DOWN";
  successRate: number;
  p50LatencyMs: number;
  at: string;
}

export interface ReceiptCreatedEvent {
  organizationId: string;
  projectId: string;
  keyId: string;
  receiptId: string;
  /** The receipt as a view shows it (absent from publishers that do not know it: then it is read once per event). */
  view?: RequestView | null;
}

export interface FailedRequestCreatedEvent {
  organizationId: string;
  projectId: string;
  keyId: string;
  failedRequestId: string;
  view?: RequestView | null;
}

export interface BudgetAlertEvent {
  /** The stored BudgetAlert row (the history lists the same alert under the same id). */
  id: string;
  createdAt: string;
  organizationId: string;
  projectId: string | null;
  scope: string;
  scopeId: string;
  bucket: "CREDIT" | "ROUTED";
  threshold: number;
  /** micro-units */
  spent: string;
  cap: string;
  windowStart: string;
}

/** A charge took a bucket's balance below the organization's threshold (once per crossing). */
export interface LowBalanceAlertEvent {
  /** The stored BalanceAlert row. */
  id: string;
  organizationId: string;
  bucket: "CREDIT" | "ROUTED";
  /** micro-units */
  threshold: string;
  /** The ledger balance after the charge, micro-units. */
  balance: string;
  requestId: string | null;
  createdAt: string;
}

export type Topics = {
  keyChanged: [KeyChangedEvent];
  spend: [SpendEvent];
  routeHealth: [RouteHealthEvent];
  receiptCreated: [ReceiptCreatedEvent];
  failedRequestCreated: [FailedRequestCreatedEvent];
  /** A balance moved outside the spend path (top-up, adjustment): wallet streams read it again. */
  walletChanged: [{ organizationId: string }];
  budgetAlert: [BudgetAlertEvent];
  lowBalanceAlert: [LowBalanceAlertEvent];
  /** A low-balance threshold was set, or a credit re-armed it: every instance forgets what it cached. */
  balanceThresholdChanged: [{ bucketId: string }];
  /** An admin token was revoked: every instance closes the sockets it authenticated. */
  adminTokenRevoked: [{ tokenId: string }];
  /** A cap changed: its scope's budget leases were revoked; every instance forgets its own (src/money/leases.ts). */
  leasesRevoked: [{ scope: string; scopeId: string }];
  /** An instance was refused near a cap: the others give back the free part of their leases of that scope. */
  leaseRecall: [{ instanceId: string; bucketId: string; scope: string; scopeId: string }];
};

type Target = PubSubEventTarget<Topics>;

/**
 * Wraps the event target to count live listeners: subscriptions that end must remove theirs
 * (a leak test and /metrics read this).
 */
function counting(target: Target): { target: Target; count: () => number } {
  let listeners = 0;
  const wrapped: Target = {
    addEventListener: (type, listener, options) => {
      listeners++;
      target.addEventListener(type, listener, options);
    },
    removeEventListener: (type, listener, options) => {
      listeners--;
      target.removeEventListener(type, listener, options);
    },
    dispatchEvent: (event) => target.dispatchEvent(event),
  };
  return { target: wrapped, count: () => listeners };
}

function localTarget(): Target {
  const target = new EventTarget();
  // One listener per open subscription: thousands are normal, not a leak (listenerCount watches for leaks).
  setMaxListeners(0, target);
  return target as unknown as Target;
}

/** The alerts a webhook delivers, by topic. */
export type AlertTopic = "budgetAlert" | "lowBalanceAlert";
export type PublishedAlert = { topic: "budgetAlert"; event: BudgetAlertEvent } | { topic: "lowBalanceAlert"; event: LowBalanceAlertEvent };
type AlertHook = (alert: PublishedAlert) => void;

/**
 * The event bus of one process (a service of src/services.ts): yoga's typed pub/sub over an
 * in-process EventTarget, or over Redis when REDIS_URL is set, so every instance receives every event.
 */
export interface EventBus extends PubSub<Topics> {
  /**
   * Calls `listener` synchronously for every event of `topic` (this instance's and, with Redis, every
   * other's), with the payload object every listener shares. Cheaper than `subscribe` for
   * fan-out: a filter runs at dispatch, so a subscriber whose filter refuses an event is not woken.
   * Returns the unsubscribe function.
   */
  listen<K extends keyof Topics>(topic: K, listener: (payload: Topics[K][0]) => void): () => void;
  /** Live listeners: subscriptions that end must remove theirs (a leak test and /metrics read this). */
  listenerCount(): number;
  /**
   * Runs `hook` for every budget or low-balance alert this process publishes (not for ones received
   * from other instances over Redis): each alert is published once, by the instance whose write
   * created it, so a hook (the alert webhooks) acts once per alert across instances. Returns an unsubscribe.
   */
  onAlertPublished(hook: AlertHook): () => void;
  /** Closes the transport (the Redis connections); in-process: nothing to close. */
  close(): Promise<void>;
}

function busOver(target: Target, closeTransport: () => Promise<void>): EventBus {
  const counter = counting(target);
  const pubsub = createPubSub<Topics>({ eventTarget: counter.target });
  const alertHooks = new Set<AlertHook>();
  const publish: PubSub<Topics>["publish"] = (routingKey, ...args) => {
    pubsub.publish(routingKey, ...args);
    if (routingKey !== "budgetAlert" && routingKey !== "lowBalanceAlert") return;
    const alert = { topic: routingKey, event: args[0] } as PublishedAlert;
    for (const hook of alertHooks) hook(alert);
  };
  return {
    publish,
    subscribe: pubsub.subscribe,
    listen(topic, listener) {
      const handler = (event: Event) => listener((event as CustomEvent<Topics[typeof topic][0]>).detail);
      counter.target.addEventListener(topic, handler as Parameters<Target["addEventListener"]>[1]);
      let removed = false;
      return () => {
        if (removed) return;
        removed = true;
        counter.target.removeEventListener(topic, handler as Parameters<Target["removeEventListener"]>[1]);
      };
    },
    listenerCount: () => counter.count(),
    onAlertPublished(hook) {
      alertHooks.add(hook);
      return () => void alertHooks.delete(hook);
    },
    close: closeTransport,
  };
}

/** An in-process bus: events reach this process only. */
export function localEventBus(): EventBus {
  return busOver(localTarget(), async () => {});
}

/** With a Redis URL, Redis pub/sub (every instance receives every event); else in-process. Build it before anything subscribes. */
export async function createEventBus(redisUrl: string | undefined): Promise<EventBus> {
  if (!redisUrl) return localEventBus();
  const [{ Redis }, { createRedisEventTarget }] = await Promise.all([import("ioredis"), import("@graphql-yoga/redis-event-target")]);
  const publishClient = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
  const subscribeClient = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
  await Promise.all([publishClient.ping(), subscribeClient.ping()]);
  return busOver(createRedisEventTarget<Parameters<Target["dispatchEvent"]>[0]>({ publishClient, subscribeClient }) as Target, async () => {
    publishClient.disconnect();
    subscribeClient.disconnect();
  });
}
