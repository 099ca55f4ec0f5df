// Issue 17, point 4: pre-flight from history. With ≥ 5 finished (COMPLETED) runs of a mode in the
// key's project, estimateRun predicts calls, tokens, seconds and cost from their p10 / p50 / p90 and
// says so (basis HISTORY with the count; the mode across models when the model has too few); cost is
// priced at the channel's current snapshot. Without history the runtime is the profile's calls × the
// channel's measured p50 latency. A balance below minimumRecommendedBalance is a warning. The runs
// are made through the real passthrough (openai SDK + fake upstream, x-run-id), and every expected
// number is computed here from their stored receipts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { type APIError } from "openai";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import * as f from "./support/fixtures.ts";
import { gqlOk, startTestServer, token } from "./support/graphql.ts";
import { classCharge, formatMoney, type Price } from "../src/money/amounts.ts";
import type { Receipt } from "../src/generated/prisma/client.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
  await fake.close();
  await database.dispose();
});

async function until(check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const POINT = `calls promptTokens completionTokens seconds cost { amount currency }`;
const ESTIMATE = `query($k: ID!, $model: String!, $mode: RunMode!) { estimateRun(input: { keyId: $k, model: $model, mode: $mode }) {
  allowed reasons warnings basis basisRunCount secondsBasis latencySampleCount secondsPerCall
  estimatedCallsMin estimatedCallsMax estimatedSecondsMin estimatedSecondsMax
  costMin { amount currency } costMax { amount currency } minimumRecommendedBalance { amount currency } available { amount }
  p10 { ${POINT} } p50 { ${POINT} } p90 { ${POINT} } } }`;
const START = `mutation($input: StartRunInput!) { startRun(input: $input) { id } }`;

/** percentile_disc: the ⌈p·n⌉-th smallest (at least the first), an observed value. */
function percentile<T extends number | bigint>(values: T[], p: number): T {
  const sorted = [...values].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return sorted[Math.max(1, Math.ceil(p * sorted.length)) - 1]!;
}

const usd = (micros: bigint) => ({ amount: formatMoney(micros), currency: "USD" });

/** A run's numbers as the estimate defines them, from its receipts: cost at `price`, as the gateway would charge each receipt. */
function runNumbers(receipts: Receipt[], price: Price) {
  return {
    calls: receipts.length,
    promptTokens: receipts.reduce((s, r) => s + r.promptTokens, 0),
    completionTokens: receipts.reduce((s, r) => s + r.completionTokens, 0),
    ms: Math.max(...receipts.map((r) => r.createdAt.getTime())) - Math.min(...receipts.map((r) => r.createdAt.getTime() - r.latencyMs)),
    cost: receipts.reduce((s, r) => s + classCharge(price, r), 0n),
    charged: receipts.reduce((s, r) => s + r.charge, 0n),
    dearestCall: receipts.reduce((m, r) => (classCharge(price, r) > m ? classCharge(price, r) : m), 0n),
  };
}
type RunNumbers = ReturnType<typeof runNumbers>;

/** The estimate's percentile points, expected from the sampled runs. */
function expectedPoints(runs: RunNumbers[], currency = "USD") {
  const point = (p: number) => ({
    calls: percentile(
      runs.map((r) => r.calls),
      p,
    ),
    promptTokens: percentile(
      runs.map((r) => r.promptTokens),
      p,
    ),
    completionTokens: percentile(
      runs.map((r) => r.completionTokens),
      p,
    ),
    seconds:
      percentile(
        runs.map((r) => r.ms),
        p,
      ) / 1000,
    cost: {
      amount: formatMoney(
        percentile(
          runs.map((r) => r.cost),
          p,
        ),
      ),
      currency,
    },
  });
  return { p10: point(0.1), p50: point(0.5), p90: point(0.9) };
}

async function world(credit = "10") {
  const w = await f.world({ credit });
  const model = `pf-${w.org.id.slice(-6)}`;
  const other = `${model}-other`;
  const routes = {
    [model]: await f.route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: fake.url, upstreamModel: `${model}-up`, price: ["1", "10"] }]),
    [other]: await f.route(w.viewer, w.org.id, other, [{ name: "other", baseUrl: fake.url, upstreamModel: `${other}-up`, price: ["3", "7"] }]),
  };
  const admin = await token("ORG_ADMIN", w.org.id);
  /** One chat completion through the gateway (in a run or not) whose upstream reports this usage. */
  const call = async (usage: { prompt: number; completion: number; cached?: number; delayMs?: number }, runId?: string, maxTokens = 4_000) => {
    fake.set(`${model}-up`, { type: "ok", usage: { prompt_tokens: usage.prompt, completion_tokens: usage.completion }, details: { cached_tokens: usage.cached ?? 0 }, delayMs: usage.delayMs });
    const client = new OpenAI({ apiKey: w.secret, baseURL: `${server.url}/v1`, maxRetries: 0, timeout: 60_000, defaultHeaders: runId ? { "x-run-id": runId } : {} });
    return client.chat.completions.create({ model, messages: [{ role: "user", content: "step ".repeat(50) }], max_tokens: maxTokens }).then(
      () => ({ ok: true as const }),
      (e: APIError) => ({ ok: false as const, status: e.status, code: e.code }),
    );
  };
  const startRun = async (mode: string, runModel: string | null, cap?: string) =>
    (await gqlOk(admin, START, { input: { keyId: w.key.id, mode, model: runModel, ...(cap ? { cap } : {}) } })).startRun.id as string;
  const estimate = async (mode: string, forModel = model) => (await gqlOk(admin, ESTIMATE, { k: w.key.id, model: forModel, mode })).estimateRun;
  const currentPrice = async (channelId: string): Promise<Price> => database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId }, orderBy: [{ validFrom: "desc" }, { createdAt: "desc" }] });
  return { ...w, model, other, routes, admin, call, startRun, estimate, currentPrice };
}

