/**
 * The conversation agent and turn detector with fakes, for the orderings an end-to-end call
 * cannot force: a late cleared echo of a cut answer, an apology with no cached audio, and speech
 * ends that must not leak from one utterance into the next.
 */
import assert from "node:assert/strict";
import alawmulaw from "alawmulaw";
import type { AgentContext, Outbound, PlayOptions } from "../src/call/agent.ts";
import { createConversationFactory } from "../src/agent/conversation.ts";
import { type EndOfTurn, TurnDetector } from "../src/agent/turns.ts";
import { parseConfig } from "../src/config/load.ts";
import { ProviderError } from "../src/errors.ts";
import type { ChatMessage, LlmProvider } from "../src/llm/types.ts";
import { createLogger } from "../src/observe/log.ts";
import type { TtsProvider } from "../src/tts/types.ts";
import { MemoryStore } from "./support/memory_store.ts";

const CONFIG = parseConfig(
  '[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n',
  { env: {}, credentialsDir: null },
);
const SID = "CA" + "1".repeat(32);

type Op = { kind: "play"; bytes: number } | { kind: "mark"; name: string } | { kind: "clear" };

/** Queues instantly; records what the agent asked for. */
class FakeOutbound implements Outbound {
  readonly ops: Op[] = [];
  play(mulaw: Uint8Array, options: PlayOptions): Promise<boolean> {
    options.signal.throwIfAborted();
    this.ops.push({ kind: "play", bytes: mulaw.length });
    options.onFirstFrameSent?.();
    return Promise.resolve(true);
  }
  mark(name: string, options: { signal: AbortSignal }): Promise<boolean> {
    options.signal.throwIfAborted();
    this.ops.push({ kind: "mark", name });
    return Promise.resolve(true);
  }
  clear(): void {
    this.ops.push({ kind: "clear" });
  }
  get pendingMarks(): readonly string[] {
    return [];
  }
  get queuedFrames(): number {
    return 0;
  }
  marks(): string[] {
    return this.ops.flatMap((op) => op.kind === "mark" ? [op.name] : []);
  }
}

/** Answers each request with the next scripted reply: text deltas, or an error to throw. */
class FakeLlm implements LlmProvider {
  readonly requests: ChatMessage[][] = [];
  readonly #replies: (string[] | Error)[];
  constructor(...replies: (string[] | Error)[]) {
    this.#replies = replies;
  }
  async *stream(messages: readonly ChatMessage[], options: { signal: AbortSignal }) {
    this.requests.push([...messages]);
    const reply = this.#replies.shift() ?? [];
    await Promise.resolve();
    options.signal.throwIfAborted();
    if (reply instanceof Error) throw reply;
    for (const delta of reply) yield delta;
  }
}

