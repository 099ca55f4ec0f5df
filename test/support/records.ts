// Receipts written straight to the database, for read-side tests that do not need the gateway.
import { randomUUID } from "node:crypto";
import { db } from "../../src/db/index.ts";
import type { ApiKey } from "../../src/generated/prisma/client.ts";

export async function fakeReceipt(key: ApiKey, routeId: string, channelId: string, priceSnapshotId: string, charge = 0n) {
  return db.receipt.create({
    data: {
      requestId: randomUUID(),
      organizationId: key.organizationId,
      keyId: key.id,
      projectId: key.projectId,
      routeId,
      channelId,
      requestedModel: "gpt-test",
      upstreamModel: "gpt-test-upstream",
      endpoint: "/v1/chat/completions",
      channelRole: "PRIMARY",
      fallback: false,
      attempts: 1,
      bucket: "CREDIT",
      currency: "USD",
      promptTokens: 10,
      completionTokens: 5,
      priceSnapshotId,
      charge,
      latencyMs: 12,
      status: 200,
    },
  });
}
