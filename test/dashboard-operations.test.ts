// The dashboard's operations (src/dashboard/operations/*.graphql, issue 18 point 6): each one is
// valid against the schema the server runs and within its limits, the types GraphQL Code Generator
// makes from them are the committed ones and compile under --strict, and the module the browser
// imports holds exactly these documents.
import { readFileSync } from "node:fs";
import path from "node:path";
import { generate } from "@graphql-codegen/cli";
import { Kind, parse, validate } from "graphql";
import { createYoga } from "graphql-yoga";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import codegenConfig from "../codegen.ts";
import { PACKAGE_ROOT } from "../src/paths.ts";
import { schema } from "../src/schema/index.ts";
import { operationCost } from "../src/schema/cost.ts";
import { GRAPHQL_LIMITS, graphqlLimitsPlugin } from "../src/schema/limits.ts";
import { BROWSER_EXPORTS, KEY_ACTIONS, KEYS_PAGE, LIVE, OVERVIEW, PLAYGROUND_RECEIPT, RUN_ACTIONS, SPEND_CHART, VIEWS, browserModule, readOperationFiles } from "../src/dashboard/operations.ts";

const GENERATED = "src/dashboard/generated/graphql.ts";

/** Every document the page sends, with the variables it sends them with (the largest the page uses). */
const sent: Array<{ name: string; document: string; variables: Record<string, unknown> }> = [
  { name: "Overview", document: OVERVIEW, variables: {} },
  { name: "Keys", document: KEYS_PAGE, variables: { first: 50, after: null, search: "prod" } },
  ...Object.entries(KEY_ACTIONS).map(([field, document]) => ({ name: field, document, variables: { id: "key-id" } })),
  {
    name: "SpendChart",
    document: SPEND_CHART,
    variables: { input: { from: "2026-11-01T00:00:00.000Z", to: "2026-12-01T00:00:00.000Z", interval: "DAY", groupBy: "KEY" } },
  },
  { name: "PlaygroundReceipt", document: PLAYGROUND_RECEIPT, variables: { requestId: "req_1" } },
  ...Object.entries(LIVE).map(([name, document]) => ({ name, document, variables: {} })),
  { name: "Projects", document: VIEWS.projects, variables: {} },
  { name: "KeyPanel", document: VIEWS.keyPanel, variables: { id: "key-id" } },
  { name: "Runs", document: VIEWS.runs, variables: {} },
  { name: "RunDetail", document: VIEWS.runDetail, variables: { id: "run-id" } },
  { name: "Estimate", document: VIEWS.estimate, variables: { input: { keyId: "key-id", model: "gpt-4o-mini", mode: "STANDARD" } } },
  { name: "StartRun", document: VIEWS.startRun, variables: { input: { keyId: "key-id", model: "gpt-4o-mini", mode: "STANDARD", cap: "2", label: "nightly triage" } } },
  { name: "Ledger", document: VIEWS.ledger, variables: {} },
  { name: "Audit", document: VIEWS.audit, variables: {} },
  ...Object.entries(RUN_ACTIONS).map(([field, document]) => ({ name: field, document, variables: { id: "run-id" } })),
];

