// One HTTP server, one port: /graphql (Yoga over HTTP + SSE, graphql-ws over WebSocket on the
// same path), /v1/* (the OpenAI-compatible gateway), /healthz, /metrics and /dashboard.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createHash, timingSafeEqual } from "node:crypto";
import { createYoga, type Plugin, type YogaServerInstance } from "graphql-yoga";
import { GraphQLError, type ExecutionArgs, type execute, type subscribe } from "graphql";
import { WebSocketServer, type WebSocket } from "ws";
import { useServer } from "graphql-ws/use/ws";
import type { Config } from "./config.ts";
import { services as installedServices, type Services } from "./installed.ts";
import { db } from "./db/index.ts";
import { schema } from "./schema/index.ts";
import { createLoaders } from "./schema/loaders.ts";
import type { Context } from "./schema/builder.ts";
import { authenticateAdmin, noteRevokedToken, viewerStillValid, type Viewer } from "./auth/index.ts";
import { graphqlLimitsPlugin } from "./schema/limits.ts";
import { costLimitPlugin } from "./schema/cost.ts";
import { textGuardPlugin } from "./schema/text-guard.ts";

/** WebSocket close code of a subscriber that fell too far behind (README, "Live views"). */
export const SLOW_CONSUMER_CLOSE = 4500;
import { toGraphQLError } from "./resolvers/errors.ts";
import { clientAddress, createGateway } from "./gateway/index.ts";
import { DASHBOARD_HTML, DASHBOARD_HEADERS } from "./dashboard/page.ts";
import { renderGraphiQL } from "./dashboard/graphiql.ts";
import { serveAsset } from "./dashboard/static.ts";
import { graphqlHttpRequests, renderMetrics } from "./metrics.ts";
import { useGraphQLMetrics } from "./graphql-metrics.ts";
import { componentLogger, errorFields, logger } from "./log.ts";
import { EXPORT_PATHS, handleExport } from "./exports/http.ts";
import { watchLowBalance } from "./budgets/low-balance.ts";
import { SharedExecutions, rootFieldOf, streamKind } from "./events/shared-executions.ts";

interface EnvelopedRunners {
  execute: (args: ExecutionArgs) => ReturnType<typeof execute>;
  subscribe: (args: ExecutionArgs) => ReturnType<typeof subscribe>;
  /** Subscriptions with the same key see the same results (null: run alone). */
  shareKey: string | null;
}

/**
 * What a subscription's results depend on: the document, operation and variables as sent, and the
 * viewer's tenancy (every live resolver filters by role, organization and project, nothing else).
 */
function shareKeyOf(viewer: Context["viewer"], params: { query: string; operationName?: string | null; variables?: Record<string, unknown> | null }): string | null {
  if (!viewer) return null;
  return [viewer.role, viewer.organizationId ?? "", viewer.projectId ?? "", params.operationName ?? "", JSON.stringify(params.variables ?? {}), params.query].join("\u0000");
}

export interface RunningServer {
  server: http.Server;
  url: string;
  close(): Promise<void>;
}

type ServerContext = { req?: http.IncomingMessage; res?: http.ServerResponse };

const GRAPHIQL_DEFAULT_QUERY = `# tokengate admin API: the Headers tab carries your admin token.
# Subscriptions (keySpend, receiptCreated, routeHealth, budgetAlert) stream here too.
query Wallet {
  wallet {
    balances { bucket balance { amount currency } held { amount currency } available { amount currency } }
  }
}
`;

const graphqlErrorResponse = (status: number, message: string, code: string, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify({ errors: [{ message, extensions: { code } }] }), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });

/**
 * Runs before Yoga reads the body: an oversized body is refused by its Content-Length (413) and a
 * request without a valid admin token is refused (401) before anything is parsed or validated.
 * The viewer found here is handed to the context, so the token is looked up once per request.
 */
