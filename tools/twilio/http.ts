/**
 * The HTTP half of a simulated Twilio call: the Voice URL request (`POST /twiml`), reading the
 * `<Connect><Stream>` answer, and the stream status callbacks, each signed with
 * `X-Twilio-Signature` when an auth token is given (twilio-media-streams.md sections 3, 4, 6).
 */
import { computeSignature } from "../../src/twilio/signature.ts";
import { ROUTES, toWebSocketUrl } from "../../src/twilio/twiml.ts";

/** Where to reach Kav and which URLs Twilio would sign. */
export interface KavTarget {
  /** Base URL the simulator connects to, e.g. "http://127.0.0.1:8080" (no trailing slash). */
  readonly baseUrl: string;
  /** Kav's `server.public_url` (what signatures cover); defaults to `baseUrl`. */
  readonly publicUrl: string;
  /** Signs requests when set (Kav's `TWILIO_AUTH_TOKEN`). */
  readonly authToken: string | null;
}

/** What `POST /twiml` answered. */
export type TwimlAnswer =
  | {
    readonly kind: "stream";
    /** The `<Stream url>` (the URL Twilio signs on the upgrade). */
    readonly streamUrl: string;
    readonly statusCallback: string | null;
    /** `<Connect action>`: requested when the stream ends. */
    readonly action: string | null;
    readonly parameters: Readonly<Record<string, string>>;
  }
  | { readonly kind: "busy" };

/** "http://h:p/" → "http://h:p"; rejects anything but http(s). */
export function normalizeBaseUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`Cannot use Kav URL ${JSON.stringify(url)}: expected http(s)://host:port`);
  }
  return parsed.origin + parsed.pathname.replace(/\/+$/, "");
}

/** The WebSocket URL to connect to: the base URL's host with the stream URL's path. */
export function connectUrl(target: KavTarget, streamUrl: string): string {
  let path: string = ROUTES.media;
  try {
    const parsed = new URL(streamUrl);
    path = parsed.pathname + parsed.search;
  } catch {
    // Keep the default route.
  }
  return toWebSocketUrl(target.baseUrl) + path;
}

/** The signature header for a request Twilio would sign over `url` and `params`. */
export function signatureHeaders(
  target: KavTarget,
  url: string,
  params: ReadonlyArray<readonly [string, string]> = [],
): Record<string, string> {
  if (target.authToken === null) return {};
  return { "X-Twilio-Signature": computeSignature(target.authToken, { url, params }) };
}

function decodeXml(value: string): string {
  return value.replace(/&(amp|lt|gt|quot|apos|#\d+);/g, (_, e: string) => {
    switch (e) {
      case "amp":
        return "&";
      case "lt":
        return "<";
      case "gt":
        return ">";
      case "quot":
        return '"';
      case "apos":
        return "'";
      default:
        return String.fromCodePoint(Number(e.slice(1)));
    }
  });
}

function attribute(tag: string, name: string): string | null {
  const match = new RegExp(`\\s${name}="([^"]*)"`).exec(tag);
  return match === null ? null : decodeXml(match[1]);
}

/** Reads Kav's TwiML (`<Connect action><Stream url statusCallback><Parameter/>…` or `<Reject>`). */
export function parseTwiml(xml: string): TwimlAnswer {
  if (/<Reject\b/.test(xml)) return { kind: "busy" };
  const stream = /<Stream\b[^>]*>/.exec(xml);
  const streamUrl = stream === null ? null : attribute(stream[0], "url");
  if (stream === null || streamUrl === null) {
    throw new TypeError(`Cannot find <Stream url> in TwiML: ${JSON.stringify(xml.slice(0, 200))}`);
  }
  const connect = /<Connect\b[^>]*>/.exec(xml);
  const parameters: Record<string, string> = {};
  for (const match of xml.matchAll(/<Parameter\b[^>]*\/?>/g)) {
    const name = attribute(match[0], "name");
    const value = attribute(match[0], "value");
    if (name !== null && value !== null) parameters[name] = value;
  }
  return {
    kind: "stream",
    streamUrl,
    statusCallback: attribute(stream[0], "statusCallback"),
    action: connect === null ? null : attribute(connect[0], "action"),
    parameters,
  };
}

/** The path of `url` (an absolute URL Kav put in its TwiML) joined to the base URL. */
function localUrl(target: KavTarget, url: string): string {
  const parsed = new URL(url);
  return target.baseUrl + parsed.pathname + parsed.search;
}

async function postForm(
  target: KavTarget,
  signedUrl: string,
  params: ReadonlyArray<readonly [string, string]>,
  signal: AbortSignal | undefined,
): Promise<Response> {
  return await fetch(localUrl(target, signedUrl), {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      ...signatureHeaders(target, signedUrl, params),
    },
    body: new URLSearchParams(params.map(([k, v]) => [k, v])).toString(),
    signal,
  });
}

/** The Voice URL request Twilio makes when the call comes in. */
export async function requestTwiml(
  target: KavTarget,
  call: { callSid: string; accountSid: string; from: string; to: string },
  options: { signal?: AbortSignal } = {},
): Promise<TwimlAnswer> {
  const url = target.publicUrl + ROUTES.twiml;
  const params: [string, string][] = [
    ["AccountSid", call.accountSid],
    ["ApiVersion", "2010-04-01"],
    ["CallSid", call.callSid],
    ["CallStatus", "ringing"],
    ["Direction", "inbound"],
    ["From", call.from],
    ["To", call.to],
  ];
  const response = await postForm(target, url, params, options.signal);
  const body = await response.text();
  if (response.status !== 200) {
    throw new Error(`Cannot get TwiML from ${JSON.stringify(url)}: HTTP ${response.status}`);
  }
  return parseTwiml(body);
}

/** One stream status callback (`stream-started` / `stream-stopped`), or the `<Connect action>`. */
export async function postStreamEvent(
  target: KavTarget,
  url: string,
  event: { callSid: string; accountSid: string; streamSid: string; streamEvent: string },
  options: { signal?: AbortSignal } = {},
): Promise<number> {
  const params: [string, string][] = [
    ["AccountSid", event.accountSid],
    ["CallSid", event.callSid],
    ["StreamEvent", event.streamEvent],
    ["StreamName", event.streamSid],
    ["StreamSid", event.streamSid],
    ["Timestamp", new Date().toISOString()],
  ];
  const response = await postForm(target, url, params, options.signal);
  await response.body?.cancel();
  return response.status;
}

/** A signed form POST as Twilio makes to an action URL; the status and the body. */
export async function postTwilioForm(
  target: KavTarget,
  url: string,
  params: ReadonlyArray<readonly [string, string]>,
  options: { signal?: AbortSignal } = {},
): Promise<{ status: number; body: string }> {
  const response = await postForm(target, url, params, options.signal);
  return { status: response.status, body: await response.text() };
}
