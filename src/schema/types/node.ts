// The Relay Node interface. Every object with an id implements it; its id is the row's own database
// id (a UUID, unique across tables): the same value response headers, CSV exports, webhook bodies
// and x-run-id use. Query.node / Query.nodes (src/resolvers/node.ts) find an object by it.
import { builder } from "../builder.ts";

export interface NodeShape {
  id: string;
}

/** The concrete type of each row Query.node / nodes loaded (rows are plain Prisma objects). */
const loadedAs = new WeakMap<object, string>();
export function markNode<T extends NodeShape>(row: T, typeName: string): T {
  loadedAs.set(row, typeName);
  return row;
}

export const NodeRef = builder.interfaceRef<NodeShape>("Node").implement({
  resolveType: (value) => loadedAs.get(value) ?? null,
  description:
    "An object with an id that Query.node / Query.nodes can fetch again. The id is the object's own database id (a UUID, unique across every type), not an encoded global id: the same value headers, CSV exports and webhooks carry.",
  fields: (t) => ({
    id: t.exposeID("id"),
  }),
});
