// The live view: every call in progress, redrawn from the SSE feed (/api/live/stream).
import { duration, h, ms, said, show } from "./dom.js";

const COLUMNS = [
  "Call",
  "From",
  "Duration",
  "State",
  "RX fps",
  "TX fps",
  "Queues rx/tx",
  "Drops",
  "Late",
  "Last line",
  "Last turn",
];

function row(call) {
  const m = call.media;
  const line = call.lastLine;
  return h(
    "tr",
    { dataset: { callSid: call.callSid ?? "", state: call.state } },
    h("td", {}, call.callSid ?? call.connectionId),
    h("td", {}, call.from ?? "—"),
    h("td", { class: "num" }, duration(call.durationS)),
    h("td", {}, h("span", { class: `state state-${call.state}` }, call.state)),
    h("td", { class: "num" }, m.rxFps),
    h("td", { class: "num" }, m.txFps),
    h("td", { class: "num" }, `${m.rxQueue} / ${m.txQueue}`),
    h("td", { class: m.rxDrops > 0 ? "num bad" : "num" }, m.rxDrops),
    h(
      "td",
      { class: m.txLate > 0 ? "num bad" : "num", title: `worst ${m.txLateMsMax} ms` },
      m.txLate,
    ),
    h(
      "td",
      {},
      line === null ? "—" : h(
        "span",
        {},
        h("span", { class: "muted" }, `${line.speaker}${line.final ? "" : " …"}: `),
        said(line.text, { class: "text last-line" }),
      ),
    ),
    h("td", { class: "num" }, ms(call.lastTurnLatencyMs)),
  );
}

/** Shows the live view in `view`; returns what stops it. */
export function showLive(view) {
  const count = h("span", { id: "live-count" }, "…");
  const body = h("tbody");
  const empty = h("p", { class: "muted", id: "live-empty" }, "No calls right now.");
  const table = h(
    "table",
    { id: "live-table" },
    h("thead", {}, h("tr", {}, ...COLUMNS.map((c) => h("th", {}, c)))),
    body,
  );
  const status = /** @type {HTMLElement} */ (document.getElementById("status"));
  show(view, h("h2", {}, "Live calls ", count), table, empty);
  const source = new EventSource("/api/live/stream");
  source.addEventListener("live", (event) => {
    const live = JSON.parse(/** @type {MessageEvent} */ (event).data);
    count.textContent = `(${live.active})`;
    empty.hidden = live.calls.length > 0;
    body.replaceChildren(...live.calls.map(row));
    status.textContent = `updated ${new Date(live.at).toLocaleTimeString([], { hour12: false })}`;
  });
  source.addEventListener("error", async () => {
    // EventSource retries by itself; a 401 (session over) it cannot fix.
    const probe = await fetch("/api/session").then((r) => r.json()).catch(() => null);
    if (probe !== null && probe.authenticated === false) {
      source.close();
      dispatchEvent(new Event("kav:unauthorized"));
    } else {
      status.textContent = "reconnecting…";
    }
  });
  return () => {
    source.close();
    status.textContent = "";
  };
}
