// Alert webhooks: an organization registers one URL (setAlertWebhook, audited) that receives every
// budget alert and low-balance alert as a signed JSON POST. Delivery runs off the request path from an in-process retry
// queue: each attempt has a time-out, failures are retried with exponential backoff up to a bounded
// number of attempts, and every attempt is stored (AlertWebhookDelivery) for GraphQL. Retries still
// pending when the process stops are dropped (README "Webhooks").
import { createHmac, randomUUID } from "node:crypto";
import { db } from "../db/index.ts";
import type { AlertWebhook } from "../generated/prisma/client.ts";
import type { WebhookDeliveryStatus } from "../generated/prisma/enums.ts";
import { assertCanWrite, resolveOrganizationId, type Viewer } from "../auth/index.ts";
import { writeAudit } from "../audit/index.ts";
import { badInput } from "../errors.ts";
import type { EventBus, PublishedAlert } from "../events/index.ts";
import { BUCKET_CURRENCY, formatMoney } from "../money/amounts.ts";
import { assertUpstreamAllowed, credentialCipher } from "../routing/index.ts";
import { generateSecret } from "../secrets.ts";

export const SIGNATURE_HEADER = "x-tokengate-signature";
const MAX_URL_LENGTH = 2_000;
const SECRET_MIN = 16;
const SECRET_MAX = 200;
const MAX_ERROR_LENGTH = 500;

export interface SetAlertWebhookInput {
  organizationId?: string | null;
  url: string;
  secret?: string | null;
}

