// Structured logs: pino JSON lines on stdout, level from LOG_LEVEL. Nothing secret is logged:
// callers never pass secrets, and fields that could carry one are redacted as a second line of
// defence. The one exception by design is the first-start admin token, which main.ts prints once
// as plain text (not through this logger).
import { pino, type Logger } from "pino";
import type { Config } from "./config.ts";

export type LogLevel = Config["logLevel"];

const REDACT = ["authorization", "headers.authorization", "req.headers.authorization", "apiKey", "secret", "token", "password", "*.authorization", "*.apiKey", "*.secret", "*.token", "*.password"];

function create(level: LogLevel): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: { paths: REDACT, censor: "[redacted]" },
  });
}

/**
 * The process logger, process-wide like the database module: it exists before the Config is read
 * (a bad setting is reported through it), at info; main.ts then sets its level from LOG_LEVEL.
 */
export const logger: Logger = create("info");

/** A child logger for one component, optionally at its own level (the gateway uses its config's). */
export function componentLogger(component: string, level?: LogLevel): Logger {
  return logger.child({ component }, level ? { level } : undefined);
}

/** Error details safe to log: the message and stack, not the object (which may carry inputs). */
export function errorFields(error: unknown): { error: string } {
  return { error: error instanceof Error ? (error.stack ?? error.message) : String(error) };
}
