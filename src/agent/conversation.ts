/**
 * The phone agent's brain for one call (SPEC 3): the greeting (`greeting.ts`, queued as the agent
 * is created at Twilio's `start`), turn-taking, the streamed LLM answer cut into sentences, TTS per
 * sentence into the paced TX queue, a mark after each sentence, barge-in, and the cached apology
 * when a provider fails. It implements `CallAgent`, so the call core stays the only owner of the
 * socket and the speech session.
 *
 * The history sent to the LLM, and the agent turns stored, hold what the caller heard: a sentence
 * counts once its mark came back as played (a mark pending when `clear` went out counts as not
 * heard, since Twilio's echo looks the same either way). So the greeting leaves the history when
 * the caller barges into it, a cut answer keeps its played sentences, and a call that ends
 * mid-answer records the sentences heard so far. A new caller turn supersedes an answer still in
 * flight (cleared if it had started playing); an answer that never spoke leaves no turn. Each
 * agent answer logs one `[TURN]` line with its latencies (never its text).
 *
 * The agent acts (SPEC 6): answers may call tools (`_reply.ts`, `tools.ts`); a transfer or hang-up
 * the model chose is carried out once its answer was heard to the last mark, and cancelled (the
 * model is told) when the caller speaks or presses a key over it. Keypad digits are a caller turn
 * (`keypad.ts`). The CRM's caller context (`context.ts`) is fetched beside the greeting and joins
 * the prompt of the turns after it arrived. A stream that connects a caller back after a failed
 * transfer has no greeting: the agent speaks first, knowing what happened.
 */
import type { CallConfig, CrmConfig, LogConfig, SttConfig } from "../config/types.ts";
import type { ChatMessage, LlmProvider } from "../llm/types.ts";
import * as metrics from "../observe/metrics.ts";
import type { TurnTimings } from "../store/types.ts";
import type { SttEvent } from "../stt/types.ts";
import type { TtsProvider } from "../tts/types.ts";
import type { AgentContext, AgentFactory, CallAgent, MarkEcho } from "../call/agent.ts";
import type { AgentLive, AgentState, LiveLine } from "../call/live.ts";
import { type AgentReply, speakReply } from "./_reply.ts";
import { fetchCallerContext, promptWithContext } from "./context.ts";
import { Greeting } from "./greeting.ts";
import { KeypadGatherer, keypadMessage } from "./keypad.ts";
import type { ToolBox, ToolCaller } from "./tools.ts";
import { type EndOfTurn, systemClock, type TurnClock, TurnDetector } from "./turns.ts";

/** The phrase-cache name of a tool's filler. */
export function fillerPhraseName(tool: string): string {
  return `filler:${tool}`;
}

/** A history entry: a message, or an answer's messages read once its tools have results. */
type HistoryEntry = ChatMessage | (() => readonly ChatMessage[]);

/** What an agent hands on through a transfer, for the stream that may connect the caller back. */
interface Carry {
  readonly history: readonly ChatMessage[];
  readonly nextTurn: number;
}

/** How long the end of a call waits for tools still running, ms. */
const TOOLS_AT_CLOSE_MS = 1500;

/** Whether `promise` settled within `ms` (the timer is cleared either way). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const cap = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), cap]);
  } finally {
    clearTimeout(timer);
  }
}

/** Turn numbers of a stream connected back when this process lost the first stream's state. */
const RESUME_TURN_BASE = 1000;

/** Fixed phrases synthesized at boot (greeting, apology). */
export interface PhraseSource {
  get(name: string): Uint8Array | null;
}

export interface ConversationDeps {
  readonly call: CallConfig;
  readonly stt: SttConfig;
  readonly log: LogConfig;
  readonly llm: LlmProvider;
  readonly tts: TtsProvider;
  readonly phrases: PhraseSource;
  /** The model's functions (SPEC 6); null: plain answers. */
  readonly tools?: ToolBox | null;
  /** `crm.context_url` and the signing key. */
  readonly crm?: Pick<CrmConfig, "context_url" | "secret">;
  /** Tests pass a fake; times are ms. */
  readonly clock?: TurnClock;
  /** The pause that ends keypad input, ms (tests shorten it). */
  readonly keypadPauseMs?: number;
}

