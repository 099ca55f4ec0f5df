// Child process of openPglite (./pglite.ts): creates and migrates a new PGlite data directory,
// then exits, taking initdb's memory with it.
import { initialisePgliteDir } from "./pglite.ts";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: pglite-init <data dir>");
  process.exit(2);
}
await initialisePgliteDir(dir);
