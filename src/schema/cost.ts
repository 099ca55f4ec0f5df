// The cost limit, judged with the values the operation will run with. A static rule (graphql-armor's)
// sees only literals: `receipts(first: $n)` cost 1 per page there, so `{"n": 100}` nested twice read
// a million rows. This runs at execute / subscribe time, when the variables are known, over HTTP,
// SSE and graphql-ws alike (the socket path runs Yoga's enveloped execute / subscribe too), and
// refuses before any resolver reads a row.
import type { Plugin } from "graphql-yoga";
import {
  GraphQLError,
  GraphQLIncludeDirective,
  GraphQLSkipDirective,
  Kind,
  getArgumentValues,
  getDirectiveValues,
  getNamedType,
  getOperationAST,
  getVariableValues,
  isInterfaceType,
  isObjectType,
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLNamedType,
  type GraphQLSchema,
  type InlineFragmentNode,
  type FragmentSpreadNode,
  type SelectionSetNode,
} from "graphql";
import { GRAPHQL_LIMITS, PAGE_SIZE } from "./limits.ts";

const OBJECT_COST = 2;
const SCALAR_COST = 1;
/** Each level of nesting weighs more than the one above it (graphql-armor's factor, kept for comparable numbers). */
const DEPTH_FACTOR = 1.5;

/** The rows a connection field will read: its first / last as run, else the default page, clamped as Pothos clamps. */
function pageSize(values: Record<string, unknown>): number {
  const first = typeof values.first === "number" ? values.first : null;
  const last = typeof values.last === "number" ? values.last : null;
  const asked = first === null && last === null ? PAGE_SIZE.default : Math.max(first ?? 0, last ?? 0);
  // At least one: the field itself is resolved (and its totalCount counted) even for an empty page.
  return Math.min(Math.max(asked, 1), PAGE_SIZE.max);
}

interface Walk {
  schema: GraphQLSchema;
  fragments: Map<string, FragmentDefinitionNode>;
  variables: Record<string, unknown>;
  /** A fragment's cost does not depend on where it is spread: computed once per fragment. */
  fragmentCosts: Map<string, number>;
}

function skipped(walk: Walk, node: FieldNode | InlineFragmentNode | FragmentSpreadNode): boolean {
  if (!node.directives?.length) return false;
  const skip = getDirectiveValues(GraphQLSkipDirective, node, walk.variables);
  if (skip?.if === true) return true;
  const include = getDirectiveValues(GraphQLIncludeDirective, node, walk.variables);
  return include?.if === false;
}

/** Sum of the selections' costs; fragments are flattened (a fragment is not a level of nesting). */
function selectionSetCost(walk: Walk, type: GraphQLNamedType, set: SelectionSetNode): number {
  let cost = 0;
  for (const selection of set.selections) {
    if (skipped(walk, selection)) continue;
    if (selection.kind === Kind.FIELD) cost += fieldCost(walk, type, selection);
    else if (selection.kind === Kind.INLINE_FRAGMENT) {
      const on = selection.typeCondition ? walk.schema.getType(selection.typeCondition.name.value) : type;
      cost += selectionSetCost(walk, on ?? type, selection.selectionSet);
    } else {
      const name = selection.name.value;
      let known = walk.fragmentCosts.get(name);
      if (known === undefined) {
        const fragment = walk.fragments.get(name);
        const on = fragment ? walk.schema.getType(fragment.typeCondition.name.value) : undefined;
        known = fragment && on ? selectionSetCost(walk, on, fragment.selectionSet) : 0;
        walk.fragmentCosts.set(name, known);
      }
      cost += known;
    }
  }
  return cost;
}

function fieldCost(walk: Walk, parent: GraphQLNamedType, node: FieldNode): number {
  const name = node.name.value;
  // Introspection is exempt (GraphiQL's schema query), as it was under graphql-armor.
  if (name === "__schema" || name === "__type") return 0;
  if (!node.selectionSet) return SCALAR_COST;
  const definition = isObjectType(parent) || isInterfaceType(parent) ? parent.getFields()[name] : undefined;
  // Validation has passed, so the field exists; an unknown one costs as a plain object.
  if (!definition) return OBJECT_COST;
  const type = getNamedType(definition.type);
  const children = selectionSetCost(walk, type, node.selectionSet);
  const isConnection = definition.args.some((a) => a.name === "first" || a.name === "last");
  // nodes(ids:) reads one object per id (at most MAX_NODE_IDS: more are refused before reading).
  const ids = definition.args.some((a) => a.name === "ids") ? getArgumentValues(definition, node, walk.variables).ids : undefined;
  const rows = isConnection ? pageSize(getArgumentValues(definition, node, walk.variables)) : Array.isArray(ids) ? Math.max(Math.min(ids.length, PAGE_SIZE.max), 1) : 1;
  return rows * (OBJECT_COST + DEPTH_FACTOR * children);
}

export type CostResult = { cost: number } | { invalidVariables: true };

/** The operation's cost as it would run with these variables (coerced like execute does). */
export function operationCost(schema: GraphQLSchema, document: DocumentNode, operationName: string | null | undefined, rawVariables: unknown): CostResult | null {
  const operation = getOperationAST(document, operationName ?? undefined);
  if (!operation) return null;
  const coerced = getVariableValues(schema, operation.variableDefinitions ?? [], (rawVariables ?? {}) as Record<string, unknown>, { maxErrors: 1 });
  // Bad variables are execute's to refuse (with its own message); nothing runs either way.
  if (coerced.errors) return { invalidVariables: true };
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const definition of document.definitions) if (definition.kind === Kind.FRAGMENT_DEFINITION) fragments.set(definition.name.value, definition);
  const root = schema.getRootType(operation.operation);
  if (!root) return null;
  const walk: Walk = { schema, fragments, variables: coerced.coerced, fragmentCosts: new Map() };
  return { cost: Math.ceil(selectionSetCost(walk, root, operation.selectionSet)) };
}

function refusal(cost: number) {
  return {
    errors: [
      new GraphQLError(`Query cost limit of ${GRAPHQL_LIMITS.maxCost} exceeded, found ${cost} (page sizes as run: variables, defaults of ${PAGE_SIZE.default} rows, at most ${PAGE_SIZE.max})`, {
        extensions: { code: "COST_LIMIT_EXCEEDED", cost, maxCost: GRAPHQL_LIMITS.maxCost },
      }),
    ],
  };
}

export function costLimitPlugin(): Plugin {
  const check = (args: { schema: GraphQLSchema; document: DocumentNode; operationName?: string | null; variableValues?: unknown }) => {
    const result = operationCost(args.schema, args.document, args.operationName, args.variableValues);
    return result && "cost" in result && result.cost > GRAPHQL_LIMITS.maxCost ? result.cost : null;
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const cost = check(args);
      if (cost !== null) setResultAndStopExecution(refusal(cost));
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const cost = check(args);
      if (cost !== null) setResultAndStopExecution(refusal(cost));
    },
  };
}
