// What an upstream said, made fit for an admin to read: an upstream may echo the request's headers
// (the channel's credential) and error texts name internal addresses (`connect ECONNREFUSED
// 10.0.0.7:8443`, the channel's host). Key holders never see upstream text at all (they get our
// words: cause, upstream status, request id); admins see it through this.

export interface RedactionSource {
  baseUrl: string;
  credential: string | null;
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

// An echoed bearer value, and the usual API key shapes, whatever channel they came from.
const BEARER = /\b(Bearer|Basic)\s+(?!\[)[^\s"',;]+/gi;
const API_KEY_SHAPES = /\b(?:sk|pk|rk|tg|tgadm)[-_][A-Za-z0-9_-]{8,}/g;
// IPv4 with an optional port; bracketed IPv6 with an optional port; bare IPv6 (told from a time of
// day by a hex letter or "::"); localhost.
const IPV4 = /\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b/g;
const IPV6_BRACKETED = /\[[0-9a-fA-F:.]+\](?::\d{1,5})?/g;
const IPV6_BARE = /(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])/g;
const LOCALHOST = /\blocalhost(?::\d{1,5})?\b/gi;

const hostsOf = (baseUrl: string): string[] => {
  try {
    const url = new URL(baseUrl);
    return [url.origin, url.host, url.hostname].filter((h) => h.length > 0);
  } catch {
    return [];
  }
};

/** A function redacting the given channels' credentials and hosts, and any address or key-looking token, from upstream text. */
export function upstreamRedactor(sources: RedactionSource[]): (text: string) => string {
  // Longest first, so a credential or origin is replaced whole before any part of it.
  const literals = [
    ...sources.flatMap((s) => (s.credential && s.credential.length >= 4 ? [{ text: s.credential, as: "[redacted credential]" }] : [])),
    ...sources.flatMap((s) => hostsOf(s.baseUrl).map((h) => ({ text: h, as: "[upstream host]" }))),
  ].sort((a, b) => b.text.length - a.text.length);
  const literal = literals.length ? new RegExp(literals.map((l) => escapeRegExp(l.text)).join("|"), "gi") : null;
  const replacement = new Map(literals.map((l) => [l.text.toLowerCase(), l.as]));
  return (text) => {
    let out = literal ? text.replace(literal, (m) => replacement.get(m.toLowerCase()) ?? "[redacted]") : text;
    out = out.replace(BEARER, "$1 [redacted]").replace(API_KEY_SHAPES, "[redacted credential]");
    out = out.replace(IPV6_BRACKETED, "[address]").replace(IPV4, "[address]").replace(LOCALHOST, "[address]");
    return out.replace(IPV6_BARE, (m) => (/[a-f]/i.test(m) || m.includes("::") ? "[address]" : m));
  };
}

/** The redactor for the channels a request may have tried (their credentials decrypted from the lookups' cache). */
export function channelRedactor<C extends { baseUrl: string }>(lookups: { credential(channel: C): string | null }, channels: ReadonlyArray<{ channel: C }>): (text: string) => string {
  return upstreamRedactor(channels.map(({ channel }) => ({ baseUrl: channel.baseUrl, credential: lookups.credential(channel) })));
}
