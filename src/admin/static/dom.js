// Building the page without innerHTML: every text from the API goes through text nodes.

/**
 * An element with attributes and children (strings become text nodes; null is skipped).
 * @param {string} tag
 * @param {Record<string, unknown>} [attrs]
 * @param {...(Node | string | number | null | undefined)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), /** @type {EventListener} */ (value));
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces the children of `parent`. */
export function show(parent, ...children) {
  parent.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

/** "14:03:07" local time, or "—". */
export function clock(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

/** "2025-01-15 14:03" local time. */
export function dateTime(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "3:07" from seconds. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

/** "812 ms", or "—". */
export function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value)} ms`;
}

/** A text cell that lays out Hebrew right-to-left beside Latin text. */
export function said(text, attrs = {}) {
  return h("span", { dir: "auto", class: "text", ...attrs }, text);
}
