// The upstream client (undici). Four timeouts, each configurable (config.upstream):
//   connect     — TCP / TLS connection set-up (undici's connect timeout),
//   first byte  — from sending the request until the first byte of the response body,
//   idle        — between two body chunks once the body started,
//   total       — the whole attempt, body included.
// Every attempt has its own AbortController, also aborted when the client hangs up, so an
// abandoned request never keeps an upstream generation (and its cost) running.
import type { IncomingHttpHeaders } from "node:http";
import { Agent, request, type Dispatcher } from "undici";
import type { Config } from "../config.ts";
import { BodyEnds } from "./usage-scan.ts";

export type FailureKind = "connect" | "timeout" | "network" | "client_closed";

export class UpstreamFailure extends Error {
  /** Our own words for it, fit for the key holder: no address, host or upstream text (`message` may hold them). */
  readonly summary: string;
  constructor(
    readonly kind: FailureKind,
    message: string,
    /** False when the request never reached the upstream (it cannot have cost anything there). */
    readonly reachedUpstream: boolean,
    summary?: string,
  ) {
    super(message);
    this.name = "UpstreamFailure";
    this.summary = summary ?? message;
  }
}

/** An error code such as ECONNREFUSED, never free text. */
const codeOnly = (code: string | undefined) => (code && /^[A-Z0-9_]{2,40}$/.test(code) ? ` (${code})` : "");

/** Abort reason marking a client that hung up. */
export const CLIENT_CLOSED = Symbol("client closed");

const CONNECT_CODES = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT", "ECONNABORTED"]);
const IDLE = "data (idle)";

/**
 * A non-stream answer over the response limit: never relayed, but billed by the upstream. What is
 * known of it: its size (so far), its first and last bytes (for its usage), and whether it was read
 * to its end (`cut` is the failure that stopped it otherwise).
 */
export interface OversizedAnswer {
  bytes: number;
  ends: BodyEnds;
  cut: UpstreamFailure | null;
}

export interface UpstreamRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
  /** Aborted with CLIENT_CLOSED when the client goes away. */
  clientSignal: AbortSignal;
}

export class UpstreamAttempt {
  private readonly controller = new AbortController();
  private readonly totalTimer: NodeJS.Timeout;
  private phaseTimer: NodeJS.Timeout | null = null;
  private phaseIsIdle = false;
  private idlePaused = false;
  private ending = false;
  private response: Dispatcher.ResponseData | null = null;
  private sawBody = false;
  private readonly onClientAbort = () => this.controller.abort(CLIENT_CLOSED);

  constructor(
    private readonly timeouts: Config["upstream"],
    private readonly dispatcher: Dispatcher,
    private readonly req: UpstreamRequest,
  ) {
    if (req.clientSignal.aborted) this.controller.abort(CLIENT_CLOSED);
    else req.clientSignal.addEventListener("abort", this.onClientAbort, { once: true });
    this.totalTimer = setTimeout(() => this.controller.abort(new UpstreamFailure("timeout", `no complete answer within ${timeouts.totalTimeoutMs} ms`, true)), timeouts.totalTimeoutMs);
    this.armPhase(timeouts.firstByteTimeoutMs, "first byte");
  }

  private armPhase(ms: number, phase: string): void {
    const idle = phase === IDLE;
    if (idle && this.phaseIsIdle && this.phaseTimer) {
      this.phaseTimer.refresh();
      return;
    }
    this.phaseIsIdle = idle;
    if (this.phaseTimer) clearTimeout(this.phaseTimer);
    this.phaseTimer = setTimeout(() => this.controller.abort(new UpstreamFailure("timeout", `no ${phase} within ${ms} ms`, true)), ms);
  }

  /** Sends the request; resolves with the status and headers, or throws an UpstreamFailure. */
  async start(): Promise<{ status: number; headers: IncomingHttpHeaders }> {
    try {
      this.response = await request(this.req.url, {
        method: "POST",
        headers: this.req.headers,
        body: this.req.body,
        dispatcher: this.dispatcher,
        signal: this.controller.signal,
        // Ours (above) are finer-grained; undici's would only race them.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
    } catch (error) {
      throw this.classify(error, false);
    }
    return { status: this.response.statusCode, headers: this.response.headers };
  }

  /** Body chunks, under the first-byte then idle timeouts. */
  async *chunks(): AsyncGenerator<Buffer> {
    const body = this.response!.body;
    try {
      for await (const chunk of body) {
        if (!this.sawBody) this.sawBody = true;
        if (!this.idlePaused) this.armPhase(this.timeouts.idleTimeoutMs, IDLE);
        yield chunk as Buffer;
      }
    } catch (error) {
      throw this.classify(error, true);
    }
    if (this.controller.signal.aborted) throw this.classify(null, true);
  }

  /**
   * Reads a non-stream answer: the whole body up to the response limit; past it (or at once when
   * Content-Length says so) only its ends are kept while the rest is read to its end, for the usage
   * the upstream bills. A failure before the limit is thrown as before.
   */
  async readAnswer(limit = this.timeouts.maxResponseBytes): Promise<{ body: Buffer } | { oversized: OversizedAnswer }> {
    const declared = Number(this.response!.headers["content-length"]);
    let ends: BodyEnds | null = Number.isFinite(declared) && declared > limit ? new BodyEnds() : null;
    let parts: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of this.chunks()) {
        if (ends) {
          ends.push(chunk);
          continue;
        }
        size += chunk.length;
        parts.push(chunk);
        if (size > limit) {
          ends = new BodyEnds();
          for (const part of parts) ends.push(part);
          parts = []; // what is over the limit is never kept whole
        }
      }
    } catch (error) {
      if (!ends || !(error instanceof UpstreamFailure)) throw error;
      return { oversized: { bytes: ends.size, ends, cut: error } };
    }
    if (ends) return { oversized: { bytes: ends.size, ends, cut: null } };
    return { body: parts.length === 1 ? parts[0]! : Buffer.concat(parts) };
  }