function parseUrl(raw: string): string {
  const value = raw.trim();
  if (!value || value.length > MAX_URL_LENGTH) throw badInput("url", `must be 1–${MAX_URL_LENGTH} characters`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw badInput("url", "is not a valid URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw badInput("url", "must use http or https");
  if (url.username || url.password) throw badInput("url", "must not carry credentials (the body is signed with the secret instead)");
  return url.toString();
}

function parseSecret(raw: string): string {
  if (raw.length < SECRET_MIN || raw.length > SECRET_MAX || raw.trim() !== raw) {
    throw badInput("secret", `must be ${SECRET_MIN}–${SECRET_MAX} characters without surrounding spaces`);
  }
  return raw;
}

/**
 * Registers (or replaces) the organization's alert webhook. Without a secret one is generated and
 * returned once (generatedSecret); the secret is stored encrypted and never shown again.
 */
/** The AES-GCM associated data a webhook secret is bound to (one webhook per organization). */
const webhookBinding = (organizationId: string) => `alert-webhook:${organizationId}`;

export async function setAlertWebhook(viewer: Viewer, input: SetAlertWebhookInput): Promise<{ webhook: AlertWebhook; generatedSecret: string | null }> {
  const organizationId = await resolveOrganizationId(viewer, input.organizationId);
  assertCanWrite(viewer, organizationId);
  const url = parseUrl(input.url);
  await assertUpstreamAllowed(viewer, url, "url");
  const given = input.secret === undefined || input.secret === null ? null : parseSecret(input.secret);
  const secret = given ?? generateSecret("whsec_");
  const secretCiphertext = credentialCipher().encrypt(secret, webhookBinding(organizationId));
  const webhook = await db.$transaction(async (tx) => {
    const before = await tx.alertWebhook.findUnique({ where: { organizationId } });
    const saved = await tx.alertWebhook.upsert({
      where: { organizationId },
      create: { organizationId, url, secretCiphertext },
      update: { url, secretCiphertext, updatedAt: new Date() },
    });
    await writeAudit(tx, viewer, {
      organizationId,
      action: "setAlertWebhook",
      targetType: "AlertWebhook",
      targetId: saved.id,
      // The secret never enters the audit trail: only whether it was replaced.
      before: before ? { url: before.url } : undefined,
      after: { url: saved.url, secretReplaced: true, secretGenerated: given === null },
    });
    return saved;
  });
  return { webhook, generatedSecret: given === null ? secret : null };
}

export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** The JSON body of one alert delivery: money as decimal strings with the currency. */
export function alertBody(deliveryId: string, alert: PublishedAlert, createdAt: Date): string {
  const data =
    alert.topic === "budgetAlert"
      ? {
          alertId: alert.event.id,
          organizationId: alert.event.organizationId,
          projectId: alert.event.projectId,
          scope: alert.event.scope,
          scopeId: alert.event.scopeId,
          bucket: alert.event.bucket,
          threshold: alert.event.threshold,
          spent: formatMoney(BigInt(alert.event.spent)),
          cap: formatMoney(BigInt(alert.event.cap)),
          currency: BUCKET_CURRENCY[alert.event.bucket],
          windowStart: alert.event.windowStart,
        }
      : {
          alertId: alert.event.id,
          organizationId: alert.event.organizationId,
          bucket: alert.event.bucket,
          threshold: formatMoney(BigInt(alert.event.threshold)),
          balance: formatMoney(BigInt(alert.event.balance)),
          currency: BUCKET_CURRENCY[alert.event.bucket],
          requestId: alert.event.requestId,
        };
  return JSON.stringify({ id: deliveryId, event: alert.topic, createdAt: createdAt.toISOString(), data });
}

export interface WebhookDeliveryOptions {
  /** Attempts per event, the first included. */
  maxAttempts: number;
  /** Time-out of one attempt (connect, answer and body). */
  timeoutMs: number;
  /** Delay before the second attempt; doubled before each further one. */
  backoffMs: number;
  /** The bus whose alerts (published by this instance) are delivered. */
  events: Pick<EventBus, "onAlertPublished">;
  onError?: (message: string, error: unknown) => void;
}

interface Delivery {
  event: PublishedAlert["topic"];
  webhookId: string;
  organizationId: string;
  url: string;
  secret: string;
  deliveryId: string;
  body: string;
  timestamp: string;
}

/**
 * Starts delivering budget and low-balance alerts published by this process to their organization's webhook.
 * Returns stop(): no new deliveries, pending retries dropped, in-flight attempts awaited.
 */
export function startAlertWebhooks(options: WebhookDeliveryOptions): () => Promise<void> {
  const timers = new Set<NodeJS.Timeout>();
  const inFlight = new Set<Promise<void>>();
  let stopped = false;
  const report = options.onError ?? (() => undefined);

  const track = (work: Promise<void>) => {
    inFlight.add(work);
    void work.finally(() => inFlight.delete(work));
  };

  async function begin(alert: PublishedAlert): Promise<void> {
    const webhook = await db.alertWebhook.findUnique({ where: { organizationId: alert.event.organizationId } });
    if (!webhook || stopped) return;
    const deliveryId = randomUUID();
    const createdAt = new Date();
    let secret: string;
    try {
      secret = credentialCipher().decrypt(webhook.secretCiphertext, webhookBinding(webhook.organizationId));
    } catch {
      // Never send unsigned: a secret that cannot be decrypted fails the delivery, visibly.
      await record(
        { event: alert.topic, webhookId: webhook.id, organizationId: webhook.organizationId, deliveryId },
        1,
        "FAILED",
        null,
        "the webhook secret cannot be decrypted (was TOKENGATE_SECRET changed?): set it again",
        0,
      );
      return;
    }
    const delivery: Delivery = {
      event: alert.topic,
      webhookId: webhook.id,
      organizationId: webhook.organizationId,
      url: webhook.url,
      secret,
      deliveryId,
      body: alertBody(deliveryId, alert, createdAt),
      timestamp: String(Math.floor(createdAt.getTime() / 1000)),
    };
    await attempt(delivery, 1);
  }

  async function attempt(d: Delivery, n: number): Promise<void> {
    const started = performance.now();
    let httpStatus: number | null = null;
    let error: string | null = null;
    try {
      const response = await fetch(d.url, {
        method: "POST",
        redirect: "manual",
        signal: AbortSignal.timeout(options.timeoutMs),
        headers: {
          "content-type": "application/json",
          "user-agent": "tokengate-webhooks",
          [SIGNATURE_HEADER]: signBody(d.secret, d.body),
          "x-tokengate-event": d.event,
          "x-tokengate-delivery": d.deliveryId,
          "x-tokengate-timestamp": d.timestamp,
          "x-tokengate-attempt": String(n),
        },
        body: d.body,
      });
      httpStatus = response.status;
      await response.body?.cancel().catch(() => undefined);
      if (response.status < 200 || response.status >= 300) error = `HTTP ${response.status}`;
    } catch (e) {
      const cause =
        e instanceof Error && e.name === "TimeoutError" ? `timed out after ${options.timeoutMs} ms` : e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e);
      error = cause.slice(0, MAX_ERROR_LENGTH);
    }
    const retry = error !== null && n < options.maxAttempts && !stopped;
    const status: WebhookDeliveryStatus = error === null ? "SUCCEEDED" : retry ? "RETRYING" : "FAILED";
    await record(d, n, status, httpStatus, error, performance.now() - started);
    if (!retry) return;
    const timer = setTimeout(
      () => {
        timers.delete(timer);
        track(attempt(d, n + 1).catch((e: unknown) => report("webhook attempt failed", e)));
      },
      options.backoffMs * 2 ** (n - 1),
    );
    timer.unref();
    timers.add(timer);
  }

  async function record(
    d: Pick<Delivery, "event" | "webhookId" | "organizationId" | "deliveryId">,
    attemptNumber: number,
    status: WebhookDeliveryStatus,
    httpStatus: number | null,
    error: string | null,
    milliseconds: number,
  ): Promise<void> {
    await db.alertWebhookDelivery.create({
      data: {
        webhookId: d.webhookId,
        organizationId: d.organizationId,
        deliveryId: d.deliveryId,
        event: d.event,
        attempt: attemptNumber,
        status,
        httpStatus,
        error,
        durationMs: Math.round(milliseconds),
      },
    });
  }

  const unsubscribe = options.events.onAlertPublished((alert) => {
    if (stopped) return;
    track(begin(alert).catch((e: unknown) => report("webhook delivery failed", e)));
  });

  return async () => {
    stopped = true;
    unsubscribe();
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
    await Promise.allSettled([...inFlight]);
  };
}
