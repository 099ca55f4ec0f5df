// The dashboard's GraphQL operations. They are written in src/dashboard/operations/*.graphql, which
// GraphQL Code Generator also reads (`npm run codegen` → ./generated/graphql.ts, the types used here),
// and loaded from those files once per process. The page gets them as /assets/tokengate/queries.js,
// a module printed from these same values at start-up (static.ts): what the browser sends cannot
// drift from the .graphql files, and the tests (limits, cost, live fan-out) send the same documents.
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { Kind, parse, print, visit, type DocumentNode, type FragmentDefinitionNode, type OperationDefinitionNode } from "graphql";
import { PACKAGE_ROOT } from "../paths.ts";
import type * as Ops from "./generated/graphql.ts";

export const OPERATIONS_DIR = path.join(PACKAGE_ROOT, "src", "dashboard", "operations");

/**
 * An operation's complete document (the operation and every fragment it spreads), as the string
 * sent to /graphql; its result and variables types ride along for TypeScript only.
 */
export type TypedDocument<TResult, TVariables> = string & { readonly __result?: TResult; readonly __variables?: TVariables };

export interface OperationFiles {
  operations: Map<string, OperationDefinitionNode>;
  fragments: Map<string, FragmentDefinitionNode>;
}

/** Parses every .graphql file of `dir`; names must be unique across files (as codegen requires). */
export function readOperationFiles(dir: string = OPERATIONS_DIR): OperationFiles {
  const files = readdirSync(dir)
    .filter((name) => name.endsWith(".graphql"))
    .sort();
  const loaded: OperationFiles = { operations: new Map(), fragments: new Map() };
  for (const file of files) {
    const document = parse(readFileSync(path.join(dir, file), "utf8"), { noLocation: true });
    for (const definition of document.definitions) {
      if (definition.kind !== Kind.OPERATION_DEFINITION && definition.kind !== Kind.FRAGMENT_DEFINITION) {
        throw new Error(`${file}: only operations and fragments belong in the dashboard's documents`);
      }
      const name = definition.name?.value;
      if (!name) throw new Error(`${file}: every operation has a name (codegen names its types after it)`);
      if (loaded.operations.has(name) || loaded.fragments.has(name)) throw new Error(`${file}: ${name} is defined twice`);
      if (definition.kind === Kind.OPERATION_DEFINITION) loaded.operations.set(name, definition);
      else loaded.fragments.set(name, definition);
    }
  }
  return loaded;
}

/** The operation with the fragments it spreads, directly or through other fragments, in order of first use. */
export function operationDocument(files: OperationFiles, name: string): DocumentNode {
  const operation = files.operations.get(name);
  if (!operation) throw new Error(`no dashboard operation named ${name}`);
  const used = new Map<string, FragmentDefinitionNode>();
  const collect = (node: OperationDefinitionNode | FragmentDefinitionNode) =>
    visit(node, {
      FragmentSpread(spread) {
        const fragmentName = spread.name.value;
        if (used.has(fragmentName)) return;
        const fragment = files.fragments.get(fragmentName);
        if (!fragment) throw new Error(`${name} spreads an unknown fragment ${fragmentName}`);
        used.set(fragmentName, fragment);
        collect(fragment);
      },
    });
  collect(operation);
  return { kind: Kind.DOCUMENT, definitions: [operation, ...used.values()] };
}

const files = readOperationFiles();
const document = <TResult, TVariables>(name: string) => print(operationDocument(files, name)) as TypedDocument<TResult, TVariables>;

/** A fragment's fields as selection text, for a test that asks the dashboard's fields on another root field. */
function fragmentSelection(name: string): string {
  const fragment = files.fragments.get(name);
  if (!fragment) throw new Error(`no dashboard fragment named ${name}`);
  if (fragment.selectionSet.selections.some((s) => s.kind !== Kind.FIELD)) throw new Error(`${name} spreads fragments: spread it instead`);
  return print(fragment.selectionSet).slice(1, -1).trim();
}

