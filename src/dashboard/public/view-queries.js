// The GraphQL documents of the detail views (views.js), beside the page's own (queries.js): the
// tests check both sets against the server's limits, so a view never sends a query it refuses.
import { MONEY } from "./queries.js";

const BUDGET = `scope bucket cap { ${MONEY} } spent { ${MONEY} } held { ${MONEY} } remaining { ${MONEY} }`;
const RECEIPT = `id requestId createdAt requestedModel bucket promptTokens completionTokens charge { ${MONEY} } channel { name }`;
export const LEDGER_ENTRY = `id createdAt kind amount { ${MONEY} } balanceAfter { ${MONEY} } memo bucket { bucket } receipt { requestId } failedRequest { requestId }`;

export const PROJECTS_PAGE = `query Projects { projects(first: 100) { edges { node { id name budgets { ${BUDGET} } } } } }`;

export const KEY_PANEL = `query KeyPanel($id: ID!) {
  apiKey(id: $id) {
    id name prefix last4 status project { id name } allowedModels allowedBuckets lowerCostRoutes backupRoutes
    rpmLimit tpmLimit maxConcurrent retryCeiling failedChargePolicy expiresAt
    spendCREDIT: spendToday(bucket: CREDIT) { ${MONEY} } spendROUTED: spendToday(bucket: ROUTED) { ${MONEY} }
    perRequestCREDIT: perRequestMaxCharge(bucket: CREDIT) { ${MONEY} } perRequestROUTED: perRequestMaxCharge(bucket: ROUTED) { ${MONEY} }
    budgets { ${BUDGET} }
    receipts(first: 10) { edges { node { ${RECEIPT} } } }
  }
  ledgerEntries(keyId: $id, first: 10) { edges { node { ${LEDGER_ENTRY} } } }
}`;

export const RUN_FIELDS = `id label model mode status createdAt endedAt durationMs key { id name } budgets { ${BUDGET} }
  totals { requests failures promptTokens completionTokens charges { bucket amount { ${MONEY} } } }`;

export const RUNS_PAGE = `query Runs { runs(first: 20) { edges { node { ${RUN_FIELDS} } } } }`;

export const RUN_DETAIL = `query RunDetail($id: ID!) {
  run(id: $id) { ${RUN_FIELDS} receipts(first: 20) { edges { node { ${RECEIPT} } } } }
  ledgerEntries(runId: $id, first: 20) { edges { node { ${LEDGER_ENTRY} } } }
}`;

export const ESTIMATE = `query Estimate($input: EstimateRunInput!) {
  estimateRun(input: $input) {
    allowed reasons warnings basis basisRunCount bucket settlement channelName upstreamModel backupAvailable
    estimatedCallsMin estimatedCallsMax estimatedSecondsMin estimatedSecondsMax costMin { ${MONEY} } costMax { ${MONEY} }
    minimumRecommendedBalance { ${MONEY} } available { ${MONEY} } keyDaily { ${BUDGET} } retryCeiling failedChargePolicy
  }
}`;

export const START_RUN = `mutation StartRun($input: StartRunInput!) { startRun(input: $input) { ${RUN_FIELDS} } }`;

export const LEDGER_PAGE = `query Ledger { ledgerEntries(first: 20) { edges { node { ${LEDGER_ENTRY} } } } }`;

export const AUDIT_PAGE = `query Audit { auditEntries(first: 20) { edges { node { id createdAt actor action targetType targetId } } } }`;
