/** The routes Twilio calls: the Voice URL, the stream status callbacks and the media upgrade. */

import { badSignature, requestRateLimited, webhookAnswered } from "../observe/metrics.ts";
import {
  type FormParams,
  validateJsonWebhookSignature,
  validateUpgradeSignature,
  validateWebhookSignature,
} from "../twilio/signature.ts";
import {
  busyTwiml,
  connectStreamTwiml,
  DIAL_STATUS_PARAMETER,
  dialTwiml,
  hangupTwiml,
  parameterFits,
} from "../twilio/twiml.ts";
import { readBody } from "./_body.ts";
import type { LimitVerdict } from "./_rate_limit.ts";
import { offeredProtocols, signedUrl } from "./_urls.ts";
import type { CallControl, HandlerDeps, StreamWebhook } from "./types.ts";

/** The subprotocol Twilio is said to offer; echoed only when offered (RFC 6455). */
export const TWILIO_SUBPROTOCOL = "audio.twilio.com";

/** One request as the routes see it. */
export interface RouteContext {
  readonly req: Request;
  /** Remote "host:port" and host alone (the rate-limit key). */
  readonly remoteAddr: string;
  readonly remoteHost: string;
  /** Route name for logs and metrics ("twiml", "stream_status", ...). */
  readonly route: string;
}