export const OVERVIEW = document<Ops.OverviewQuery, Ops.OverviewQueryVariables>("Overview");
export const KEYS_PAGE = document<Ops.KeysQuery, Ops.KeysQueryVariables>("Keys");
/** The keys table's buttons, by mutation field (each answers with the field's key). */
export const KEY_ACTIONS = {
  pauseKey: document<Ops.PauseKeyMutation, Ops.PauseKeyMutationVariables>("PauseKey"),
  resumeKey: document<Ops.ResumeKeyMutation, Ops.ResumeKeyMutationVariables>("ResumeKey"),
  revokeKey: document<Ops.RevokeKeyMutation, Ops.RevokeKeyMutationVariables>("RevokeKey"),
};
export const SPEND_CHART = document<Ops.SpendChartQuery, Ops.SpendChartQueryVariables>("SpendChart");
export const PLAYGROUND_RECEIPT = document<Ops.PlaygroundReceiptQuery, Ops.PlaygroundReceiptQueryVariables>("PlaygroundReceipt");
/** The page's live operations, on one socket whatever the number of keys or the request rate. */
export const LIVE = {
  spend: document<Ops.SpendSubscription, Ops.SpendSubscriptionVariables>("Spend"),
  wallet: document<Ops.WalletSubscription, Ops.WalletSubscriptionVariables>("Wallet"),
  feed: document<Ops.FeedSubscription, Ops.FeedSubscriptionVariables>("Feed"),
  channels: document<Ops.ChannelsSubscription, Ops.ChannelsSubscriptionVariables>("Channels"),
  alerts: document<Ops.AlertsSubscription, Ops.AlertsSubscriptionVariables>("Alerts"),
};
/** The detail views (views.js). */
export const VIEWS = {
  projects: document<Ops.ProjectsQuery, Ops.ProjectsQueryVariables>("Projects"),
  keyPanel: document<Ops.KeyPanelQuery, Ops.KeyPanelQueryVariables>("KeyPanel"),
  runs: document<Ops.RunsQuery, Ops.RunsQueryVariables>("Runs"),
  runDetail: document<Ops.RunDetailQuery, Ops.RunDetailQueryVariables>("RunDetail"),
  estimate: document<Ops.EstimateQuery, Ops.EstimateQueryVariables>("Estimate"),
  startRun: document<Ops.StartRunMutation, Ops.StartRunMutationVariables>("StartRun"),
  ledger: document<Ops.LedgerQuery, Ops.LedgerQueryVariables>("Ledger"),
  audit: document<Ops.AuditQuery, Ops.AuditQueryVariables>("Audit"),
};
/** The runs table's buttons, by mutation field (each answers with the field's run). */
export const RUN_ACTIONS = {
  pauseRun: document<Ops.PauseRunMutation, Ops.PauseRunMutationVariables>("PauseRun"),
  resumeRun: document<Ops.ResumeRunMutation, Ops.ResumeRunMutationVariables>("ResumeRun"),
  finishRun: document<Ops.FinishRunMutation, Ops.FinishRunMutationVariables>("FinishRun"),
  cancelRun: document<Ops.CancelRunMutation, Ops.CancelRunMutationVariables>("CancelRun"),
};
export const RECEIPT_FIELDS = fragmentSelection("ReceiptFields");
export const FAILED_FIELDS = fragmentSelection("FailedRequestFields");

/** Everything the page imports from queries.js. */
export const BROWSER_EXPORTS = { OVERVIEW, KEYS_PAGE, KEY_ACTIONS, SPEND_CHART, PLAYGROUND_RECEIPT, LIVE, VIEWS, RUN_ACTIONS };

/** /assets/tokengate/queries.js: the browser's copy of BROWSER_EXPORTS, printed from the values above. */
export function browserModule(): string {
  const lines = ["// Printed by tokengate at start-up from src/dashboard/operations/*.graphql (src/dashboard/operations.ts): edit those files."];
  for (const [name, value] of Object.entries(BROWSER_EXPORTS)) lines.push(`export const ${name} = ${JSON.stringify(value, null, 2)};`);
  return `${lines.join("\n")}\n`;
}
