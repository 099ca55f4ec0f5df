// Prompt counting is linear and bounded, and stays an upper bound of o200k's own count on
// adversarial text (long unbroken runs, long whitespace, mixed scripts, special-token text).
import { describe, expect, it } from "vitest";
import { countTokens } from "gpt-tokenizer";
import fc from "fast-check";
import { MAX_BPE_PIECE_CHARS, MAX_SCANNED_RUN_CHARS, TokenCounter, countText, imageTokens, inlineImageSize, UNKNOWN_MODEL_IMAGE_TOKENS } from "../src/gateway/tokens.ts";

const exact = (text: string) => countTokens(text, { disallowedSpecial: new Set() });

/** Deterministic CJK text of `n` characters with no spaces or punctuation (one pre-tokenized piece). */
function cjkRun(n: number, seed = 7): string {
  let s = seed;
  const codes = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    codes[i] = 0x4e00 + (s % 20000);
  }
  return String.fromCharCode(...codes.slice(0, Math.min(n, 50_000))) + (n > 50_000 ? cjkRun(n - 50_000, s) : "");
}

describe("countText is an upper bound of o200k's count", () => {
  it.each([
    ["a short CJK run", cjkRun(40)],
    ["a CJK run just over the BPE piece limit", cjkRun(MAX_BPE_PIECE_CHARS + 1)],
    ["a CJK run over the scanned-run limit", cjkRun(MAX_SCANNED_RUN_CHARS + 5)],
    ["a long run of one letter", "a".repeat(3000)],
    ["long whitespace", `${" ".repeat(5000)}x${"\n".repeat(2000)}`],
    ["long punctuation", "!?".repeat(2000)],
    ["uppercase fullwidth letters", "ＡＢＣ".repeat(700)],
    ["digits", "1234567890".repeat(500)],
    ["emoji and combining marks", "👍🏽e\u0301".repeat(400)],
    ["special-token text", "<|endoftext|><|im_start|>".repeat(100)],
    ["English prose", "The quick brown fox jumps over the lazy dog. ".repeat(300)],
    ["a base64 blob", Buffer.from(cjkRun(2000)).toString("base64")],
    ["mixed runs", `hello ${cjkRun(300)} world ${"x".repeat(2000)} ${cjkRun(70)}!`],
  ])("%s", (_name, text) => {
    const bound = countText(text);
    expect(bound).toBeGreaterThanOrEqual(exact(text));
    // Never more than the UTF-8 bytes (plus nothing): the bound is not absurd either.
    expect(bound).toBeLessThanOrEqual(Buffer.byteLength(text, "utf8"));
  });

  it("holds on generated unicode strings (seeded)", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.string({ unit: "grapheme", maxLength: 200 }), fc.constantFrom(" ", "\n", "中文字符", "ＡＢＣ", "'s", "123")), { maxLength: 40 }), (parts) => {
        const text = parts.join("");
        expect(countText(text)).toBeGreaterThanOrEqual(exact(text));
      }),
      { seed: 8, numRuns: 300 },
    );
  });

  it("counts exactly what BPE counts on ordinary text (no over-reservation for normal prompts)", () => {
    const prose = "Write a haiku about accounting, in English, and explain each line briefly. ".repeat(20);
    expect(countText(prose)).toBe(exact(prose));
  });
});

describe("counting time is linear", () => {
  it("one unbroken 1.3M-character CJK run (4 MB of UTF-8) counts in well under a second", () => {
    const text = cjkRun(1_333_000);
    const started = performance.now();
    const n = countText(text);
    const ms = performance.now() - started;
    expect(n).toBe(Buffer.byteLength(text, "utf8"));
    expect(ms).toBeLessThan(1500);
  });

  it("4× the input takes about 4× the time on adversarial shapes (no quadratic piece)", () => {
    const shapes = [(n: number) => "ＡＢＣ".repeat(n / 3), (n: number) => cjkRun(n), (n: number) => `${"a".repeat(MAX_SCANNED_RUN_CHARS)} `.repeat(n / MAX_SCANNED_RUN_CHARS)];
    for (const shape of shapes) {
      const time = (n: number) => {
        const text = shape(n);
        let best = Infinity;
        for (let i = 0; i < 3; i++) {
          const t0 = performance.now();
          countText(text);
          best = Math.min(best, performance.now() - t0);
        }
        return best;
      };
      time(30_000); // warm up
      const small = Math.max(time(120_000), 5);
      const large = time(480_000);
      expect(large / small).toBeLessThan(10); // quadratic would be 16×
    }
  });

  it("async counting hands the event loop back while it works", async () => {
    // Many short pieces of rare characters: every piece goes through BPE (the slow path).
    const text = Array.from({ length: 15_000 }, (_, i) => cjkRun(8, i + 1)).join(" ");
    let ticks = 0;
    let longestGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
      ticks++;
    }, 1);
    const counter = new TokenCounter();
    await counter.text(text);
    clearInterval(timer);
    expect(counter.total).toBeGreaterThanOrEqual(exact(text));
    expect(ticks).toBeGreaterThan(3);
    expect(longestGap).toBeLessThan(500);
  });
});

describe("images are bounded by the upstream model's rules", () => {
  const png = (width: number, height: number) => {
    const b = Buffer.alloc(33);
    b.writeUInt32BE(0x89504e47, 0);
    b.writeUInt32BE(0x0d0a1a0a, 4);
    b.writeUInt32BE(13, 8);
    b.write("IHDR", 12, "latin1");
    b.writeUInt32BE(width, 16);
    b.writeUInt32BE(height, 20);
    return `data:image/png;base64,${b.toString("base64")}`;
  };

  it("low detail is the base; high / auto without a known size is 8 tiles", () => {
    expect(imageTokens({ detail: "low", size: null }, "gpt-4o")).toBe(85);
    expect(imageTokens({ detail: "high", size: null }, "gpt-4o")).toBe(85 + 170 * 8);
    expect(imageTokens({ detail: "auto", size: null }, "gpt-4o-2024-08-06")).toBe(85 + 170 * 8);
    expect(imageTokens({ detail: "high", size: null }, "gpt-4o-mini")).toBe(2833 + 5667 * 8);
    expect(imageTokens({ detail: "low", size: null }, "gpt-4.1-nano")).toBe(Math.ceil(1536 * 2.46));
    expect(imageTokens({ detail: "low", size: null }, "some-vendor-vl")).toBe(UNKNOWN_MODEL_IMAGE_TOKENS);
  });

  it("an inline image's size is read from its header: OpenAI's 1024×1024 example is 765 tokens on gpt-4o", () => {
    expect(inlineImageSize(png(1024, 1024))).toEqual({ width: 1024, height: 1024 });
    expect(imageTokens({ detail: "high", size: inlineImageSize(png(1024, 1024)) }, "gpt-4o")).toBe(765);
    expect(imageTokens({ detail: "high", size: inlineImageSize(png(2048, 4096)) }, "gpt-4o")).toBe(1105);
    expect(inlineImageSize("https://example.com/cat.png")).toBeNull();
    expect(inlineImageSize("data:image/png;base64,AAAA")).toBeNull();
  });
});
