// The two seed controls (issue 10 point 7): backup-route limits (a daily cap per channel,
// CHANNEL_DAILY, enforced in the reservation; a capped-out channel is skipped and the next one
// tried; none left → 402 naming CHANNEL_DAILY) and run pause (402 run_paused, then resume).
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";

import { leasesReturned, useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { ledgerViolations } from "./support/invariants.ts";
import { reserve } from "../src/money/holds.ts";
import { scopeSpend, walletBucket } from "../src/money/ledger.ts";
import { startRun } from "../src/runs/index.ts";

const h = useGatewayHarness();

// The SDK may reuse a keep-alive socket the server just closed on this loaded machine
// (ECONNRESET before the request is sent): let it retry connection errors only.
const client = (secret: string, headers: Record<string, string> = {}) => new OpenAI({ apiKey: secret, baseURL: h.gw.url, maxRetries: 2, timeout: 60_000, defaultHeaders: headers });

const PRICES: [string, string] = ["100", "1000"];
const ask = (secret: string, model: string, headers: Record<string, string> = {}) =>
  client(secret, headers)
    .chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 })
    .withResponse();

async function refusal(promise: Promise<unknown>): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

const SET_CHANNEL_LIMITS = `mutation($input: SetChannelLimitsInput!) { setChannelLimits(input: $input) { id name dailyCap { amount currency } spendToday { amount currency } } }`;

describe("backup-route limits: a daily cap per channel", () => {
  it("a capped-out channel is skipped for the next one; with none left the answer is 402 naming CHANNEL_DAILY", async () => {
    const w = await world({ credit: "100" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const model = uid("channel-capped");
    const [primaryModel, backupModel] = [uid("primary"), uid("backup")];
    const r = await route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: h.fake.url, upstreamModel: primaryModel, price: PRICES },
      { name: "backup", baseUrl: h.fake.url, upstreamModel: backupModel, price: PRICES },
    ]);
    h.fake.set(primaryModel, { type: "ok", text: " a b c" });
    h.fake.set(backupModel, { type: "ok", text: " a b c" });
    const [primary, backup] = r.channels;

    // Room for one request's worst case (~7,600 micros) but not for a second after its charge.
    const set = await gqlOk<{ setChannelLimits: Record<string, any> }>(admin, SET_CHANNEL_LIMITS, { input: { channelId: primary!.id, dailyCap: "0.010000" } });
    expect(set.setChannelLimits).toMatchObject({ id: primary!.id, dailyCap: { amount: "0.010000", currency: "USD" }, spendToday: { amount: "0.000000" } });

    const first = await ask(w.secret, model);
    expect(first.response.headers.get("x-tokengate-channel")).toBe("primary");
    const second = await ask(w.secret, model);
    expect(second.response.headers.get("x-tokengate-channel")).toBe("backup");
    expect(second.response.headers.get("x-tokengate-attempts")).toBe("1");

    const receipts = await h.database.prisma.receipt.findMany({ where: { keyId: w.key.id }, orderBy: { createdAt: "asc" } });
    expect(receipts.map((x) => [x.channelId, x.channelRole])).toEqual([
      [primary!.id, "PRIMARY"],
      [backup!.id, "BACKUP"],
    ]);
    // Nothing stays held once the gateway is idle (on leases: once its leased headroom went back).
    await leasesReturned(h);
    const primarySpend = await scopeSpend("CHANNEL_DAILY", primary!.id, "CREDIT");
    expect(primarySpend).toEqual({ spent: receipts[0]!.charge, held: 0n });
    expect(await scopeSpend("CHANNEL_DAILY", backup!.id, "CREDIT")).toEqual({ spent: receipts[1]!.charge, held: 0n });

    expect(await ledgerViolations(h.database)).toEqual([]);

    // Hold the backup tighter still (below what it spent today): now no channel is left.
    await gqlOk(admin, SET_CHANNEL_LIMITS, { input: { channelId: backup!.id, dailyCap: "0.000001" } });
    const before = h.fake.requests.length;
    const error = await refusal(ask(w.secret, model));
    expect(error.status).toBe(402);
    expect(error.code).toBe("budget_exceeded");
    expect(error.message).toContain("CHANNEL_DAILY");
    expect(h.fake.requests.length).toBe(before);
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
    expect(failed).toMatchObject({ cause: "BUDGET_EXCEEDED", capScope: "CHANNEL_DAILY", httpStatus: 402, charge: 0n });

    // The channel shows its cap and what it spent; the change was audited.
    const shown = await gqlOk<{ route: { channels: Array<Record<string, any>> } }>(
      admin,
      `query($id: ID!) { route(id: $id) { channels { name dailyCap { amount } spendToday { amount currency } } } }`,
      { id: r.route.id },
    );
    const fmt = (m: bigint) => (Number(m) / 1e6).toFixed(6);
    expect(shown.route.channels).toEqual([
      { name: "primary", dailyCap: { amount: "0.010000" }, spendToday: { amount: fmt(receipts[0]!.charge), currency: "USD" } },
      { name: "backup", dailyCap: { amount: "0.000001" }, spendToday: { amount: fmt(receipts[1]!.charge), currency: "USD" } },
    ]);
    const audits = await h.database.prisma.auditEntry.findMany({ where: { action: "setChannelLimits", targetId: { in: [primary!.id, backup!.id] } } });
    expect(audits).toHaveLength(2);
    await leasesReturned(h);
    expect((await walletBucket(w.org.id, "CREDIT")).held).toBe(0n);
    // The backup's cap was lowered below today's spend afterwards: that broke no cap.
    expect(await ledgerViolations(h.database, { capsCheckedFrom: null })).toEqual([]);

    // Removing the cap (null) opens the channel again.
    const cleared = await gqlOk<{ setChannelLimits: Record<string, any> }>(admin, SET_CHANNEL_LIMITS, { input: { channelId: primary!.id, dailyCap: null } });
    expect(cleared.setChannelLimits.dailyCap).toBeNull();
    expect((await ask(w.secret, model)).response.headers.get("x-tokengate-channel")).toBe("primary");
  });

  it("bad input and tenancy: a negative cap is BAD_USER_INPUT, an unknown channel NOT_FOUND, a viewer cannot set it", async () => {
    const w = await world({ credit: "1" });
    const r = await route(w.viewer, w.org.id, uid("m"), [{ name: "c", baseUrl: h.fake.url, upstreamModel: "x", price: PRICES }]);
    const admin = await token("ORG_ADMIN", w.org.id);
    expect(codes(await gql(admin, SET_CHANNEL_LIMITS, { input: { channelId: r.channels[0]!.id, dailyCap: "-1" } }))).toEqual(["BAD_USER_INPUT"]);
    expect(codes(await gql(admin, SET_CHANNEL_LIMITS, { input: { channelId: "nope", dailyCap: "1" } }))).toEqual(["NOT_FOUND"]);
    const viewer = await token("ORG_VIEWER", w.org.id);
    expect(codes(await gql(viewer, SET_CHANNEL_LIMITS, { input: { channelId: r.channels[0]!.id, dailyCap: "1" } }))).toEqual(["FORBIDDEN"]);
  });
});

