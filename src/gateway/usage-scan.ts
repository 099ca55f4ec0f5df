// An upstream answer too large to relay is still billed by the upstream. It is too large to parse
// whole (or to keep), but OpenAI-compatible answers put `usage` near the end (after `choices`), a
// few providers near the start: so only the first and the last `window` bytes are kept while the
// middle streams past, and the usage object is looked for there (the last one wins: the top-level
// `usage` comes after anything nested in `choices`).
import { readUsage, type Usage } from "./sse.ts";

/** Bytes kept at each end of an oversized body. A usage object is a few hundred bytes. */
export const SCAN_WINDOW_BYTES = 64 * 1024;

/** The first and last `window` bytes of a body fed chunk by chunk, and its size; memory stays O(window). */
export class BodyEnds {
  size = 0;
  private head: Buffer[] = [];
  private headSize = 0;
  private tail: Buffer[] = [];
  private tailSize = 0;

  constructor(private readonly window = SCAN_WINDOW_BYTES) {}

  push(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.headSize < this.window) {
      const part = chunk.subarray(0, this.window - this.headSize);
      this.head.push(Buffer.from(part)); // a copy: a view would pin the whole chunk
      this.headSize += part.length;
    }
    this.tail.push(chunk);
    this.tailSize += chunk.length;
    // Drop whole chunks from the front while the rest still covers the window.
    while (this.tail.length > 1 && this.tailSize - this.tail[0]!.length >= this.window) this.tailSize -= this.tail.shift()!.length;
  }

  /** The usage object found in the last, then the first, window of the body; null when neither has one. */
  usage(): Usage | null {
    const tail = Buffer.concat(this.tail);
    const last = tail.subarray(Math.max(0, tail.length - this.window));
    return usageInFragment(last.toString("utf8")) ?? (this.size > last.length ? usageInFragment(Buffer.concat(this.head).toString("utf8")) : null);
  }
}

const USAGE_KEY = /"usage"\s*:\s*\{/g;

/**
 * The last well-formed `"usage": {…}` object in a fragment of JSON (which may start or end
 * mid-value). A `"usage"` inside a string value is escaped (`\"usage\"`) and so never matches: a
 * quote preceded by an even number of backslashes is a real one.
 */
export function usageInFragment(text: string): Usage | null {
  const starts: number[] = [];
  USAGE_KEY.lastIndex = 0;
  for (let m = USAGE_KEY.exec(text); m !== null; m = USAGE_KEY.exec(text)) {
    let backslashes = 0;
    for (let i = m.index - 1; i >= 0 && text.charCodeAt(i) === 92; i--) backslashes++;
    if (backslashes % 2 === 0) starts.push(m.index + m[0].length - 1);
  }
  for (let k = starts.length - 1; k >= 0; k--) {
    const object = balancedObject(text, starts[k]!);
    if (object === null) continue;
    try {
      const usage = readUsage(JSON.parse(object));
      if (usage) return usage;
    } catch {
      // not an object after all: try an earlier one
    }
  }
  return null;
}

/** The JSON object starting at `open` (a `{`), up to its matching brace, or null if the fragment ends first. */
function balancedObject(text: string, open: number): string | null {
  let depth = 0;
  let inString = false;
  for (let i = open; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123) depth++;
    else if (c === 125 && --depth === 0) return text.slice(open, i + 1);
  }
  return null;
}
