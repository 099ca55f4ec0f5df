// The pages' HTML references only tokengate's own assets; the browser scripts parse. The browser
// behaviour itself is tested in real Chromium (dashboard-browser.db.test.ts).
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { DASHBOARD_HTML, DASHBOARD_HEADERS } from "../src/dashboard/page.ts";
import { renderGraphiQL } from "../src/dashboard/graphiql.ts";

const publicDir = path.join(import.meta.dirname, "../src/dashboard/public");

describe("the dashboard and GraphiQL pages", () => {
  it("reference no other host", () => {
    const graphiql = renderGraphiQL({ title: "t" });
    for (const html of [DASHBOARD_HTML, graphiql]) {
      expect(html).not.toMatch(/(?:src|href)="(?:https?:)?\/\//);
      expect(html).not.toMatch(/unpkg|jsdelivr|githubusercontent/);
    }
    expect(graphiql).toContain('src="/assets/graphiql/');
    expect(DASHBOARD_HTML).toContain('src="/assets/uplot/');
    expect(String(DASHBOARD_HEADERS["content-security-policy"])).toContain("script-src 'self'");
  });

  it("escape GraphiQL options so they cannot close the script element", () => {
    const html = renderGraphiQL({ title: "</title><script>x</script>", defaultQuery: "</script><script>alert(1)</script>" });
    expect(html).not.toContain("<script>alert(1)");
    expect(html).not.toContain("<script>x");
  });

  it("ship browser scripts that parse and never assign innerHTML", () => {
    const scripts = readdirSync(publicDir).filter((f) => f.endsWith(".js"));
    expect(scripts.length).toBeGreaterThan(3);
    for (const file of scripts) {
      execFileSync(process.execPath, ["--check", path.join(publicDir, file)]);
    }
    const sources = scripts.map((f) => readFileSync(path.join(publicDir, f), "utf8")).join("\n");
    expect(sources).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
  });
});
