// Issue 17, point 2: quotes, a dry run of admission. Through the real passthrough (openai SDK, fake
// upstream): a quote's expected charge is the charge of the request that follows and its worst
// case is the hold that request takes (to the micro-unit: a per-request maximum of exactly the
// worst case admits it, one micro-unit less refuses both); a quoted price survives a setPrice and
// the receipt names the quoted snapshot; an expired, unknown, other key's or other model's quote is
// refused with a 4xx code; a quote over a cap names the limit and the code the real request gets.
import { describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";
import { useGatewayHarness, leasesReturned, uid } from "./support/gateway.ts";
import { apiKey, route, world } from "./support/fixtures.ts";
import { codes, gql, gqlOk, token } from "./support/graphql.ts";
import { setKeyCaps, changeKeyStatus, type KeyCapsInput } from "../src/keys/index.ts";
import { setPrice } from "../src/routing/index.ts";
import { formatMoney, parseMoney } from "../src/money/amounts.ts";
import { QUOTE_TTL_MS } from "../src/quotes/index.ts";

const h = useGatewayHarness();

const QUOTE = `mutation($input: QuoteRequestInput!) { quoteRequest(input: $input) {
  id expiresAt keyId model admitted
  refusal { code httpStatus capScope }
  bucket channel { name role bucket } price { snapshotId inputPerMillion { amount } }
  promptTokens promptTokensReserved completionTokensReserved expectedCompletionTokens
  worstCase { amount currency } expectedCharge { amount currency }
  bindingLimit { kind bucket limit { amount } remaining { amount } } headroom { amount }
  limits { kind }
} }`;

type Quote = Record<string, any>;

const quote = async (admin: string, input: Record<string, unknown>): Promise<Quote> => (await gqlOk<{ quoteRequest: Quote }>(admin, QUOTE, { input })).quoteRequest;

const client = (secret: string, headers: Record<string, string> = {}) => new OpenAI({ apiKey: secret, baseURL: h.gw.url, maxRetries: 0, timeout: 60_000, defaultHeaders: headers });

const MESSAGES = [
  { role: "system" as const, content: "You are terse." },
  { role: "user" as const, content: "Name three prime numbers and say why each one is prime." },
];

/** A prompt of well over 1,234 tokens: the hold of a request sent with it covers the usage the fake upstream reports. */
const LONG = [{ role: "user" as const, content: "alpha ".repeat(1_400) }];

async function refusal(promise: Promise<unknown>): Promise<APIError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(APIError);
  return error as APIError;
}

async function quotedWorld(options: { credit?: string; key?: KeyCapsInput } = {}) {
  const w = await world({ credit: options.credit ?? "10", key: options.key });
  const model = uid("quoted");
  const upstream = uid("quoted-up");
  // Prices with fractions of a micro-unit per token: the rounding rule is exercised.
  const r = await route(w.viewer, w.org.id, model, [{ name: "main", baseUrl: h.fake.url, upstreamModel: upstream, price: ["1.5", "7.3"] }]);
  const admin = await token("ORG_ADMIN", w.org.id);
  return { ...w, model, upstream, admin, channel: r.channels[0]!, route: r.route };
}

