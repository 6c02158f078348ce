/**
 * Checks of URL-valued keys. Caller audio and transcripts must not cross a network in the clear,
 * so a speech server's `base_url` may use plain http only when it is on this machine or the
 * premises' own network.
 */

/** Whether `hostname` (as `URL.hostname` gives it) names a loopback or private address. */
export function isPrivateHost(hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    return a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) || (a === 169 && b === 254) || (a === 100 && b >= 64 && b <= 127);
  }
  if (host.includes(":")) {
    // URL has already normalized IPv6 (lower case, "::" compressed).
    return host === "::1" || /^f[cd][0-9a-f]{0,2}:/.test(host) || /^fe[89ab][0-9a-f]?:/.test(host);
  }
  // A name: only single-label names (a Docker or LAN host) and the suffixes reserved for private
  // networks (RFC 6762 .local, RFC 8375 .home.arpa, ICANN's .internal, the customary .lan).
  return !host.includes(".") || /\.(local|internal|lan|home\.arpa)$/.test(host);
}

/** Problem with an absolute http(s) URL (no query, fragment or credentials), or null. */
export function checkHttpUrl(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `must be an absolute http(s) URL: current value is ${JSON.stringify(value)}`;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return `must use https or http: current value is ${JSON.stringify(value)}`;
  }
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") {
    return `must not have a query, fragment or credentials: current value is ${
      JSON.stringify(value)
    }`;
  }
  return null;
}

/** As `checkHttpUrl`, and plain http only to a loopback or private address. */
export function checkSpeechUrl(value: string): string | null {
  const problem = checkHttpUrl(value);
  if (problem !== null) return problem;
  const url = new URL(value);
  if (url.protocol === "http:" && !isPrivateHost(url.hostname)) {
    return `must use https unless the host is a loopback or private address (caller audio would cross the network unencrypted): current value is ${
      JSON.stringify(value)
    }`;
  }
  return null;
}
