/**
 * The admin listener's one fetch handler (SPEC 7): the console's page and modules, its JSON API
 * (`docs/console.md`), the live feed, and `/metrics` and `/healthz` as on the public port. Every
 * `/api/` route but login and the session probe needs the token or a session; a wrong or missing
 * one is answered 401, and past `server.bad_signature_per_ip_per_min` from one address, 429.
 */
import type { LiveSnapshot } from "../call/live.ts";
import type { Config } from "../config/types.ts";
import { readBody } from "../http/_body.ts";
import { createBadSignatureLimiter } from "../http/_rate_limit.ts";
import type { Logger } from "../observe/log.ts";
import * as metrics from "../observe/metrics.ts";
import type { CallHistory } from "../store/history.ts";
import { AdminAuth } from "./_auth.ts";
import { historyQuery, QueryError } from "./_query.ts";
import { HealthReport } from "./_health.ts";
import { LiveFeed } from "./_live_feed.ts";
import { STATIC_FILES } from "./_static.ts";
import { callDetailView, callRowView, liveView, type ViewOptions } from "./_views.ts";

export interface AdminDeps {
  /** `admin.token` must be set: without it there is no console. */
  readonly config: Config;
  readonly log: Logger;
  /** The calls in progress (`CallManager.live`). */
  readonly live: () => LiveSnapshot;
  /** Null when the store keeps no history (a benchmark's null store). */
  readonly history: CallHistory | null;
  readonly isDraining: () => boolean;
  /** Epoch ms clock (sessions). */
  readonly now?: () => number;
}

export interface AdminHandler {
  (req: Request, info: Deno.ServeHandlerInfo): Promise<Response>;
  /** Ends the live feeds (shutdown). */
  close(): void;
}

/** Most bytes of a login request. */
const MAX_LOGIN_BYTES = 4096;
const CALL_SID = /^[A-Za-z0-9_-]{2,64}$/;

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      "content-type": "application/json; charset=utf-8",
      "cache-control": "no-store",
      ...headers,
    },
  });
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "cache-control": "no-store",
      ...headers,
    },
  });
}