describe("run pause", () => {
  const PAUSE = `mutation($id: ID!) { pauseRun(id: $id) { id status } }`;
  const RESUME = `mutation($id: ID!) { resumeRun(id: $id) { id status } }`;

  it("a paused run's requests get 402 run_paused, and work again after resumeRun", async () => {
    const w = await world({ credit: "10" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const model = uid("run-model");
    const upstream = uid("up");
    await route(w.viewer, w.org.id, model, [{ name: "c", baseUrl: h.fake.url, upstreamModel: upstream, price: PRICES }]);
    h.fake.set(upstream, { type: "ok", text: " a b c" });
    const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK", cap: "1" });
    const headers = { "x-run-id": run.id };

    expect((await gqlOk<{ pauseRun: Record<string, any> }>(admin, PAUSE, { id: run.id })).pauseRun).toEqual({ id: run.id, status: "PAUSED" });
    // Pausing again changes nothing.
    expect((await gqlOk<{ pauseRun: Record<string, any> }>(admin, PAUSE, { id: run.id })).pauseRun.status).toBe("PAUSED");
    const error = await refusal(ask(w.secret, model, headers));
    expect(error.status).toBe(402);
    expect(error.code).toBe("run_paused");
    const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
    expect(failed).toMatchObject({ cause: "RUN_PAUSED", httpStatus: 402, runId: run.id, charge: 0n });
    // The reservation itself refuses a paused run (a request that passed the check before the pause).
    const bucket = await walletBucket(w.org.id, "CREDIT");
    expect(await reserve({ requestId: randomUUID(), bucketId: bucket.id, amount: 1n, keyId: w.key.id, projectId: w.project.id, runId: run.id, ttlMs: 60_000 })).toEqual({
      ok: false,
      refusal: "RUN_PAUSED",
    });
    // Requests without the run header are not affected.
    expect((await ask(w.secret, model)).data.choices[0]!.message.content).toBe(" a b c");

    expect((await gqlOk<{ resumeRun: Record<string, any> }>(admin, RESUME, { id: run.id })).resumeRun).toEqual({ id: run.id, status: "ACTIVE" });
    const ok = await ask(w.secret, model, headers);
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: ok.response.headers.get("x-request-id")! } });
    expect(receipt.runId).toBe(run.id);
    expect(receipt.charge).toBeGreaterThan(0n);
    await leasesReturned(h);
    expect(await scopeSpend("RUN_TOTAL", run.id, "CREDIT")).toEqual({ spent: receipt.charge, held: 0n });

    const audits = await h.database.prisma.auditEntry.findMany({ where: { targetId: run.id, action: { in: ["pauseRun", "resumeRun"] } }, orderBy: { createdAt: "asc" } });
    expect(audits.map((a) => a.action)).toEqual(["pauseRun", "resumeRun"]);
  });

  it("a cancelled run neither pauses nor resumes (CONFLICT); a paused run can be cancelled", async () => {
    const w = await world({ credit: "1" });
    const admin = await token("ORG_ADMIN", w.org.id);
    const run = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK" });
    // Resuming an active run changes nothing.
    expect((await gqlOk<{ resumeRun: { status: string } }>(admin, RESUME, { id: run.id })).resumeRun.status).toBe("ACTIVE");
    await gqlOk(admin, PAUSE, { id: run.id });
    const cancelled = await gqlOk<{ cancelRun: { status: string } }>(admin, `mutation($id: ID!) { cancelRun(id: $id) { status } }`, { id: run.id });
    expect(cancelled.cancelRun.status).toBe("CANCELLED");
    expect(codes(await gql(admin, PAUSE, { id: run.id }))).toEqual(["CONFLICT"]);
    expect(codes(await gql(admin, RESUME, { id: run.id }))).toEqual(["CONFLICT"]);
    expect(codes(await gql(admin, PAUSE, { id: "no-such-run" }))).toEqual(["NOT_FOUND"]);
    const viewer = await token("ORG_VIEWER", w.org.id);
    const other = await startRun(w.viewer, { keyId: w.key.id, mode: "QUICK" });
    expect(codes(await gql(viewer, PAUSE, { id: other.id }))).toEqual(["FORBIDDEN"]);
  });
});
