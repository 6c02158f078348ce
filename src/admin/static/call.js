// One call: its facts, the timeline chart, the transcript in speaking order (what the caller
// heard, and what barge-in cut), the latency of each answer, keypad input, tool calls and
// transfers, and every event. Parts of the record this page does not know are shown as they are.
import { getJson } from "./api.js";
import { dateTime, duration, h, ms, said, show } from "./dom.js";
import { drawTimeline, eventStyle, legendItems } from "./timeline.js";

const KNOWN_PARTS = new Set(["call", "turns", "events"]);

function offset(detail, at) {
  return `+${duration((at - detail.call.startedAt) / 1000)}`;
}

function fact(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", { dir: "auto" }, value ?? "—"));
}

/** The agent's words: what was heard, then (struck through) what barge-in cut. */
function agentWords(turn) {
  const heard = said(turn.text, { class: "said heard" });
  if (turn.generated === null) return h("span", {}, heard);
  const rest = turn.generated.startsWith(turn.text)
    ? turn.generated.slice(turn.text.length)
    : turn.generated;
  return h(
    "span",
    {},
    heard,
    h("del", { dir: "auto", class: "said unheard", title: "generated, not heard" }, rest),
    turn.cut ? h("span", { class: "cut" }, "cut by barge-in") : null,
  );
}

function latencyLine(t) {
  if (t === null) return null;
  return h(
    "div",
    { class: "muted latency" },
    `e2e ${ms(t.e2e_latency)} · end of turn ${ms(t.end_of_turn_delay)} · STT final ` +
      `${ms(t.stt_final_delay)} · LLM first token ${ms(t.llm_ttft)} · TTS first byte ` +
      `${ms(t.tts_ttfb)} · server ${ms(t.server_latency)}`,
  );
}

function transcript(detail) {
  const turns = [...detail.turns].sort((a, b) => a.index - b.index);
  if (turns.length === 0) return h("p", { class: "muted" }, "No turns recorded.");
  return h(
    "ol",
    { class: "transcript", id: "transcript" },
    ...turns.map((turn) =>
      h(
        "li",
        { dataset: { speaker: turn.speaker, index: String(turn.index) } },
        h("span", { class: "muted" }, offset(detail, turn.startedAt)),
        h("span", { class: "who" }, turn.speaker),
        h(
          "div",
          {},
          turn.speaker === "agent" ? agentWords(turn) : said(turn.text, { class: "said" }),
          latencyLine(turn.timings),
        ),
      )
    ),
  );
}

function eventsTable(detail, events) {
  return h(
    "table",
    { class: "events" },
    h("thead", {}, h("tr", {}, h("th", {}, "At"), h("th", {}, "Event"), h("th", {}, "Detail"))),
    h(
      "tbody",
      {},
      ...events.map((event) =>
        h(
          "tr",
          { dataset: { kind: event.kind } },
          h("td", { class: "num" }, offset(detail, event.at)),
          h("td", {}, eventStyle(event.kind).label),
          h("td", {}, said(event.detail)),
        )
      ),
    ),
  );
}

/** A part of the record added after this page was written (e.g. tool calls): shown as JSON. */
function genericPart(name, value) {
  const items = Array.isArray(value) ? value : [value];
  return h(
    "section",
    { dataset: { part: name } },
    h("h3", {}, name),
    ...items.map((item) => h("pre", { class: "json", dir: "auto" }, JSON.stringify(item, null, 2))),
  );
}

/** Shows call `callSid` in `view`. */
export async function showCall(view, callSid) {
  const detail = await getJson(`/api/calls/${encodeURIComponent(callSid)}`);
  const call = detail.call;
  const seconds = call.endedAt === null ? null : (call.endedAt - call.startedAt) / 1000;
  const facts = h(
    "dl",
    { class: "facts" },
    fact("Started", dateTime(call.startedAt)),
    fact("Length", duration(seconds)),
    fact("Outcome", call.outcome ?? "open"),
    fact("Reason", call.reason),
    fact("From", call.from),
    fact("To", call.to),
    fact("Node", call.node),
    fact("Turns", call.turns),
    fact(
      "Latency p50 / p90",
      `${ms(call.latency.e2e_latency.p50)} / ${ms(call.latency.e2e_latency.p90)}`,
    ),
    fact(
      "Frames in / out",
      call.counters === null ? null : `${call.counters.rx_frames} / ${call.counters.tx_frames}`,
    ),
    fact(
      "Dropped / late",
      call.counters === null ? null : `${call.counters.rx_drops} / ${call.counters.tx_late}`,
    ),
  );
  const chart = h("div", { id: "timeline" });
  const legend = h("div", { class: "legend" });
  const keypad = detail.events.filter((e) => e.kind === "dtmf");
  const control = detail.events.filter((e) => /^(tool|transfer|hangup)/.test(e.kind));
  show(
    view,
    h("p", {}, h("a", { href: "#/calls" }, "← history")),
    h("h2", {}, "Call ", h("code", {}, call.callSid)),
    facts,
    h("h3", {}, "Timeline"),
    chart,
    legend,
    h("h3", {}, "Transcript"),
    transcript(detail),
    keypad.length === 0 ? null : h(
      "section",
      { id: "keypad" },
      h("h3", {}, "Keypad"),
      h("p", {}, keypad.map((e) => e.detail).join(" ")),
    ),
    control.length === 0 ? null : h(
      "section",
      { id: "call-control" },
      h("h3", {}, "Tools and transfers"),
      eventsTable(detail, control),
    ),
    ...Object.entries(detail).filter(([name]) => !KNOWN_PARTS.has(name)).map(([name, value]) =>
      genericPart(name, value)
    ),
    h("h3", {}, "Events"),
    detail.events.length === 0
      ? h("p", { class: "muted" }, "No events.")
      : eventsTable(detail, detail.events),
  );
  const { plot, shapes } = drawTimeline(chart, detail);
  for (const item of legendItems(shapes)) {
    legend.append(h("span", { style: `--swatch: ${item.color}` }, item.label));
  }
  const resize = () => plot.setSize({ width: Math.max(320, chart.clientWidth - 16), height: 240 });
  addEventListener("resize", resize);
  return () => {
    removeEventListener("resize", resize);
    plot.destroy();
  };
}
