// Query.node / Query.nodes: any object by its id, within the viewer's tenancy (another tenant's id
// answers null, exactly like an unknown one). Selections are planned per type from the operation.
import { queryFromInfo } from "@pothos/plugin-prisma";
import type { GraphQLResolveInfo } from "graphql";
import { builder, type Context } from "../schema/builder.ts";
import { markNode, NodeRef, type NodeShape } from "../schema/types/node.ts";
import { loadNodes, MAX_NODE_IDS, type NodeType } from "../nodes/index.ts";
import { viewerOf } from "./viewer.ts";

async function resolveNodes(ids: readonly (string | number)[], ctx: Context, info: GraphQLResolveInfo): Promise<Array<NodeShape | null>> {
  const loaded = await loadNodes(viewerOf(ctx), ids.map(String), (type: NodeType) => queryFromInfo({ context: ctx, info, typeName: type }));
  return loaded.map((node) => (node ? markNode(node.row, node.type) : null));
}

builder.queryFields((t) => ({
  node: t.field({
    type: NodeRef,
    nullable: true,
    description: "The object with this id, of any type, or null when there is none the token may read.",
    args: { id: t.arg.id({ required: true }) },
    resolve: async (_root, { id }, ctx, info) => (await resolveNodes([id], ctx, info))[0] ?? null,
  }),
  nodes: t.field({
    type: [NodeRef],
    nullable: { list: false, items: true },
    description: `The objects with these ids, in their order (null for each id there is no object for, or none the token may read). At most ${MAX_NODE_IDS} ids.`,
    args: { ids: t.arg.idList({ required: true }) },
    resolve: (_root, { ids }, ctx, info) => resolveNodes(ids, ctx, info),
  }),
}));