function guardPlugin(maxBodyBytes: number, viewers: WeakMap<Request, Viewer>): Plugin {
  return {
    async onRequest({ request, endResponse }) {
      // GraphiQL's page and CORS preflights carry no token and run no operation.
      if (request.method === "OPTIONS") return;
      if (request.method === "GET" && (request.headers.get("accept") ?? "").includes("text/html")) return;
      const length = Number(request.headers.get("content-length") ?? "0");
      if (length > maxBodyBytes) {
        return endResponse(graphqlErrorResponse(413, `request body too large: at most ${maxBodyBytes} bytes`, "PAYLOAD_TOO_LARGE", { connection: "close" }));
      }
      const viewer = await authenticateAdmin(request.headers.get("authorization"));
      if (!viewer) {
        return endResponse(graphqlErrorResponse(401, "authentication required: send Authorization: Bearer <admin token>", "UNAUTHENTICATED", { "www-authenticate": "Bearer" }));
      }
      viewers.set(request, viewer);
    },
  };
}

/**
 * Ends an event stream at its next event once `stop()` holds. A plain iterator, not an async
 * generator: return() must reach the source at once (a generator would queue it behind the pending
 * next(), keeping the event listener until the next event), so unsubscribing frees the listener.
 */
function stopWhen<T>(source: AsyncIterable<T>, stop: () => boolean): AsyncIterableIterator<T> {
  const inner = source[Symbol.asyncIterator]();
  const finish = async (value?: unknown): Promise<IteratorResult<T>> => {
    await inner.return?.(value);
    return { done: true, value: undefined };
  };
  const wrapper: AsyncIterableIterator<T> = {
    async next() {
      const result = await inner.next();
      return !result.done && stop() ? finish() : result;
    },
    return: finish,
    throw: (error?: unknown) => (inner.throw ? inner.throw(error) : Promise.reject(error)),
    [Symbol.asyncIterator]: () => wrapper,
  };
  return wrapper;
}

/**
 * A subscription (SSE or graphql-ws) authenticated at its start delivers nothing more once its token
 * is revoked or expired: the stream ends at the next event.
 */
const endSubscriptionsOfInvalidTokens: Plugin<Context> = {
  onSubscribe() {
    return {
      onSubscribeResult({ args, result, setResult }) {
        const viewer = args.contextValue.viewer;
        if (!viewer || !(Symbol.asyncIterator in result)) return;
        setResult(stopWhen(result, () => !viewerStillValid(viewer)));
      },
    };
  },
};

/** Yoga over the given services (default: the installed ones): their bus reaches resolvers through the context. */
export function createYogaApp(services: Pick<Services, "config" | "events"> = installedServices()): YogaServerInstance<ServerContext, Context> {
  const limits = services.config.admin;
  const { events } = services;
  const viewers = new WeakMap<Request, Viewer>();
  return createYoga<ServerContext, Context>({
    schema,
    graphqlEndpoint: "/graphql",
    landingPage: false,
    // Rendered from local assets (no CDN); the page asks for the admin token. SSE subscriptions
    // carry the same Authorization header as queries.
    graphiql: {
      title: "tokengate admin API",
      headers: JSON.stringify({ Authorization: "Bearer <admin token>" }),
      subscriptionsProtocol: "SSE",
      defaultQuery: GRAPHIQL_DEFAULT_QUERY,
    },
    renderGraphiQL,
    plugins: [guardPlugin(limits.graphqlMaxBodyBytes, viewers), graphqlLimitsPlugin(), costLimitPlugin(), endSubscriptionsOfInvalidTokens, textGuardPlugin(), useGraphQLMetrics()],
    context: async (initial): Promise<Context> => {
      // Over graphql-ws the initial context carries the connection_init payload (authenticated again per operation).
      const connectionParams = (initial as { connectionParams?: { authorization?: unknown } }).connectionParams;
      if (connectionParams) {
        const header = typeof connectionParams.authorization === "string" ? connectionParams.authorization : null;
        return { viewer: await authenticateAdmin(header), loaders: createLoaders(), events };
      }
      const viewer = viewers.get(initial.request) ?? (await authenticateAdmin(initial.request.headers.get("authorization")));
      return { viewer, loaders: createLoaders(), events };
    },
    maskedErrors: {
      maskError: (error, message) => {
        const mapped = toGraphQLError(error);
        if (mapped) return mapped;
        // A GraphQLError without an original error comes from parsing or validation (syntax, unknown
        // fields, the limits of schema/limits.ts): the client's mistake, shown as it is.
        if (error instanceof GraphQLError && !error.originalError) {
          return new GraphQLError(error.message, {
            nodes: error.nodes,
            positions: error.positions,
            path: error.path,
            extensions: { ...error.extensions, code: error.extensions.code ?? "GRAPHQL_VALIDATION_FAILED" },
          });
        }
        // A variable graphql-js could not coerce (an unknown enum value, a wrong type): its GraphQLError
        // wraps the type's own GraphQLError. The client's mistake, with the message that names it.
        if (error instanceof GraphQLError && error.originalError instanceof GraphQLError && !error.path) {
          return new GraphQLError(error.message, {
            nodes: error.nodes,
            positions: error.positions,
            extensions: { code: error.extensions.code ?? error.originalError.extensions.code ?? "BAD_USER_INPUT" },
          });
        }
        const original = error instanceof GraphQLError ? error.originalError : error;
        if (original) componentLogger("graphql").error(errorFields(original), "unexpected error");
        return new GraphQLError(message, { extensions: { code: "INTERNAL_SERVER_ERROR" } });
      },
    },
    logging: false,
  });
}