/** What the page may load and run: only its own files and API (no inline scripts, no CDN). */
const PAGE_HEADERS = {
  "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' " +
    "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; " +
    "base-uri 'none'; form-action 'self'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

export function createAdminHandler(deps: AdminDeps): AdminHandler {
  const { config, log } = deps;
  const token = config.admin.token;
  if (token === null) throw new TypeError("Cannot serve the console without admin.token");
  const auth = new AdminAuth({ token, secure: config.server.tls_cert !== null, now: deps.now });
  const limitBadToken = createBadSignatureLimiter({
    perMinute: config.server.bad_signature_per_ip_per_min,
  });
  const view: ViewOptions = { personalData: config.log.transcripts };
  const feed = new LiveFeed(() => liveView(deps.live(), view));
  const health = new HealthReport(config, { now: deps.now });

  /** 401 (counted per address) or 429 past the cap; logged without the token. */
  const refuse = (req: Request, host: string, path: string): Response => {
    const verdict = limitBadToken(host);
    if (verdict === "counted") {
      log.warn("ADMIN", "unauthorized", { path, remote: host, method: req.method });
      return json(401, { error: "unauthorized: send the admin token or log in" }, {
        "www-authenticate": 'Bearer realm="kav"',
      });
    }
    metrics.requestRateLimited("admin");
    if (verdict === "limited_first") {
      log.warn("ADMIN", "rate limited", { remote: host, path });
    }
    return json(429, { error: "too many unauthorized requests: wait a minute" }, {
      "retry-after": "60",
    });
  };

  const api = async (
    req: Request,
    path: string,
    host: string,
    info: Deno.ServeHandlerInfo,
  ): Promise<Response> => {
    if (path === "/api/login") {
      if (req.method !== "POST") return text(405, "method not allowed\n", { allow: "POST" });
      const given = await readLoginToken(req);
      if (given === null || !auth.tokenMatches(given)) return refuse(req, host, path);
      log.info("ADMIN", "logged in", { remote: host });
      return new Response(null, { status: 204, headers: { "set-cookie": auth.sessionCookie() } });
    }
    if (path === "/api/logout") {
      if (req.method !== "POST") return text(405, "method not allowed\n", { allow: "POST" });
      return new Response(null, { status: 204, headers: { "set-cookie": auth.clearedCookie() } });
    }
    // The page asks before showing the login form; asking is not an attempt.
    if (path === "/api/session") return json(200, { authenticated: auth.allows(req) });
    if (!auth.allows(req)) return refuse(req, host, path);
    if (req.method !== "GET") return text(405, "method not allowed\n", { allow: "GET" });
    if (path === "/api/live") return json(200, liveView(deps.live(), view));
    if (path === "/api/live/stream") {
      return feed.open(info.completed) ?? json(503, { error: "too many live viewers" });
    }
    if (path === "/api/health") {
      return json(200, health.build({ draining: deps.isDraining(), viewers: feed.viewers }));
    }
    if (path === "/api/calls" || path.startsWith("/api/calls/")) {
      const history = deps.history;
      if (history === null) return json(503, { error: "this Kav keeps no call records" });
      if (path === "/api/calls") {
        const query = historyQuery(new URL(req.url).searchParams);
        const rows = await history.searchCalls(query);
        const last = rows.at(-1);
        return json(200, {
          calls: rows.map((row) => callRowView(row, view)),
          next: last !== undefined && rows.length === query.limit
            ? `${last.startedAt}:${last.callSid}`
            : null,
        });
      }
      const callSid = decodedOrRaw(path.slice("/api/calls/".length));
      if (!CALL_SID.test(callSid)) {
        return json(400, { error: `Cannot read call ${JSON.stringify(callSid)}: not a CallSid` });
      }
      const detail = await history.getCall(callSid);
      if (detail === null) return json(404, { error: `No call ${callSid}` });
      return json(200, callDetailView(detail, view));
    }
    return json(404, { error: "not found" });
  };

  const dispatch = async (
    req: Request,
    path: string,
    host: string,
    info: Deno.ServeHandlerInfo,
  ): Promise<Response> => {
    if (path === "/api" || path.startsWith("/api/")) {
      try {
        return await api(req, path, host, info);
      } catch (error) {
        if (error instanceof QueryError) return json(400, { error: error.message });
        throw error;
      }
    }
    if (path === "/healthz") {
      const draining = deps.isDraining();
      const response = text(draining ? 503 : 200, draining ? "draining\n" : "ok\n");
      return req.method === "HEAD" ? new Response(null, response) : response;
    }
    if (path === "/metrics") {
      return text(200, metrics.renderMetrics(), {
        "content-type": "text/plain; version=0.0.4; charset=utf-8",
      });
    }
    const file = STATIC_FILES.get(path === "/index.html" ? "/" : path);
    if (file === undefined) return text(404, "not found\n");
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, "method not allowed\n", { allow: "GET, HEAD" });
    }
    const headers = {
      ...PAGE_HEADERS,
      "content-type": file.type,
      "cache-control": "no-cache",
      etag: file.etag,
    };
    if (req.headers.get("if-none-match") === file.etag) {
      return new Response(null, { status: 304, headers });
    }
    return new Response(req.method === "HEAD" ? null : file.body, { headers });
  };

  const handler = async (req: Request, info: Deno.ServeHandlerInfo): Promise<Response> => {
    const remote = info.remoteAddr;
    const host = remote.transport === "tcp" || remote.transport === "udp"
      ? remote.hostname
      : remote.transport;
    const path = new URL(req.url).pathname;
    try {
      return await dispatch(req, path, host, info);
    } catch (error) {
      log.error("ADMIN", "request failed", {
        method: req.method,
        path,
        remote: host,
        error: error instanceof Error ? error.message : String(error),
      });
      return json(500, { error: "internal error" });
    }
  };
  return Object.assign(handler, { close: () => feed.close() });
}

/** `text` with its %-escapes decoded, or as it is when they are malformed (then refused as such). */
function decodedOrRaw(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The token of a login: JSON `{"token": "..."}` or a form field `token`; null if neither. */
async function readLoginToken(req: Request): Promise<string | null> {
  const read = await readBody(req, { maxBytes: MAX_LOGIN_BYTES });
  if (!read.ok) return null;
  const body = new TextDecoder().decode(read.bytes);
  const type = req.headers.get("content-type") ?? "";
  if (type.startsWith("application/json")) {
    try {
      const parsed: unknown = JSON.parse(body);
      if (typeof parsed === "object" && parsed !== null && "token" in parsed) {
        return typeof parsed.token === "string" ? parsed.token : null;
      }
    } catch {
      return null;
    }
    return null;
  }
  if (type.startsWith("application/x-www-form-urlencoded")) {
    return new URLSearchParams(body).get("token");
  }
  return null;
}
