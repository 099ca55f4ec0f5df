// The Pothos builder: plugins, scalars' TypeScript shapes, context and auth scopes. Defines no types.
import SchemaBuilder from "@pothos/core";
import PrismaPlugin from "@pothos/plugin-prisma";
import RelayPlugin from "@pothos/plugin-relay";
import ScopeAuthPlugin from "@pothos/plugin-scope-auth";
import { GraphQLError } from "graphql";
import type PrismaTypes from "../generated/pothos-types.ts";
import { getDatamodel } from "../generated/pothos-types.ts";
import { db } from "../db/index.ts";
import { canRead, type Viewer } from "../auth/index.ts";
import type { Loaders } from "./loaders.ts";
import type { EventBus } from "../events/index.ts";
import { PAGE_SIZE } from "./limits.ts";

export interface Context {
  viewer: Viewer | null;
  /** Per operation; a subscription gets fresh ones for each event (src/resolvers/live.ts). */
  loaders: Loaders;
  /** The event bus subscriptions listen on (the server's services). */
  events: EventBus;
  /** Set by transports that can be closed: a subscriber that fell too far behind is disconnected (graphql-ws: close code 4500). */
  closeSlow?: () => void;
}

/** Rows that belong to an organization and possibly a project: what tenancy checks look at. */
export interface Owned {
  organizationId: string | null;
  projectId?: string | null;
}

export const builder = new SchemaBuilder<{
  Context: Context;
  PrismaTypes: PrismaTypes;
  Scalars: {
    Decimal: { Input: string; Output: string };
    DateTime: { Input: Date; Output: Date };
    JSON: { Input: unknown; Output: unknown };
    /** Requests, tokens, rows: may exceed 32 bits (a JSON number while exact, else a string). */
    Count: { Input: bigint; Output: number | bigint };
  };
  AuthScopes: {
    authenticated: boolean;
    /** Platform or organization admin: may run mutations (the domain checks the target's organization). */
    admin: boolean;
    platform: boolean;
    /** May read this organization / project's rows. */
    owns: Owned;
  };
  Connection: { totalCount: number | (() => number | Promise<number>) };
  DefaultFieldNullability: false;
  DefaultEdgesNullability: { list: false; items: false };
  DefaultNodeNullability: false;
}>({
  defaultFieldNullability: false,
  plugins: [ScopeAuthPlugin, PrismaPlugin, RelayPlugin],
  prisma: {
    client: () => db,
    dmmf: getDatamodel(),
    filterConnectionTotalCount: true,
    // The cost limit (schema/cost.ts) counts pages with these same numbers.
    defaultConnectionSize: PAGE_SIZE.default,
    maxConnectionSize: PAGE_SIZE.max,
    onUnusedQuery: null,
  },
  relay: {
    clientMutationId: "omit",
    cursorType: "String",
    edgesFieldOptions: { nullable: { list: false, items: false } },
    nodeFieldOptions: { nullable: false },
  },
  scopeAuth: {
    authorizeOnSubscribe: true,
    runScopesOnType: true,
    authScopes: (context) => ({
      authenticated: context.viewer !== null,
      admin: context.viewer?.role === "PLATFORM_ADMIN" || context.viewer?.role === "ORG_ADMIN",
      platform: context.viewer?.role === "PLATFORM_ADMIN",
      owns: (row: Owned) => context.viewer !== null && canRead(context.viewer, row.organizationId, row.projectId),
    }),
    unauthorizedError: (_parent, context) =>
      context.viewer
        ? new GraphQLError("not allowed for this token", { extensions: { code: "FORBIDDEN" } })
        : new GraphQLError("authentication required: send Authorization: Bearer <admin token>", {
            extensions: { code: "UNAUTHENTICATED" },
          }),
  },
});

builder.globalConnectionField("totalCount", (t) =>
  t.field({
    type: "Count",
    resolve: (parent) => (typeof parent.totalCount === "function" ? parent.totalCount() : parent.totalCount),
  }),
);
