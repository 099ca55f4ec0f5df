// PostgreSQL text cannot hold a NUL character: any argument carrying one would fail deep inside a
// resolver's write as an internal error. One check over the whole operation (string literals in the
// document and every variable value) refuses it up front as BAD_USER_INPUT, for every field at once,
// over HTTP, SSE and graphql-ws alike (the socket path runs Yoga's enveloped execute / subscribe).
import type { Plugin } from "graphql-yoga";
import { GraphQLError, visit, type DocumentNode } from "graphql";

const NUL = "\u0000";

function documentHasNul(document: DocumentNode): boolean {
  let found = false;
  visit(document, {
    StringValue(node) {
      if (node.value.includes(NUL)) found = true;
    },
  });
  return found;
}

/** Depth-bounded walk: variables come from JSON the body limit already bounds. */
function valueHasNul(value: unknown, depth = 0): boolean {
  if (typeof value === "string") return value.includes(NUL);
  if (depth > 64 || value === null || typeof value !== "object") return false;
  if (Array.isArray(value)) return value.some((v) => valueHasNul(v, depth + 1));
  for (const [k, v] of Object.entries(value)) if (k.includes(NUL) || valueHasNul(v, depth + 1)) return true;
  return false;
}

const refusal = () => ({
  errors: [new GraphQLError("text arguments must not contain the NUL character (\\u0000)", { extensions: { code: "BAD_USER_INPUT" } })],
});

export function textGuardPlugin(): Plugin {
  const offending = (args: { document: DocumentNode; variableValues?: unknown }) =>
    documentHasNul(args.document) || valueHasNul(args.variableValues ?? null);
  return {
    onExecute({ args, setResultAndStopExecution }) {
      if (offending(args)) setResultAndStopExecution(refusal());
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      if (offending(args)) setResultAndStopExecution(refusal());
    },
  };
}
