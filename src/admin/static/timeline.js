// One call's timeline, drawn with uPlot on one time axis (seconds from the call's start): the
// caller's and the agent's speech as bars, barge-ins and other events as marks, and each answer's
// latency split into its parts. A new event kind needs one entry in EVENT_STYLES; kinds not
// listed still show, in grey.

/** How each event kind is drawn and named. `lane: "speech"` marks cross both speech lanes. */
export const EVENT_STYLES = {
  barge_in: { label: "Barge-in", color: "#c0392b", lane: "speech" },
  dtmf: { label: "Keypad", color: "#6c3fc5", lane: "events" },
  clear: { label: "Clear sent", color: "#d35400", lane: "events" },
  mark: { label: "Mark echoed", color: "#a0a7b4", lane: "events" },
  stt_restart: { label: "STT restart", color: "#2471a3", lane: "events" },
  provider_error: { label: "Provider error", color: "#c0392b", lane: "events" },
  malformed: { label: "Malformed message", color: "#7f8c8d", lane: "events" },
  limit: { label: "Limit reached", color: "#7b241c", lane: "events" },
  stream_status: { label: "Stream status", color: "#5d6d7e", lane: "events" },
  tool_call: { label: "Tool call", color: "#8e44ad", lane: "events" },
  transfer: { label: "Transfer", color: "#1e8449", lane: "events" },
};
const OTHER_EVENT = { label: "Other", color: "#95a5a6", lane: "events" };

export function eventStyle(kind) {
  return EVENT_STYLES[kind] ?? { ...OTHER_EVENT, label: kind };
}

/** The parts of an answer's latency, in the order they happen after the caller stops speaking. */
export const LATENCY_PARTS = [
  { key: "end_of_turn_delay", label: "End of turn", color: "#f4a261" },
  { key: "llm_ttft", label: "LLM first token", color: "#8e7cc3" },
  { key: "tts_ttfb", label: "TTS first byte", color: "#4fa3d1" },
  { key: "wire", label: "To the wire", color: "#9aa5b1" },
];
const STT_FINAL_COLOR = "#1d2330";
const COLORS = { caller: "#2a9d8f", agent: "#e76f51", cut: "#c0392b" };

/** Lane centres on the y scale (0 at the bottom). */
const LANES = { latency: 0.5, caller: 1.5, agent: 2.5, events: 3.5 };
const LANE_NAMES = { 0.5: "latency", 1.5: "caller", 2.5: "agent", 3.5: "events" };

/**
 * The shapes to draw, in seconds from the call's start: speech bars, latency segments, marks.
 * Pure, so the page's test can check it without a canvas.
 */
export function timelineShapes(detail) {
  const t0 = detail.call.startedAt;
  const sec = (ms) => (ms - t0) / 1000;
  const turns = [...detail.turns].sort((a, b) => a.index - b.index);
  const bars = [];
  let callerEnd = null;
  for (const turn of turns) {
    // An answer is heard from its first frame on the wire (caller's speech end + e2e), not from
    // when it was decided: the gap before it is the latency lane's.
    const e2e = turn.timings?.e2e_latency ?? null;
    const heardFrom = turn.speaker === "agent" && e2e !== null && callerEnd !== null
      ? Math.min(callerEnd + e2e, turn.endedAt)
      : turn.startedAt;
    if (turn.speaker === "caller") callerEnd = turn.endedAt;
    bars.push({
      lane: turn.speaker,
      from: sec(heardFrom),
      to: Math.max(sec(turn.endedAt), sec(heardFrom) + 0.05),
      cut: turn.cut,
    });
  }
  const segments = [];
  const points = [];
  let lastCallerEnd = null;
  for (const turn of turns) {
    if (turn.speaker === "caller") {
      lastCallerEnd = turn.endedAt;
      continue;
    }
    const t = turn.timings;
    if (t === null || lastCallerEnd === null || t.e2e_latency === null) continue;
    // After the caller's speech ends: the turn is decided, the LLM answers, TTS speaks, the first
    // frame goes out. Parts not measured take no room; the rest until e2e is "to the wire".
    let at = lastCallerEnd;
    const end = lastCallerEnd + t.e2e_latency;
    for (const part of LATENCY_PARTS) {
      const length = part.key === "wire" ? end - at : t[part.key] ?? 0;
      const to = Math.min(end, at + Math.max(0, length));
      if (to > at) segments.push({ part: part.key, from: sec(at), to: sec(to), ms: to - at });
      at = to;
    }
    if (t.stt_final_delay !== null) {
      points.push({ kind: "stt_final", at: sec(lastCallerEnd + t.stt_final_delay) });
    }
    lastCallerEnd = null;
  }
  const marks = detail.events.map((event) => ({
    kind: event.kind,
    at: sec(event.at),
    style: eventStyle(event.kind),
  }));
  const ends = [
    ...bars.map((b) => b.to),
    ...marks.map((m) => m.at),
    ...segments.map((s) => s.to),
    detail.call.endedAt === null ? 0 : sec(detail.call.endedAt),
  ];
  return { bars, segments, points, marks, duration: Math.max(1, ...ends) };
}

