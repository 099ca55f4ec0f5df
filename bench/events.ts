// Event latency, commit → client, with 1,000 WebSocket subscribers: a spend is settled (committed),
// announced, and delivered through graphql-ws to every subscriber of the key. Baseline in the same
// run: the same payload size broadcast with plain `ws` to 1,000 sockets (no GraphQL, no database).
import { randomUUID } from "node:crypto";
import { PGlite } from "@electric-sql/pglite";
import { createClient } from "graphql-ws";
import WebSocket, { WebSocketServer } from "ws";
import type { AddressInfo } from "node:net";
import { openDatabase, useDatabase } from "../src/db/index.ts";
import { reserve, settle } from "../src/money/holds.ts";
import { walletBucket } from "../src/money/ledger.ts";
import { announceSpend } from "../src/spend/index.ts";
import { startServer } from "../src/server.ts";
import { services, servicesWith } from "../src/installed.ts";
import { loadConfig } from "../src/config.ts";
import { createAdminToken } from "../src/auth/index.ts";
import * as f from "../test/support/fixtures.ts";

const SUBSCRIBERS = Number(process.env.BENCH_SUBSCRIBERS ?? 1000);
const EVENTS = Number(process.env.BENCH_EVENTS ?? 30);

/** Opens connections 50 at a time: a thousand simultaneous connects overflow the listen backlog. */
async function inBatches<T>(count: number, open: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < count; i += 50) out.push(...(await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, j) => open(i + j)))));
  return out;
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function tokengateLatencies(): Promise<number[]> {
  const database = await openDatabase({ pglite: await PGlite.create() });
  useDatabase(database);
  const server = await startServer(servicesWith({ ...loadConfig({}), port: 0 }), { quiet: true });
  const w = await f.world({ credit: "1000" });
  const token = (await createAdminToken({ name: "bench", role: "ORG_ADMIN", organizationId: w.org.id })).secret;
  const bucketId = (await walletBucket(w.org.id, "CREDIT")).id;
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  let subscribed = 0;
  const clients = Array.from({ length: SUBSCRIBERS }, () =>
    createClient({ url: `${server.url.replace("http", "ws")}/graphql`, webSocketImpl: WebSocket, connectionParams: { authorization: `Bearer ${token}` }, retryAttempts: 3, lazy: true }),
  );
  await inBatches(clients.length, (i) => {
    const client = clients[i]!;
    return new Promise<void>((resolve) => {
      client.on("connected", () => {
        subscribed++;
        resolve();
      });
      client.subscribe<{ keySpend: { requestId: string } }>(
        { query: `subscription($k: ID!) { keySpend(keyId: $k) { requestId charge { amount } spendToday { amount } } }`, variables: { k: w.key.id } },
        { next: (v) => latencies.push(performance.now() - sentAt.get(v.data!.keySpend.requestId)!), error: () => undefined, complete: () => undefined },
      );
    });
  });
  await new Promise((r) => setTimeout(r, 500)); // let every subscription register
  for (let i = 0; i < EVENTS; i++) {
    const requestId = randomUUID();
    const r = await reserve({ requestId, bucketId, amount: 1_000n, keyId: w.key.id, projectId: w.project.id, ttlMs: 60_000 });
    if (!r.ok) throw new Error(r.refusal);
    await settle(r.holdId, 900n);
    sentAt.set(requestId, performance.now()); // committed
    await announceSpend(services().events, { organizationId: w.org.id, projectId: w.project.id, keyId: w.key.id, routeId: null, requestId, bucket: "CREDIT", charge: 900n, status: "SETTLED" });
    const target = (i + 1) * SUBSCRIBERS;
    const deadline = Date.now() + 10_000;
    while (latencies.length < target && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(clients.map((c) => c.dispose()));
  await server.close();
  await database.close();
  if (subscribed !== SUBSCRIBERS) throw new Error(`only ${subscribed} subscribers connected`);
  return latencies;
}

async function rawWsLatencies(): Promise<number[]> {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((r) => wss.once("listening", r));
  const port = (wss.address() as AddressInfo).port;
  const latencies: number[] = [];
  let sentAt = 0;
  const sockets = await inBatches(
    SUBSCRIBERS,
    () =>
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}`);
        ws.on("message", () => latencies.push(performance.now() - sentAt));
        ws.on("open", () => resolve(ws));
        ws.on("error", reject);
      }),
  );
  const payload = JSON.stringify({ id: randomUUID(), type: "next", payload: { data: { keySpend: { requestId: randomUUID(), charge: { amount: "0.000900" }, spendToday: { amount: "0.000900" } } } } });
  for (let i = 0; i < EVENTS; i++) {
    sentAt = performance.now();
    for (const client of wss.clients) client.send(payload);
    const target = (i + 1) * SUBSCRIBERS;
    while (latencies.length < target) await new Promise((r) => setTimeout(r, 1));
  }
  for (const s of sockets) s.close();
  await new Promise((r) => wss.close(r));
  return latencies;
}

export async function benchEvents(): Promise<string> {
  const baseline = (await rawWsLatencies()).sort((a, b) => a - b);
  const ours = (await tokengateLatencies()).sort((a, b) => a - b);
  const row = (name: string, l: number[]) => `| ${name} | ${l.length} | ${percentile(l, 50).toFixed(1)} | ${percentile(l, 99).toFixed(1)} |`;
  return [
    `Event latency with ${SUBSCRIBERS} WebSocket subscribers, ${EVENTS} events (PGlite, one process):`,
    "",
    "| path | deliveries | p50 ms | p99 ms |",
    "|---|---:|---:|---:|",
    row("baseline: plain ws broadcast of the same payload", baseline),
    row("tokengate: settle commit → announce → graphql-ws client", ours),
    "",
    `ratio p50 ${(percentile(ours, 50) / percentile(baseline, 50)).toFixed(1)}×, p99 ${(percentile(ours, 99) / percentile(baseline, 99)).toFixed(1)}× the baseline.`,
  ].join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchEvents());
