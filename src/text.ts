// Text we store or echo is well-formed Unicode. JavaScript strings may hold lone UTF-16 surrogates
// (a client's JSON `"\ud800"`, or a pair cut in half by `.slice`); JSON.stringify writes them as
// `\ud800` escapes, which PostgreSQL's jsonb refuses, so one such string failed a whole batched
// write. PostgreSQL text also cannot hold NUL. Every cut is made on code points, every lone
// surrogate (and, for the database, NUL) becomes U+FFFD.

const REPLACEMENT = "\uFFFD";
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** `text` with each lone surrogate replaced by U+FFFD (String.prototype.toWellFormed, which ES2023's types lack). */
export function wellFormed(text: string): string {
  return text.replace(LONE_SURROGATE, REPLACEMENT);
}

/** At most `max` UTF-16 units of `text`, never ending inside a surrogate pair; well-formed. */
export function clip(text: string, max: number): string {
  let cut = text.length <= max ? text : text.slice(0, max);
  // A high surrogate left last lost its pair: drop it rather than store half a character.
  if (cut.length < text.length && cut.length > 0) {
    const last = cut.charCodeAt(cut.length - 1);
    if (last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1);
  }
  return wellFormed(cut);
}

/** What a text column (or a JSON string bound for jsonb) can hold: well-formed and without NUL. */
export function storable(text: string): string {
  const formed = wellFormed(text);
  return formed.includes("\u0000") ? formed.replaceAll("\u0000", REPLACEMENT) : formed;
}