describe("quoteRequest", () => {
  it("token counts: the expected charge is the charge of the request that follows, at the quoted snapshot", async () => {
    const w = await quotedWorld();
    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 1234, completionTokens: 321 });
    // 1234 × 1.5 = 1851 µ; 321 × 7.3 = 2343.3 → 2344 µ (rounded up per token kind).
    expect(q).toMatchObject({
      keyId: w.key.id,
      model: w.model,
      admitted: true,
      refusal: null,
      bucket: "CREDIT",
      channel: { name: "main", role: "PRIMARY", bucket: "CREDIT" },
      promptTokens: 1234,
      promptTokensReserved: 1234,
      completionTokensReserved: 321,
      worstCase: { amount: "0.004195", currency: "USD" },
      expectedCharge: { amount: "0.004195", currency: "USD" },
      bindingLimit: { kind: "BALANCE", bucket: "CREDIT", remaining: { amount: "10.000000" } },
      headroom: { amount: formatMoney(10_000_000n - 4_195n) },
    });
    expect(q.limits.map((l: { kind: string }) => l.kind)).toEqual(["KEY_PER_REQUEST", "KEY_DAILY", "PROJECT_DAILY", "PROJECT_MONTHLY", "ROUTE_DAILY", "CHANNEL_DAILY", "BALANCE"]);
    const expires = new Date(q.expiresAt).getTime();
    expect(expires - Date.now()).toBeGreaterThan(QUOTE_TTL_MS - 30_000);
    expect(expires - Date.now()).toBeLessThanOrEqual(QUOTE_TTL_MS);
    // Nothing was reserved.
    const [leased] = await h.database.sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM "BudgetLease" WHERE "scopeId" = $1`, [w.key.id]);
    expect(leased!.n).toBe("0");

    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: 1234, completion_tokens: 321 } });
    const sent = await client(w.secret, { "x-tokengate-quote": q.id }).chat.completions.create({ model: w.model, messages: LONG, max_tokens: 321 }).withResponse();
    expect(sent.response.headers.get("x-tokengate-charge")).toBe(q.expectedCharge.amount);
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: sent.response.headers.get("x-request-id")! } });
    expect(receipt.charge).toBe(parseMoney(q.expectedCharge.amount, "x"));
    expect(receipt.priceSnapshotId).toBe(q.price.snapshotId);
  });

  it("a request body: the worst case is exactly the hold its request takes, and the expected charge its charge", async () => {
    const w = await quotedWorld();
    const body = { model: w.model, messages: MESSAGES, max_tokens: 200 };
    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, body, completionTokens: 57 });
    expect(q).toMatchObject({ admitted: true, completionTokensReserved: 200, expectedCompletionTokens: 57 });
    expect(q.promptTokens).toBeGreaterThan(10);
    expect(q.promptTokensReserved).toBeGreaterThanOrEqual(q.promptTokens);
    const worst = parseMoney(q.worstCase.amount, "x");
    // ceil(reserved prompt × 1.5) + ceil(200 × 7.3) µ.
    const ceilDiv = (a: bigint, b: bigint) => (a + b - 1n) / b;
    expect(worst).toBe(ceilDiv(BigInt(q.promptTokensReserved) * 1_500_000n, 1_000_000n) + 1_460n);
    const expected = ceilDiv(BigInt(q.promptTokens) * 1_500_000n, 1_000_000n) + ceilDiv(57n * 7_300_000n, 1_000_000n);
    expect(parseMoney(q.expectedCharge.amount, "x")).toBe(expected);

    // The per-request maximum at exactly the worst case admits the request; its charge is the expected one.
    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: q.promptTokens, completion_tokens: 57 } });
    await setKeyCaps(w.viewer, { keyId: w.key.id, perRequestMaxCharge: formatMoney(worst) });
    const sent = await client(w.secret, { "x-tokengate-quote": q.id }).chat.completions.create(body).withResponse();
    expect(sent.response.headers.get("x-tokengate-charge")).toBe(formatMoney(expected));

    // One micro-unit less: the quote says 402 budget_exceeded on KEY_PER_REQUEST, and so does the request.
    await setKeyCaps(w.viewer, { keyId: w.key.id, perRequestMaxCharge: formatMoney(worst - 1n) });
    const refused = await quote(w.admin, { keyId: w.key.id, model: w.model, body });
    expect(refused).toMatchObject({
      admitted: false,
      refusal: { code: "budget_exceeded", httpStatus: 402, capScope: "KEY_PER_REQUEST" },
      worstCase: { amount: formatMoney(worst) },
      bindingLimit: { kind: "KEY_PER_REQUEST", remaining: { amount: formatMoney(worst - 1n) } },
      headroom: { amount: "-0.000001" },
    });
    const error = await refusal(client(w.secret, { "x-tokengate-quote": refused.id }).chat.completions.create(body));
    expect([error.status, error.code]).toEqual([refused.refusal.httpStatus, refused.refusal.code]);
    expect(error.message).toContain("KEY_PER_REQUEST");
  });

  it("a quoted price survives a setPrice; the receipt names the quoted snapshot; without the quote the new price applies", async () => {
    const w = await quotedWorld();
    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 1000, completionTokens: 100 });
    expect(q.expectedCharge.amount).toBe("0.002230"); // 1000 × 1.5 + 100 × 7.3
    const newer = await setPrice(w.viewer, { channelId: w.channel.id, inputPerMillion: "30", outputPerMillion: "70" });
    expect(newer.id).not.toBe(q.price.snapshotId);

    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 100 } });
    const quoted = await client(w.secret, { "x-tokengate-quote": q.id }).chat.completions.create({ model: w.model, messages: LONG, max_tokens: 100 }).withResponse();
    expect(quoted.response.headers.get("x-tokengate-charge")).toBe("0.002230");
    const requestId = quoted.response.headers.get("x-request-id")!;
    const receipt = await gqlOk<{ receipts: { edges: Array<{ node: Record<string, any> }> } }>(
      w.admin,
      `query($f: RequestFilter) { receipts(filter: $f) { edges { node { requestId charge { amount } priceSnapshot { id inputPerMillion { amount } } } } } }`,
      { f: { requestId } },
    );
    expect(receipt.receipts.edges.map((e) => e.node)).toEqual([{ requestId, charge: { amount: "0.002230" }, priceSnapshot: { id: q.price.snapshotId, inputPerMillion: { amount: "1.500000" } } }]);

    // The same request without the quote: the current price (1000 × 30 + 100 × 70 = 37,000 µ).
    const unquoted = await client(w.secret).chat.completions.create({ model: w.model, messages: LONG, max_tokens: 100 }).withResponse();
    expect(unquoted.response.headers.get("x-tokengate-charge")).toBe("0.037000");
    const second = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: unquoted.response.headers.get("x-request-id")! } });
    expect(second.priceSnapshotId).toBe(newer.id);
    // A new quote quotes the new price.
    expect((await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 1000, completionTokens: 100 })).expectedCharge.amount).toBe("0.037000");
  });

  it("a quote pins every channel the request may be served by: a fallback is charged at the backup's quoted price", async () => {
    const w = await world({ credit: "10" });
    const model = uid("pinned");
    const [primaryUp, backupUp] = [uid("pinned-primary"), uid("pinned-backup")];
    const r = await route(w.viewer, w.org.id, model, [
      { name: "primary", baseUrl: h.fake.url, upstreamModel: primaryUp, price: ["1.5", "7.3"] },
      { name: "backup", baseUrl: h.fake.url, upstreamModel: backupUp, price: ["2", "8"] },
    ]);
    const admin = await token("ORG_ADMIN", w.org.id);
    const q = await quote(admin, { keyId: w.key.id, model, promptTokens: 1000, completionTokens: 100 });
    expect(q.channel.name).toBe("primary");
    const quotedBackup = await h.database.prisma.priceSnapshot.findFirstOrThrow({ where: { channelId: r.channels[1]!.id } });
    for (const c of r.channels) await setPrice(w.viewer, { channelId: c.id, inputPerMillion: "50", outputPerMillion: "50" });

    h.fake.set(primaryUp, { type: "status", status: 500 });
    h.fake.set(backupUp, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 100 } });
    const sent = await client(w.secret, { "x-tokengate-quote": q.id }).chat.completions.create({ model, messages: LONG, max_tokens: 100 }).withResponse();
    expect([sent.response.headers.get("x-tokengate-channel"), sent.response.headers.get("x-tokengate-charge")]).toEqual(["backup", "0.002800"]); // 1000 × 2 + 100 × 8
    const receipt = await h.database.prisma.receipt.findUniqueOrThrow({ where: { requestId: sent.response.headers.get("x-request-id")! } });
    expect([receipt.priceSnapshotId, receipt.charge, receipt.fallback]).toEqual([quotedBackup.id, 2_800n, true]);
  });

  it("an expired, unknown, other key's or other model's quote is refused (4xx, OpenAI shape), never priced otherwise", async () => {
    const w = await quotedWorld();
    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 10, completionTokens: 10 });
    const other = await apiKey(w.viewer, w.project.id);
    const otherModel = uid("other-model");
    await route(w.viewer, w.org.id, otherModel, [{ name: "main", baseUrl: h.fake.url, upstreamModel: w.upstream, price: ["1", "1"] }]);
    const send = (secret: string, quoteId: string, model = w.model) => refusal(client(secret, { "x-tokengate-quote": quoteId }).chat.completions.create({ model, messages: MESSAGES, max_tokens: 10 }));
    const before = h.fake.requests.length;

    const cases: Array<[APIError, number, string]> = [
      [await send(other.secret, q.id), 404, "quote_not_found"],
      [await send(w.secret, "no-such-quote"), 404, "quote_not_found"],
      [await send(w.secret, q.id, otherModel), 400, "quote_model_mismatch"],
    ];
    await h.database.prisma.quote.update({ where: { id: q.id }, data: { expiresAt: new Date(Date.now() - 1_000) } });
    cases.push([await send(w.secret, q.id), 400, "quote_expired"]);
    for (const [error, status, code] of cases) {
      expect([error.status, error.code]).toEqual([status, code]);
      expect(error.param).toBe("x-tokengate-quote");
      const failed = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: error.requestID! } });
      expect(failed).toMatchObject({ cause: "BAD_REQUEST", httpStatus: status, charge: 0n });
    }
    // None of them reached the upstream.
    expect(h.fake.requests.length).toBe(before);
  });

  it("over a cap or the balance, or on a paused key: the quote names the limit and the code the real request gets", async () => {
    const w = await quotedWorld({ key: { dailyCap: "0.004000" } });
    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 100 } });
    const ask = (headers: Record<string, string> = {}) => client(w.secret, headers).chat.completions.create({ model: w.model, messages: LONG, max_tokens: 100 });
    await ask(); // 2,230 µ of the key's 4,000 µ daily cap
    await leasesReturned(h);

    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 1000, completionTokens: 100 });
    expect(q).toMatchObject({
      admitted: false,
      refusal: { code: "budget_exceeded", httpStatus: 402, capScope: "KEY_DAILY" },
      worstCase: { amount: "0.002230" },
      bindingLimit: { kind: "KEY_DAILY", bucket: "CREDIT", limit: { amount: "0.004000" }, remaining: { amount: "0.001770" } },
      headroom: { amount: "-0.000460" },
    });
    const capped = await refusal(ask({ "x-tokengate-quote": q.id }));
    expect([capped.status, capped.code]).toEqual([402, "budget_exceeded"]);
    expect(capped.message).toContain("KEY_DAILY");

    // A request that fits the rest of the cap is admitted, with the binding cap's headroom after it.
    const small = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 100, completionTokens: 50 });
    expect(small).toMatchObject({ admitted: true, worstCase: { amount: "0.000515" }, bindingLimit: { kind: "KEY_DAILY" }, headroom: { amount: "0.001255" } });

    // The balance: 402 insufficient_balance, the same as the request.
    const poor = await quotedWorld({ credit: "0.001000" });
    h.fake.set(poor.upstream, { type: "ok", usage: { prompt_tokens: 1000, completion_tokens: 100 } });
    const broke = await quote(poor.admin, { keyId: poor.key.id, model: poor.model, promptTokens: 1000, completionTokens: 100 });
    expect(broke).toMatchObject({ admitted: false, refusal: { code: "insufficient_balance", httpStatus: 402, capScope: null }, bindingLimit: { kind: "BALANCE", remaining: { amount: "0.001000" } } });
    const noMoney = await refusal(client(poor.secret).chat.completions.create({ model: poor.model, messages: LONG, max_tokens: 100 }));
    expect([noMoney.status, noMoney.code]).toEqual([402, "insufficient_balance"]);

    // A paused key: 403 key_paused both ways.
    await changeKeyStatus(w.viewer, w.key.id, "pauseKey");
    const paused = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 1, completionTokens: 1 });
    expect(paused).toMatchObject({ admitted: false, refusal: { code: "key_paused", httpStatus: 403 } });
    const pausedError = await refusal(ask());
    expect([pausedError.status, pausedError.code]).toEqual([403, "key_paused"]);
  });

  it("rate limits: the quote reads the limiter's counts and answers 429 rate_limit_exceeded when the request would get it", async () => {
    const w = await quotedWorld({ key: { rpmLimit: 2, tpmLimit: 100_000 } });
    h.fake.set(w.upstream, { type: "ok", usage: { prompt_tokens: 10, completion_tokens: 10 } });
    const ask = () => client(w.secret).chat.completions.create({ model: w.model, messages: MESSAGES, max_tokens: 10 });
    // tpm counts the token bound: 100,001 tokens do not fit 100,000.
    const tooBig = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 100_000, completionTokens: 1 });
    expect(tooBig).toMatchObject({ admitted: false, refusal: { code: "rate_limit_exceeded", httpStatus: 429 } });
    await ask();
    await ask();
    const plan = await gqlOk<{ apiKey: { plan: Array<{ rateLimits: Record<string, unknown> }> } }>(
      w.admin,
      `query($id: ID!, $m: String) { apiKey(id: $id) { plan(model: $m) { rateLimits { rpmLimit tpmLimit maxConcurrent requestsLastMinute tokensLastMinute inFlight } } } }`,
      { id: w.key.id, m: w.model },
    );
    // Two requests counted; their tokens corrected to the 20 each really used.
    expect(plan.apiKey.plan[0]!.rateLimits).toEqual({ rpmLimit: 2, tpmLimit: 100_000, maxConcurrent: null, requestsLastMinute: 2, tokensLastMinute: 40, inFlight: null });
    const q = await quote(w.admin, { keyId: w.key.id, model: w.model, promptTokens: 10, completionTokens: 10 });
    expect(q).toMatchObject({ admitted: false, refusal: { code: "rate_limit_exceeded", httpStatus: 429, capScope: null } });
    const error = await refusal(ask());
    expect([error.status, error.code]).toEqual([429, "rate_limit_exceeded"]);
  });

  it("bad input is BAD_USER_INPUT; another tenant's key is NOT_FOUND; read-only tokens may not quote", async () => {
    const w = await quotedWorld();
    const bad = async (input: Record<string, unknown>) => codes(await gql(w.admin, QUOTE, { input }));
    expect(await bad({ keyId: w.key.id, model: w.model })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, promptTokens: 10 })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, promptTokens: -1, completionTokens: 1 })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, promptTokens: 1, completionTokens: 1, body: { messages: MESSAGES } })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, body: [1, 2] })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, body: { messages: "not a list" } })).toEqual(["BAD_USER_INPUT"]);
    expect(await bad({ keyId: w.key.id, model: w.model, body: { model: "another", messages: MESSAGES } })).toEqual(["BAD_USER_INPUT"]);
    const other = await world();
    expect(codes(await gql(await token("ORG_ADMIN", other.org.id), QUOTE, { input: { keyId: w.key.id, model: w.model, promptTokens: 1, completionTokens: 1 } }))).toEqual(["NOT_FOUND"]);
    expect(codes(await gql(await token("ORG_VIEWER", w.org.id), QUOTE, { input: { keyId: w.key.id, model: w.model, promptTokens: 1, completionTokens: 1 } }))).toEqual(["FORBIDDEN"]);
    // A model without a route: not admitted with the gateway's 404, and no quote to claim.
    const none = await quote(w.admin, { keyId: w.key.id, model: "no-such-model", promptTokens: 1, completionTokens: 1 });
    expect(none).toMatchObject({ id: null, admitted: false, refusal: { code: "model_not_found", httpStatus: 404 } });
  });
});