/** 160 bytes of audio per character. */
class FakeTts implements TtsProvider {
  readonly texts: string[] = [];
  synthesize(text: string): Promise<Uint8Array> {
    this.texts.push(text);
    return Promise.resolve(new Uint8Array(160 * text.length).fill(0x55));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function loudFrame(): Uint8Array {
  const pcm = new Int16Array(160);
  for (let i = 0; i < 160; i++) pcm[i] = Math.round(8000 * Math.sin(2 * Math.PI * 440 * i / 8000));
  return alawmulaw.mulaw.encode(pcm);
}

function setup(options: { llm: FakeLlm; phrases?: Record<string, Uint8Array> }) {
  const out = new FakeOutbound();
  const store = new MemoryStore();
  store.callStarted({
    callSid: SID,
    streamSid: "MZ" + "1".repeat(32),
    accountSid: "AC" + "1".repeat(32),
    from: null,
    to: null,
    customParameters: {},
    startedAt: Date.now(),
  });
  const lines: string[] = [];
  const controller = new AbortController();
  const tts = new FakeTts();
  const phrases = options.phrases ?? { greeting: new Uint8Array(1600) };
  const ctx: AgentContext = {
    callSid: SID,
    streamSid: "MZ" + "1".repeat(32),
    accountSid: "AC" + "1".repeat(32),
    customParameters: {},
    out,
    log: createLogger((line) => lines.push(line)).child({ call: SID }),
    signal: controller.signal,
    store,
    hangup: () => {},
    handOff: () => {},
    resume: null,
  };
  const agent = createConversationFactory({
    call: CONFIG.call,
    stt: CONFIG.stt,
    log: CONFIG.log,
    llm: options.llm,
    tts,
    phrases: { get: (name) => phrases[name] ?? null },
  })(ctx);
  const turns = () => store.calls.get(SID)?.turns ?? [];
  /** Lets the agent's async work (LLM read, TTS, queueing) run. */
  const settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  };
  const end = async () => {
    controller.abort(new Error("Call ended: test"));
    await agent.close();
  };
  return { agent, out, store, lines, tts, turns, settle, end };
}

Deno.test("Conversation ignores a cut answer's late cleared echo while the next answer plays", async () => {
  const llm = new FakeLlm(["Yes. ", "We open at nine. ", "And close at five."], ["Sure."]);
  const { agent, out, turns, settle, end } = setup({ llm });
  try {
    agent.onMark("greeting_end", { played: true });
    agent.onSpeech({ type: "final", text: "When do you open", confidence: 0.9 });
    await settle();
    assert.deepEqual(out.marks(), ["greeting_end", "a1_0", "a1_1", "a1_2"]);
    agent.onMark("a1_0", { played: true });
    // The caller talks over sentence 2: the VAD onset (two loud frames) barges in.
    const frame = loudFrame();
    for (let i = 0; i < 3; i++) agent.onInboundAudio(frame);
    assert.deepEqual(out.ops.at(-1), { kind: "clear" });
    agent.onSpeech({ type: "final", text: "Tomorrow", confidence: 0.9 });
    await settle();
    assert.deepEqual(out.marks().slice(4), ["a2_0"]);
    // Twilio echoes the cut answer's marks (cleared) only now, while answer 2 plays.
    agent.onMark("a1_1", { played: false });
    agent.onMark("a1_2", { played: false });
    assert.equal(turns().length, 4, "answer 2 is not finished by answer 1's echoes");
    agent.onMark("a2_0", { played: true });
    assert.deepEqual(turns().map((t) => [t.speaker, t.text, t.cut]), [
      ["agent", CONFIG.call.greeting, false],
      ["caller", "When do you open", false],
      ["agent", "Yes.", true],
      ["caller", "Tomorrow", false],
      ["agent", "Sure.", false],
    ]);
    assert.deepEqual(llm.requests[1].slice(1).map((m) => m.content), [
      CONFIG.call.greeting,
      "When do you open",
      "Yes.",
      "Tomorrow",
    ]);
  } finally {
    await end();
  }
});

Deno.test("Conversation synthesizes the apology when boot could not cache it", async () => {
  const failure = new ProviderError("llm", "timeout", "Streaming chat completion timed out");
  const llm = new FakeLlm(failure);
  const { agent, out, tts, turns, lines, settle, end } = setup({ llm });
  try {
    agent.onMark("greeting_end", { played: true });
    agent.onSpeech({ type: "final", text: "Hello", confidence: 0.9 });
    await settle();
    assert.deepEqual(tts.texts, [CONFIG.call.apology]);
    assert.deepEqual(out.ops.slice(-2), [
      { kind: "play", bytes: 160 * CONFIG.call.apology.length },
      { kind: "mark", name: "a1_0" },
    ]);
    agent.onMark("a1_0", { played: true });
    assert.deepEqual(turns().at(-1)?.text, CONFIG.call.apology);
    assert.ok(lines.some((l) => /\[TURN\].* apology=1 /.test(l)), lines.join("\n"));
  } finally {
    await end();
  }
});

Deno.test("Conversation records nothing of an answer superseded before it spoke", async () => {
  let release = () => {};
  const gate = new Promise<void>((resolve) => release = resolve);
  const slow: LlmProvider = {
    async *stream(_messages, options) {
      await gate;
      options.signal.throwIfAborted();
      yield "Too late.";
    },
  };
  const llm = new FakeLlm(["Both answered."]);
  let calls = 0;
  const either: LlmProvider = {
    stream: (messages, options) => (calls++ === 0 ? slow : llm).stream(messages, options),
  };
  const { agent, out, turns, settle, end } = setup({ llm: either as FakeLlm });
  try {
    agent.onMark("greeting_end", { played: true });
    agent.onSpeech({ type: "final", text: "First", confidence: 0.9 });
    await settle();
    agent.onSpeech({ type: "final", text: "Second", confidence: 0.9 });
    release();
    await settle();
    assert.deepEqual(out.marks(), ["greeting_end", "a2_0"]);
    assert.ok(!out.ops.some((op) => op.kind === "clear"));
    agent.onMark("a2_0", { played: true });
    assert.deepEqual(turns().map((t) => [t.speaker, t.text]), [
      ["agent", CONFIG.call.greeting],
      ["caller", "First"],
      ["caller", "Second"],
      ["agent", "Both answered."],
    ]);
  } finally {
    await end();
  }
});

Deno.test("TurnDetector does not carry a speech end into the next utterance", () => {
  const ends: EndOfTurn[] = [];
  const turns = new TurnDetector(CONFIG.stt, { endOfTurn: (turn) => ends.push(turn) });
  try {
    // The final beats the VAD's hangover: the caller still counts as speaking.
    turns.vad({ type: "speechStart", atMs: 0 });
    turns.stt({ type: "final", text: "one", confidence: 0.9 });
    turns.vad({ type: "speechEnd", atMs: 990 });
    // The next utterance's final also comes before its speech end.
    turns.vad({ type: "speechStart", atMs: 3000 });
    turns.stt({ type: "final", text: "two", confidence: 0.9 });
    assert.deepEqual(ends.map((t) => [t.text, t.speechEndAt]), [["one", null], ["two", null]]);
  } finally {
    turns.close();
  }
});

Deno.test("TurnDetector takes the last voiced frame as speech end when the final beats the hangover", () => {
  const ends: EndOfTurn[] = [];
  const turns = new TurnDetector(CONFIG.stt, { endOfTurn: (turn) => ends.push(turn) });
  try {
    const loud = loudFrame();
    const quiet = new Uint8Array(160).fill(0xff);
    for (let i = 0; i < 10; i++) turns.pushAudio(loud, i * 20);
    turns.pushAudio(quiet, 200);
    turns.pushAudio(quiet, 220);
    assert.equal(turns.callerSpeaking, true, "still inside the 180 ms hangover");
    turns.stt({ type: "final", text: "done", confidence: 0.9 });
    assert.deepEqual(ends.map((t) => [t.text, t.speechEndAt]), [["done", 200]]);
  } finally {
    turns.close();
  }
});

Deno.test("Conversation answers an empty LLM reply with the apology", async () => {
  const llm = new FakeLlm(["  "], ["Fine."]);
  const apology = new Uint8Array(320);
  const { agent, out, store, turns, settle, end } = setup({
    llm,
    phrases: { greeting: new Uint8Array(1600), apology },
  });
  try {
    agent.onMark("greeting_end", { played: true });
    agent.onSpeech({ type: "final", text: "Hello", confidence: 0.9 });
    await settle();
    assert.deepEqual(out.ops.slice(-2), [
      { kind: "play", bytes: apology.length },
      { kind: "mark", name: "a1_0" },
    ]);
    agent.onMark("a1_0", { played: true });
    assert.equal(turns().at(-1)?.text, CONFIG.call.apology);
    assert.equal(store.events(SID, "provider_error").length, 1);
  } finally {
    await end();
  }
});

Deno.test("Conversation queues the greeting and its mark as it is created, and logs it", async () => {
  const { out, lines, turns, end } = setup({ llm: new FakeLlm() });
  try {
    assert.deepEqual(out.ops, [
      { kind: "play", bytes: 1600 },
      { kind: "mark", name: "greeting_end" },
    ]);
    assert.ok(
      lines.some((l) => / \[CALL\] call=CA1+ GREETING queued frames=10$/.test(l)),
      lines.join("\n"),
    );
    assert.deepEqual(turns(), [], "recorded once its mark is back, not before");
  } finally {
    await end();
  }
});

Deno.test("Conversation without greeting audio still sends the mark and records no greeting", async () => {
  const llm = new FakeLlm(["Hi."]);
  const { agent, out, turns, settle, end } = setup({ llm, phrases: {} });
  try {
    assert.deepEqual(out.ops, [{ kind: "play", bytes: 0 }, { kind: "mark", name: "greeting_end" }]);
    agent.onMark("greeting_end", { played: true });
    agent.onSpeech({ type: "final", text: "Hello", confidence: 0.9 });
    await settle();
    agent.onMark("a1_0", { played: true });
    assert.deepEqual(turns().map((t) => [t.speaker, t.text]), [["caller", "Hello"], [
      "agent",
      "Hi.",
    ]]);
    assert.deepEqual(llm.requests[0].map((m) => m.role), ["system", "user"]);
  } finally {
    await end();
  }
});

Deno.test("Conversation records the greeting as cut and drops it from the history on barge-in", async () => {
  const llm = new FakeLlm(["Yes."]);
  const { agent, out, turns, settle, end } = setup({ llm });
  try {
    const frame = loudFrame();
    for (let i = 0; i < 3; i++) agent.onInboundAudio(frame);
    assert.deepEqual(out.ops.at(-1), { kind: "clear" });
    assert.deepEqual(turns().map((t) => [t.speaker, t.text, t.generated, t.cut]), [
      ["agent", "", CONFIG.call.greeting, true],
    ]);
    // Its cleared echo comes later and records nothing more.
    agent.onMark("greeting_end", { played: false });
    agent.onSpeech({ type: "final", text: "Open today", confidence: 0.9 });
    await settle();
    assert.deepEqual(llm.requests[0].map((m) => m.role), ["system", "user"]);
    assert.equal(turns().length, 2);
  } finally {
    await end();
  }
});

Deno.test("Conversation records an unheard greeting when the call ends during it", async () => {
  const { turns, end } = setup({ llm: new FakeLlm() });
  await end();
  assert.deepEqual(turns().map((t) => [t.speaker, t.text, t.generated, t.cut]), [
    ["agent", "", CONFIG.call.greeting, false],
  ]);
});
