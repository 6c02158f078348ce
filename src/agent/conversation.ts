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
 */
import type { CallConfig, LogConfig, SttConfig } from "../config/types.ts";
import type { ChatMessage, LlmProvider } from "../llm/types.ts";
import * as metrics from "../observe/metrics.ts";
import type { TurnTimings } from "../store/types.ts";
import type { SttEvent } from "../stt/types.ts";
import type { TtsProvider } from "../tts/types.ts";
import type { AgentContext, AgentFactory, CallAgent, MarkEcho } from "../call/agent.ts";
import type { AgentLive, AgentState, LiveLine } from "../call/live.ts";
import { type AgentReply, speakReply } from "./_reply.ts";
import { Greeting } from "./greeting.ts";
import { type EndOfTurn, systemClock, type TurnClock, TurnDetector } from "./turns.ts";

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
  /** Tests pass a fake; times are ms. */
  readonly clock?: TurnClock;
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
  readonly #system: ChatMessage;
  readonly #greeting: Greeting;
  /** After the greeting: what the caller said and what the caller actually heard. */
  readonly #history: ChatMessage[] = [];
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
    // First, so its first frames leave at once (SPEC: within 50 ms of `start`).
    this.#greeting = Greeting.start(ctx, {
      text: deps.call.greeting,
      audio: deps.phrases.get("greeting"),
      nextTurnIndex: () => this.#turnIndex++,
    });
    this.#system = { role: "system", content: deps.call.system_prompt };
    this.#detector = new TurnDetector(deps.stt, {
      endOfTurn: (turn) => this.#onEndOfTurn(turn),
      bargeIn: (event) => this.#bargeIn(event.at, event.cause),
    }, { clock: this.#clock });
    this.#detector.setAgentSpeaking(this.#greeting.playing);
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
    this.#greeting.close();
    const reply = this.#reply;
    if (reply !== null) {
      reply.cancel();
      await reply.done;
      // The call ended mid-answer: record what was heard so far (sentences whose marks came back).
      this.#finishReply(reply);
    }
  }

  #onEndOfTurn(turn: EndOfTurn): void {
    if (this.#closed) return;
    const nowEpoch = Date.now();
    const now = this.#clock.now();
    const speechEnd = turn.speechEndAt ?? turn.decidedAt;
    const speechStart = Math.min(this.#speechStartAt ?? speechEnd, speechEnd);
    this.#speechStartAt = null;
    // Caller turns span the speech (clock times mapped to epoch ms).
    this.#ctx.store.turnCompleted(this.#ctx.callSid, {
      index: this.#turnIndex++,
      speaker: "caller",
      text: turn.text,
      generated: null,
      cut: false,
      startedAt: Math.round(nowEpoch - Math.max(0, now - speechStart)),
      endedAt: Math.round(nowEpoch - Math.max(0, now - speechEnd)),
      timings: null,
    });
    // A reply still in flight (caller spoke again before it was heard) is superseded.
    const previous = this.#reply;
    if (previous !== null) {
      if (previous.audioQueued) this.#ctx.out.clear();
      this.#cutReply(previous);
    }
    this.#history.push({ role: "user", content: turn.text });
    const reply = speakReply({
      id: ++this.#replySeq,
      turn,
      history: [this.#system, ...this.#greeting.history(), ...this.#history],
      ctx: this.#ctx,
      llm: this.#deps.llm,
      tts: this.#deps.tts,
      apology: this.#deps.phrases.get("apology"),
      apologyText: this.#deps.call.apology,
      clock: this.#clock,
      onSpeaking: () => this.#updateSpeaking(),
    });
    this.#reply = reply;
    reply.done.then(() => {
      if (reply.finished) this.#finishReply(reply);
      this.#updateSpeaking();
    }).catch((error) => {
      // Never an unhandled rejection (it would end the process): log it, the call goes on.
      this.#ctx.log.error("TURN", "reply bookkeeping failed", { error: String(error) });
    });
  }

  #bargeIn(at: number, cause: "vad" | "partial"): void {
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
    this.#finishReply(reply);
  }

  #finishReply(reply: AgentReply): void {
    if (reply.recorded) return;
    reply.recorded = true;
    if (this.#reply === reply) this.#reply = null;
    // A reply superseded before it said anything leaves no turn behind.
    if (!reply.audioQueued) return;
    const heard = reply.heardText();
    if (heard !== "") this.#history.push({ role: "assistant", content: heard });
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
