// The dashboard's GraphQL documents, in a module of their own (no DOM): the page imports them, and
// the tests check them against the server's limits, so a query the page sends is never refused.
export const MONEY = "amount currency";
export const KEY_FIELDS = `id name prefix last4 status project { id name }
  dailyCap { ${MONEY} } perRequestMaxCharge { ${MONEY} } spendToday { ${MONEY} } remainingToday { ${MONEY} }
  budgets { scope bucket cap { ${MONEY} } spent { ${MONEY} } held { ${MONEY} } }`;
export const RECEIPT_FIELDS = `requestId createdAt requestedModel promptTokens completionTokens cachedPromptTokens reasoningTokens fallback channelRole status latencyMs
  charge { ${MONEY} } key { id name } route { model } channel { name }`;
export const FAILED_FIELDS = `requestId createdAt requestedModel cause httpStatus promptTokens completionTokens
  charge { ${MONEY} } key { id name } route { model } channel { name }`;

export const OVERVIEW = `query Overview {
  wallet { balances { bucket balance { ${MONEY} } held { ${MONEY} } available { ${MONEY} } } }
  projects(first: 100) { edges { node { id name } } }
  routes { id model channels { id name priority settlement health } }
  receipts(first: 15) { edges { node { ${RECEIPT_FIELDS} } } }
  failedRequests(first: 15) { edges { node { ${FAILED_FIELDS} } } }
}`;

/** Keys a page at a time (50), searchable by name, prefix or last 4: any number of keys is reachable. */
export const KEY_PAGE_SIZE = 50;
export const KEYS_PAGE = `query Keys($first: Int!, $after: String, $search: String) {
  apiKeys(first: $first, after: $after, search: $search) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { node { ${KEY_FIELDS} } }
  }
}`;

/**
 * The page's live operations: one socket, these five whatever the number of keys or the request
 * rate. Spend arrives coalesced (liveSpend, at most once a second), the feed as the newest 20 requests
 * every second (liveFeed, from the events' own payload), channel statistics and balances on an
 * interval, budget alerts as they fire.
 */
export const LIVE = {
  spend: `subscription Spend { liveSpend(input: { intervalMs: 1000 }) { at lastRequestAt requests failed keys { keyId } scopes { scope scopeId bucket spent { ${MONEY} } held { ${MONEY} } cap { ${MONEY} } remaining { ${MONEY} } } } }`,
  wallet: `subscription Wallet { walletBalances(intervalMs: 1000) { balances { bucket balance { ${MONEY} } held { ${MONEY} } available { ${MONEY} } } } }`,
  feed: `subscription Feed { liveFeed(intervalMs: 1000, limit: 20) { requests dropped items { kind requestId createdAt httpStatus cause latencyMs keyId keyName requestedModel routeModel channelName fallback promptTokens completionTokens charge { ${MONEY} } } } }`,
  channels: `subscription Channels { channelStats(intervalMs: 2000) { channels { routeId routeModel channelId channelName priority settlement state requests successRate p50LatencyMs p95LatencyMs spendToday { bucket amount { ${MONEY} } } } } }`,
  alerts: `subscription Alerts { budgetAlert { scope scopeId bucket threshold spent { ${MONEY} } cap { ${MONEY} } } }`,
};
