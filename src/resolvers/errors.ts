// Maps domain errors to GraphQL errors with extensions.code; anything else stays masked by Yoga.
import { GraphQLError } from "graphql";
import { PothosValidationError } from "@pothos/core";
import { DomainError } from "../errors.ts";
import { SlowConsumerError } from "../events/streams.ts";

export function toGraphQLError(error: unknown): GraphQLError | null {
  const original = error instanceof GraphQLError ? (error.originalError ?? error) : error;
  if (original instanceof DomainError) {
    return new GraphQLError(original.message, {
      extensions: { code: original.code, ...(original.field ? { field: original.field } : {}) },
      ...(error instanceof GraphQLError ? { nodes: error.nodes, path: error.path, positions: error.positions } : {}),
    });
  }
  // Pothos rejects bad connection arguments (page size, cursors) with its own validation error.
  if (original instanceof PothosValidationError) {
    return new GraphQLError(original.message, {
      extensions: { code: "BAD_USER_INPUT" },
      ...(error instanceof GraphQLError ? { nodes: error.nodes, path: error.path, positions: error.positions } : {}),
    });
  }
  if (original instanceof SlowConsumerError) return new GraphQLError(original.message, { extensions: { code: original.code } });
  if (original instanceof GraphQLError && original.extensions?.code) return original;
  return null;
}
