// DOM helpers. Untrusted strings (key, project and route names, error messages) only ever become
// text nodes: nothing here parses HTML.

/** h("td", { className: "num" }, "1.50 USD", childElement) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style") Object.assign(el.style, value);
    else if (name in el) el[name] = value;
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector) => document.querySelector(selector);

/** A decimal money string ("12.345678") as an integer count of micro-units (no float rounding). */
export function micros(amount) {
  const match = /^(-?)(\d+)(?:\.(\d{0,6}))?/.exec(String(amount ?? "0"));
  if (!match) return 0n;
  const value = BigInt(match[2]) * 1_000_000n + BigInt((match[3] ?? "").padEnd(6, "0"));
  return match[1] ? -value : value;
}

/** "1.500000 USD", or the fallback when there is no amount (an uncapped limit). */
export const money = (m, fallback = "—") => (m ? `${m.amount} ${m.currency}` : fallback);

/** Share of used in cap (both micro-units, BigInt), in whole percent computed on integers; 0..100. */
export function percent(used, cap) {
  if (cap <= 0n) return used > 0n ? 100 : 0;
  const p = Number((used * 100n) / cap);
  return Math.max(0, Math.min(100, p));
}

export const time = (iso) => new Date(iso).toLocaleTimeString([], { hour12: false });

export function showError(message) {
  $("#error").textContent = message ?? "";
}
