/**
 * The one fetch handler behind `Deno.serve` (SPEC section 1): health, metrics, the Twilio
 * webhooks and the media upgrade. Unknown paths get 404, wrong methods 405, unexpected errors 500.
 */

import { renderMetrics } from "../observe/metrics.ts";
import { ROUTES as TWILIO_ROUTES } from "../twilio/twiml.ts";
import { createBadSignatureLimiter } from "./_rate_limit.ts";
import {
  handleDialEnded,
  handleMediaUpgrade,
  handleStreamWebhook,
  handleTwiml,
  type RouteContext,
  type RouteEnv,
} from "./_twilio_routes.ts";
import type { HandlerDeps } from "./types.ts";

export type {
  CallControl,
  HandlerDeps,
  MediaCallAcceptor,
  StatusParams,
  StreamWebhook,
} from "./types.ts";

/** A `Deno.serve` handler. */
export type KavHandler = (req: Request, info: Deno.ServeHandlerInfo) => Promise<Response>;

type RouteName =
  | "test_hook"
  | "healthz"
  | "metrics"
  | "twiml"
  | "stream_status"
  | "stream_ended"
  | "dial_ended"
  | "media";

const ROUTES: ReadonlyMap<string, { readonly name: RouteName; readonly methods: string[] }> =
  new Map([
    ["/healthz", { name: "healthz", methods: ["GET", "HEAD"] }],
    ["/metrics", { name: "metrics", methods: ["GET"] }],
    [TWILIO_ROUTES.twiml, { name: "twiml", methods: ["POST"] }],
    [TWILIO_ROUTES.streamStatus, { name: "stream_status", methods: ["POST"] }],
    [TWILIO_ROUTES.streamEnded, { name: "stream_ended", methods: ["POST"] }],
    [TWILIO_ROUTES.dialEnded, { name: "dial_ended", methods: ["POST"] }],
    [TWILIO_ROUTES.media, { name: "media", methods: ["GET"] }],
  ]);

/** Only when `deps.testHook` is set (`KAV_TEST_HOOKS=1`): never on a production process. */
const TEST_HOOK_PATH = "/__test/worker";
const TEST_HOOK_ROUTE: { readonly name: RouteName; readonly methods: string[] } = {
  name: "test_hook",
  methods: ["POST"],
};

function text(status: number, body: string, headers?: Record<string, string>): Response {
  return new Response(body, {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "cache-control": "no-store",
      ...headers,
    },
  });
}

function remoteOf(info: Deno.ServeHandlerInfo): { addr: string; host: string } {
  const remote = info.remoteAddr;
  if (remote.transport === "tcp" || remote.transport === "udp") {
    const host = remote.hostname;
    return {
      addr: host.includes(":") ? `[${host}]:${remote.port}` : `${host}:${remote.port}`,
      host,
    };
  }
  return { addr: remote.transport, host: remote.transport };
}

/** Builds the handler; `deps` supplies config, logging, the call acceptor and status events. */
export function createHandler(deps: HandlerDeps): KavHandler {
  const env: RouteEnv = {
    deps,
    limitBadSignature: createBadSignatureLimiter({
      perMinute: deps.config.server.bad_signature_per_ip_per_min,
    }),
  };

  const dispatch = (req: Request, ctx: Omit<RouteContext, "route">): Promise<Response> => {
    let path = new URL(req.url).pathname;
    // Twilio and consoles may add a trailing "/"; the signed URL keeps whatever was sent.
    if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
    const route = path === TEST_HOOK_PATH && deps.testHook !== undefined
      ? TEST_HOOK_ROUTE
      : ROUTES.get(path);
    if (route === undefined) return Promise.resolve(text(404, "not found\n"));
    if (!route.methods.includes(req.method)) {
      return Promise.resolve(
        text(405, "method not allowed\n", { allow: route.methods.join(", ") }),
      );
    }
    const routeCtx: RouteContext = { ...ctx, route: route.name };
    switch (route.name) {
      case "healthz": {
        const state = deps.isDraining()
          ? "draining"
          : deps.isStarting?.() === true
          ? "starting"
          : "ok";
        const response = text(state === "ok" ? 200 : 503, `${state}\n`);
        return Promise.resolve(
          req.method === "HEAD" ? new Response(null, response) : response,
        );
      }
      case "metrics":
        return Promise.resolve(deps.metricsText?.() ?? renderMetrics()).then((body) =>
          text(200, body, { "content-type": "text/plain; version=0.0.4; charset=utf-8" })
        );
      case "test_hook":
        return req.text().then((body) => deps.testHook!(new URLSearchParams(body)));
      case "twiml":
        return handleTwiml(env, routeCtx);
      case "stream_status":
      case "stream_ended":
        return handleStreamWebhook(env, routeCtx, route.name);
      case "dial_ended":
        return handleDialEnded(env, routeCtx);
      case "media":
        return Promise.resolve(handleMediaUpgrade(env, routeCtx));
      default: {
        const unreachable: never = route.name;
        throw new TypeError(`Cannot route ${JSON.stringify(unreachable)}`);
      }
    }
  };

  return async (req, info) => {
    const remote = remoteOf(info);
    try {
      return await dispatch(req, { req, remoteAddr: remote.addr, remoteHost: remote.host });
    } catch (error) {
      // The one error boundary: log the failure (never bodies or secrets) and answer 500.
      deps.log.error("HTTP", "request failed", {
        method: req.method,
        path: new URL(req.url).pathname,
        remote: remote.addr,
        error: error instanceof Error ? error.message : String(error),
      });
      return text(500, "internal error\n");
    }
  };
}