describe("estimateRun from history", () => {
  it("with ≥ 5 completed runs of the mode it predicts from their p10 / p50 / p90, priced at the current price; fewer, or unfinished, cancelled and exhausted runs, leave it on the profile", async () => {
    const w = await world();
    const [channel] = w.routes[w.model]!.channels;
    // Six STANDARD runs of varied size: calls and tokens per call differ run to run, some prompt tokens cached.
    const shapes = [
      { calls: 3, prompt: 400, completion: 120 },
      { calls: 7, prompt: 250, completion: 300 },
      { calls: 2, prompt: 900, completion: 60 },
      { calls: 5, prompt: 610, completion: 210 },
      { calls: 9, prompt: 130, completion: 95 },
      { calls: 4, prompt: 777, completion: 333 },
    ];
    const completed: string[] = [];
    const makeRun = async (shape: (typeof shapes)[number], runModel: string | null) => {
      const id = await w.startRun("STANDARD", runModel);
      for (let i = 0; i < shape.calls; i++) {
        const out = await w.call({ prompt: shape.prompt + 17 * i, completion: shape.completion + 11 * i, cached: i % 2 === 0 ? 40 + i : 0 }, id);
        expect(out.ok).toBe(true);
      }
      return id;
    };
    for (const shape of shapes.slice(0, 4)) {
      const id = await makeRun(shape, w.model);
      await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id });
      completed.push(id);
    }
    // Not samples: an unfinished run, a cancelled one, an exhausted one (cut short by its cap) and
    // a completed run that never made a request.
    await makeRun({ calls: 12, prompt: 5_000, completion: 2_000 }, w.model);
    const cancelled = await makeRun({ calls: 11, prompt: 4_000, completion: 1_500 }, w.model);
    await gqlOk(w.admin, `mutation($id: ID!) { cancelRun(id: $id) { status } }`, { id: cancelled });
    // Worst case ≈ 10 k µ (1,000 output tokens at 10 / M); the first answer costs 9,xxx µ, so the second does not fit 0.015.
    const exhausted = await w.startRun("STANDARD", w.model, "0.015");
    expect((await w.call({ prompt: 50, completion: 900 }, exhausted, 1_000)).ok).toBe(true);
    expect(await w.call({ prompt: 50, completion: 900 }, exhausted, 1_000)).toMatchObject({ ok: false, status: 402, code: "budget_exceeded" });
    await until(async () => (await database.prisma.run.findUniqueOrThrow({ where: { id: exhausted } })).status === "EXHAUSTED");
    const empty = await w.startRun("STANDARD", w.model);
    await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: empty });

    // Four completed runs: still the built-in profile (STANDARD: 5–10 calls of 4,000 + 1,500 tokens),
    // its runtime from the channel's measured latency (the runs left 41 receipts on it).
    const onChannel = await database.prisma.receipt.findMany({ where: { channelId: channel!.id } });
    expect(onChannel).toHaveLength(3 + 7 + 2 + 5 + 12 + 11 + 1);
    const latency = percentile(
      onChannel.map((r) => r.latencyMs),
      0.5,
    );
    const early = await w.estimate("STANDARD");
    expect(early).toMatchObject({
      basis: "PROFILE",
      basisRunCount: 0,
      secondsBasis: "ROUTE_LATENCY",
      latencySampleCount: 41,
      secondsPerCall: latency / 1000,
      estimatedCallsMin: 5,
      estimatedCallsMax: 10,
    });
    // Per call 4,000 × 1 + 1,500 × 10 = 19,000 µ.
    expect(early.p10).toEqual({ calls: 5, promptTokens: 20_000, completionTokens: 7_500, seconds: (5 * latency) / 1000, cost: usd(95_000n) });
    expect(early.p50).toEqual({ calls: 8, promptTokens: 32_000, completionTokens: 12_000, seconds: (8 * latency) / 1000, cost: usd(152_000n) });
    expect(early.p90).toEqual({ calls: 10, promptTokens: 40_000, completionTokens: 15_000, seconds: (10 * latency) / 1000, cost: usd(190_000n) });
    expect(early.minimumRecommendedBalance).toEqual(usd(209_000n));

    completed.push(await makeRun(shapes[4]!, w.model));
    await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: completed[4] });
    // A sixth completed run started without a model: a sample of the mode, not of the model.
    const modeless = await makeRun(shapes[5]!, null);
    await gqlOk(w.admin, `mutation($id: ID!) { finishRun(id: $id) { status } }`, { id: modeless });

    // The price changes after the runs: the estimate prices their tokens at today's snapshot (with a cached-input price).
    await gqlOk(w.admin, `mutation($c: ID!) { setPrice(input: { channelId: $c, inputPerMillion: "2.5", outputPerMillion: "12", cachedInputPerMillion: "0.4" }) { id } }`, { c: channel!.id });
    const price = await w.currentPrice(channel!.id);
    const receiptsOf = async (id: string) => database.prisma.receipt.findMany({ where: { runId: id } });
    const sample = await Promise.all(completed.map(async (id) => runNumbers(await receiptsOf(id), price)));
    expect(sample.map((r) => r.calls)).toEqual([3, 7, 2, 5, 9]);
    // Cached tokens were recorded, so the cached-input price is exercised.
    expect((await receiptsOf(completed[0]!)).some((r) => r.cachedPromptTokens > 0)).toBe(true);

    const estimate = await w.estimate("STANDARD");
    expect(estimate).toMatchObject({ basis: "HISTORY", basisRunCount: 5, secondsBasis: "HISTORY", secondsPerCall: null, latencySampleCount: 0, allowed: true, reasons: [], warnings: [] });
    const expected = expectedPoints(sample);
    expect({ p10: estimate.p10, p50: estimate.p50, p90: estimate.p90 }).toEqual(expected);
    // With 5 runs p10 is the smallest and p90 the largest: the range brackets every run it learned from.
    for (const run of sample) {
      expect(run.calls).toBeGreaterThanOrEqual(estimate.p10.calls);
      expect(run.calls).toBeLessThanOrEqual(estimate.p90.calls);
      expect(run.cost).toBeGreaterThanOrEqual(BigInt(estimate.p10.cost.amount.replace(".", "")));
      expect(run.cost).toBeLessThanOrEqual(BigInt(estimate.p90.cost.amount.replace(".", "")));
    }
    expect(estimate.p10.calls).toBe(2);
    expect(estimate.p50.calls).toBe(5);
    expect(estimate.p90.calls).toBe(9);
    // The old min / max fields are the p10 / p90.
    expect(estimate).toMatchObject({
      estimatedCallsMin: 2,
      estimatedCallsMax: 9,
      estimatedSecondsMin: Math.floor(expected.p10.seconds),
      estimatedSecondsMax: Math.ceil(expected.p90.seconds),
      costMin: expected.p10.cost,
      costMax: expected.p90.cost,
    });
    // One more call as dear as the dearest the sample made, at today's price.
    const dearest = sample.reduce((m, r) => (r.dearestCall > m ? r.dearestCall : m), 0n);
    expect(estimate.minimumRecommendedBalance).toEqual(
      usd(
        percentile(
          sample.map((r) => r.cost),
          0.9,
        ) + dearest,
      ),
    );
    // Not the charges the runs paid (the price rose since).
    expect(estimate.p90.cost).not.toEqual(
      usd(
        percentile(
          sample.map((r) => r.charged),
          0.9,
        ),
      ),
    );

    // Another model with no runs of its own: the mode across models (all six completed runs),
    // priced at that model's channel.
    const [otherChannel] = w.routes[w.other]!.channels;
    const otherPrice = await w.currentPrice(otherChannel!.id);
    const all = await Promise.all([...completed, modeless].map(async (id) => runNumbers(await receiptsOf(id), otherPrice)));
    const across = await w.estimate("STANDARD", w.other);
    expect(across).toMatchObject({ basis: "HISTORY_ANY_MODEL", basisRunCount: 6, secondsBasis: "HISTORY" });
    expect({ p10: across.p10, p50: across.p50, p90: across.p90 }).toEqual(expectedPoints(all));
    expect(across.p50.calls).toBe(4); // sorted 2 3 4 5 7 9: the ⌈0.5 × 6⌉ = 3rd

    // Another mode has no history, and another project's key sees none of these runs.
    expect((await w.estimate("QUICK")).basis).toBe("PROFILE");
    const stranger = await f.apiKey(w.viewer, (await f.project(w.viewer, w.org.id)).id);
    const theirs = (await gqlOk(w.admin, ESTIMATE, { k: stranger.apiKey.id, model: w.model, mode: "STANDARD" })).estimateRun;
    expect(theirs).toMatchObject({ basis: "PROFILE", basisRunCount: 0 });
  });
});

