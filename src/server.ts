// One HTTP server, one port: /graphql (Yoga over HTTP + SSE, graphql-ws over WebSocket on the
// same path), /v1/* (the OpenAI-compatible gateway), /healthz, /metrics and /dashboard.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createYoga, type YogaServerInstance } from "graphql-yoga";
import { GraphQLError, type ExecutionArgs, type execute, type subscribe } from "graphql";
import { WebSocketServer } from "ws";
import { useServer } from "graphql-ws/use/ws";
import type { Config } from "./config.ts";
import { db } from "./db/index.ts";
import { schema } from "./schema/index.ts";
import { createLoaders } from "./schema/loaders.ts";
import type { Context } from "./schema/builder.ts";
import { authenticateAdmin } from "./auth/index.ts";
import { toGraphQLError } from "./resolvers/errors.ts";
import { createGateway } from "./gateway/index.ts";
import { DASHBOARD_HTML, DASHBOARD_HEADERS } from "./dashboard/page.ts";
import { renderGraphiQL } from "./dashboard/graphiql.ts";
import { serveAsset } from "./dashboard/static.ts";
import { metrics } from "./metrics.ts";

interface EnvelopedRunners {
  execute: (args: ExecutionArgs) => ReturnType<typeof execute>;
  subscribe: (args: ExecutionArgs) => ReturnType<typeof subscribe>;
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

export function createYogaApp(): YogaServerInstance<ServerContext, Context> {
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
    context: async (initial): Promise<Context> => {
      // Over graphql-ws the initial context carries the connection_init payload.
      const connectionParams = (initial as { connectionParams?: { authorization?: unknown } }).connectionParams;
      const header = typeof connectionParams?.authorization === "string" ? connectionParams.authorization : initial.request.headers.get("authorization");
      return { viewer: await authenticateAdmin(header), loaders: createLoaders() };
    },
    maskedErrors: {
      maskError: (error, message) => {
        const mapped = toGraphQLError(error);
        if (mapped) return mapped;
        const original = error instanceof GraphQLError ? error.originalError : error;
        if (original) console.error("[graphql] unexpected error:", original);
        return new GraphQLError(message, { extensions: { code: "INTERNAL_SERVER_ERROR" } });
      },
    },
    logging: false,
  });
}

export async function startServer(config: Config, options: { quiet?: boolean } = {}): Promise<RunningServer> {
  const yoga = createYogaApp();
  const gateway = createGateway(config);

  const server = http.createServer((req, res) => {
    const url = req.url ?? "/";
    const path = url.split("?")[0]!;
    if (path.startsWith("/v1/")) {
      metrics.gatewayRequests++;
      gateway.handle(req, res).catch((error: unknown) => {
        console.error("[gateway] unhandled error:", error);
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
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metrics.render());
      return;
    }
    if (path === "/dashboard" || path === "/dashboard/") {
      res.writeHead(200, DASHBOARD_HEADERS);
      res.end(DASHBOARD_HTML);
      return;
    }
    if (path.startsWith("/assets/") && serveAsset(req, res, path)) return;
    if (path === "/graphql") {
      metrics.graphqlRequests++;
      void yoga.handle(req, res, { req, res });
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: "not found", paths: ["/graphql", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/healthz", "/metrics", "/dashboard"] }));
  });

  const wsServer = new WebSocketServer({ server, path: "/graphql" });
  const wsCleanup = useServer<Record<string, unknown>, { viewer?: Context["viewer"] }>(
    {
      // Authenticate once, in connection_init; a bad or missing token closes with 4403.
      onConnect: async (ctx) => {
        const viewer = await authenticateAdmin(ctx.connectionParams?.authorization as string | undefined);
        if (!viewer) return false;
        ctx.extra.viewer = viewer;
        return true;
      },
      context: (ctx): Context => ({ viewer: ctx.extra.viewer ?? null, loaders: createLoaders() }),
      // Yoga's enveloped execute / subscribe travel in rootValue (set in onSubscribe), so its plugins apply.
      execute: (args) => (args.rootValue as EnvelopedRunners).execute(args),
      subscribe: (args) => (args.rootValue as EnvelopedRunners).subscribe(args),
      onSubscribe: async (ctx, _id, params) => {
        const { schema: envSchema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params,
        });
        const args = {
          schema: envSchema,
          operationName: params.operationName,
          document: parse(params.query),
          variableValues: params.variables,
          contextValue: await contextFactory(),
          rootValue: { execute, subscribe },
        };
        const errors = validate(args.schema, args.document);
        if (errors.length) return errors;
        return args;
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
  if (!options.quiet) console.log(`tokengate listening on ${url} (GraphQL ${url}/graphql, gateway ${url}/v1, dashboard ${url}/dashboard)`);

  let closing: Promise<void> | null = null;
  return {
    server,
    url,
    close: () =>
      (closing ??= (async () => {
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
      })()),
  };
}
