// Fuzzing every input a key holder or an admin can send: thousands of generated /v1 bodies (wrong
// types, huge numbers, odd unicode, nested junk, every content-part shape) and generated GraphQL
// documents built from the real schema. Nothing may answer 5xx, /healthz keeps answering, and the
// ledger invariants hold afterwards (balance = Σ entries, nothing held once idle).
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildSchema,
  getNamedType,
  isEnumType,
  isInputObjectType,
  isListType,
  isNonNullType,
  isObjectType,
  isScalarType,
  type GraphQLField,
  type GraphQLInputType,
  type GraphQLObjectType,
  type GraphQLSchema,
} from "graphql";
import { readFileSync } from "node:fs";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startFakeUpstream, type FakeUpstream } from "./support/fake-upstream.ts";
import { startTestServer, token } from "./support/graphql.ts";
import { route, world } from "./support/fixtures.ts";
import type { RunningServer } from "../src/server.ts";

const SEED = Number(process.env.FUZZ_SEED ?? 20261123);
const V1_RUNS = Number(process.env.FUZZ_V1_RUNS ?? 1500);
const GRAPHQL_RUNS = Number(process.env.FUZZ_GRAPHQL_RUNS ?? 1000);

let database: TestDatabase;
let fake: FakeUpstream;
let server: RunningServer;
let secret: string;
let model: string;
let organizationId: string;
let admin: string;

beforeAll(async () => {
  database = await createTestDatabase();
  fake = await startFakeUpstream();
  server = await startTestServer();
  const w = await world({ credit: "1000000", routed: "1000000", key: { allowedBuckets: ["CREDIT", "ROUTED"], lowerCostRoutes: true, backupRoutes: true } });
  model = "fuzz-model";
  await route(w.viewer, w.org.id, model, [
    { name: "primary", baseUrl: fake.url, upstreamModel: "fuzz-up", price: ["0.15", "0.6"] },
    { name: "routed", baseUrl: fake.url, upstreamModel: "fuzz-up-routed", settlement: "ROUTED", price: ["1", "2"] },
  ]);
  secret = w.secret;
  organizationId = w.org.id;
  admin = await token("PLATFORM_ADMIN");
});

afterAll(async () => {
  await server?.close();
  await fake?.close();
  await database?.dispose();
});

// ---------------------------------------------------------------------------------------------
// /v1 bodies

const oddString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.constantFrom("", "\u0000", "a\u0000b", "\uD800", "\uFFFF", "🙂".repeat(50), "漢".repeat(2000), "<|endoftext|>", "%s%n", "../../etc/passwd"),
);
const oddNumber = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(0, -1, 1, 2 ** 31, 2 ** 53, 1e308, -1e308, 3e9, 0.5, Number.MAX_SAFE_INTEGER + 2));
const junk: fc.Arbitrary<unknown> = fc.oneof(
  { depthSize: "small" },
  oddString,
  oddNumber,
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.oneof(oddString, oddNumber, fc.boolean()), { maxLength: 4 }),
  fc.dictionary(oddString, fc.oneof(oddString, oddNumber, fc.boolean(), fc.constant(null)), { maxKeys: 4 }),
);

const contentPart = fc.oneof(
  fc.record({ type: fc.constant("text"), text: fc.oneof(oddString, junk) }),
  fc.record({
    type: fc.constant("image_url"),
    image_url: fc.oneof(
      fc.record(
        { url: fc.oneof(fc.constant("https://example.invalid/cat.png"), fc.constant("data:image/png;base64,iVBORw0KGgo="), oddString), detail: fc.oneof(fc.constantFrom("low", "high", "auto"), junk) },
        { requiredKeys: ["url"] },
      ),
      junk,
    ),
  }),
  fc.record({ type: fc.constant("input_audio"), input_audio: fc.oneof(fc.record({ data: oddString, format: fc.constantFrom("wav", "mp3", "flac") }), junk) }),
  fc.record({ type: fc.constant("file"), file: fc.oneof(fc.record({ file_id: oddString }), fc.record({ file_data: oddString, filename: oddString }), junk) }),
  fc.record({ type: fc.constant("refusal"), refusal: oddString }),
  fc.record({ type: oddString }),
  junk,
);

