// Bad GraphQL input is a clear client error with a code, never an internal error.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { codes, gql, token } from "./support/graphql.ts";

let database: TestDatabase;
let admin: string;
beforeAll(async () => {
  database = await createTestDatabase();
  admin = await token("PLATFORM_ADMIN");
});
afterAll(() => database.dispose());

describe("bad input on the admin API", () => {
  it.each([
    ["a negative page size", `{ apiKeys(first: -1) { totalCount } }`],
    ["a cursor that is not one", `{ apiKeys(after: "garbage") { totalCount } }`],
    ["an unsupported cursor combination", `{ receipts(first: 2, before: "x") { totalCount } }`],
    ["a malformed date", `{ receipts(filter: { from: "yesterday" }) { totalCount } }`],
    ["an inverted time range", `{ receipts(filter: { from: "2026-02-01T00:00:00Z", to: "2026-01-01T00:00:00Z" }) { totalCount } }`],
    ["a float where money is a string", `mutation { createProject(input: { name: "p", dailyCap: 1.5 }) { id } }`],
    ["an organization that does not exist (platform token)", `{ wallet(organizationId: "00000000-0000-0000-0000-000000000000") { id } }`],
    ["a project in an organization that does not exist", `mutation { createProject(input: { organizationId: "nope", name: "p" }) { id } }`],
    // A page above the maximum counts as the 100 rows it reads: nested three deep, that is over the cost limit.
    ["pages far above the maximum, nested (cost limit)", `{ projects(first: 100000) { edges { node { apiKeys(first: 100000) { edges { node { receipts(first: 100000) { totalCount } } } } } } } }`],
    ["a spend series over too many hours", `{ spendSeries(input: { from: "2020-01-01T00:00:00Z", to: "2026-01-01T00:00:00Z", interval: HOUR, groupBy: KEY }) { group } }`],
  ])("%s", async (_name, query) => {
    const r = await gql(admin, query);
    expect(r.errors?.length).toBeGreaterThan(0);
    for (const code of codes(r)) expect(code).not.toBe("INTERNAL_SERVER_ERROR");
    expect(r.errors![0]!.message).not.toMatch(/Unexpected error/);
  });

  it("a NUL character in any text argument (literal or variable) is BAD_USER_INPUT before any resolver runs", async () => {
    const literal = await gql(admin, `mutation { createProject(input: { name: "a\\u0000b" }) { id } }`);
    expect(codes(literal)).toEqual(["BAD_USER_INPUT"]);
    const variable = await gql(admin, `mutation($n: String!) { createProject(input: { name: $n }) { id } }`, { n: "x\u0000" });
    expect(codes(variable)).toEqual(["BAD_USER_INPUT"]);
    const nested = await gql(admin, `query($f: RequestFilter) { receipts(filter: $f) { totalCount } }`, { f: { model: "m\u0000" } });
    expect(codes(nested)).toEqual(["BAD_USER_INPUT"]);
  });

  it("an unpaired UTF-16 surrogate in a variable is BAD_USER_INPUT, not an internal error (issue 14, point 9)", async () => {
    const lone = await gql(admin, `mutation($n: String!) { createProject(input: { name: $n }) { id } }`, { n: "x\ud800y" });
    expect(codes(lone)).toEqual(["BAD_USER_INPUT"]);
    expect(lone.errors![0]!.message).toMatch(/unpaired UTF-16 surrogates/);
    // A well-formed pair is ordinary text.
    const pair = await gql(admin, `mutation($n: String!) { createProject(input: { name: $n }) { name } }`, { n: "x\ud83d\ude00y" });
    expect(pair.errors).toBeUndefined();
    expect(pair.data!.createProject.name).toBe("x\u{1F600}y");
  });

  it("a page larger than the maximum is served as the maximum page (100), not refused", async () => {
    const r = await gql(admin, `{ auditEntries(first: 1000) { edges { node { id } } pageInfo { hasNextPage } } }`);
    expect(r.errors).toBeUndefined();
    expect(r.data!.auditEntries.edges.length).toBeLessThanOrEqual(100);
  });
});
