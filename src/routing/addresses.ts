// Which upstream hosts are "internal": loopback, private, link-local (cloud metadata lives there),
// carrier-grade NAT, unspecified, multicast and reserved ranges, in IPv4 and IPv6 (including
// IPv4-mapped and NAT64 forms). Host names are resolved, and every address they resolve to counts.
import { BlockList, isIP } from "node:net";
import { lookup } from "node:dns/promises";

const internal = new BlockList();
for (const [network, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const)
  internal.addSubnet(network, prefix, "ipv4");
for (const [network, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const)
  internal.addSubnet(network, prefix, "ipv6");

/** The IPv4 address an IPv6 address embeds (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96), if any. */
function embeddedIPv4(address: string): string | null {
  const lower = address.toLowerCase();
  const dotted = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (dotted) return dotted[1]!;
  const hex = /^(?:::ffff:|64:ff9b::)([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
  if (!hex) return null;
  const hi = parseInt(hex[1]!, 16);
  const lo = parseInt(hex[2]!, 16);
  return [hi >> 8, hi & 255, lo >> 8, lo & 255].join(".");
}

export function isInternalAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return internal.check(address, "ipv4");
  if (family === 6) {
    const v4 = embeddedIPv4(address);
    return v4 ? internal.check(v4, "ipv4") : internal.check(address, "ipv6");
  }
  return false;
}

export type HostCheck = { internal: true; address: string } | { internal: false; unresolved: boolean };

/**
 * Whether a URL's host is internal. Names are resolved now (all their addresses); a name that does
 * not resolve is not internal today. This is a check at set time: a name re-pointed later (DNS
 * rebinding) is not caught here (README "Limits and abuse").
 */
export async function checkUpstreamHost(url: URL, timeoutMs = 3_000): Promise<HostCheck> {
  const host = url.hostname
    .replace(/^\[|\]$/g, "")
    .replace(/\.$/, "")
    .toLowerCase();
  if (isIP(host)) return isInternalAddress(host) ? { internal: true, address: host } : { internal: false, unresolved: false };
  if (host === "localhost" || host.endsWith(".localhost")) return { internal: true, address: host };
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
  try {
    const result = await Promise.race([lookup(host, { all: true, verbatim: true }).catch(() => null), timeout]);
    if (result === "timeout") throw new Error(`resolving ${host} timed out`);
    if (!result) return { internal: false, unresolved: true };
    const hit = result.find((r) => isInternalAddress(r.address));
    return hit ? { internal: true, address: hit.address } : { internal: false, unresolved: false };
  } finally {
    clearTimeout(timer);
  }
}
