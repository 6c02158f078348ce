// The console's JSON API (docs/console.md). The session cookie rides along (same origin).

/** The session is missing or expired: the page shows the login form. */
export class Unauthorized extends Error {}

/**
 * GET `path` as JSON; throws `Unauthorized` on 401, an Error with the server's message otherwise.
 * @param {string} path
 */
export async function getJson(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  if (response.status === 401) throw new Unauthorized("not logged in");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ?? `${path}: HTTP ${response.status}`);
  return body;
}

/** Whether the browser holds a live session. */
export async function session() {
  const body = await getJson("/api/session");
  return body.authenticated === true;
}

/** Logs in with the admin token; resolves to an error message, or null on success. */
export async function login(token) {
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (response.status === 204) return null;
  if (response.status === 429) return "Too many wrong tokens from this address: wait a minute.";
  return "That token is not right.";
}

export async function logout() {
  await fetch("/api/logout", { method: "POST" });
}
