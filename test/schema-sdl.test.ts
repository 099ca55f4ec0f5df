import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { printedSchema } from "../src/schema/index.ts";

describe("schema.graphql", () => {
  it("is exactly the schema the code builds (run `npm run print-schema` after changing types)", async () => {
    const committed = await readFile(new URL("../schema.graphql", import.meta.url), "utf8");
    expect(printedSchema()).toBe(committed);
  });

  it("keeps the public names of API.md", () => {
    const sdl = printedSchema();
    for (const name of [
      "scalar Decimal",
      "scalar DateTime",
      "type Money",
      "enum BalanceBucket",
      "enum KeyStatus",
      "enum FailedChargePolicy",
      "enum RunMode",
      "createProject(input: CreateProjectInput!): Project!",
      "createApiKey(input: CreateApiKeyInput!): CreatedApiKey!",
      "setKeyCaps(input: SetKeyCapsInput!): ApiKey!",
      "pauseKey(id: ID!): ApiKey!",
      "resumeKey(id: ID!): ApiKey!",
      "revokeKey(id: ID!): ApiKey!",
      "rotateKey(graceSeconds: Int, id: ID!): CreatedApiKey!",
      "setProjectBudget(input: SetProjectBudgetInput!): Project!",
      "upsertRoute(input: UpsertRouteInput!): Route!",
      "setRouteLimits(input: SetRouteLimitsInput!): Route!",
      "setPrice(input: SetPriceInput!): PriceSnapshot!",
      "topUp(input: TopUpInput!): LedgerEntry!",
      "startRun(input: StartRunInput!): Run!",
      "cancelRun(id: ID!): Run!",
      "spendSeries(input: SpendSeriesInput!): [SpendPoint!]!",
      "estimateRun(input: EstimateRunInput!): RunEstimate!",
    ]) {
      expect(sdl).toContain(name);
    }
  });
});
