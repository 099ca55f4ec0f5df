// Upstream error text never reaches key holders (issue 14, point 11): `connect ECONNREFUSED
// 127.0.0.1:1` and, from an upstream that echoes headers, `Bearer sk-…` (the channel's credential)
// were returned on /v1 and stored in FailedRequest.message, which viewers and CSV exports see. Key
// holders now get our words (cause, upstream status, request id); the upstream's text is kept in
// upstreamMessage for organization admins, with the credential and internal addresses redacted.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useGatewayHarness, uid } from "./support/gateway.ts";
import { route, world } from "./support/fixtures.ts";
import { gql, startTestServer, token } from "./support/graphql.ts";
import type { RunningServer } from "../src/server.ts";

const h = useGatewayHarness();
let server: RunningServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(() => server.close());

const CREDENTIAL = "sk-channel-secret-0123456789abcdef";
type ErrorBody = { error: { message: string; type: string; code: string | null; param: string | null } };

async function setup(baseUrl: string) {
  const w = await world({ credit: "10", key: { retryCeiling: 0 } });
  const model = uid("gpt-echo");
  const upstreamModel = uid("up");
  await route(w.viewer, w.org.id, model, [{ name: "primary", baseUrl, apiKey: CREDENTIAL, upstreamModel, price: ["1", "1"] }]);
  const tokens = {
    admin: await token("ORG_ADMIN", w.org.id),
    viewer: await token("ORG_VIEWER", w.org.id),
    projectViewer: await token("PROJECT_VIEWER", w.org.id, w.project.id),
  };
  return { ...w, model, upstreamModel, tokens };
}

