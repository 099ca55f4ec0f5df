// Imports every type and resolver file and builds the schema. Imported by no type file.
import { lexicographicSortSchema, printSchema, type GraphQLSchema } from "graphql";
import { builder } from "./builder.ts";
import "./types/common.ts";
import "./types/node.ts";
import "./types/organization.ts";
import "./types/wallet.ts";
import "./types/project.ts";
import "./types/key-plan.ts";
import "./types/api-key.ts";
import "./types/route.ts";
import "./types/channel.ts";
import "./types/request-attempt.ts";
import "./types/price-snapshot.ts";
import "./types/receipt.ts";
import "./types/failed-request.ts";
import "./types/ledger-entry.ts";
import "./types/run.ts";
import "./types/quote.ts";
import "./types/audit-entry.ts";
import "./types/alert-webhook.ts";
import "./types/alerts.ts";
import "./types/admin-token.ts";
import "./types/spend-analytics.ts";
import "./types/live.ts";
import "../resolvers/root.ts";
import "../resolvers/admin.ts";
import "../resolvers/budgets.ts";
import "../resolvers/keys.ts";
import "../resolvers/ledger.ts";
import "../resolvers/routes.ts";
import "../resolvers/runs.ts";
import "../resolvers/quotes.ts";
import "../resolvers/analytics.ts";
import "../resolvers/live.ts";
import "../resolvers/webhooks.ts";
import "../resolvers/alerts.ts";
import "../resolvers/node.ts";

export const schema: GraphQLSchema = builder.toSchema();

/** The committed SDL (schema.graphql) is exactly this; a test fails when they differ. */
export const printedSchema = (): string => `${printSchema(lexicographicSortSchema(schema))}\n`;
