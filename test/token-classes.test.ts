// Token classes: how usage is read from each API's shape, how a snapshot's class prices charge it
// (DESIGN's rounding, ceil per token kind), that a snapshot without class prices charges exactly as
// before, that the worst case stays a true upper bound whatever the classes, and how the relay
// reads a Responses API stream (text, usage, terminal event held back, failure).
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { usageCharge, worstCase } from "../src/money/charges.ts";
import { classCharge, classChargeBound, requestCharge, tokenCharge, type Price } from "../src/money/amounts.ts";
import { SseRelay, readUsage, upstreamCostText } from "../src/gateway/sse.ts";

const BASE: Price = { inputPerMillion: 2_500_000n, outputPerMillion: 10_333_333n };

describe("reading usage", () => {
  it("the Chat / Completions shape with its details and cost", () => {
    expect(
      readUsage({
        prompt_tokens: 1000,
        completion_tokens: 50,
        prompt_tokens_details: { cached_tokens: 900, audio_tokens: 3, cache_write_tokens: 40 },
        completion_tokens_details: { reasoning_tokens: 20, audio_tokens: 5 },
        cost: 0.00042,
      }),
    ).toEqual({
      promptTokens: 1000,
      completionTokens: 50,
      cachedPromptTokens: 900,
      cacheWriteTokens: 40,
      audioPromptTokens: 3,
      reasoningTokens: 20,
      audioCompletionTokens: 5,
      upstreamCost: "0.00042",
    });
  });

  it("the Responses API shape; DeepSeek's prompt_cache_hit_tokens", () => {
    expect(readUsage({ input_tokens: 70, input_tokens_details: { cached_tokens: 64 }, output_tokens: 9, output_tokens_details: { reasoning_tokens: 4 }, total_tokens: 79 })).toEqual({
      promptTokens: 70,
      completionTokens: 9,
      cachedPromptTokens: 64,
      reasoningTokens: 4,
    });
    expect(readUsage({ prompt_tokens: 10, completion_tokens: 1, prompt_cache_hit_tokens: 8, prompt_cache_miss_tokens: 2 })).toEqual({ promptTokens: 10, completionTokens: 1, cachedPromptTokens: 8 });
  });

  it("a class is at most its total; a malformed class counts 0; a malformed total is no usage", () => {
    expect(readUsage({ prompt_tokens: 10, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 99 } })).toMatchObject({ cachedPromptTokens: 10 });
    expect(readUsage({ prompt_tokens: 10, completion_tokens: 1, prompt_tokens_details: { cached_tokens: -1 } })).toEqual({ promptTokens: 10, completionTokens: 1 });
    expect(readUsage({ input_tokens: "10", output_tokens: 1 })).toBeNull();
  });

  it("usage.cost as a plain decimal string, whatever its JSON form; nonsense is dropped", () => {
    expect(upstreamCostText(1.2e-7)).toBe("0.00000012");
    expect(upstreamCostText(0.5)).toBe("0.5");
    expect(upstreamCostText(3)).toBe("3");
    expect(upstreamCostText(1e21)).toBe("1000000000000000000000");
    expect(upstreamCostText("0.0012")).toBe("0.0012");
    expect(upstreamCostText(-1)).toBeUndefined();
    expect(upstreamCostText("1; DROP")).toBeUndefined();
    expect(upstreamCostText(Number.NaN)).toBeUndefined();
  });
});

