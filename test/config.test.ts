// Settings whose default decides how money moves.
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";

describe("GATEWAY_ADMISSION", () => {
  it("defaults to leases; holds stays selectable; anything else stops start-up", () => {
    expect(loadConfig({}).admission).toBe("leases");
    expect(loadConfig({ GATEWAY_ADMISSION: "" }).admission).toBe("leases");
    expect(loadConfig({ GATEWAY_ADMISSION: "holds" }).admission).toBe("holds");
    expect(loadConfig({ GATEWAY_ADMISSION: "leases" }).admission).toBe("leases");
    expect(() => loadConfig({ GATEWAY_ADMISSION: "hold" })).toThrow(/GATEWAY_ADMISSION must be holds or leases/);
  });
});
