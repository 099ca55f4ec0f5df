// The redaction of upstream text kept for admins (src/gateway/redact.ts, issue 14 point 11).
import { describe, expect, it } from "vitest";
import { upstreamRedactor } from "../src/gateway/redact.ts";

describe("upstream text redaction", () => {
  const redact = upstreamRedactor([{ baseUrl: "https://llm.internal.example:8443/v1", credential: "sk-live-abcdef0123456789" }]);

  it("removes the channel's credential, however it is echoed, and other key-shaped or bearer values", () => {
    expect(redact("got Authorization: Bearer sk-live-abcdef0123456789")).toBe("got Authorization: Bearer [redacted credential]");
    expect(redact("key=sk-live-abcdef0123456789&x=1")).toBe("key=[redacted credential]&x=1");
    expect(redact("Bearer eyJhbGciOi.other.token")).toBe("Bearer [redacted]");
    expect(redact("another key sk-proj-ZZZZZZZZZZZZ")).toBe("another key [redacted credential]");
  });

  it("removes the channel's host and any IP address or port", () => {
    expect(redact("connect ECONNREFUSED 10.0.0.7:8443")).toBe("connect ECONNREFUSED [address]");
    expect(redact("getaddrinfo ENOTFOUND llm.internal.example")).toBe("getaddrinfo ENOTFOUND [upstream host]");
    expect(redact("POST https://llm.internal.example:8443/v1/chat failed")).toBe("POST [upstream host]/v1/chat failed");
    expect(redact("connect ECONNREFUSED [::1]:443 and fe80::1 and localhost:11434")).toBe("connect ECONNREFUSED [address] and [address] and [address]");
  });

  it("leaves ordinary text alone, times of day included", () => {
    expect(redact("context length exceeded at 12:30:45 (max 8192 tokens)")).toBe("context length exceeded at 12:30:45 (max 8192 tokens)");
  });
});
