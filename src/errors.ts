// Domain errors carry the GraphQL `extensions.code` they map to; the gateway maps them to OpenAI errors.
export type ErrorCode = "UNAUTHENTICATED" | "FORBIDDEN" | "NOT_FOUND" | "BAD_USER_INPUT" | "CONFLICT";

export class DomainError extends Error {
  readonly code: ErrorCode;
  readonly field: string | undefined;
  constructor(code: ErrorCode, message: string, field?: string) {
    super(message);
    this.name = "DomainError";
    this.code = code;
    this.field = field;
  }
}

export const notFound = (what: string, id: string) => new DomainError("NOT_FOUND", `${what} ${id} not found`);
export const badInput = (field: string, message: string) => new DomainError("BAD_USER_INPUT", `${field}: ${message}`, field);
export const forbidden = (message = "not allowed for this token") => new DomainError("FORBIDDEN", message);
export const conflict = (message: string) => new DomainError("CONFLICT", message);

// eslint-disable-next-line no-control-regex
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this pattern refuses
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

/** A trimmed, non-empty text input of at most `max` characters (names, model names), without control characters (PostgreSQL text cannot hold NUL). */
export function requiredText(value: string, field: string, max = 200): string {
  const trimmed = value.trim();
  if (!trimmed || trimmed.length > max) throw badInput(field, `must be 1–${max} characters`);
  if (CONTROL_CHARACTERS.test(trimmed)) throw badInput(field, "must not contain control characters");
  return trimmed;
}
