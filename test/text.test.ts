// The shared text helpers (src/text.ts): what we store or echo is well-formed and cut on code points.
import { describe, expect, it } from "vitest";
import { clip, storable, wellFormed } from "../src/text.ts";

describe("text helpers", () => {
  it("wellFormed replaces each lone surrogate with U+FFFD and keeps pairs", () => {
    expect(wellFormed("a\ud800b\udc00c\ud83d\ude00")).toBe("a\uFFFDb\uFFFDc\ud83d\ude00");
    expect(wellFormed("\udc00\ud800")).toBe("\uFFFD\uFFFD");
    expect(wellFormed("plain")).toBe("plain");
  });

  it("clip never ends inside a surrogate pair", () => {
    expect(clip("ab\ud83d\ude00", 3)).toBe("ab");
    expect(clip("ab\ud83d\ude00", 4)).toBe("ab\ud83d\ude00");
    expect(clip("\ud83d\ude00".repeat(30), 40)).toBe("\ud83d\ude00".repeat(20));
    expect(clip("\ude00x", 1)).toBe("\uFFFD");
  });

  it("storable also replaces NUL", () => {
    expect(storable("a\u0000b\ud800")).toBe("a\uFFFDb\uFFFD");
  });
});
