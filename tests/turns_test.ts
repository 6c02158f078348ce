import assert from "node:assert/strict";
import { frameDbfs } from "../src/audio/mulaw.ts";
import {
  type BargeIn,
  type EndOfTurn,
  type TurnClock,
  TurnDetector,
  type TurnSettings,
} from "../src/agent/turns.ts";

const SETTINGS: TurnSettings = { partial_debounce_ms: 90, timeout_ms: 320, vad_hangover_ms: 180 };

interface FakeTimer {
  readonly at: number;
  readonly fn: () => void;
  cancelled: boolean;
}

/** Manual clock: timers fire only inside `advance`, in time order. */
class FakeClock implements TurnClock {
  #now = 0;
  readonly #timers: FakeTimer[] = [];
  now(): number {
    return this.#now;
  }
  setTimer(ms: number, fn: () => void): () => void {
    const timer: FakeTimer = { at: this.#now + ms, fn, cancelled: false };
    this.#timers.push(timer);
    return () => timer.cancelled = true;
  }
  /** Moves to `time` (absolute ms), firing due timers on the way. */
  advanceTo(time: number): void {
    for (;;) {
      const due = this.#timers.filter((t) => !t.cancelled && t.at <= time)
        .sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      due.cancelled = true;
      this.#now = due.at;
      due.fn();
    }
    this.#now = time;
  }
  pending(): number {
    return this.#timers.filter((t) => !t.cancelled).length;
  }
}

type Output =
  | ["partial", string, number]
  | ["final", string, number]
  | ["endOfTurn", EndOfTurn]
  | ["bargeIn", BargeIn, number];

function setup(settings: TurnSettings = SETTINGS) {
  const clock = new FakeClock();
  const out: Output[] = [];
  const turns = new TurnDetector(settings, {
    partial: (text) => out.push(["partial", text, clock.now()]),
    final: (text) => out.push(["final", text, clock.now()]),
    endOfTurn: (turn) => out.push(["endOfTurn", turn]),
    bargeIn: (event) => out.push(["bargeIn", event, clock.now()]),
  }, { clock });
  /** Advances to `time`, then applies `input` there. */
  const at = (time: number, input: () => void = () => {}) => {
    clock.advanceTo(time);
    input();
  };
  const partial = (text: string) => () => turns.stt({ type: "partial", text, stability: 0.5 });
  const final = (text: string) => () => turns.stt({ type: "final", text, confidence: 0.9 });
  const start = (atMs: number) => () => turns.vad({ type: "speechStart", atMs });
  const end = (atMs: number) => () => turns.vad({ type: "speechEnd", atMs });
  const endsOfTurn = () => out.flatMap((o) => o[0] === "endOfTurn" ? [o[1]] : []);
  return { clock, out, turns, at, partial, final, start, end, endsOfTurn };
}

Deno.test("TurnDetector debounces partials and emits the latest text once", () => {
  const { at, out, partial } = setup();
  at(0, partial("של"));
  at(30, partial("שלום"));
  at(60, partial("שלום מה"));
  at(149);
  assert.deepEqual(out, []);
  at(150);
  assert.deepEqual(out, [["partial", "שלום מה", 150]]);
  at(300, partial("שלום  מה "));
  at(500, partial("שלום מה נשמע"));
  at(1000);
  assert.deepEqual(out.filter((o) => o[0] === "partial"), [
    ["partial", "שלום מה", 150],
    ["partial", "שלום מה נשמע", 590],
  ]);
});

Deno.test("TurnDetector ends the turn on the STT final and drops the pending partial", () => {
  const { at, out, partial, final, start, end } = setup();
  at(0, start(0));
  at(400, partial("מה שעות"));
  at(1000, end(800));
  at(1050, partial("מה שעות הפתיחה"));
  at(1100, final("מה שעות הפתיחה שלכם"));
  at(3000);
  assert.deepEqual(out, [
    ["partial", "מה שעות", 490],
    ["final", "מה שעות הפתיחה שלכם", 1100],
    ["endOfTurn", {
      text: "מה שעות הפתיחה שלכם",
      reason: "final",
      speechEndAt: 800,
      decidedAt: 1100,
      finalAt: 1100,
    }],
  ]);
});

Deno.test("TurnDetector decides by timeout after the last partial while the VAD is silent", () => {
  const { at, partial, start, end, endsOfTurn, clock } = setup();
  at(0, start(0));
  at(300, partial("כן"));
  at(700, partial("כן מחר"));
  at(1400); // still speaking: no timeout however old the partial
  assert.deepEqual(endsOfTurn(), []);
  at(1500, end(1320));
  at(1600, partial("כן מחר בבוקר")); // re-arms: 1600 + 320
  at(1919);
  assert.deepEqual(endsOfTurn(), []);
  at(1920);
  assert.deepEqual(endsOfTurn(), [{
    text: "כן מחר בבוקר",
    reason: "timeout",
    speechEndAt: 1320,
    decidedAt: 1920,
    finalAt: null,
  }]);
  assert.equal(clock.pending(), 0);
});

Deno.test("TurnDetector times out from the speech end when the last partial came earlier", () => {
  const { at, partial, start, end, endsOfTurn } = setup();
  at(0, start(0));
  at(300, partial("שלום"));
  at(900, end(720));
  at(1220);
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.decidedAt]), [["שלום", 1220]]);
});

