/**
 * X-Twilio-Signature checks (twilio-media-streams.md section 3): Base64(HMAC-SHA1(auth token,
 * URL + sorted POST params)). Synchronous `node:crypto`: a check takes microseconds.
 */

import { createHash, createHmac, timingSafeEqual } from "node:crypto";

/** Form parameters in arrival order; a name may repeat. */
export type FormParams = ReadonlyArray<readonly [string, string]>;

const encoder = new TextEncoder();
const utf8 = (text: string): Uint8Array => encoder.encode(text);

const DEFAULT_PORTS: Readonly<Record<string, string>> = {
  https: "443",
  wss: "443",
  http: "80",
  ws: "80",
};

/** The signature Twilio would send for `url` and `params`. */
export function computeSignature(
  authToken: string,
  request: { readonly url: string; readonly params?: FormParams },
): string {
  return createHmac("sha1", authToken).update(signedData(request.url, request.params ?? []))
    .digest("base64");
}

/** URL followed by each name+value, names sorted, a repeated name's distinct values sorted. */
function signedData(url: string, params: FormParams): string {
  const byName = new Map<string, Set<string>>();
  for (const [name, value] of params) {
    const values = byName.get(name);
    if (values) values.add(value);
    else byName.set(name, new Set([value]));
  }
  let data = url;
  // Default sort compares UTF-16 code units: Twilio's "Unix-style case-sensitive" order.
  for (const name of [...byName.keys()].sort()) {
    for (const value of [...(byName.get(name) ?? [])].sort()) data += name + value;
  }
  return data;
}

/**
 * The URL as given (credentials dropped), without its port and with the scheme's default port:
 * Twilio signs some requests with the port and some without, so both SDKs accept either.
 */
export function portVariants(url: string): string[] {
  const match =
    /^([A-Za-z][A-Za-z0-9+.-]*):\/\/(?:[^/?#@]*@)?(\[[^\]]*\]|[^/?#:]*)(?::(\d*))?(.*)$/s
      .exec(url);
  if (!match) return [url];
  const [, scheme, host, port, rest] = match;
  const base = `${scheme}://${host}`;
  const given = port === undefined ? base + rest : `${base}:${port}${rest}`;
  const variants = [given, base + rest];
  const defaultPort = DEFAULT_PORTS[scheme.toLowerCase()];
  if (port === undefined && defaultPort !== undefined) {
    variants.push(`${base}:${defaultPort}${rest}`);
  }
  return [...new Set(variants)];
}

function matches(authToken: string, signature: string, url: string, params: FormParams): boolean {
  const expected = utf8(computeSignature(authToken, { url, params }));
  const actual = utf8(signature);
  // Length is not secret; timingSafeEqual needs equal lengths.
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/**
 * A form-encoded webhook (Voice URL, stream status callback). `url` is the public URL Twilio
 * requested, query string included; `params` the POST body's fields (none for GET).
 */
export function validateWebhookSignature(
  authToken: string,
  request: { readonly url: string; readonly params: FormParams; readonly signature: string | null },
): boolean {
  const { signature } = request;
  if (signature === null || signature === "") return false;
  return portVariants(request.url).some((url) =>
    matches(authToken, signature, url, request.params)
  );
}

/**
 * A JSON webhook: the signature covers the URL (which carries `bodySHA256`) with no params, and
 * the raw body must hash to `bodySHA256` (lowercase hex SHA-256).
 */
export function validateJsonWebhookSignature(
  authToken: string,
  request: {
    readonly url: string;
    readonly body: string | Uint8Array;
    readonly signature: string | null;
  },
): boolean {
  const { signature } = request;
  if (signature === null || signature === "") return false;
  const query = request.url.indexOf("?");
  const claimed = query === -1
    ? null
    : new URLSearchParams(request.url.slice(query + 1).split("#")[0]).get("bodySHA256");
  if (claimed === null) return false;
  const actual = utf8(createHash("sha256").update(request.body).digest("hex"));
  const expected = utf8(claimed.toLowerCase());
  if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) return false;
  return portVariants(request.url).some((url) => matches(authToken, signature, url, []));
}

/**
 * The WebSocket upgrade: Twilio signs the `wss://` URL from the TwiML with no params; the docs
 * also ask to try it with a trailing "/" appended.
 */
export function validateUpgradeSignature(
  authToken: string,
  request: { readonly url: string; readonly signature: string | null },
): boolean {
  const { signature } = request;
  if (signature === null || signature === "") return false;
  const urls = request.url.endsWith("/") ? [request.url] : [request.url, `${request.url}/`];
  return urls.some((candidate) =>
    portVariants(candidate).some((url) => matches(authToken, signature, url, []))
  );
}
