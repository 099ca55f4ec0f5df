// The dashboard's GraphQL documents, in a module of their own (no DOM): the page imports them, and
// the tests check them against the server's limits, so a query the page sends is never refused.
export const MONEY = "amount currency";
export const KEY_FIELDS = `id name prefix last4 status project { id name }
  dailyCap { ${MONEY} } perRequestMaxCharge { ${MONEY} } spendToday { ${MONEY} } remainingToday { ${MONEY} }
  budgets { scope bucket cap { ${MONEY} } spent { ${MONEY} } held { ${MONEY} } }`;
export const RECEIPT_FIELDS = `requestId createdAt requestedModel promptTokens completionTokens cachedPromptTokens reasoningTokens fallback channelRole
  charge { ${MONEY} } key { id name } route { model } channel { name }`;
export const FAILED_FIELDS = `requestId createdAt requestedModel cause httpStatus promptTokens completionTokens
  charge { ${MONEY} } key { id name } route { model } channel { name }`;

export const OVERVIEW = `query Overview {
  wallet { balances { bucket balance { ${MONEY} } held { ${MONEY} } available { ${MONEY} } } }
  projects(first: 100) { edges { node { id name } } }
  apiKeys(first: 100) { edges { node { ${KEY_FIELDS} } } }
  routes { id model channels { id name priority settlement health } }
  receipts(first: 15) { edges { node { ${RECEIPT_FIELDS} } } }
  failedRequests(first: 15) { edges { node { ${FAILED_FIELDS} } } }
}`;
