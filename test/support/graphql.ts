// GraphQL test clients: over HTTP through yoga.fetch (no port, Yoga's testing guide) and over a
// real WebSocket with the graphql-ws client against a real server.
import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";
import { createYogaApp, startServer, type RunningServer } from "../../src/server.ts";
import { loadConfig } from "../../src/config.ts";
import { servicesWith } from "../../src/installed.ts";
import { createAdminToken } from "../../src/auth/index.ts";
import type { AdminRole } from "../../src/generated/prisma/enums.ts";
import { listenerCount } from "./services.ts";

export interface GraphQLResponse<T = Record<string, unknown>> {
  data?: T | null;
  errors?: Array<{ message: string; path?: string[]; extensions?: { code?: string; field?: string } }>;
}

let yoga: ReturnType<typeof createYogaApp> | null = null;

export async function gql<T = Record<string, any>>(token: string | null, query: string, variables?: Record<string, unknown>): Promise<GraphQLResponse<T>> {
  yoga ??= createYogaApp();
  const response = await yoga.fetch("http://tokengate.test/graphql", {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return (await response.json()) as GraphQLResponse<T>;
}

/** Like gql but fails the test on any error. */
export async function gqlOk<T = Record<string, any>>(token: string, query: string, variables?: Record<string, unknown>): Promise<T> {
  const result = await gql<T>(token, query, variables);
  if (result.errors?.length) throw new Error(`GraphQL errors: ${JSON.stringify(result.errors)}`);
  return result.data as T;
}

export const codes = (r: GraphQLResponse) => (r.errors ?? []).map((e) => e.extensions?.code);

export async function token(role: AdminRole, organizationId?: string, projectId?: string): Promise<string> {
  return (await createAdminToken({ name: `test ${role}`, role, organizationId, projectId })).secret;
}

export async function startTestServer(): Promise<RunningServer> {
  return startServer(servicesWith({ ...loadConfig({}), port: 0, host: "127.0.0.1" }), { quiet: true });
}

export function wsClient(server: RunningServer, authToken: string | null, onClose?: (code: number) => void): Client {
  return createClient({
    url: `${server.url.replace("http", "ws")}/graphql`,
    webSocketImpl: WebSocket,
    connectionParams: authToken ? { authorization: `Bearer ${authToken}` } : {},
    retryAttempts: 0,
    lazy: true,
    on: { closed: (event) => onClose?.((event as { code: number }).code) },
  });
}

/** Runs one query or mutation over the socket and returns its single result. */
export function wsExecute<T = Record<string, any>>(client: Client, query: string, variables?: Record<string, unknown>): Promise<GraphQLResponse<T>> {
  return new Promise((resolve, reject) => {
    let result: GraphQLResponse<T> | undefined;
    client.subscribe<T>(
      { query, variables },
      {
        next: (value) => {
          result = value as GraphQLResponse<T>;
        },
        error: (error) => reject(error instanceof Error ? error : new Error(JSON.stringify(error))),
        complete: () => resolve(result ?? {}),
      },
    );
  });
}

/**
 * The live listener count once earlier subscriptions are gone (it stops moving): the baseline to
 * wait above for a new subscription (disposed ones leave asynchronously).
 */
export async function settledListeners(): Promise<number> {
  let last = listenerCount();
  for (let still = 0; still < 10; ) {
    await new Promise((r) => setTimeout(r, 20));
    const now = listenerCount();
    still = now === last ? still + 1 : 0;
    last = now;
  }
  return last;
}