/** Builds the `AgentFactory` the call manager uses for every call. */
export function createConversationFactory(deps: ConversationDeps): AgentFactory {
  return (ctx) => new Conversation(deps, ctx);
}

class Conversation implements CallAgent {
  readonly #deps: ConversationDeps;
  readonly #ctx: AgentContext;
  readonly #clock: TurnClock;
  readonly #detector: TurnDetector;
  readonly #greeting: Greeting;
  readonly #keypad: KeypadGatherer;
  readonly #caller: ToolCaller;
  /** After the greeting: what the caller said and what the caller actually heard. */
  readonly #history: HistoryEntry[] = [];
  /** Tools of earlier answers still running: the next request waits for their results. */
  #toolsPending: Promise<unknown> = Promise.resolve();
  /** The CRM's caller context, once it arrived. */
  #context: string | null = null;
  #turnIndex = 0;
  #reply: AgentReply | null = null;
  #replySeq = 0;
  #closed = false;
  /** Onset (clock ms) of the first speech since the last caller turn, for the turn's start. */
  #speechStartAt: number | null = null;
  /** For the live view: the last answer heard and its latency. */
  #lastAgentLine: LiveLine | null = null;
  #lastTurnLatencyMs: number | null = null;

  constructor(deps: ConversationDeps, ctx: AgentContext) {
    this.#deps = deps;
    this.#ctx = ctx;
    this.#clock = deps.clock ?? systemClock;
    const nextTurnIndex = () => this.#turnIndex++;
    // First, so its first frames leave at once (SPEC: within 50 ms of `start`).
    this.#greeting = ctx.resume !== null ? Greeting.skip(ctx, nextTurnIndex) : Greeting.start(ctx, {
      text: deps.call.greeting,
      audio: deps.phrases.get("greeting"),
      nextTurnIndex,
    });
    const params = ctx.customParameters;
    this.#caller = {
      callSid: ctx.callSid,
      from: params["From"] ?? null,
      to: params["To"] ?? null,
    };
    this.#fetchContext();
    this.#keypad = new KeypadGatherer(
      this.#clock,
      (digits, startedAt) => this.#onKeypad(digits, startedAt),
      { pauseMs: deps.keypadPauseMs },
    );
    this.#detector = new TurnDetector(deps.stt, {
      endOfTurn: (turn) => this.#onEndOfTurn(turn),
      bargeIn: (event) => this.#bargeIn(event.at, event.cause),
    }, { clock: this.#clock });
    this.#detector.setAgentSpeaking(this.#greeting.playing);
    if (ctx.resume !== null) this.#resume();
  }

  onInboundAudio(frame: Uint8Array): void {
    // The frame arrives when its 20 ms of audio have ended: VAD times are frame starts.
    const transition = this.#detector.pushAudio(frame, this.#clock.now() - 20);
    if (transition?.type === "speechStart") this.#speechStartAt ??= transition.atMs;
  }

  onSpeech(event: SttEvent): void {
    // The session logs [PARTIAL]/[FINAL] and records STT restarts and errors; turns need them all.
    this.#detector.stt(event);
  }

  onMark(name: string, echo: MarkEcho): void {
    if (this.#greeting.onMark(name, echo)) {
      this.#updateSpeaking();
      return;
    }
    const reply = this.#reply;
    if (reply === null || !reply.ownsMark(name)) return;
    reply.markEchoed(name, echo.played);
    if (reply.finished) this.#finishReply(reply);
    this.#updateSpeaking();
  }

  onDtmf(digit: string): void {
    // The session records the event (the store keeps the digit). Digits can be personal data
    // (card or ID numbers), so the log carries them only where transcripts are logged.
    this.#ctx.log.info("DTMF", "", this.#deps.log.transcripts ? { digit } : {});
    if (this.#closed) return;
    // A key pressed while the agent speaks interrupts it, like speech does.
    this.#bargeIn(this.#clock.now(), "dtmf");
    this.#keypad.press(digit);
  }

  live(): AgentLive {
    // An answer on the wire already has its latency, before its last sentence is heard.
    const reply = this.#reply;
    const current = reply !== null && reply.audioQueued ? reply.timings().e2e_latency : null;
    return {
      state: this.#state(),
      lastAgentLine: this.#lastAgentLine,
      lastTurnLatencyMs: current ?? this.#lastTurnLatencyMs,
    };
  }

  #state(): AgentState {
    if (this.#greeting.playing) return "greeting";
    const reply = this.#reply;
    if (reply === null || reply.recorded) return "listening";
    return reply.audioQueued ? "speaking" : "thinking";
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#detector.close();
    this.#keypad.close();
    this.#greeting.close();
    const reply = this.#reply;
    if (reply !== null) {
      reply.cancel();
      await reply.done;
      // The call ended mid-answer: record what was heard so far (sentences whose marks came back).
      this.#finishReply(reply);
    }
    // A tool still running is recorded when it answers: give it a moment to land before the
    // call's end (and its CRM summary) is written. The core caps this close anyway.
    await settlesWithin(this.#toolsPending, TOOLS_AT_CLOSE_MS);
  }

  #onEndOfTurn(turn: EndOfTurn): void {
    if (this.#closed) return;
    const speechEnd = turn.speechEndAt ?? turn.decidedAt;
    const speechStart = Math.min(this.#speechStartAt ?? speechEnd, speechEnd);
    this.#speechStartAt = null;
    this.#callerTurn(turn, { start: speechStart, end: speechEnd, keypad: false });
  }

  #onKeypad(digits: string, startedAt: number): void {
    if (this.#closed) return;
    const now = this.#clock.now();
    this.#ctx.log.info(
      "KEYPAD",
      "input",
      this.#deps.log.transcripts ? { digits } : {
        digits: digits.length,
      },
    );
    this.#callerTurn(
      { text: digits, reason: "keypad", speechEndAt: now, decidedAt: now, finalAt: null },
      { start: startedAt, end: now, keypad: true },
    );
  }

  /** A caller turn (speech or keypad): recorded, then answered; supersedes an answer in flight. */
  #callerTurn(turn: EndOfTurn, at: { start: number; end: number; keypad: boolean }): void {
    const nowEpoch = Date.now();
    const now = this.#clock.now();
    // Caller turns span the speech (clock times mapped to epoch ms).
    this.#ctx.store.turnCompleted(this.#ctx.callSid, {
      index: this.#turnIndex++,
      speaker: "caller",
      text: turn.text,
      generated: null,
      cut: false,
      startedAt: Math.round(nowEpoch - Math.max(0, now - at.start)),
      endedAt: Math.round(nowEpoch - Math.max(0, now - at.end)),
      timings: null,
      ...(at.keypad ? { input: "keypad" as const } : {}),
    });
    // A reply still in flight (caller spoke again before it was heard) is superseded.
    const previous = this.#reply;
    if (previous !== null) {
      if (previous.audioQueued) this.#ctx.out.clear();
      this.#cutReply(previous);
    }
    this.#history.push({ role: "user", content: at.keypad ? keypadMessage(turn.text) : turn.text });
    this.#answer(turn);
  }

  /** Starts an answer to everything in the history. */
  #answer(turn: EndOfTurn): void {
    const deps = this.#deps;
    const reply = speakReply({
      id: ++this.#replySeq,
      turn,
      history: () => this.#messages(),
      before: this.#toolsPending,
      tools: deps.tools ?? null,
      caller: this.#caller,
      fillerAfterMs: deps.call.filler_after_ms,
      fillerAudio: (tool) => deps.phrases.get(fillerPhraseName(tool)),
      ctx: this.#ctx,
      llm: deps.llm,
      tts: deps.tts,
      apology: deps.phrases.get("apology"),
      apologyText: deps.call.apology,
      clock: this.#clock,
      onSpeaking: () => this.#updateSpeaking(),
    });
    this.#reply = reply;
    // Read once the answer is done: its tool rounds exist only by then.
    this.#toolsPending = Promise.all([
      this.#toolsPending,
      reply.done.then(() => reply.toolsSettled()),
    ]);
    reply.done.then(() => {
      if (reply.finished) this.#finishReply(reply);
      this.#updateSpeaking();
    }).catch((error) => {
      // Never an unhandled rejection (it would end the process): log it, the call goes on.
      this.#ctx.log.error("TURN", "reply bookkeeping failed", { error: String(error) });
    });
  }

  /** The request's messages: the prompt (with the caller's context), greeting, history. */
  #messages(): ChatMessage[] {
    const system: ChatMessage = {
      role: "system",
      content: promptWithContext(this.#deps.call.system_prompt, this.#context),
    };
    return [system, ...this.#greeting.history(), ...this.#flatHistory()];
  }

  #flatHistory(): ChatMessage[] {
    return this.#history.flatMap((entry) => typeof entry === "function" ? entry() : [entry]);
  }

  /** A caller connected back after a failed transfer: no greeting, the agent speaks first. */
  #resume(): void {
    const resume = this.#ctx.resume!;
    let carry: Carry | null = null;
    try {
      carry = resume.carry === null ? null : JSON.parse(resume.carry) as Carry;
    } catch {
      carry = null;
    }
    this.#turnIndex = carry?.nextTurn ?? RESUME_TURN_BASE;
    this.#history.push(...(carry?.history ?? []));
    const where = resume.department === null ? "" : ` to ${resume.department}`;
    this.#history.push({
      role: "system",
      content: `The transfer${where} did not go through (the line said: ${resume.dialStatus}). ` +
        "The caller is back with you now: tell them, and offer to take a message or help otherwise.",
    });
    this.#ctx.log.info("CALL", "connected back after a transfer", {
      dial_status: resume.dialStatus,
      remembered: carry !== null,
    });
    const now = this.#clock.now();
    this.#answer({ text: "", reason: "final", speechEndAt: null, decidedAt: now, finalAt: null });
  }

  /** Asks the CRM for the caller's context, beside the greeting; nothing waits for it. */
  #fetchContext(): void {
    const url = this.#deps.crm?.context_url ?? null;
    if (url === null) return;
    const ctx = this.#ctx;
    fetchCallerContext(url, this.#caller, {
      secret: this.#deps.crm?.secret ?? null,
      signal: ctx.signal,
    }).then((result) => {
      if (ctx.signal.aborted) return;
      this.#context = result.context;
      ctx.log.info("CRM", "caller context", { outcome: result.outcome });
      ctx.store.event(ctx.callSid, {
        kind: "caller_context",
        at: Date.now(),
        detail: result.outcome,
      });
    });
  }

  #bargeIn(at: number, cause: "vad" | "partial" | "dtmf"): void {
    const reply = this.#reply;
    const speaking = this.#greeting.playing || (reply !== null && !reply.recorded);
    if (!speaking || this.#closed) return;
    this.#ctx.out.clear();
    if (this.#greeting.playing) this.#greeting.cut();
    const latency = this.#clock.now() - at;
    this.#ctx.log.info("BARGE_IN", "", { cause, clear_after_ms: latency });
    this.#ctx.store.event(this.#ctx.callSid, {
      kind: "barge_in",
      at: Date.now(),
      detail: `${cause} clear_after_ms=${latency.toFixed(1)}`,
    });
    if (reply !== null) this.#cutReply(reply);
    this.#updateSpeaking();
  }

  /** Cancels a reply and records only what the caller heard (up to its last played mark). */
  #cutReply(reply: AgentReply): void {
    reply.cancel();
    reply.markCut();
    reply.cancelAction();
    const action = reply.action;
    if (action !== null && !reply.recorded) {
      // The caller spoke over the last sentence: no transfer or hang-up; the model reads so.
      this.#ctx.log.info("CALL", "action cancelled by the caller", { kind: action.kind });
      this.#ctx.store.event(this.#ctx.callSid, {
        kind: "action_cancelled",
        at: Date.now(),
        detail: action.kind === "transfer" ? `transfer to ${action.department}` : "hangup",
      });
      if (action.kind === "transfer") metrics.transferEnded("cancelled");
    }
    this.#finishReply(reply);
  }

  #finishReply(reply: AgentReply): void {
    if (reply.recorded) return;
    reply.recorded = true;
    if (this.#reply === reply) this.#reply = null;
    // Its messages (tool results included, once they came) join the history lazily.
    this.#history.push(() => reply.historyMessages());
    this.#carryOut(reply);
    // A reply superseded before it said anything leaves no turn behind.
    if (!reply.audioQueued) return;
    const heard = reply.heardText();
    const timings = reply.timings();
    if (heard !== "") {
      this.#lastAgentLine = { speaker: "agent", text: heard, final: true, at: Date.now() };
    }
    if (timings.e2e_latency !== null) this.#lastTurnLatencyMs = timings.e2e_latency;
    if (timings.e2e_latency !== null) metrics.e2eLatencyObserved(timings.e2e_latency / 1000);
    const index = this.#turnIndex++;
    const generated = reply.generatedText();
    this.#ctx.store.turnCompleted(this.#ctx.callSid, {
      index,
      speaker: "agent",
      text: heard,
      generated: generated === heard ? null : generated,
      cut: reply.cut,
      startedAt: reply.startedAtEpoch,
      endedAt: Date.now(),
      timings,
    });
    const counts = reply.counts();
    this.#ctx.log.info("TURN", "", {
      index,
      reply: reply.id,
      sentences: counts.spoken,
      played: counts.played,
      cut: reply.cut,
      apology: counts.apology,
      ...latencyFields(timings),
    });
  }

  /** The answer chose a transfer or hang-up and was heard to its end: hand the call on. */
  #carryOut(reply: AgentReply): void {
    const action = reply.action;
    if (action === null || reply.cut || this.#closed) return;
    const ctx = this.#ctx;
    if (action.kind === "transfer") {
      ctx.store.transfer(ctx.callSid, {
        at: Date.now(),
        department: action.department,
        target: action.target,
      });
    }
    ctx.log.info("CALL", action.kind === "transfer" ? "transferring" : "agent hangs up", {
      ...(action.kind === "transfer" ? { department: action.department } : {}),
    });
    const carry: Carry = { history: this.#flatHistory(), nextTurn: this.#turnIndex + 1 };
    // After this answer's turn is recorded (below, in the same task), before the socket closes.
    queueMicrotask(() => ctx.handOff({ action, carry: JSON.stringify(carry) }));
  }

  #updateSpeaking(): void {
    const reply = this.#reply;
    const speaking = this.#greeting.playing ||
      (reply !== null && !reply.recorded && reply.audioQueued);
    if (speaking !== this.#detector.agentSpeaking) this.#detector.setAgentSpeaking(speaking);
  }
}

/** A turn's timings as `[TURN]` log fields: `<name>_ms`, rounded to 0.1 ms, "-" when unmeasured. */
function latencyFields(timings: TurnTimings): Record<string, number | null> {
  const fields: Record<string, number | null> = {};
  for (const [name, value] of Object.entries(timings) as [string, number | null][]) {
    fields[`${name}_ms`] = value === null ? null : Math.round(value * 10) / 10;
  }
  return fields;
}
