// A Yoga (envelop) plugin counting GraphQL operations for /metrics: every operation over HTTP,
// SSE and graphql-ws (the socket path goes through yoga.getEnveloped, so plugins apply there too).
import type { Plugin } from "graphql-yoga";
import { Kind, type DocumentNode, type OperationDefinitionNode } from "graphql";
import { graphqlDuration, graphqlOperations } from "./metrics.ts";

/** Operation type and first root field: schema-bounded labels (operation names are client-chosen). */
function describe(document: DocumentNode, operationName?: string | null): { type: string; field: string } {
  const operations = document.definitions.filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION);
  const op = (operationName ? operations.find((o) => o.name?.value === operationName) : undefined) ?? operations[0];
  if (!op) return { type: "unknown", field: "unknown" };
  const first = op.selectionSet.selections.find((s) => s.kind === Kind.FIELD);
  return { type: op.operation, field: first && first.kind === Kind.FIELD ? first.name.value : "unknown" };
}

const hasErrors = (result: unknown): boolean => {
  const errors = (result as { errors?: readonly unknown[] } | null)?.errors;
  return Array.isArray(errors) && errors.length > 0;
};

export function useGraphQLMetrics(): Plugin {
  return {
    onValidate:
      ({ params }) =>
      ({ result }) => {
        if (result.length > 0) graphqlOperations.inc({ ...describe(params.documentAST), outcome: "invalid" });
      },
    onExecute: ({ args }) => {
      const labels = describe(args.document, args.operationName);
      const started = performance.now();
      return {
        onExecuteDone: ({ result }) => {
          graphqlDuration.observe(labels, (performance.now() - started) / 1000);
          // Incremental (deferred) results count once, as ok: the schema uses no @defer.
          graphqlOperations.inc({ ...labels, outcome: hasErrors(result) ? "error" : "ok" });
        },
      };
    },
    onSubscribe: ({ args }) => {
      const labels = describe(args.document, args.operationName);
      return {
        onSubscribeResult: ({ result }) => {
          graphqlOperations.inc({ ...labels, outcome: hasErrors(result) ? "error" : "ok" });
        },
        onSubscribeError: () => {
          graphqlOperations.inc({ ...labels, outcome: "error" });
        },
      };
    },
  };
}
