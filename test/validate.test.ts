// The request validator on its own: what reaches SQL (model, x-run-id) is free of control
// characters; OpenAI's codes and param paths.
import { describe, expect, it } from "vitest";
import { validateRequest } from "../src/gateway/validate.ts";
import { GatewayError } from "../src/gateway/errors.ts";

function refusal(fn: () => unknown): GatewayError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(GatewayError);
    return error as GatewayError;
  }
  throw new Error("expected a refusal");
}

const chat = (extra: Record<string, unknown> = {}) => ({ model: "m", messages: [{ role: "user", content: "hi" }], ...extra });

describe("validateRequest", () => {
  it("returns the model of a valid request", () => {
    expect(validateRequest("/v1/chat/completions", chat(), undefined)).toBe("m");
    expect(validateRequest("/v1/embeddings", { model: "e", input: [[1, 2], [3]] }, "run-1")).toBe("e");
  });

  it.each(["\u0000", "\u0001", "\u007f", "\u009b", "\ud800"])("refuses %j in model and in x-run-id", (c) => {
    const m = refusal(() => validateRequest("/v1/chat/completions", chat({ model: `gpt${c}` }), undefined));
    expect(m).toMatchObject({ status: 400, param: "model", failureCause: "BAD_REQUEST" });
    const r = refusal(() => validateRequest("/v1/chat/completions", chat(), `run${c}`));
    expect(r).toMatchObject({ status: 400, param: "x-run-id" });
  });

  it("accepts non-ASCII model names and paired surrogates", () => {
    expect(validateRequest("/v1/chat/completions", chat({ model: "模型-😀" }), undefined)).toBe("模型-😀");
  });

  it("names nested params the way OpenAI does", () => {
    const e = refusal(() =>
      validateRequest("/v1/chat/completions", chat({ messages: [{ role: "user", content: [{ type: "text", text: "a" }, { type: "image_url", image_url: { url: 5 } }] }] }), undefined),
    );
    expect(e).toMatchObject({ param: "messages[0].content[1].image_url.url", code: "invalid_type" });
  });
});
