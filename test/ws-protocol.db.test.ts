// graphql-ws hygiene on the raw protocol: the close codes the protocol defines, and 1001 on shutdown.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { startTestServer, token } from "./support/graphql.ts";
import type { RunningServer } from "../src/server.ts";

let database: TestDatabase;
let server: RunningServer;
let admin: string;
beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer();
  admin = await token("PLATFORM_ADMIN");
});
afterAll(async () => {
  await server.close();
  await database.dispose();
});

function open(target = server): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${target.url.replace("http", "ws")}/graphql`, "graphql-transport-ws");
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}
const closed = (ws: WebSocket) => new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));
const message = (ws: WebSocket) => new Promise<{ type: string }>((resolve) => ws.once("message", (data) => resolve(JSON.parse(String(data)))));

describe("graphql-transport-ws close codes", () => {
  it("4401 for a subscribe before connection_ack", async () => {
    const ws = await open();
    const code = closed(ws);
    ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query: "{ projects { totalCount } }" } }));
    expect(await code).toBe(4401);
  });

  it("4403 for a bad token, 4429 for a second connection_init", async () => {
    const bad = await open();
    const badCode = closed(bad);
    bad.send(JSON.stringify({ type: "connection_init", payload: { authorization: "Bearer nope" } }));
    expect(await badCode).toBe(4403);

    const twice = await open();
    const ack = message(twice);
    twice.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${admin}` } }));
    expect((await ack).type).toBe("connection_ack");
    const code = closed(twice);
    twice.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${admin}` } }));
    expect(await code).toBe(4429);
  });

  it("4408 when connection_init never comes", async () => {
    const ws = await open();
    expect(await closed(ws)).toBe(4408);
  }, 10_000);

  it("graceful shutdown closes open sockets with 1001", async () => {
    const own = await startTestServer();
    const ws = await open(own);
    const ack = message(ws);
    ws.send(JSON.stringify({ type: "connection_init", payload: { authorization: `Bearer ${admin}` } }));
    await ack;
    const code = closed(ws);
    await own.close();
    expect(await code).toBe(1001);
  });
});