describe("charging by class", () => {
  it("each class at the snapshot's price, each kind rounded up (DESIGN's rule)", () => {
    const price = { ...BASE, cachedInputPerMillion: 250_000n };
    // ceil(100 × 2.5) + ceil(900 × 0.25) + ceil(50 × 10.333333) = 250 + 225 + 517
    expect(classCharge(price, { promptTokens: 1000, completionTokens: 50, cachedPromptTokens: 900 })).toBe(992n);
    // A fraction in every kind: ceil(1 × 2.5) + ceil(1 × 0.25) + ceil(1 × 10.333333) = 3 + 1 + 11
    expect(classCharge(price, { promptTokens: 2, completionTokens: 1, cachedPromptTokens: 1 })).toBe(15n);
    const all = { ...BASE, cachedInputPerMillion: 250_000n, cacheWritePerMillion: 3_125_000n, audioInputPerMillion: 40_000_000n, audioOutputPerMillion: 80_000_000n };
    const usage = { promptTokens: 1000, completionTokens: 100, cachedPromptTokens: 500, cacheWriteTokens: 200, audioPromptTokens: 100, audioCompletionTokens: 40 };
    expect(classCharge(all, usage)).toBe(
      tokenCharge(200, 2_500_000n) + tokenCharge(500, 250_000n) + tokenCharge(200, 3_125_000n) + tokenCharge(100, 40_000_000n) + tokenCharge(60, 10_333_333n) + tokenCharge(40, 80_000_000n),
    );
  });

  it("a snapshot without class prices charges exactly requestCharge, whatever classes the upstream reports", () => {
    fc.assert(
      fc.property(fc.nat(5_000_000), fc.nat(5_000_000), fc.nat(5_000_000), fc.nat(5_000_000), fc.nat(5_000_000), (prompt, completion, cached, write, reasoning) => {
        const usage = { promptTokens: prompt, completionTokens: completion, cachedPromptTokens: cached, cacheWriteTokens: write, reasoningTokens: reasoning, audioPromptTokens: cached % 7 };
        expect(classCharge(BASE, usage)).toBe(requestCharge(BASE, prompt, completion));
        expect(worstCase(BASE, prompt, completion)).toBe(requestCharge(BASE, prompt, completion));
      }),
    );
    // A class price equal to its side's price is the same kind: no extra rounding.
    expect(classCharge({ ...BASE, cachedInputPerMillion: BASE.inputPerMillion }, { promptTokens: 3, completionTokens: 0, cachedPromptTokens: 1 })).toBe(requestCharge(BASE, 3, 0));
  });

  it("the worst case is a true upper bound: every token at its side's dearest class, plus one micro-unit per extra kind", () => {
    const cheapCache = { ...BASE, cachedInputPerMillion: 250_000n };
    // A cheaper cached price never lowers a hold: every prompt token is assumed uncached.
    expect(worstCase(cheapCache, 1000, 50)).toBe(requestCharge(BASE, 1000, 50) + 1n);
    const dearWrite = { ...BASE, cacheWritePerMillion: 3_125_000n, audioOutputPerMillion: 80_000_000n };
    expect(worstCase(dearWrite, 1000, 50)).toBe(tokenCharge(1000, 3_125_000n) + tokenCharge(50, 80_000_000n) + 2n);
    const prices = fc.record({
      inputPerMillion: fc.bigInt(0n, 100_000_000n),
      outputPerMillion: fc.bigInt(0n, 100_000_000n),
      cachedInputPerMillion: fc.option(fc.bigInt(0n, 100_000_000n)),
      cacheWritePerMillion: fc.option(fc.bigInt(0n, 100_000_000n)),
      audioInputPerMillion: fc.option(fc.bigInt(0n, 100_000_000n)),
      audioOutputPerMillion: fc.option(fc.bigInt(0n, 100_000_000n)),
    });
    fc.assert(
      fc.property(prices, fc.nat(100_000), fc.nat(100_000), fc.nat(100_000), fc.nat(100_000), fc.nat(100_000), fc.nat(100_000), (price, prompt, completion, a, b, c, d) => {
        const usage = { promptTokens: prompt, completionTokens: completion, cachedPromptTokens: a, cacheWriteTokens: b, audioPromptTokens: c, audioCompletionTokens: d };
        const bound = classChargeBound(price, prompt, completion);
        expect(classCharge(price, usage)).toBeLessThanOrEqual(bound);
        // Usage within the bounds is never capped: the charge is the full price.
        expect(usageCharge(price, usage, bound)).toEqual({ charge: classCharge(price, usage), full: classCharge(price, usage) });
      }),
      { numRuns: 500 },
    );
  });
});

describe("a Responses API stream through the relay", () => {
  const event = (type: string, payload: Record<string, unknown>) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...payload })}\n\n`);
  const usage = { input_tokens: 12, input_tokens_details: { cached_tokens: 8 }, output_tokens: 3, output_tokens_details: { reasoning_tokens: 1 } };

  it("passes events on as they came, keeps the text, holds back response.completed and takes its usage", () => {
    const relay = new SseRelay(false, Number.POSITIVE_INFINITY, "responses");
    const created = event("response.created", { response: { id: "r", usage: null } });
    expect(relay.push(created)).toBe(created.toString());
    expect(relay.push(event("response.output_text.delta", { delta: "Hello" }))).toContain("event: response.output_text.delta\n");
    relay.push(event("response.audio.delta", { delta: "AAAABBBBCCCC" }));
    relay.push(event("response.function_call_arguments.delta", { delta: '{"a":1}' }));
    expect(relay.usage).toBeNull();
    const completed = event("response.completed", { response: { id: "r", usage } });
    expect(relay.push(completed)).toBe("");
    expect(relay.done).toBe(true);
    expect(relay.terminal).toBe(completed.toString());
    expect(relay.usage).toEqual({ promptTokens: 12, completionTokens: 3, cachedPromptTokens: 8, reasoningTokens: 1 });
    expect(relay.generatedText()).toBe('Hello{"a":1}');
    // Nothing after the terminal event is passed on.
    expect(relay.push(event("response.output_text.delta", { delta: "late" }))).toBe("");
  });

  it("response.incomplete completes it too; response.failed and error events are passed on and mark it failed", () => {
    const incomplete = new SseRelay(false, Number.POSITIVE_INFINITY, "responses");
    incomplete.push(event("response.incomplete", { response: { usage } }));
    expect(incomplete.done).toBe(true);
    const failed = new SseRelay(false, Number.POSITIVE_INFINITY, "responses");
    expect(failed.push(event("response.failed", { response: { usage: null, error: { code: "server_error" } } }))).toContain("response.failed");
    expect(failed.failed).toBe(true);
    expect(failed.done).toBe(false);
  });

  it("text completion chunks: the text on the choice is kept", () => {
    const relay = new SseRelay(false);
    relay.push(Buffer.from(`data: ${JSON.stringify({ object: "text_completion", choices: [{ index: 0, text: "Once", finish_reason: null }] })}\n\n`));
    relay.push(Buffer.from(`data: ${JSON.stringify({ object: "text_completion", choices: [{ index: 0, text: " upon", finish_reason: "stop" }] })}\n\n`));
    expect(relay.generatedText()).toBe("Once upon");
    expect(relay.finished).toBe(true);
  });
});
