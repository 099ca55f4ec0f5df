// Files the server reads at run time (migrations, the dashboard's own assets) live in the source
// tree. The server runs from src/ (tsx, vitest) or from its compiled copy under dist/ (npm start):
// both find them from the package root, the nearest directory up that holds package.json.
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

function packageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

export const PACKAGE_ROOT = packageRoot(path.dirname(fileURLToPath(import.meta.url)));
