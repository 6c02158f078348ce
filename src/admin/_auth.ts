/**
 * Who may use the console: the API takes `Authorization: Bearer <token>`, the page logs in once
 * with the token and then sends a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under
 * TLS). The cookie is `<expiry ms>.<HMAC-SHA256 of it keyed by the token>`: nothing is kept per
 * session, so any process holding the token (one per core) accepts it, a restart keeps operators
 * logged in, and changing the token logs everyone out.
 */
import { Buffer } from "node:buffer";
import { createHmac, timingSafeEqual } from "node:crypto";

export const SESSION_COOKIE = "kav_session";
/** How long a login lasts. */
export const SESSION_TTL_MS = 12 * 3600_000;

export class AdminAuth {
  readonly #token: string;
  readonly #secure: boolean;
  readonly #now: () => number;

  constructor(options: { token: string; secure: boolean; now?: () => number }) {
    this.#token = options.token;
    this.#secure = options.secure;
    this.#now = options.now ?? Date.now;
  }

  /** Whether `req` carries the token (Bearer) or a live session cookie. */
  allows(req: Request): boolean {
    const header = req.headers.get("authorization");
    if (header !== null) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
      return match !== null && this.tokenMatches(match[1]);
    }
    const cookie = readCookie(req.headers.get("cookie"), SESSION_COOKIE);
    return cookie !== null && this.#sessionValid(cookie);
  }

  /** Constant-time comparison with the token. */
  tokenMatches(candidate: string): boolean {
    // Comparing digests makes the lengths equal, so the time says nothing about the token.
    const digest = (text: string) => createHmac("sha256", "kav-admin-token").update(text).digest();
    return timingSafeEqual(digest(candidate), digest(this.#token));
  }

  /** The `Set-Cookie` value of a new session. */
  sessionCookie(): string {
    const expires = this.#now() + SESSION_TTL_MS;
    const value = `${expires}.${this.#sign(String(expires))}`;
    return this.#cookie(value, Math.floor(SESSION_TTL_MS / 1000));
  }

  /** The `Set-Cookie` value that ends the session in the browser. */
  clearedCookie(): string {
    return this.#cookie("", 0);
  }

  #cookie(value: string, maxAgeS: number): string {
    const secure = this.#secure ? "; Secure" : "";
    return `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeS}; HttpOnly; SameSite=Strict${secure}`;
  }

  #sessionValid(value: string): boolean {
    const dot = value.indexOf(".");
    if (dot <= 0) return false;
    const expires = value.slice(0, dot);
    if (!/^\d{1,15}$/.test(expires) || Number(expires) <= this.#now()) return false;
    const given = Buffer.from(value.slice(dot + 1));
    const wanted = Buffer.from(this.#sign(expires));
    return given.length === wanted.length && timingSafeEqual(given, wanted);
  }

  #sign(text: string): string {
    return createHmac("sha256", this.#token).update(`kav-session:${text}`).digest("base64url");
  }
}

/** The value of cookie `name` in a `Cookie` header, or null. */
export function readCookie(header: string | null, name: string): string | null {
  if (header === null) return null;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}
