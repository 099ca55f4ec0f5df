// The request validator on its own: what reaches SQL (model, x-run-id) is free of control
// characters; OpenAI's codes and param paths.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { validateRequest } from "../src/gateway/validate.ts";
import { countChatPrompt, countEmbeddingInput, outputBound, reservedPromptTokens } from "../src/gateway/tokens.ts";
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
      validateRequest(
        "/v1/chat/completions",
        chat({
          messages: [
            {
              role: "user",
              content: [
                { type: "text", text: "a" },
                { type: "image_url", image_url: { url: 5 } },
              ],
            },
          ],
        }),
        undefined,
      ),
    );
    expect(e).toMatchObject({ param: "messages[0].content[1].image_url.url", code: "invalid_type" });
  });
});

describe("generated bodies (seeded): validation, counting and bounds only ever refuse with a GatewayError", () => {
  const part = fc.oneof(
    fc.record(
      {
        type: fc.constantFrom("text", "image_url", "input_audio", "file", "refusal", "x"),
        text: fc.anything(),
        image_url: fc.oneof(fc.anything(), fc.record({ url: fc.oneof(fc.string(), fc.constant("data:image/png;base64,iVBORw0KGgo=")), detail: fc.anything() })),
        input_audio: fc.anything(),
        file: fc.anything(),
      },
      { requiredKeys: ["type"] },
    ),
    fc.anything(),
  );
  const message = fc.oneof(
    fc.record(
      {
        role: fc.oneof(fc.constantFrom("system", "developer", "user", "assistant", "tool", "function"), fc.anything()),
        content: fc.oneof(fc.string(), fc.array(part, { maxLength: 4 }), fc.anything()),
        name: fc.anything(),
        tool_call_id: fc.anything(),
        tool_calls: fc.anything(),
      },
      { requiredKeys: ["role"] },
    ),
    fc.anything(),
  );
  const body = fc.record(
    {
      model: fc.oneof(fc.constant("m"), fc.string(), fc.anything()),
      messages: fc.oneof(fc.array(message, { maxLength: 4 }), fc.anything()),
      input: fc.oneof(fc.string(), fc.array(fc.oneof(fc.string(), fc.integer(), fc.array(fc.integer(), { maxLength: 3 }))), fc.anything()),
      stream: fc.anything(),
      max_tokens: fc.oneof(fc.integer(), fc.double(), fc.anything()),
      n: fc.oneof(fc.integer({ min: -2, max: 200 }), fc.anything()),
      temperature: fc.oneof(fc.double(), fc.anything()),
      tools: fc.anything(),
      stop: fc.anything(),
      response_format: fc.anything(),
    },
    { requiredKeys: [] },
  );

  it("never throws anything else", async () => {
    await fc.assert(
      fc.asyncProperty(body, fc.constantFrom("/v1/chat/completions", "/v1/embeddings") as fc.Arbitrary<"/v1/chat/completions" | "/v1/embeddings">, async (b, endpoint) => {
        const value = b as Record<string, unknown>;
        try {
          validateRequest(endpoint, value, undefined);
          const count = endpoint === "/v1/chat/completions" ? await countChatPrompt(value) : await countEmbeddingInput(value);
          const prompt = reservedPromptTokens(count, ["gpt-4o", "other"], 1000);
          const output = endpoint === "/v1/chat/completions" ? outputBound(value, 4096) : 0;
          expect(Number.isSafeInteger(prompt + output)).toBe(true);
          JSON.stringify(value);
        } catch (error) {
          expect(error, String(error)).toBeInstanceOf(GatewayError);
        }
      }),
      { seed: 11, numRuns: 3000 },
    );
  });
});
