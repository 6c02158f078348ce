// The console's router: #/live, #/calls (with filters), #/calls/<CallSid>, #/health; the login
// form when there is no session. Each view returns a function that stops it (timers, streams).
import { login, logout, session, Unauthorized } from "./api.js";
import { h, show } from "./dom.js";
import { showLive } from "./live.js";
import { showHistory } from "./history.js";
import { showCall } from "./call.js";
import { showHealth } from "./health.js";

const view = /** @type {HTMLElement} */ (document.getElementById("view"));
const nav = /** @type {HTMLElement} */ (document.getElementById("nav"));
const logoutButton = /** @type {HTMLButtonElement} */ (document.getElementById("logout"));
/** @type {(() => void) | null} */
let stopView = null;

function route() {
  const hash = location.hash.replace(/^#/, "") || "/live";
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  return { name: parts[0] ?? "live", id: parts[1] ? decodeURIComponent(parts[1]) : null, query };
}

function showLogin(message) {
  nav.hidden = true;
  logoutButton.hidden = true;
  const error = h("p", { class: "error", role: "alert" }, message ?? "");
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const form = h(
    "form",
    { class: "login panel", id: "login" },
    h("h2", {}, "Kav console"),
    h("label", {}, "Admin token", input),
    h("button", { type: "submit" }, "Log in"),
    error,
    h("p", { class: "muted" }, "The token is KAV_ADMIN_TOKEN (or the credential admin_token)."),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const failed = await login(/** @type {HTMLInputElement} */ (input).value);
    if (failed === null) render();
    else error.textContent = failed;
  });
  show(view, form);
  input.focus();
}

async function render() {
  stopView?.();
  stopView = null;
  let authenticated = false;
  try {
    authenticated = await session();
  } catch (error) {
    show(view, h("p", { class: "error" }, String(error)));
    return;
  }
  if (!authenticated) return showLogin();
  nav.hidden = false;
  logoutButton.hidden = false;
  const current = route();
  for (const link of nav.querySelectorAll("a")) {
    const active = link.dataset.route === current.name;
    link.classList.toggle("active", active);
  }
  const views = {
    live: () => showLive(view),
    calls: () =>
      current.id === null ? showHistory(view, current.query) : showCall(view, current.id),
    health: () => showHealth(view),
  };
  const start = views[current.name] ?? views.live;
  try {
    stopView = await start();
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("Your session ended: log in again.");
    show(view, h("p", { class: "error", role: "alert" }, String(error.message ?? error)));
  }
}

logoutButton.addEventListener("click", async () => {
  await logout();
  stopView?.();
  stopView = null;
  showLogin();
});
addEventListener("hashchange", render);
addEventListener("kav:unauthorized", () => showLogin("Your session ended: log in again."));
render();
