import { describe, expect, it } from "vitest";
import { DASHBOARD_HTML } from "../src/dashboard/page.ts";

describe("the dashboard page", () => {
  it("ships a script that parses and subscribes to live receipts and route health", () => {
    const script = DASHBOARD_HTML.split("<script>")[1]!.split("</script>")[0]!;
    expect(() => new Function(script)).not.toThrow();
    expect(script).toContain("subscription { receiptCreated");
    expect(script).toContain("subscription { routeHealth");
    expect(script).toContain("text/event-stream");
  });
});
