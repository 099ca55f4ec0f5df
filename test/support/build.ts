// The compiled build `npm start` runs (tsconfig.build.json → dist/), for the benchmarks and the
// test that starts it: brought up to date with `tsc -b` (a timestamp and hash check when nothing
// changed), run under plain node with the node flags of package.json's `start` script.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_ROOT = fileURLToPath(new URL("../..", import.meta.url));
let built = false;

/** The node flags `npm start` passes (`node <flags> dist/… serve` in package.json). */
export function startNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
  const words = pkg.scripts.start!.trim().split(/\s+/);
  if (words[0] !== "node") throw new Error(`package.json's start script does not start with node: ${pkg.scripts.start}`);
  return words.slice(
    1,
    words.findIndex((w) => w.endsWith(".js")),
  );
}

/** Runs `npm run build` (tsc -b) once per process. */
export function buildDist(): void {
  if (built) return;
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", path.join(PACKAGE_ROOT, "tsconfig.build.json")], { stdio: "inherit" });
  built = true;
}

/** Node arguments that run `source` (a path from the package root, e.g. "src/main.ts") compiled, as `npm start` runs the server. */
export function compiled(source: string): string[] {
  buildDist();
  return [...startNodeFlags(), path.join(PACKAGE_ROOT, "dist", source.replace(/\.ts$/, ".js"))];
}
