// OpenAI-compatible passthrough (/v1/*). Placeholder until the passthrough lands: answers 501
// in OpenAI's error shape so SDKs show a clear message.
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomUUID } from "node:crypto";
import type { Config } from "../config.ts";

export interface Gateway {
  handle(req: IncomingMessage, res: ServerResponse): Promise<void>;
  close(): Promise<void>;
}

export function createGateway(_config: Config): Gateway {
  return {
    async handle(_req, res) {
      res.writeHead(501, { "content-type": "application/json", "x-request-id": randomUUID() });
      res.end(JSON.stringify({ error: { message: "the passthrough is not available yet", type: "server_error", code: "not_implemented", param: null } }));
    },
    async close() {},
  };
}