const message = fc.oneof(
  fc.record(
    {
      role: fc.oneof(fc.constantFrom("system", "developer", "user", "assistant", "tool", "function"), junk),
      content: fc.oneof(oddString, fc.array(contentPart, { maxLength: 4 }), junk),
      name: fc.oneof(oddString, junk),
      tool_calls: fc.oneof(fc.array(fc.record({ id: oddString, type: fc.constant("function"), function: fc.record({ name: oddString, arguments: oddString }) }), { maxLength: 2 }), junk),
      tool_call_id: oddString,
    },
    { requiredKeys: ["role"] },
  ),
  junk,
);

const chatBody = fc.record(
  {
    model: fc.oneof({ weight: 6, arbitrary: fc.constant("fuzz-model") }, { weight: 1, arbitrary: oddString }, { weight: 1, arbitrary: junk }),
    messages: fc.oneof({ weight: 6, arbitrary: fc.array(message, { maxLength: 5 }) }, { weight: 1, arbitrary: junk }),
    max_tokens: fc.oneof(fc.integer({ min: 1, max: 64 }), oddNumber, junk),
    max_completion_tokens: fc.oneof(fc.integer({ min: 1, max: 64 }), oddNumber, junk),
    stream: fc.oneof(fc.boolean(), junk),
    stream_options: fc.oneof(fc.record({ include_usage: fc.oneof(fc.boolean(), junk) }), junk),
    n: fc.oneof(fc.integer({ min: 1, max: 3 }), oddNumber, junk),
    temperature: fc.oneof(fc.double({ min: 0, max: 2, noNaN: true }), junk),
    tools: fc.oneof(fc.array(fc.record({ type: fc.constant("function"), function: fc.record({ name: oddString, parameters: junk }) }), { maxLength: 2 }), junk),
    response_format: fc.oneof(fc.record({ type: fc.constantFrom("text", "json_object", "json_schema") }), junk),
    user: oddString,
  },
  { requiredKeys: [] },
);

const embeddingBody = fc.record(
  {
    model: fc.oneof({ weight: 4, arbitrary: fc.constant("fuzz-model") }, { weight: 1, arbitrary: junk }),
    input: fc.oneof(oddString, fc.array(oddString, { maxLength: 4 }), fc.array(fc.integer(), { maxLength: 8 }), fc.array(fc.array(oddNumber, { maxLength: 4 }), { maxLength: 3 }), junk),
    dimensions: fc.oneof(fc.integer({ min: 1, max: 4096 }), junk),
    encoding_format: fc.oneof(fc.constantFrom("float", "base64"), junk),
  },
  { requiredKeys: [] },
);

/** A body as bytes: mostly JSON of a generated object, sometimes raw junk bytes. */
const rawBody = fc.oneof(
  { weight: 8, arbitrary: fc.tuple(fc.constantFrom("/v1/chat/completions" as const), chatBody).map(([path, body]) => ({ path, body: JSON.stringify(body) })) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom("/v1/embeddings" as const), embeddingBody).map(([path, body]) => ({ path, body: JSON.stringify(body) })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom("/v1/chat/completions" as const, "/v1/embeddings" as const), fc.oneof(oddString, fc.json())).map(([path, body]) => ({ path, body })) },
);

async function healthz(): Promise<number> {
  const response = await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(5_000) });
  await response.arrayBuffer();
  return response.status;
}