/** Draws the timeline of `detail` into `container` (uPlot, loaded as a classic script). */
export function drawTimeline(container, detail) {
  const shapes = timelineShapes(detail);
  const uPlot = globalThis.uPlot;
  const width = Math.max(320, container.clientWidth - 16);
  let drawn = 0;
  const draw = (u) => {
    const ctx = u.ctx;
    const x = (s) => u.valToPos(s, "x", true);
    const y = (v) => u.valToPos(v, "y", true);
    const laneHeight = Math.abs(y(0) - y(1));
    const box = (from, to, lane, color, fraction) => {
      const left = x(from);
      const w = Math.max(2, x(to) - left);
      const hgt = laneHeight * fraction;
      ctx.fillStyle = color;
      ctx.fillRect(left, y(lane) - hgt / 2, w, hgt);
    };
    ctx.save();
    drawn = 0;
    for (const bar of shapes.bars) {
      box(bar.from, bar.to, LANES[bar.lane], COLORS[bar.lane], 0.55);
      if (bar.cut) box(bar.to - 0.04, bar.to, LANES[bar.lane], COLORS.cut, 0.8);
      drawn++;
    }
    for (const seg of shapes.segments) {
      const part = LATENCY_PARTS.find((p) => p.key === seg.part);
      box(seg.from, seg.to, LANES.latency, part.color, 0.5);
      drawn++;
    }
    for (const point of shapes.points) {
      box(point.at - 0.01, point.at + 0.01, LANES.latency, STT_FINAL_COLOR, 0.8);
    }
    for (const mark of shapes.marks) {
      ctx.strokeStyle = mark.style.color;
      ctx.lineWidth = Math.max(1, devicePixelRatio);
      ctx.beginPath();
      const top = mark.style.lane === "speech" ? y(3) : y(4) + laneHeight * 0.2;
      const bottom = mark.style.lane === "speech" ? y(1) : y(3) - laneHeight * 0.2;
      ctx.moveTo(x(mark.at), top);
      ctx.lineTo(x(mark.at), bottom);
      ctx.stroke();
    }
    ctx.restore();
    container.dataset.bars = String(drawn);
  };
  const plot = new uPlot(
    {
      width,
      height: 240,
      scales: {
        x: { time: false, range: [0, shapes.duration * 1.02] },
        y: { range: [0, 4] },
      },
      axes: [
        { label: "seconds from the call's start" },
        {
          splits: () => [0.5, 1.5, 2.5, 3.5],
          values: (_u, splits) => splits.map((s) => LANE_NAMES[s] ?? ""),
          size: 70,
          grid: { show: false },
        },
      ],
      series: [{}, { label: "", stroke: "transparent", points: { show: false } }],
      legend: { show: false },
      cursor: { drag: { x: true, y: false } },
      hooks: { draw: [draw] },
    },
    [[0, shapes.duration], [null, null]],
    container,
  );
  return { plot, shapes };
}

/** The chart's legend (HTML, beside the canvas). */
export function legendItems(shapes) {
  const items = [
    { label: "Caller speech", color: COLORS.caller },
    { label: "Agent speech", color: COLORS.agent },
    { label: "Cut by barge-in", color: COLORS.cut },
    ...LATENCY_PARTS.map((p) => ({ label: p.label, color: p.color })),
    { label: "STT final", color: STT_FINAL_COLOR },
  ];
  const seen = new Set();
  for (const mark of shapes.marks) {
    if (seen.has(mark.style.label)) continue;
    seen.add(mark.style.label);
    items.push({ label: mark.style.label, color: mark.style.color });
  }
  return items;
}