/** Shared state of one handler. */
export interface RouteEnv {
  readonly deps: HandlerDeps;
  readonly limitBadSignature: (ip: string) => LimitVerdict;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
/** Voice URL fields passed to the stream as `<Parameter>`s (they arrive in `customParameters`). */
const FORWARDED_PARAMS = ["From", "To", "CallSid"] as const;

function empty(status: number, headers?: HeadersInit): Response {
  return new Response(null, { status, headers });
}

/**
 * Null when the signature verifies (or checks are off); else the 403/429 to send. Bad requests
 * are logged once each up to the per-IP cap, then once when the cap is crossed.
 */
function refuseBadSignature(
  env: RouteEnv,
  ctx: RouteContext,
  verify: (authToken: string, signature: string | null) => boolean,
): Response | null {
  const { config, log } = env.deps;
  if (!config.twilio.validate_signatures) return null;
  const signature = ctx.req.headers.get("x-twilio-signature");
  const token = config.twilio.auth_token;
  if (token !== null && verify(token, signature)) return null;
  badSignature(ctx.route);
  const verdict = env.limitBadSignature(ctx.remoteHost);
  switch (verdict) {
    case "counted":
      log.warn("HTTP", "bad signature", {
        route: ctx.route,
        remote: ctx.remoteAddr,
        signature: signature === null ? "missing" : "invalid",
      });
      return empty(403);
    case "limited_first":
      requestRateLimited(ctx.route);
      log.warn("HTTP", "bad signatures over the per-IP cap, answering 429", {
        route: ctx.route,
        remote: ctx.remoteAddr,
        per_min: config.server.bad_signature_per_ip_per_min,
      });
      return empty(429);
    case "limited":
      requestRateLimited(ctx.route);
      return empty(429);
    default: {
      const unreachable: never = verdict;
      throw new TypeError(`Cannot handle limiter verdict ${JSON.stringify(unreachable)}`);
    }
  }
}

/**
 * Reads a form-encoded webhook and checks its signature against each base URL Twilio may have
 * called (`server.public_url`, and for `/twiml` a fleet's `server.voice_url`); a Response means stop.
 */
async function readSignedForm(
  env: RouteEnv,
  ctx: RouteContext,
  bases: readonly string[] = [env.deps.config.server.public_url],
): Promise<{ ok: true; params: FormParams } | { ok: false; response: Response }> {
  const body = await readBody(ctx.req, {
    maxBytes: env.deps.config.server.max_body_bytes,
    timeoutMs: env.deps.bodyTimeoutMs,
  });
  if (!body.ok) {
    const status = body.reason === "too_large" ? 413 : 408;
    return { ok: false, response: empty(status, { connection: "close" }) };
  }
  const params: FormParams = [...new URLSearchParams(decoder.decode(body.bytes))];
  const urls = bases.map((base) => signedUrl(base, ctx.req.url, { websocket: false }));
  // A `bodySHA256` query parameter marks a JSON webhook (signed over the URL alone).
  const isJson = /[?&]bodySHA256=/.test(urls[0]);
  const refused = refuseBadSignature(
    env,
    ctx,
    (authToken, signature) =>
      urls.some((url) =>
        isJson
          ? validateJsonWebhookSignature(authToken, { url, body: body.bytes, signature })
          : validateWebhookSignature(authToken, { url, params, signature })
      ),
  );
  return refused === null ? { ok: true, params } : { ok: false, response: refused };
}

/** `POST /twiml`: the Voice URL. Answers `<Connect><Stream>`, or busy when Kav cannot take it. */
export async function handleTwiml(env: RouteEnv, ctx: RouteContext): Promise<Response> {
  const { public_url, voice_url } = env.deps.config.server;
  const form = await readSignedForm(
    env,
    ctx,
    voice_url === null ? [public_url] : [
      voice_url,
      public_url,
    ],
  );
  if (!form.ok) return form.response;
  const { deps } = env;
  const fields = new Map(form.params);
  const callSid = fields.get("CallSid") ?? null;
  let xml: string;
  if (deps.isDraining() || !deps.calls.canAccept()) {
    deps.log.warn("TWIML", "busy", {
      call: callSid,
      reason: deps.isDraining() ? "draining" : "max_calls",
    });
    xml = busyTwiml();
  } else {
    xml = streamTwiml(deps, fields, []);
    deps.log.info("TWIML", "stream", { call: callSid });
  }
  return twimlResponse(xml);
}

/** `<Connect><Stream>` forwarding From, To and CallSid (and `extra`) as `<Parameter>`s. */
function streamTwiml(
  deps: HandlerDeps,
  fields: ReadonlyMap<string, string>,
  extra: readonly [string, string][],
): string {
  const parameters: [string, string][] = [];
  for (const name of FORWARDED_PARAMS) {
    const value = fields.get(name);
    if (value === undefined) continue;
    if (parameterFits(name, value)) parameters.push([name, value]);
    else {
      deps.log.warn("TWIML", "parameter too long, left out", {
        call: fields.get("CallSid") ?? null,
        name,
      });
    }
  }
  return connectStreamTwiml({
    publicUrl: deps.config.server.public_url,
    parameters: [...parameters, ...extra],
  });
}

function twimlResponse(xml: string): Response {
  const bytes = encoder.encode(xml);
  // Explicit length: Twilio may truncate chunked TwiML (error 12100).
  return new Response(bytes, {
    status: 200,
    headers: {
      "content-type": "text/xml; charset=utf-8",
      "content-length": String(bytes.byteLength),
      "cache-control": "no-store",
    },
  });
}

/**
 * `POST /webhook/dial_ended`, the `<Dial action>` of a transfer (SPEC 6), answered from memory:
 * a completed dial ends the call; no-answer, busy, failed or canceled connect the caller back to a
 * new stream (its agent knows why). The outcome is recorded off the response path.
 */
export async function handleDialEnded(env: RouteEnv, ctx: RouteContext): Promise<Response> {
  const form = await readSignedForm(env, ctx);
  if (!form.ok) return form.response;
  const { deps } = env;
  const fields = new Map(form.params);
  const callSid = fields.get("CallSid") ?? "";
  const status = fields.get("DialCallStatus") ?? "failed";
  const department = callSid === ""
    ? null
    : await askCallControl(deps, callSid, (control) => control.dialEnded(callSid, status));
  const done = status === "completed" || status === "answered";
  deps.log.info("TWIML", "dial ended", {
    call: callSid,
    status,
    department,
    next: done ? "hangup" : "stream",
  });
  const params = Object.freeze(Object.fromEntries(form.params));
  setTimeout(() => {
    try {
      deps.onDialEnded?.(params);
    } catch (error) {
      deps.log.error("HTTP", "dial outcome handler failed", {
        call: callSid,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }, 0);
  return twimlResponse(
    done ? hangupTwiml() : streamTwiml(deps, fields, [[DIAL_STATUS_PARAMETER, status]]),
  );
}

/**
 * `POST /webhook/stream_status|stream_ended`: 204 at once; the event is handed on from a timer
 * so nothing it does can delay the answer (error 11205 was the field failure).
 */
export async function handleStreamWebhook(
  env: RouteEnv,
  ctx: RouteContext,
  webhook: StreamWebhook,
): Promise<Response> {
  const started = performance.now();
  const form = await readSignedForm(env, ctx);
  if (!form.ok) return form.response;
  const params = Object.freeze(Object.fromEntries(form.params));
  const { deps } = env;
  // The `<Connect action>` of a call the agent transferred or hung up gets that TwiML (SPEC 6).
  const callSid = params.CallSid;
  const action = webhook === "stream_ended" && callSid
    ? await askCallControl(deps, callSid, (control) => control.action(callSid))
    : null;
  const response = action === null ? empty(204, { "cache-control": "no-store" }) : twimlResponse(
    action.kind === "transfer"
      ? dialTwiml({ publicUrl: deps.config.server.public_url, target: action.target })
      : hangupTwiml(),
  );
  setTimeout(() => deliverStatusEvent(deps, params, webhook), 0);
  webhookAnswered((performance.now() - started) / 1000);
  return response;
}

function deliverStatusEvent(
  deps: HandlerDeps,
  params: Readonly<Record<string, string>>,
  webhook: StreamWebhook,
): void {
  const fail = (error: unknown) =>
    deps.log.error("HTTP", "status event handler failed", {
      call: params.CallSid ?? null,
      webhook,
      error: error instanceof Error ? error.message : String(error),
    });
  try {
    const result = deps.onStatusEvent(params, webhook);
    if (result instanceof Promise) result.catch(fail);
  } catch (error) {
    fail(error);
  }
}

/** `GET /ws/twilio-media`: checks the upgrade, then hands the socket to the call manager. */
export function handleMediaUpgrade(env: RouteEnv, ctx: RouteContext): Response {
  const { req } = ctx;
  const { deps } = env;
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return new Response("expected a WebSocket upgrade\n", {
      status: 426,
      headers: { upgrade: "websocket", "content-type": "text/plain; charset=utf-8" },
    });
  }
  const url = signedUrl(deps.config.server.public_url, req.url, { websocket: true });
  const refused = refuseBadSignature(
    env,
    ctx,
    (authToken, signature) => validateUpgradeSignature(authToken, { url, signature }),
  );
  if (refused !== null) return refused;
  if (deps.isDraining() || !deps.calls.canAccept()) {
    deps.log.warn("WS", "upgrade refused", {
      remote: ctx.remoteAddr,
      reason: deps.isDraining() ? "draining" : "max_calls",
      ...(deps.worker === undefined ? {} : { worker: deps.worker }),
    });
    return empty(503, { "retry-after": "5" });
  }
  // Read before upgrading: the request's headers are gone once it is upgraded.
  const offered = offeredProtocols(req.headers.get("sec-websocket-protocol"));
  let upgraded: { socket: WebSocket; response: Response };
  try {
    upgraded = Deno.upgradeWebSocket(req);
  } catch (error) {
    deps.log.warn("WS", "bad upgrade request", {
      remote: ctx.remoteAddr,
      error: error instanceof Error ? error.message : String(error),
    });
    return empty(400);
  }
  // Set by hand: Deno's own check only splits the offer on ", ", and RFC 6455 allows ",".
  if (offered.includes(TWILIO_SUBPROTOCOL)) {
    upgraded.response.headers.set("sec-websocket-protocol", TWILIO_SUBPROTOCOL);
  }
  const { socket, response } = upgraded;
  try {
    deps.calls.attach(socket, { remoteAddr: ctx.remoteAddr });
  } catch (error) {
    // Past the upgrade only the 101 may be returned: close the socket instead of answering 500.
    deps.log.error("WS", "attach failed", {
      remote: ctx.remoteAddr,
      error: error instanceof Error ? error.message : String(error),
    });
    socket.onopen = () => socket.close(1011, "Internal error");
  }
  return response;
}

/**
 * The hand-off board's answer for a call; null without a board, or when the board (the main
 * thread's, on a call worker) cannot answer: the call then ends as if the agent had not acted.
 */
async function askCallControl<T>(
  deps: HandlerDeps,
  callSid: string,
  ask: (control: CallControl) => T | null | Promise<T | null>,
): Promise<T | null> {
  const control = deps.callControl;
  if (control === undefined) return null;
  try {
    return await ask(control);
  } catch (error) {
    deps.log.error("TWIML", "hand-off board did not answer", {
      call: callSid,
      error: error instanceof Error ? error.message : String(error),
    });
    return null;
  }
}