describe("estimateRun without history", () => {
  it("takes the runtime from the channel's measured p50 latency when it has ≥ 5 recent receipts, else from the profile", async () => {
    const w = await world();
    const [channel] = w.routes[w.model]!.channels;
    for (let i = 0; i < 4; i++) expect((await w.call({ prompt: 100, completion: 50, delayMs: 20 + 15 * i })).ok).toBe(true);
    // Four receipts: too few to trust; the profile's 8 s per call (QUICK: 2–4 calls).
    expect(await w.estimate("QUICK")).toMatchObject({ basis: "PROFILE", secondsBasis: "PROFILE", latencySampleCount: 0, secondsPerCall: 8, estimatedSecondsMin: 16, estimatedSecondsMax: 32 });

    for (let i = 0; i < 3; i++) expect((await w.call({ prompt: 100, completion: 50, delayMs: 80 + 25 * i })).ok).toBe(true);
    const receipts = await database.prisma.receipt.findMany({ where: { channelId: channel!.id } });
    expect(receipts).toHaveLength(7);
    const p50 = percentile(
      receipts.map((r) => r.latencyMs),
      0.5,
    );
    expect(p50).toBeGreaterThan(0);
    const estimate = await w.estimate("QUICK");
    expect(estimate).toMatchObject({ basis: "PROFILE", basisRunCount: 0, secondsBasis: "ROUTE_LATENCY", latencySampleCount: 7, secondsPerCall: p50 / 1000 });
    // Calls, tokens and cost stay the profile's (QUICK: 2,000 + 800 tokens per call at 1 / 10 per M = 10,000 µ).
    expect(estimate.p10).toEqual({ calls: 2, promptTokens: 4_000, completionTokens: 1_600, seconds: (2 * p50) / 1000, cost: usd(20_000n) });
    expect(estimate.p50).toEqual({ calls: 3, promptTokens: 6_000, completionTokens: 2_400, seconds: (3 * p50) / 1000, cost: usd(30_000n) });
    expect(estimate.p90).toEqual({ calls: 4, promptTokens: 8_000, completionTokens: 3_200, seconds: (4 * p50) / 1000, cost: usd(40_000n) });
    expect(estimate).toMatchObject({ estimatedSecondsMin: Math.floor((2 * p50) / 1000), estimatedSecondsMax: Math.ceil((4 * p50) / 1000) });
    // The other route's channel has no receipts: its own profile seconds.
    expect(await w.estimate("QUICK", w.other)).toMatchObject({ secondsBasis: "PROFILE", secondsPerCall: 8 });
  });
});

describe("estimateRun's balance warning", () => {
  it("warns when the available balance is below minimumRecommendedBalance, and refuses only below the smallest estimate", async () => {
    // QUICK on 1 / 10 per M: 10,000 µ per call; 2–4 calls: costMin 0.02, costMax 0.04, recommended 0.05.
    const w = await world("0.045");
    const low = await w.estimate("QUICK");
    expect(low).toMatchObject({ allowed: true, reasons: [], available: { amount: "0.045000" }, costMin: usd(20_000n), minimumRecommendedBalance: usd(50_000n) });
    expect(low.warnings).toEqual(["the available balance is below the minimum recommended balance of 0.050000 USD"]);
    await f.topUp(w.org.id, "CREDIT", "0.005");
    expect(await w.estimate("QUICK")).toMatchObject({ allowed: true, warnings: [], available: { amount: "0.050000" } });

    const poor = await world("0.019999");
    const refused = await poor.estimate("QUICK");
    expect(refused.allowed).toBe(false);
    expect(refused.reasons).toContain("the balance does not cover even the smallest estimate");
    // The refusal says it; the warning is not repeated.
    expect(refused.warnings).toEqual([]);
  });
});
