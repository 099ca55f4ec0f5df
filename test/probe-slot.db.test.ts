// A DOWN channel's half-open probe slot is given back when the probing request never reaches the
// upstream (here: its reservation is refused), so the channel recovers on this instance.
import { describe, expect, it } from "vitest";
import { APIError } from "openai";
import { useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { HealthTracker } from "../src/health/index.ts";
import { loadConfig } from "../src/config.ts";
import { events } from "./support/services.ts";

const COOLDOWN_MS = 300;
const health = new HealthTracker({ ...loadConfig({}).health, cooldownMs: COOLDOWN_MS }, events);
const h = useGatewayHarness({}, { routeCacheTtlMs: 0, services: { events, health } });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("half-open probe slot", () => {
  it("a probe whose reservation is refused frees the slot: the next request probes the channel and it recovers", async () => {
    const w = await world({ key: { perRequestMaxCharge: "0.5" } });
    const model = uid("gpt");
    const primary = uid("primary");
    const r = await route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: h.fake.url, upstreamModel: primary, price: ["5", "20"] },
      { name: "backup", baseUrl: h.fake.url, upstreamModel: uid("backup"), price: ["5", "20"] },
    ]);
    const primaryChannel = r.channels.find((c) => c.name === "primary")!;
    const client = h.gw.client(w.secret);
    const ask = (maxTokens: number) => client.chat.completions.create({ model, messages: [{ role: "user", content: "probe" }], max_tokens: maxTokens }).withResponse();

    h.fake.set(primary, { type: "status", status: 502 });
    for (let i = 0; i < 3; i++) expect((await ask(5)).response.headers.get("x-tokengate-channel")).toBe("backup");
    expect(health.snapshot(primaryChannel.id).state).toBe("DOWN");

    h.fake.set(primary, { type: "ok" });
    await sleep(COOLDOWN_MS + 100);
    // This request takes the probe slot, then its worst case (100k output tokens × 20/M = 2 USD) is refused by the 0.5 per-request cap.
    const refused = await ask(100_000).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(APIError);
    expect((refused as APIError).status).toBe(402);
    expect((refused as APIError).code).toBe("budget_exceeded");
    expect(h.fake.requests.filter((q) => q.model === primary)).toHaveLength(3);

    // The slot is free again: the next request probes the primary, succeeds, and the channel leaves DOWN.
    const { response } = await ask(5);
    expect(response.headers.get("x-tokengate-channel")).toBe("primary");
    expect(h.fake.requests.filter((q) => q.model === primary)).toHaveLength(4);
    expect(health.snapshot(primaryChannel.id).state).toBe("DEGRADED");
  });

  it("a probe that fails inside the gateway before the upstream call frees the slot without restarting the cool-down", async () => {
    const w = await world();
    const model = uid("gpt");
    const primary = uid("primary");
    const r = await route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: h.fake.url, upstreamModel: primary, price: ["1", "1"] },
      { name: "backup", baseUrl: h.fake.url, upstreamModel: uid("backup"), price: ["1", "1"] },
    ]);
    const primaryChannel = r.channels.find((c) => c.name === "primary")!;
    const ask = () =>
      fetch(`${h.gw.url}/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${w.secret}`, "content-type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "probe" }], max_tokens: 5 }),
      });

    h.fake.set(primary, { type: "status", status: 502 });
    for (let i = 0; i < 3; i++) expect((await ask()).headers.get("x-tokengate-channel")).toBe("backup");
    expect(health.snapshot(primaryChannel.id).state).toBe("DOWN");
    h.fake.set(primary, { type: "ok" });
    await sleep(COOLDOWN_MS + 100);

    // The probe's credential cannot be decrypted: the gateway fails before calling the upstream.
    await h.database.prisma.channel.update({ where: { id: primaryChannel.id }, data: { apiKeyCiphertext: "not-a-ciphertext" } });
    const failed = await ask();
    expect(failed.status).toBe(500);
    expect(h.fake.requests.filter((q) => q.model === primary)).toHaveLength(3);

    // Nothing was learnt about the channel: the very next request probes it (no new cool-down).
    await h.database.prisma.channel.update({ where: { id: primaryChannel.id }, data: { apiKeyCiphertext: null } });
    const ok = await ask();
    expect(ok.status).toBe(200);
    expect(ok.headers.get("x-tokengate-channel")).toBe("primary");
    expect(health.snapshot(primaryChannel.id).state).toBe("DEGRADED");
  });
});