  /** Reads a whole (small) body, e.g. an error body; larger than `limit` is a failure. */
  async readAll(limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let size = 0;
    for await (const chunk of this.chunks()) {
      size += chunk.length;
      if (size > limit) throw new UpstreamFailure("network", `response body larger than ${limit} bytes`, true);
      parts.push(chunk);
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** The answer is complete: the response only has to end, within `ms` (never later than the idle timeout). */
  expectEnd(ms: number): void {
    if (this.ending) return;
    this.ending = true;
    this.idlePaused = true;
    this.armPhase(Math.min(ms, this.timeouts.idleTimeoutMs), "end of response");
  }

  /** While the client is slow to read (backpressure), the upstream is not idle on its own account. */
  pauseIdle(): void {
    this.idlePaused = true;
    if (this.phaseTimer) clearTimeout(this.phaseTimer);
    this.phaseTimer = null;
    this.phaseIsIdle = false;
  }

  resumeIdle(): void {
    this.idlePaused = false;
    this.armPhase(this.sawBody ? this.timeouts.idleTimeoutMs : this.timeouts.firstByteTimeoutMs, this.sawBody ? IDLE : "first byte");
  }

  /** Stops timers and drops the connection if the body was not read to the end. */
  close(): void {
    clearTimeout(this.totalTimer);
    if (this.phaseTimer) clearTimeout(this.phaseTimer);
    this.req.clientSignal.removeEventListener("abort", this.onClientAbort);
    const body = this.response?.body;
    if (body && !body.readableEnded && !body.destroyed) body.destroy();
  }

  /**
   * From now on a client that hangs up no longer aborts this attempt by itself: the caller decides
   * (e.g. an answer the upstream already produced is read to its end so its usage can be charged).
   * The attempt stays bounded by its timeouts.
   */
  detachClient(): void {
    this.req.clientSignal.removeEventListener("abort", this.onClientAbort);
  }

  /** Aborts the upstream request (e.g. the client is gone). */
  abort(): void {
    this.controller.abort(CLIENT_CLOSED);
  }

  private classify(error: unknown, afterHeaders: boolean): UpstreamFailure {
    const signal = this.controller.signal;
    if (signal.aborted) {
      const reason = signal.reason as unknown;
      // The request was (most likely) sent: the upstream may have started working on it.
      if (reason === CLIENT_CLOSED) return new UpstreamFailure("client_closed", "the client closed the connection", true);
      if (reason instanceof UpstreamFailure) return reason;
    }
    if (error instanceof UpstreamFailure) return error;
    const code = (error as { code?: string } | null)?.code ?? (error as { cause?: { code?: string } } | null)?.cause?.code;
    const message = error instanceof Error ? error.message : String(error);
    if (!afterHeaders && code && CONNECT_CODES.has(code)) {
      return new UpstreamFailure(code === "UND_ERR_CONNECT_TIMEOUT" ? "timeout" : "connect", `cannot connect (${code}): ${message}`, false, `could not connect to the upstream${codeOnly(code)}`);
    }
    return new UpstreamFailure(
      "network",
      afterHeaders ? `the response was cut off (${code ?? message})` : `request failed (${code ?? message})`,
      true,
      afterHeaders ? `the upstream's response was cut off${codeOnly(code)}` : `the request to the upstream failed${codeOnly(code)}`,
    );
  }
}

export class UpstreamClient {
  private readonly agent: Agent;

  constructor(private readonly timeouts: Config["upstream"]) {
    this.agent = new Agent({
      connect: { timeout: timeouts.connectTimeoutMs },
      keepAliveTimeout: 30_000,
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  }

  attempt(req: UpstreamRequest): UpstreamAttempt {
    return new UpstreamAttempt(this.timeouts, this.agent, req);
  }

  async close(): Promise<void> {
    await this.agent.destroy().catch(() => undefined);
  }
}
