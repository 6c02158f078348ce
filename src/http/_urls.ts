/** Rebuilding the URL Twilio signed, and reading the WebSocket subprotocol offer. */

import { toWebSocketUrl } from "../twilio/twiml.ts";

/** Path and query exactly as the client sent them (Deno keeps the request target as is). */
export function rawPathAndQuery(requestUrl: string): string {
  const authority = requestUrl.indexOf("://");
  const start = requestUrl.indexOf("/", authority === -1 ? 0 : authority + 3);
  if (start === -1) return "/";
  const hash = requestUrl.indexOf("#", start);
  return hash === -1 ? requestUrl.slice(start) : requestUrl.slice(start, hash);
}

/**
 * The URL Twilio signed: `server.public_url` + the request's path and query, never the Host
 * header (a proxy may rewrite it). `websocket` turns https into wss.
 */
export function signedUrl(
  publicUrl: string,
  requestUrl: string,
  options: { readonly websocket: boolean },
): string {
  const base = options.websocket ? toWebSocketUrl(publicUrl) : publicUrl;
  return base + rawPathAndQuery(requestUrl);
}

/** Tokens of `Sec-WebSocket-Protocol` (comma-separated, optional whitespace; RFC 6455 4.1). */
export function offeredProtocols(header: string | null): string[] {
  if (header === null) return [];
  return header.split(",").map((token) => token.trim()).filter((token) => token !== "");
}
