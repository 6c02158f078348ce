// Call history: newest first, filtered by time range, number, outcome and words said
// (/api/calls). The filters live in the URL hash, so a search can be bookmarked or shared.
import { getJson } from "./api.js";
import { dateTime, duration, h, ms, show } from "./dom.js";

const OUTCOMES = [
  "",
  "completed",
  "interrupted",
  "idle",
  "max_duration",
  "drained",
  "error",
  "rejected",
  "open",
];

/** `<input type=datetime-local>` value ⇄ epoch ms (local time). */
function toInputTime(value) {
  if (!value) return "";
  const d = new Date(Number(value));
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromInputTime(value) {
  return value ? String(new Date(value).getTime()) : "";
}

function row(call) {
  const open = () => (location.hash = `#/calls/${encodeURIComponent(call.callSid)}`);
  const seconds = call.endedAt === null ? null : (call.endedAt - call.startedAt) / 1000;
  return h(
    "tr",
    { class: "link", dataset: { callSid: call.callSid }, onclick: open },
    h("td", {}, h("a", { href: `#/calls/${encodeURIComponent(call.callSid)}` }, call.callSid)),
    h("td", {}, dateTime(call.startedAt)),
    h("td", { class: "num" }, duration(seconds)),
    h("td", {}, call.from ?? "—"),
    h("td", {}, call.to ?? "—"),
    h("td", {}, call.outcome ?? "open"),
    h("td", { class: "num" }, call.turns),
    h("td", { class: "num" }, ms(call.latency.e2e_latency.p50)),
    h("td", {}, call.node ?? "—"),
  );
}

/** Shows the history in `view` with the filters of `query` (the hash's query string). */
export async function showHistory(view, query) {
  const params = new URLSearchParams(query);
  const field = (name, attrs) => h("input", { name, value: params.get(name) ?? "", ...attrs });
  const since = field("since", { type: "datetime-local", value: toInputTime(params.get("since")) });
  const until = field("until", { type: "datetime-local", value: toInputTime(params.get("until")) });
  const number = field("number", { placeholder: "digits", inputmode: "tel", size: 14 });
  const text = field("q", { placeholder: "words said", dir: "auto", size: 22, id: "search" });
  const outcome = h(
    "select",
    { name: "outcome" },
    ...OUTCOMES.map((o) =>
      h("option", { value: o, selected: (params.get("outcome") ?? "") === o }, o || "any")
    ),
  );
  const form = h(
    "form",
    { class: "filters", id: "filters" },
    h("label", {}, "From", since),
    h("label", {}, "Until", until),
    h("label", {}, "Number", number),
    h("label", {}, "Outcome", outcome),
    h("label", {}, "Transcript", text),
    h("button", { type: "submit" }, "Search"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    const set = (name, value) => value && next.set(name, value);
    set("since", fromInputTime(since.value));
    set("until", fromInputTime(until.value));
    set("number", number.value.trim());
    set("outcome", outcome.value);
    set("q", text.value.trim());
    location.hash = `#/calls?${next}`;
  });
  const body = h("tbody");
  const table = h(
    "table",
    { id: "calls-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Call", "Started", "Length", "From", "To", "Outcome", "Turns", "Latency p50", "Node"]
          .map((c) => h("th", {}, c)),
      ),
    ),
    body,
  );
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older calls");
  const note = h("p", { class: "muted" });
  show(view, h("h2", {}, "Call history"), form, table, note, more);

  const api = new URLSearchParams(params);
  api.set("limit", "50");
  let loaded = 0;
  const load = async (before) => {
    if (before) api.set("before", before);
    const page = await getJson(`/api/calls?${api}`);
    body.append(...page.calls.map(row));
    loaded += page.calls.length;
    note.textContent = loaded === 0 ? "No calls match." : `${loaded} calls`;
    more.hidden = page.next === null;
    more.onclick = () => load(page.next).catch((e) => (note.textContent = String(e.message)));
  };
  await load(null);
  return () => {};
}