Deno.test("TurnDetector cancels the timeout when the caller speaks again", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("אני רוצה"));
  at(900, end(720));
  at(1100, start(1080));
  at(3000);
  assert.deepEqual(endsOfTurn(), []);
  at(3100, final("אני רוצה לקבוע תור"));
  assert.deepEqual(endsOfTurn().map((t) => t.text), ["אני רוצה לקבוע תור"]);
});

Deno.test("TurnDetector does not start a second turn for the final of a timeout-decided utterance", () => {
  const { at, out, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("תודה רבה"));
  at(900, end(720));
  at(1220);
  at(1500, final("תודה רבה."));
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason]), [["תודה רבה", "timeout"]]);
  assert.deepEqual(out.filter((o) => o[0] === "final"), [["final", "תודה רבה.", 1500]]);
  // The next utterance is a turn of its own.
  at(4000, start(3980));
  at(4300, partial("להתראות"));
  at(4800, end(4600));
  at(4850, final("להתראות"));
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason, t.speechEndAt]), [
    ["תודה רבה", "timeout", 720],
    ["להתראות", "final", 4600],
  ]);
});

Deno.test("TurnDetector opens a second turn when the caller went on after a timeout decision", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("אני רוצה"));
  at(900, end(720));
  at(1220); // decided: "אני רוצה"
  at(1400, start(1380));
  at(1700, partial("אני רוצה לקבוע"));
  at(2100, end(1900));
  at(2200, final("אני רוצה לקבוע תור"));
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason, t.speechEndAt]), [
    ["אני רוצה", "timeout", 720],
    ["לקבוע תור", "final", 1900],
  ]);
});

Deno.test("TurnDetector uses the whole final when it does not extend the decided text", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("מה השעה"));
  at(900, end(720));
  at(1220);
  at(1400, start(1380));
  at(2100, end(1900));
  at(2200, final("מה שעות הפתיחה"));
  assert.deepEqual(endsOfTurn().map((t) => t.text), ["מה השעה", "מה שעות הפתיחה"]);
});

Deno.test("TurnDetector keeps new speech as its own utterance after a duplicate final", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("כן"));
  at(900, end(720));
  at(1220); // decided: "כן"
  at(1300, start(1280)); // the caller goes on
  at(1350, final("כן")); // the old utterance's final: a duplicate
  at(1700, end(1500));
  at(1800, partial("מחר"));
  at(2120); // the new utterance times out on its own
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason, t.speechEndAt]), [
    ["כן", "timeout", 720],
    ["מחר", "timeout", 1500],
  ]);
});

Deno.test("TurnDetector falls back to the last partial for an empty final", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("הלו"));
  at(400, end(380));
  at(450, final(" "));
  at(2000, final(""));
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason]), [["הלו", "final"]]);
});

Deno.test("TurnDetector starts the next utterance when a final lands mid-speech", () => {
  const { at, partial, start, end, endsOfTurn, final } = setup();
  at(0, start(0));
  at(300, partial("שלום"));
  at(600, final("שלום")); // the caller is still talking
  at(900, partial("מה נשמע"));
  at(1100, end(1000));
  at(1420);
  assert.deepEqual(endsOfTurn().map((t) => [t.text, t.reason, t.speechEndAt]), [
    ["שלום", "final", null],
    ["מה נשמע", "timeout", 1000],
  ]);
});

Deno.test("TurnDetector ignores STT restarts and errors", () => {
  const { at, partial, start, end, endsOfTurn, turns } = setup();
  at(0, start(0));
  at(300, partial("שלום"));
  at(400, () => turns.stt({ type: "restart", reason: "duration limit" }));
  at(700, end(650));
  at(1020);
  assert.deepEqual(endsOfTurn().map((t) => t.text), ["שלום"]);
});