describe("fuzzing", () => {
  it(`${V1_RUNS} generated /v1 bodies: never a 5xx, always OpenAI's error shape, the server keeps answering`, async () => {
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(rawBody, async ({ path, body }) => {
        const response = await fetch(`${server.url}${path}`, {
          method: "POST",
          headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
          body,
          signal: AbortSignal.timeout(30_000),
        });
        const text = await response.text();
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        expect(response.status, `${path} ${body.slice(0, 300)} → ${text.slice(0, 300)}`).toBeLessThan(500);
        expect(response.headers.get("x-request-id")).toBeTruthy();
        if (response.status >= 400) {
          const error = (JSON.parse(text) as { error?: { message?: unknown; type?: unknown; code?: unknown } }).error;
          expect(typeof error?.message, text.slice(0, 300)).toBe("string");
          expect(typeof error?.type).toBe("string");
        }
      }),
      { seed: SEED, numRuns: V1_RUNS, endOnFailure: true },
    );
    // Both kinds of answer were exercised: the generator is not all junk, nor all valid.
    expect([...statuses.keys()].some((s) => s === 200)).toBe(true);
    expect([...statuses.keys()].some((s) => s === 400)).toBe(true);
    expect(await healthz()).toBe(200);
  }, 600_000);

  it(`${GRAPHQL_RUNS} generated GraphQL documents from the real schema: no internal error, never a 5xx`, async () => {
    const schema = buildSchema(readFileSync(new URL("../schema.graphql", import.meta.url), "utf8"));
    await fc.assert(
      fc.asyncProperty(graphqlDocument(schema), async (query) => {
        const response = await fetch(`${server.url}/graphql`, {
          method: "POST",
          headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
          body: JSON.stringify({ query }),
          signal: AbortSignal.timeout(30_000),
        });
        const text = await response.text();
        expect(response.status, `${query}\n→ ${text.slice(0, 400)}`).toBeLessThan(500);
        const result = JSON.parse(text) as { errors?: Array<{ message: string; extensions?: { code?: string } }> };
        for (const error of result.errors ?? []) {
          expect(error.extensions?.code, `${query}\n→ ${text.slice(0, 400)}`).not.toBe("INTERNAL_SERVER_ERROR");
          expect(error.message).not.toMatch(/Unexpected error/);
        }
      }),
      { seed: SEED, numRuns: GRAPHQL_RUNS, endOnFailure: true },
    );
    expect(await healthz()).toBe(200);
  }, 600_000);

  it("afterwards the ledger explains every balance and nothing stays held once the gateway is idle", async () => {
    const balances = await database.sql.query<{ id: string; balance: string; ledger: string }>(`
      SELECT b.id, b.balance::text, COALESCE((SELECT SUM(amount) FROM "LedgerEntry" e WHERE e."bucketId" = b.id), 0)::text AS ledger
        FROM "WalletBucket" b`);
    for (const row of balances) expect(row.balance, `bucket ${row.id}`).toBe(row.ledger);
    // held (reservations and leased headroom) drains once nothing is in flight.
    const deadline = Date.now() + 20_000;
    let held: string[] = [];
    for (;;) {
      const response = await fetch(`${server.url}/graphql`, {
        method: "POST",
        headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
        body: JSON.stringify({ query: `query($o: ID) { wallet(organizationId: $o) { balances { bucket held { amount } } } }`, variables: { o: organizationId } }),
      });
      const body = (await response.json()) as { data: { wallet: { balances: Array<{ held: { amount: string } }> } } };
      held = body.data.wallet.balances.map((b) => b.held.amount);
      if (held.every((h) => Number(h) === 0) || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(
      held.every((h) => Number(h) === 0),
      `held: ${held.join(", ")}`,
    ).toBe(true);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------------
// GraphQL documents: a random root field with random (often wrong) arguments and a selection of
// its scalar fields (and one level of object fields), plus raw junk documents now and then.

function graphqlDocument(schema: GraphQLSchema): fc.Arbitrary<string> {
  const roots: Array<{ op: "query" | "mutation"; field: GraphQLField<unknown, unknown> }> = [];
  for (const field of Object.values(schema.getQueryType()!.getFields())) roots.push({ op: "query", field });
  // Mutations that only create or refuse: the fuzzed world keeps its key and route usable.
  for (const field of Object.values(schema.getMutationType()?.getFields() ?? {})) roots.push({ op: "mutation", field });
  const structured = fc.tuple(fc.constantFrom(...roots), fc.integer({ min: 0, max: 2 ** 31 - 1 })).map(([root, seed]) => {
    const rnd = mulberry(seed);
    const args = root.field.args.filter((a) => isNonNullType(a.type) || rnd() < 0.5).map((a) => `${a.name}: ${literal(a.type, rnd, 0)}`);
    const selection = selectionOf(getNamedType(root.field.type), rnd, 0);
    return `${root.op} { ${root.field.name}${args.length ? `(${args.join(", ")})` : ""}${selection} }`;
  });
  return fc.oneof(
    { weight: 9, arbitrary: structured },
    { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 200 }), fc.constantFrom("{", "query {{", "{ __typename @skip }", "mutation { }", "{ a: __typename b: __typename }")) },
  );
}

function selectionOf(type: ReturnType<typeof getNamedType>, rnd: () => number, depth: number): string {
  if (!isObjectType(type)) {
    // Interfaces / unions: __typename is always valid.
    return isScalarType(type) || isEnumType(type) ? "" : "{ __typename }";
  }
  const fields = Object.values((type as GraphQLObjectType).getFields());
  const picked: string[] = ["__typename"];
  for (const f of fields) {
    const named = getNamedType(f.type);
    const requiredArgs = f.args.filter((a) => isNonNullType(a.type));
    if (requiredArgs.length > 0 && rnd() < 0.7) continue;
    const args = f.args.filter((a) => isNonNullType(a.type) || rnd() < 0.2).map((a) => `${a.name}: ${literal(a.type, rnd, 0)}`);
    const argText = args.length ? `(${args.join(", ")})` : "";
    if (isScalarType(named) || isEnumType(named)) {
      if (rnd() < 0.7) picked.push(`${f.name}${argText}`);
    } else if (depth < 2 && rnd() < 0.35) {
      picked.push(`${f.name}${argText} ${selectionOf(named, rnd, depth + 1)}`);
    }
  }
  return `{ ${picked.join(" ")} }`;
}

function literal(type: GraphQLInputType, rnd: () => number, depth: number): string {
  // Now and then a value of the wrong kind entirely.
  if (rnd() < 0.1) return pick(rnd, ['"x"', "1", "-1", "1.5", "true", "null", "[]", "{}", `"${"9".repeat(40)}"`, '"\\u0000"', '"2026-13-45T99:99:99Z"', '"-0.0000001"']);
  if (isNonNullType(type)) return literal(type.ofType, rnd, depth);
  if (isListType(type)) return depth > 2 ? "[]" : `[${literal(type.ofType, rnd, depth + 1)}]`;
  if (isEnumType(type))
    return pick(
      rnd,
      type.getValues().map((v) => v.name),
    );
  if (isInputObjectType(type)) {
    if (depth > 2) return "{}";
    const fields = Object.values(type.getFields()).filter((f) => isNonNullType(f.type) || rnd() < 0.5);
    return `{ ${fields.map((f) => `${f.name}: ${literal(f.type, rnd, depth + 1)}`).join(", ")} }`;
  }
  switch (type.name) {
    case "Int":
      return pick(rnd, ["0", "1", "-1", "100", "2147483647", "-2147483648", "1000000"]);
    case "Float":
      return pick(rnd, ["0.5", "-1e300", "1e300"]);
    case "Boolean":
      return pick(rnd, ["true", "false"]);
    case "Decimal":
      return pick(rnd, ['"1"', '"0.000001"', '"-5"', '"1e3"', '"99999999999999999999"', '"0.0000001"', '"abc"', '""']);
    case "DateTime":
      return pick(rnd, ['"2026-11-01T00:00:00Z"', '"2030-01-01T00:00:00Z"', '"yesterday"', '"1970-01-01T00:00:00Z"']);
    case "ID":
      return pick(rnd, ['"00000000-0000-0000-0000-000000000000"', '"nope"', '""', `"${"a".repeat(300)}"`]);
    default:
      return pick(rnd, ['"fuzz"', '""', '"https://example.invalid/v1"', '"http://169.254.169.254/latest"', '"漢字\\u0000"']);
  }
}

function pick<T>(rnd: () => number, options: readonly T[]): T {
  return options[Math.floor(rnd() * options.length)]!;
}

/** A small seeded PRNG (so a fast-check counterexample replays exactly). */
function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
