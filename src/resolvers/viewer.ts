// Resolvers receive the viewer from context; every field under Query / Mutation requires one.
import type { Context } from "../schema/builder.ts";
import type { Viewer } from "../auth/index.ts";
import { DomainError } from "../errors.ts";

export function viewerOf(ctx: Context): Viewer {
  if (!ctx.viewer) throw new DomainError("UNAUTHENTICATED", "authentication required");
  return ctx.viewer;
}