describe("the dashboard's operations", () => {
  it("are every operation of the .graphql files, each sent with every fragment it spreads and no other", () => {
    const files = readOperationFiles();
    const names = sent.map(({ document }) => {
      const definitions = parse(document).definitions;
      const operations = definitions.filter((d) => d.kind === Kind.OPERATION_DEFINITION);
      expect(operations).toHaveLength(1);
      return operations[0]!.name!.value;
    });
    expect(names.sort()).toEqual([...files.operations.keys()].sort());
    // NoUnusedFragments and KnownFragmentNames (below) hold per document; every fragment is used by one.
    const spread = new Set(
      sent.flatMap(({ document }) =>
        parse(document)
          .definitions.filter((d) => d.kind === Kind.FRAGMENT_DEFINITION)
          .map((d) => d.name.value),
      ),
    );
    expect([...spread].sort()).toEqual([...files.fragments.keys()].sort());
  });

  it("validate against the schema the server runs, within its depth, alias, directive and token limits", () => {
    for (const { name, document } of sent) {
      expect(validate(schema, parse(document)), name).toEqual([]);
    }
    // Yoga's own parse and validate with the server's limits plugin (graphql-armor: max depth, aliases,
    // directives and tokens), which throws on a document over a limit.
    const limits = createYoga({ schema, plugins: [graphqlLimitsPlugin()] }).getEnveloped({});
    for (const { name, document } of sent) {
      expect(limits.validate(limits.schema, limits.parse(document)), name).toEqual([]);
    }
    // The same check refuses a document one level too deep: it can fail.
    let inner = "id";
    for (let level = 0; level < GRAPHQL_LIMITS.maxDepth; level += 4) inner = `projects { edges { node { organization { ${inner} } } } }`;
    expect(() => limits.validate(limits.schema, limits.parse(`{ organizations { ${inner} } }`))).toThrow(/depth limit of 12/);
  });

  it("cost less than the server's limit with the variables the page sends", () => {
    for (const { name, document, variables } of sent) {
      const result = operationCost(schema, parse(document), undefined, variables);
      expect(result, name).toMatchObject({ cost: expect.any(Number) });
      expect(result && "cost" in result ? result.cost : Infinity, name).toBeLessThanOrEqual(GRAPHQL_LIMITS.maxCost);
    }
  });

  it("are served to the browser as a module that evaluates to exactly these documents", async () => {
    const source = browserModule();
    const served = (await import(`data:text/javascript;base64,${Buffer.from(source).toString("base64")}`)) as Record<string, unknown>;
    expect({ ...served }).toEqual(BROWSER_EXPORTS);
    expect(Object.keys(served).sort()).toEqual(Object.keys(BROWSER_EXPORTS).sort());
  });
});

describe(`${GENERATED} (GraphQL Code Generator)`, () => {
  it("is exactly what `npm run codegen` generates from schema.graphql and the documents", async () => {
    const outputs = await generate({ ...codegenConfig, cwd: PACKAGE_ROOT }, false);
    expect(outputs.map((o: { filename: string }) => path.relative(PACKAGE_ROOT, path.resolve(PACKAGE_ROOT, o.filename)))).toEqual([GENERATED]);
    const committed = readFileSync(path.join(PACKAGE_ROOT, GENERATED), "utf8");
    expect(outputs[0]!.content, "run `npm run codegen` after changing an operation or the schema").toBe(committed);
  });

  it("compiles under tsc --strict, and so does the module typing the documents with it", () => {
    expect(
      typeErrors([path.join(PACKAGE_ROOT, GENERATED), path.join(PACKAGE_ROOT, "src/dashboard/operations.ts")], {
        strict: true,
        noEmit: true,
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        allowImportingTsExtensions: true,
        verbatimModuleSyntax: true,
        skipLibCheck: true,
        types: ["node"],
      }),
    ).toEqual([]);
  });

  it("types the page's own JavaScript: its API calls and result handlers check against the documents (src/dashboard/public/tsconfig.json)", () => {
    const file = path.join(PACKAGE_ROOT, "src/dashboard/public/tsconfig.json");
    const read = ts.readConfigFile(file, ts.sys.readFile);
    expect(read.error).toBeUndefined();
    const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, path.dirname(file));
    expect(parsed.errors).toEqual([]);
    expect(parsed.fileNames.map((f) => path.basename(f))).toEqual(expect.arrayContaining(["api.js", "dashboard.js", "playground.js", "queries.d.ts"]));
    expect(parsed.options.checkJs).toBe(true);
    expect(typeErrors(parsed.fileNames, parsed.options)).toEqual([]);
  });
});

function typeErrors(files: string[], options: ts.CompilerOptions): string[] {
  const program = ts.createProgram(files, options);
  return ts.getPreEmitDiagnostics(program).map((d) => `${d.file ? path.relative(PACKAGE_ROOT, d.file.fileName) : ""}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`);
}
