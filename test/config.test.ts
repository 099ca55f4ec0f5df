// Settings whose default decides how money moves.
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";

describe("GATEWAY_ADMISSION", () => {
  it("the holds path is retired: leases or unset start, holds and anything else stop start-up", () => {
    expect(() => loadConfig({})).not.toThrow();
    expect(() => loadConfig({ GATEWAY_ADMISSION: "" })).not.toThrow();
    expect(() => loadConfig({ GATEWAY_ADMISSION: "leases" })).not.toThrow();
    expect(() => loadConfig({ GATEWAY_ADMISSION: "holds" })).toThrow(/GATEWAY_ADMISSION=holds was retired: admission is against budget leases only/);
    expect(() => loadConfig({ GATEWAY_ADMISSION: "hold" })).toThrow(/GATEWAY_ADMISSION can only be leases \(or unset\), got "hold"/);
  });
});

describe("every setting from one env object", () => {
  it("reads the bucket currencies and the health settings (defaults, then overrides)", () => {
    const defaults = loadConfig({});
    expect(defaults.currencies).toEqual({ CREDIT: "USD", ROUTED: "CNY" });
    expect(defaults.health).toEqual({ window: 20, downAfter: 3, recoverAfter: 3, degradedBelow: 0.8, minSamples: 5, cooldownMs: 10_000 });
    expect(defaults.logLevel).toBe("info");
    const set = loadConfig({ TOKENGATE_CREDIT_CURRENCY: "EUR", TOKENGATE_ROUTED_CURRENCY: "JPY", HEALTH_DEGRADED_BELOW: "0.5", HEALTH_COOLDOWN_MS: "250", LOG_LEVEL: "warn" });
    expect(set.currencies).toEqual({ CREDIT: "EUR", ROUTED: "JPY" });
    expect(set.health).toMatchObject({ degradedBelow: 0.5, cooldownMs: 250, window: 20 });
    expect(set.logLevel).toBe("warn");
    expect(() => loadConfig({ HEALTH_WINDOW: "-1" })).toThrow(/HEALTH_WINDOW must be a non-negative number/);
  });
});
