// Limits on every GraphQL document, over HTTP, SSE and graphql-ws alike (all three go through
// Yoga's envelop, so one plugin covers them). Chosen far above what the dashboard, GraphiQL and
// integrators send, and far below what hurts: README "Limits and abuse" lists them.
import { EnvelopArmorPlugin } from "@escape.tech/graphql-armor";

export const GRAPHQL_LIMITS = {
  /** Nesting of selections (introspection excluded). The deepest dashboard query nests 6. */
  maxDepth: 12,
  /** Aliases per operation. */
  maxAliases: 30,
  /** Directives per operation. */
  maxDirectives: 30,
  /** Lexical tokens per document: parsing stops at the limit, so a huge document costs little. */
  maxTokens: 5_000,
  /**
   * Cost of an operation as it will run (src/schema/cost.ts: objects 2, scalars 1, ×1.5 per level,
   * × the rows each connection reads with its variables, its default page and the clamp). The
   * dashboard's overview (100 keys with their caps, 15 receipts, 15 failures) costs about 25,000.
   */
  maxCost: 100_000,
} as const;

/** Rows a connection page reads: without first / last the default, and never more than max (Pothos clamps to it). */
export const PAGE_SIZE = { default: 20, max: 100 } as const;

export function graphqlLimitsPlugin() {
  return EnvelopArmorPlugin({
    maxDepth: { n: GRAPHQL_LIMITS.maxDepth, ignoreIntrospection: true, exposeLimits: true },
    maxAliases: { n: GRAPHQL_LIMITS.maxAliases, exposeLimits: true },
    maxDirectives: { n: GRAPHQL_LIMITS.maxDirectives, exposeLimits: true },
    maxTokens: { n: GRAPHQL_LIMITS.maxTokens, exposeLimits: true },
    // Replaced by src/schema/cost.ts, which runs once the variables are known.
    costLimit: { enabled: false },
    // Anonymous requests never reach validation (refused before parsing), and every token may read
    // the schema through introspection: suggestions hide nothing worth hiding, and help integrators.
    blockFieldSuggestion: { enabled: false },
  });
}
