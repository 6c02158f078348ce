/**
 * What one event loop needs to take calls: the providers (created once per event loop, so each
 * call worker has its own gRPC channels and HTTP clients), the call script a new call gets, and
 * the status-callback recorder. `src/kav.ts` uses it on the main thread (`server.workers = 1`),
 * `src/workers/call_worker.ts` in each call worker. Nothing here opens the store.
 */
import type { AgentFactory } from "./call/agent.ts";
import { createConversationFactory, fillerPhraseName } from "./agent/conversation.ts";
import { ToolBox } from "./agent/tools.ts";
import type { Config } from "./config/types.ts";
import { createOpenAiLlm } from "./llm/openai.ts";
import type { LlmProvider } from "./llm/types.ts";
import type { Logger } from "./observe/log.ts";
import { transferEnded } from "./observe/metrics.ts";
import type { CallEventKind, CallStore } from "./store/types.ts";
import { createGoogleStt } from "./stt/google.ts";
import { createOpenAiStt } from "./stt/openai.ts";
import type { SttProvider } from "./stt/types.ts";
import { createGoogleTts } from "./tts/google.ts";
import { createOpenAiTts } from "./tts/openai.ts";
import type { TtsProvider } from "./tts/types.ts";

export interface KavProviders {
  readonly stt: SttProvider;
  readonly tts: TtsProvider;
  readonly llm: LlmProvider;
}

/** The TTS provider the config names (the main thread synthesizes the fixed phrases with it). */
export function createTts(config: Config): TtsProvider {
  return config.tts.provider === "openai"
    ? createOpenAiTts(config.tts.openai)
    : createGoogleTts({ ...config.tts, language: config.call.language }, {
      credentialsPath: config.google.credentials_path,
    });
}

/**
 * Builds the providers the config names: Google (plaintext gRPC for `insecure` endpoints) or an
 * OpenAI-compatible speech server for `stt.provider` and `tts.provider` (SPEC 10), and the LLM.
 */
export function createProviders(config: Config, log: Logger): KavProviders {
  const credentialsPath = config.google.credentials_path;
  return {
    stt: config.stt.provider === "openai"
      ? createOpenAiStt(config.stt, { log })
      : createGoogleStt(config.stt, { credentialsPath, log }),
    tts: createTts(config),
    llm: createOpenAiLlm(config.llm, { log }),
  };
}

/** The voice of the configured TTS provider (`tts.voice` is Google's, `tts.openai.voice` OpenAI's). */
export function ttsVoice(tts: Config["tts"]): string {
  return tts.provider === "openai" ? tts.openai.voice : tts.voice;
}

/** The fixed phrases' audio (μ-law 8 kHz) by name, as one reload left them. */
export type PhraseAudio = ReadonlyMap<string, Uint8Array>;

/**
 * What a new call gets: the agent of `next`'s greeting, prompt, apology and voice (every other
 * setting, the tools among them, stays `boot`'s), with `phrases` as they were synthesized for `next`. SIGHUP replaces it;
 * active calls keep theirs.
 */
export function callScript(
  boot: Config,
  next: Config,
  providers: KavProviders,
  phrases: PhraseAudio,
): AgentFactory {
  // A copy, so a later reload cannot change an active call's greeting or apology audio.
  const audio = new Map(phrases);
  const { greeting, system_prompt, apology } = next.call;
  const voice = ttsVoice(next.tts);
  return createConversationFactory({
    call: { ...boot.call, greeting, system_prompt, apology },
    stt: boot.stt,
    log: boot.log,
    llm: providers.llm,
    tts: withVoice(providers.tts, () => voice),
    phrases: { get: (name) => audio.get(name) ?? null },
    tools: new ToolBox({ tools: boot.tools, call: boot.call, secret: boot.crm.secret }),
    crm: boot.crm,
  });
}

/** The phrases synthesized at boot and on reload: greeting, apology and each tool's filler. */
export function fixedPhrases(config: Config): Record<string, string> {
  const phrases: Record<string, string> = {
    greeting: config.call.greeting,
    apology: config.call.apology,
  };
  for (const tool of config.tools) {
    if (tool.filler !== null) phrases[fillerPhraseName(tool.name)] = tool.filler;
  }
  return phrases;
}

/** `tts` speaking with `voice()` unless a request names its own voice; closing it is a no-op. */
export function withVoice(tts: TtsProvider, voice: () => string): TtsProvider {
  const stream = tts.stream?.bind(tts);
  return {
    synthesize: (text, options) =>
      tts.synthesize(text, { ...options, voice: options.voice ?? voice() }),
    ...(stream
      ? { stream: (text, options) => stream(text, { ...options, voice: options.voice ?? voice() }) }
      : {}),
    close: () => Promise.resolve(),
  };
}

/** Status callbacks are recorded against their call, off the response path. */
export function recordStatus(
  store: CallStore,
  params: Readonly<Record<string, string>>,
  webhook: string,
): void {
  const callSid = params.CallSid;
  if (!callSid) return;
  const kind: CallEventKind = "stream_status";
  const detail = [webhook, params.StreamEvent, params.StreamError].filter(Boolean).join(" ");
  store.event(callSid, { kind, at: Date.now(), detail });
}

/** Twilio's `<Dial action>` report, recorded against the call's transfer (off the response path). */
export function recordDialEnded(store: CallStore, params: Readonly<Record<string, string>>): void {
  const callSid = params.CallSid;
  if (!callSid) return;
  const status = params.DialCallStatus || "failed";
  const duration = Number(params.DialCallDuration);
  transferEnded(status);
  store.dialEnded(callSid, {
    at: Date.now(),
    status,
    durationS: params.DialCallDuration && Number.isFinite(duration) ? duration : null,
  });
}
