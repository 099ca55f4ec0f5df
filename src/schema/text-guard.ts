// PostgreSQL text cannot hold a NUL character, and jsonb (audit entries) refuses an unpaired UTF-16
// surrogate (`"\ud800"` in JSON variables; the GraphQL parser already refuses it in literals): any
// argument carrying one would fail deep inside a resolver's write as an internal error. One check
// over the whole operation (string literals in the document and every variable value) refuses it up
// front as BAD_USER_INPUT, for every field at once, over HTTP, SSE and graphql-ws alike (the socket
// path runs Yoga's enveloped execute / subscribe).
import type { Plugin } from "graphql-yoga";
import { GraphQLError, visit, type DocumentNode } from "graphql";
import { wellFormed } from "../text.ts";

const NUL = "\u0000";
const unstorable = (text: string) => text.includes(NUL) || wellFormed(text) !== text;

function documentHasUnstorable(document: DocumentNode): boolean {
  let found = false;
  visit(document, {
    StringValue(node) {
      if (unstorable(node.value)) found = true;
    },
  });
  return found;
}

/** Depth-bounded walk: variables come from JSON the body limit already bounds. */
function valueHasUnstorable(value: unknown, depth = 0): boolean {
  if (typeof value === "string") return unstorable(value);
  if (depth > 64 || value === null || typeof value !== "object") return false;
  if (Array.isArray(value)) return value.some((v) => valueHasUnstorable(v, depth + 1));
  for (const [k, v] of Object.entries(value)) if (unstorable(k) || valueHasUnstorable(v, depth + 1)) return true;
  return false;
}

const refusal = () => ({
  errors: [new GraphQLError("text arguments must not contain the NUL character (\\u0000) or unpaired UTF-16 surrogates", { extensions: { code: "BAD_USER_INPUT" } })],
});

export function textGuardPlugin(): Plugin {
  const offending = (args: { document: DocumentNode; variableValues?: unknown }) => documentHasUnstorable(args.document) || valueHasUnstorable(args.variableValues ?? null);
  return {
    onExecute({ args, setResultAndStopExecution }) {
      if (offending(args)) setResultAndStopExecution(refusal());
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      if (offending(args)) setResultAndStopExecution(refusal());
    },
  };
}