/** 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6. */
const isLoopback = (address: string) => /^(?:::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(address) || address === "::1";

/**
 * /metrics names every organization's routes and channels: with METRICS_TOKEN it needs that bearer
 * token; without one it is served to loopback clients only (the client address as the gateway
 * reads it, so behind TRUST_PROXY a proxied outside client is not taken for a local one).
 */
function metricsAccess(req: http.IncomingMessage, config: Config): "ok" | "token" | "loopback" {
  const metricsToken = config.admin.metricsToken;
  if (!metricsToken) return isLoopback(clientAddress(req, config.trustProxy)) ? "ok" : "loopback";
  return metricsAllowed(req, metricsToken) ? "ok" : "token";
}

/** Constant-time comparison of a bearer value with the configured METRICS_TOKEN. */
function metricsAllowed(req: http.IncomingMessage, metricsToken: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
  if (!match) return false;
  const digest = (v: string) => createHash("sha256").update(v).digest();
  return timingSafeEqual(digest(match[1]!), digest(metricsToken));
}

/**
 * Serves the gateway and the admin API with `services` (src/services.ts startServices builds them;
 * tests pass the installed ones with their own settings: servicesWith). Closing the server leaves
 * the services open: their owner closes them.
 */
export async function startServer(services: Services, options: { quiet?: boolean } = {}): Promise<RunningServer> {
  const { config, events } = services;
  const yoga = createYogaApp(services);
  const gateway = createGateway(config, { services });
  // Low-balance alerts follow this instance's committed charges (src/budgets/low-balance.ts).
  const stopLowBalance = watchLowBalance(events, (error) => componentLogger("alerts").error(errorFields(error), "low-balance check failed"));

  const server = http.createServer((req, res) => {
    const url = req.url ?? "/";
    const path = url.split("?")[0]!;
    if (path.startsWith("/v1/")) {
      gateway.handle(req, res).catch((error: unknown) => {
        componentLogger("gateway").error(errorFields(error), "unhandled error");
        if (!res.headersSent) {
          res.writeHead(500, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: { message: "internal error", type: "server_error", code: "internal_error", param: null } }));
        } else res.destroy();
      });
      return;
    }
    if (path === "/healthz") {
      db.$queryRaw`SELECT 1`
        .then(() => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ status: "ok" }));
        })
        .catch(() => {
          res.writeHead(503, { "content-type": "application/json" });
          res.end(JSON.stringify({ status: "unavailable" }));
        });
      return;
    }
    if (path === "/metrics") {
      const access = metricsAccess(req, config);
      if (access === "token") {
        res.writeHead(401, { "content-type": "text/plain; charset=utf-8", "www-authenticate": 'Bearer realm="metrics"' });
        res.end("metrics require Authorization: Bearer <METRICS_TOKEN>\n");
        return;
      }
      if (access === "loopback") {
        res.writeHead(403, { "content-type": "text/plain; charset=utf-8" });
        res.end("metrics are served to loopback clients only; set METRICS_TOKEN to scrape them from elsewhere\n");
        return;
      }
      renderMetrics()
        .then(({ contentType, body }) => {
          res.writeHead(200, { "content-type": contentType });
          res.end(body);
        })
        .catch((error: unknown) => {
          componentLogger("metrics").error(errorFields(error), "could not collect metrics");
          res.writeHead(503, { "content-type": "text/plain" });
          res.end("metrics unavailable\n");
        });
      return;
    }
    if (path === "/dashboard" || path === "/dashboard/") {
      res.writeHead(200, DASHBOARD_HEADERS);
      res.end(DASHBOARD_HTML);
      return;
    }
    if (path.startsWith("/assets/") && serveAsset(req, res, path)) return;
    if (path.startsWith("/exports/")) {
      handleExport(req, res).catch((error: unknown) => {
        componentLogger("exports").error(errorFields(error), "unexpected error");
        if (!res.headersSent) {
          res.writeHead(500, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: { message: "internal error", type: "server_error", code: "INTERNAL_SERVER_ERROR", param: null } }));
        } else res.destroy();
      });
      return;
    }
    if (path === "/graphql") {
      graphqlHttpRequests.inc();
      // The body limit is enforced on Content-Length before reading; a body of unknown length could not be.
      if (req.method === "POST" && req.headers["content-length"] === undefined) {
        res.writeHead(411, { "content-type": "application/json; charset=utf-8", connection: "close" });
        res.end(JSON.stringify({ errors: [{ message: "Content-Length required", extensions: { code: "LENGTH_REQUIRED" } }] }));
        return;
      }
      void yoga.handle(req, res, { req, res });
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        error: "not found",
        paths: ["/graphql", "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/metrics", "/dashboard", ...EXPORT_PATHS],
      }),
    );
  });

  // maxPayload: ws closes the socket with 1009 (message too big) before parsing anything larger.
  const wsServer = new WebSocketServer({ server, path: "/graphql", maxPayload: config.admin.wsMaxPayloadBytes });
  const { wsMaxSubscriptions, wsMaxBufferedBytes } = config.admin;
  // Sockets by the admin token that opened them: a revoked token's sockets close at once, on every instance.
  const socketsByToken = new Map<string, Set<WebSocket>>();
  const forbid = (socket: WebSocket) => socket.close(4403, "Forbidden");
  const revocations = events.subscribe("adminTokenRevoked");
  void (async () => {
    for await (const { tokenId } of revocations) {
      noteRevokedToken(tokenId);
      for (const socket of socketsByToken.get(tokenId) ?? []) forbid(socket);
    }
  })();
  const sharedExecutions = new SharedExecutions();
  const wsCleanup = useServer<Record<string, unknown>, { viewer?: Context["viewer"] }>(
    {
      // Authenticate once, in connection_init; a bad or missing token closes with 4403.
      onConnect: async (ctx) => {
        const authorization = ctx.connectionParams?.authorization;
        const viewer = await authenticateAdmin(typeof authorization === "string" ? authorization : null);
        if (!viewer) return false;
        ctx.extra.viewer = viewer;
        const socket = ctx.extra.socket;
        const sockets = socketsByToken.get(viewer.tokenId) ?? new Set<WebSocket>();
        socketsByToken.set(viewer.tokenId, sockets.add(socket));
        // An expiring token's socket closes when the token expires (timers cap at ~24.8 days; longer ones are re-checked per operation).
        const ttl = viewer.expiresAt ? viewer.expiresAt.getTime() - Date.now() : null;
        const expiry = ttl !== null && ttl < 2 ** 31 - 1 ? setTimeout(() => forbid(socket), Math.max(0, ttl)) : null;
        socket.once("close", () => {
          if (expiry) clearTimeout(expiry);
          sockets.delete(socket);
          if (sockets.size === 0) socketsByToken.delete(viewer.tokenId);
        });
        return true;
      },
      context: (ctx): Context => ({ viewer: ctx.extra.viewer ?? null, loaders: createLoaders(), events }),
      // A socket whose unsent data passes WS_MAX_BUFFERED_BYTES is a consumer that stopped reading: closed, never buffered further.
      onNext: (ctx) => {
        const socket = ctx.extra.socket;
        if (socket.bufferedAmount > wsMaxBufferedBytes) socket.close(SLOW_CONSUMER_CLOSE, "Consumer too slow");
      },
      // Yoga's enveloped execute / subscribe travel in rootValue (set in onSubscribe), so its plugins apply.
      execute: (args) => (args.rootValue as EnvelopedRunners).execute(args),
      // Identical subscriptions of the same tenancy share one execution (src/events/shared-executions.ts).
      subscribe: (args) => {
        const runners = args.rootValue as EnvelopedRunners;
        const context = args.contextValue as Context;
        const run = () => runners.subscribe(args);
        if (!runners.shareKey) return run();
        return sharedExecutions.subscribe({
          key: runners.shareKey,
          kind: streamKind(rootFieldOf(args.document, args.operationName)),
          run,
          onOverflow: () => context.closeSlow?.(),
        });
      },
      onSubscribe: async (ctx, _id, params) => {
        // The operation being started is already counted in ctx.subscriptions.
        if (Object.keys(ctx.subscriptions).length > wsMaxSubscriptions) {
          return [new GraphQLError(`too many operations on this connection: at most ${wsMaxSubscriptions} at once`, { extensions: { code: "TOO_MANY_SUBSCRIPTIONS" } })];
        }
        const {
          schema: envSchema,
          execute,
          subscribe,
          contextFactory,
          parse,
          validate,
        } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params,
        });
        const contextValue = await contextFactory();
        // A subscriber that falls LIVE_QUEUE_LIMIT events behind closes its socket (README, "Live views").
        const socket = ctx.extra.socket;
        contextValue.closeSlow = () => socket.close(SLOW_CONSUMER_CLOSE, "Consumer too slow");
        // The token is checked again for every operation: revoked or expired since connection_init → closed.
        if (!contextValue.viewer) {
          forbid(ctx.extra.socket);
          return [new GraphQLError("this token is no longer valid", { extensions: { code: "UNAUTHENTICATED" } })];
        }
        // Yoga's parse and validate carry the limits of schema/limits.ts; graphql-armor throws when one
        // is exceeded, which must become this operation's error, not a closed socket.
        try {
          const document = parse(params.query);
          const errors = validate(envSchema, document);
          if (errors.length) return errors;
          return {
            schema: envSchema,
            operationName: params.operationName,
            document,
            variableValues: params.variables,
            contextValue,
            rootValue: { execute, subscribe, shareKey: shareKeyOf(contextValue.viewer, params) },
          };
        } catch (error) {
          if (error instanceof GraphQLError) return [error];
          throw error;
        }
      },
    },
    wsServer,
  );

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const url = `http://${address.address.includes(":") ? `[${address.address}]` : address.address}:${address.port}`;
  if (!options.quiet) logger.info({ url, graphql: `${url}/graphql`, gateway: `${url}/v1`, dashboard: `${url}/dashboard` }, "tokengate listening");

  let closing: Promise<void> | null = null;
  return {
    server,
    url,
    close: () =>
      (closing ??= (async () => {
        await revocations.return?.();
        for (const client of wsServer.clients) client.close(1001, "Going away");
        await wsCleanup.dispose();
        await new Promise<void>((resolve) => wsServer.close(() => resolve()));
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        // Give in-flight requests a moment to finish, then cut what is left.
        const timer = setTimeout(() => server.closeAllConnections(), 5_000);
        timer.unref();
        await closed;
        clearTimeout(timer);
        await gateway.close();
        stopLowBalance();
      })()),
  };
}
