// Reading the usage of an answer too large to keep (its ends only), and the stream relay's bound
// on one unfinished event (issue 14, point 5).
import { describe, expect, it } from "vitest";
import { BodyEnds, usageInFragment } from "../src/gateway/usage-scan.ts";
import { SseEventTooLarge, SseRelay } from "../src/gateway/sse.ts";

describe("usageInFragment", () => {
  it("takes the last real usage object, skipping escaped look-alikes inside strings and fragments cut mid-value", () => {
    const tail = `aaaa \\"usage\\": {\\"prompt_tokens\\": 9}"}}],"usage":{"prompt_tokens":10,"completion_tokens":1000,"completion_tokens_details":{"reasoning_tokens":0}},"x":"}"}`;
    expect(usageInFragment(tail)).toEqual({ promptTokens: 10, completionTokens: 1000 });
    expect(usageInFragment(`"content":"only \\"usage\\":{\\"prompt_tokens\\":5}"`)).toBeNull();
    expect(usageInFragment(`,"usage":{"prompt_tokens":10,"completion_tok`)).toBeNull(); // cut before its end
    // A backslash that is itself escaped leaves the quote real.
    expect(usageInFragment(`"a\\\\","usage":{"prompt_tokens":3,"completion_tokens":4}}`)).toEqual({ promptTokens: 3, completionTokens: 4 });
  });
});

describe("BodyEnds", () => {
  it("keeps only the window at each end, and finds the usage at the end, else at the start", () => {
    const ends = new BodyEnds(1024);
    ends.push(Buffer.from(`{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[{"message":{"content":"`));
    const block = Buffer.alloc(4096, "a");
    for (let i = 0; i < 100; i++) ends.push(block);
    expect(ends.usage()).toEqual({ promptTokens: 1, completionTokens: 2 }); // only at the start
    ends.push(Buffer.from(`"}}],"usage":{"prompt_tokens":7,"completion_tokens":8}}`));
    expect(ends.usage()).toEqual({ promptTokens: 7, completionTokens: 8 });
    expect(ends.size).toBeGreaterThan(400_000);
  });
});

describe("SseRelay's bound on one event", () => {
  it("passes events split anywhere, separators across chunks included, and throws once an unfinished event outgrows the limit", () => {
    const relay = new SseRelay(false, 64 * 1024);
    const chunk = (content: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content }, finish_reason: null }] })}`;
    let out = relay.push(Buffer.from(`${chunk("one")}\r\n\r`));
    out += relay.push(Buffer.from(`\n${chunk("two")}\n`));
    out += relay.push(Buffer.from(`\n${chunk("three")}`));
    out += relay.end();
    expect(out).toBe(`${chunk("one")}\n\n${chunk("two")}\n\n${chunk("three")}\n\n`);
    expect(relay.generatedText()).toBe("onetwothree");

    const flood = new SseRelay(false, 64 * 1024);
    flood.push(Buffer.from(`data: {"choices":[{"delta":{"content":"`));
    const block = Buffer.alloc(16 * 1024, "a");
    let error: unknown = null;
    for (let i = 0; i < 8 && !error; i++) {
      try {
        flood.push(block);
      } catch (e) {
        error = e;
      }
    }
    expect(error).toBeInstanceOf(SseEventTooLarge);
    expect((error as SseEventTooLarge).pendingBytes).toBeGreaterThan(64 * 1024);
    expect((error as SseEventTooLarge).pendingBytes).toBeLessThan(64 * 1024 + 16 * 1024 + 64);
  });
});
