import path from "node:path";
import { defineConfig } from "prisma/config";

// The CLI is used offline for `generate` and `migrate diff` only; migrations are applied
// by our own runner (src/db/migrate.ts) on PGlite and PostgreSQL alike. engine "js"
// keeps the CLI on its WebAssembly engines (no native download).
export default defineConfig({
  schema: path.join("prisma", "schema.prisma"),
  migrations: { path: path.join("prisma", "migrations") },
  engine: "js",
  experimental: { adapter: true },
  adapter: async () => {
    const { PGlite } = await import("@electric-sql/pglite");
    const { PrismaPGlite } = await import("pglite-prisma-adapter");
    // Typed against an older @prisma/driver-adapter-utils; the runtime contract is the same.
    return new PrismaPGlite(new PGlite()) as never;
  },
});