Deno.test("TurnDetector barges in at the VAD onset while the agent speaks, once per agent turn", () => {
  const { at, out, start, end, turns } = setup();
  at(0, start(0)); // agent silent: no barge-in
  at(500, end(400));
  at(1000, () => turns.setAgentSpeaking(true));
  at(1540, start(1500));
  at(1800, end(1700));
  at(2040, start(2000)); // already fired for this agent turn
  assert.deepEqual(out.filter((o) => o[0] === "bargeIn"), [
    ["bargeIn", { at: 1500, cause: "vad" }, 1540],
  ]);
  at(2300, end(2200));
  at(2400, () => turns.setAgentSpeaking(false));
  at(2600, () => turns.setAgentSpeaking(true)); // re-armed
  at(2740, start(2700));
  assert.equal(out.filter((o) => o[0] === "bargeIn").length, 2);
  assert.equal(turns.agentSpeaking, true);
  assert.equal(turns.callerSpeaking, true);
});

Deno.test("TurnDetector does not barge in on speech already in progress when the agent starts", () => {
  const { at, out, start, turns } = setup();
  at(0, start(0));
  at(500, () => turns.setAgentSpeaking(true));
  at(900);
  assert.deepEqual(out.filter((o) => o[0] === "bargeIn"), []);
});

Deno.test("TurnDetector barges in on a partial the VAD missed, but not on a late one", () => {
  const { at, out, partial, start, end, turns } = setup();
  at(0, start(0));
  at(300, partial("שלום"));
  at(700, end(650));
  at(970); // decided by timeout; the agent answers
  at(1000, () => turns.setAgentSpeaking(true));
  at(1100, partial("שלום לך")); // late partial of the answered utterance
  assert.deepEqual(out.filter((o) => o[0] === "bargeIn"), []);
  at(1150, () => turns.stt({ type: "final", text: "שלום לך", confidence: 0.9 }));
  at(2000, partial("רגע")); // soft new speech the VAD did not hear
  assert.deepEqual(out.filter((o) => o[0] === "bargeIn"), [
    ["bargeIn", { at: 2000, cause: "partial" }, 2000],
  ]);
});

Deno.test("TurnDetector barges in within 100 ms when the caller speaks 500 ms into a 5 s answer", () => {
  const clip = Deno.readFileSync("tests/fixtures/vad/appointment_long.ulaw");
  const { clock, out, turns } = setup();
  turns.setAgentSpeaking(true); // a 5 s answer starts at 0
  // Twilio's inbound track carries only the caller: silence, then speech from 500 ms.
  const audio = new Uint8Array(8000 * 5).fill(0xff);
  audio.set(clip.subarray(0, 8000 * 5 - 4000), 4000);
  let onset = -1;
  for (let at = 0; at + 160 <= audio.length; at += 160) {
    const frame = audio.subarray(at, at + 160);
    if (onset < 0 && frameDbfs(frame) > -50) onset = at / 8;
    clock.advanceTo(at / 8 + 20); // the frame is complete when it is pushed
    turns.pushAudio(frame, at / 8);
  }
  const barges = out.filter((o) => o[0] === "bargeIn");
  assert.equal(barges.length, 1);
  const [, event, firedAt] = barges[0] as ["bargeIn", BargeIn, number];
  assert.equal(event.cause, "vad");
  assert.ok(onset >= 500, `speech onset at ${onset}`);
  assert.ok(firedAt - onset <= 100, `barge-in ${firedAt - onset} ms after speech onset`);
  assert.ok(Math.abs(event.at - onset) <= 40, `reported onset ${event.at}, truth ${onset}`);
});

Deno.test("TurnDetector.close() cancels timers and ignores later input", () => {
  const { at, out, partial, start, end, turns, clock } = setup();
  at(0, start(0));
  at(300, partial("שלום"));
  at(350, end(340));
  assert.equal(clock.pending(), 2, "debounce and timeout");
  turns.close();
  turns.close();
  assert.equal(clock.pending(), 0);
  at(500, partial("עוד"));
  at(600, () => turns.setAgentSpeaking(true));
  at(700, start(700));
  assert.equal(turns.pushAudio(new Uint8Array(160).fill(0xff), 700), null);
  at(5000);
  assert.deepEqual(out, []);
});

Deno.test("TurnDetector on the system clock leaves no timer behind after close()", async () => {
  const partials: string[] = [];
  const turns = new TurnDetector({ ...SETTINGS, partial_debounce_ms: 10 }, {
    partial: (text) => partials.push(text),
  });
  turns.stt({ type: "partial", text: "שלום", stability: 0.5 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(partials, ["שלום"]);
  turns.stt({ type: "partial", text: "שלום לך", stability: 0.5 });
  turns.close();
});