const call = async (secret: string, model: string) => {
  const response = await fetch(`${h.gw.url}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 5 }),
  });
  const text = await response.text();
  return { status: response.status, requestId: response.headers.get("x-request-id")!, text, body: JSON.parse(text) as ErrorBody };
};

/** Whatever a key holder or viewer may read must not name the credential, the address or the port. */
function expectNothingInternal(text: string, port: string) {
  expect(text).not.toContain(CREDENTIAL);
  expect(text).not.toMatch(/Bearer\s+sk-/);
  expect(text).not.toContain("127.0.0.1");
  expect(text).not.toContain(`:${port}`);
  expect(text).not.toMatch(/ECONNREFUSED\s+\S+:\d/);
}

const FAILED = `query($id: String!) { failedRequests(filter: { requestId: $id }) { edges { node { message upstreamMessage } } } }`;
const failedAs = async (t: string, requestId: string) =>
  ((await gql(t, FAILED, { id: requestId })).data as { failedRequests: { edges: Array<{ node: { message: string; upstreamMessage: string | null } }> } }).failedRequests.edges.map((e) => e.node);

const csv = async (t: string, requestId: string) => {
  const response = await fetch(`${server.url}/exports/failed-requests.csv`, { headers: { authorization: `Bearer ${t}` } });
  expect(response.status).toBe(200);
  const text = await response.text();
  const [header, ...rows] = text.trim().split("\r\n");
  const columns = header!.split(",");
  const row = rows.find((r) => r.includes(requestId));
  return { text, row: row ?? null, column: (name: string) => columns.indexOf(name) };
};

describe("an upstream that echoes the Authorization header", () => {
  it("after retries: our words on /v1 and in FailedRequest.message; the redacted upstream text for admins only", async () => {
    const s = await setup(h.fake.url);
    const port = new URL(h.fake.url).port;
    h.fake.set(s.upstreamModel, { type: "echo", status: 500 });
    const r = await call(s.secret, s.model);
    expect(r.status).toBe(502);
    expect(r.body.error).toEqual({
      message: `The upstream failed after 1 attempt(s): the upstream answered with an error (upstream status 500). Request id ${r.requestId}.`,
      type: "api_error",
      code: "upstream_error",
      param: null,
    });
    expectNothingInternal(r.text, port);
    // The upstream really did echo the credential: it was sent, and came back.
    expect(h.fake.requests.find((q) => q.model === s.upstreamModel)!.headers.authorization).toBe(`Bearer ${CREDENTIAL}`);

    const stored = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: r.requestId } });
    expect(stored).toMatchObject({ cause: "UPSTREAM_ERROR", upstreamStatus: 500, message: r.body.error.message });
    const kept = await h.database.prisma.failedRequestUpstreamMessage.findUniqueOrThrow({ where: { requestId: r.requestId } });
    expect(kept.message).toBe("HTTP 500: invalid credentials: Authorization: Bearer [redacted credential]; Host: [upstream host]");

    // GraphQL: admins read the upstream's (redacted) words, viewers only ours.
    expect(await failedAs(s.tokens.admin, r.requestId)).toEqual([{ message: r.body.error.message, upstreamMessage: kept.message }]);
    for (const viewer of [s.tokens.viewer, s.tokens.projectViewer]) {
      expect(await failedAs(viewer, r.requestId)).toEqual([{ message: r.body.error.message, upstreamMessage: null }]);
    }
    // CSV: the column is filled for admins, empty for viewers; the credential is in neither.
    const asAdmin = await csv(s.tokens.admin, r.requestId);
    // (No comma or quote in it: the row splits on commas.)
    expect(asAdmin.row!.split(",")[asAdmin.column("upstreamMessage")]).toBe(kept.message);
    expect(asAdmin.text).toContain("Bearer [redacted credential]");
    expect(asAdmin.text).not.toContain(CREDENTIAL);
    for (const viewer of [s.tokens.viewer, s.tokens.projectViewer]) {
      const export_ = await csv(viewer, r.requestId);
      expect(export_.row).not.toBeNull();
      expect(export_.row!.split(",")[export_.column("upstreamMessage")]).toBe("");
      expectNothingInternal(export_.text, port);
    }
  });

  it("a 4xx blamed on the request: the upstream's body still comes back, with the credential and address redacted", async () => {
    const s = await setup(h.fake.url);
    const port = new URL(h.fake.url).port;
    h.fake.set(s.upstreamModel, { type: "echo", status: 400 });
    const r = await call(s.secret, s.model);
    expect(r.status).toBe(400);
    expect(r.body.error).toEqual({
      message: "invalid credentials: Authorization: Bearer [redacted credential]; Host: [upstream host]",
      type: "invalid_request_error",
      code: "echo",
      param: null,
    });
    expectNothingInternal(r.text, port);
    const stored = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: r.requestId } });
    expect(stored).toMatchObject({ cause: "BAD_REQUEST", upstreamStatus: 400, message: `The upstream rejected the request (HTTP 400). Request id ${r.requestId}.` });
    expect((await h.database.prisma.failedRequestUpstreamMessage.findUniqueOrThrow({ where: { requestId: r.requestId } })).message).toBe(r.body.error.message);
  });
});

describe("a refused port", () => {
  it("says we could not connect, not where; admins read the error with the address redacted", async () => {
    const s = await setup("http://127.0.0.1:1/v1");
    const r = await call(s.secret, s.model);
    expect(r.status).toBe(502);
    expect(r.body.error.message).toBe(`The upstream failed after 1 attempt(s): could not connect to the upstream (ECONNREFUSED). Request id ${r.requestId}.`);
    expectNothingInternal(r.text, "1/");
    const stored = await h.database.prisma.failedRequest.findUniqueOrThrow({ where: { requestId: r.requestId } });
    expect(stored.message).toBe(r.body.error.message);
    const kept = await h.database.prisma.failedRequestUpstreamMessage.findUniqueOrThrow({ where: { requestId: r.requestId } });
    expect(kept.message).toMatch(/^cannot connect \(ECONNREFUSED\): /);
    expect(kept.message).toContain("[upstream host]");
    expect(kept.message).not.toContain("127.0.0.1");
    for (const viewer of [s.tokens.viewer, s.tokens.projectViewer]) expect(await failedAs(viewer, r.requestId)).toEqual([{ message: r.body.error.message, upstreamMessage: null }]);
  });
});
