/**
 * An OpenAI-compatible speech server for tests and the local sandbox, speaking the exact wire
 * formats: `POST /v1/audio/transcriptions` (multipart form: file, model, language, prompt,
 * response_format, stream) answering JSON `{ "text" }` or, with `stream=true`, SSE text deltas in
 * OpenAI's shape (`transcript.text.delta` … `transcript.text.done`) or vLLM's
 * (`transcription.chunk` objects, then `[DONE]`); and `POST /v1/audio/speech` (JSON: model, voice,
 * input, response_format "pcm" or "wav", instructions) answering raw PCM16 at `sampleRate` or a WAV
 * of it, streamed in chunks. Errors use OpenAI's shape `{ "error": { message, type, param, code } }`.
 *
 * Transcripts are keyed by audio like the gRPC fake (`_clip_matcher.ts`): the WAV's samples are
 * turned back to μ-law and every fixture clip found in them is the text. Faults: `failNext` (an
 * HTTP error for the next N requests), `down(ms)` (not listening at all for a while, as a restarting
 * server), latencies. Every request is recorded.
 *
 * Standalone: `deno run -A tools/sandbox/openai_speech_server.ts --port 8090`, then
 * `base_url = "http://127.0.0.1:8090/v1"` in `[stt.openai]` and `[tts.openai]`.
 */
import { encodeMulaw } from "../../src/audio/mulaw.ts";
import { decodeMulaw } from "../bytes.ts";
import { parseWav } from "../../src/audio/wav.ts";
import { findClips } from "./_clip_matcher.ts";
import { readCommandLine } from "../../src/command_line.ts";
import { type Clip, loadClips } from "./_protos.ts";
import { synthWaveform } from "./tts_server.ts";

/** Behaviour tests may change at any time; it applies to requests received afterwards. */
export interface OpenAiSpeechScript {
  /** SSE shape of streamed transcriptions. */
  sseFormat: "openai" | "vllm";
  /** Delay before a transcription answer (or its first delta), ms. */
  transcribeLatencyMs: number;
  /** Delay between SSE deltas, ms. */
  deltaDelayMs: number;
  /** Delay before a speech answer's first bytes, ms. */
  speechLatencyMs: number;
  /** Bytes per chunk of a speech answer (odd sizes split samples). */
  chunkBytes: number;
  /** Delay between speech chunks, ms. */
  chunkDelayMs: number;
  /** Sample rate of speech answers. */
  sampleRate: number;
  /** WAV answers declare their sizes ("exact") or 0xFFFFFFFF, as a server that streams does. */
  wavSizes: "exact" | "streaming";
  /** The PCM16 spoken for `text` at `rate` (default: the gRPC fake's tones, `msPerChar` each). */
  speechAudio: (text: string, rate: number) => Int16Array;
}

export interface OpenAiSpeechServerOptions extends Partial<OpenAiSpeechScript> {
  readonly clips: readonly Clip[];
  /** Milliseconds of speech per character for the default `speechAudio`. */
  readonly msPerChar?: number;
  /** 0 (default) picks a free port. */
  readonly port?: number;
  readonly hostname?: string;
}

export interface TranscriptionRecord {
  readonly model: string;
  readonly language: string | null;
  readonly prompt: string | null;
  readonly stream: boolean;
  readonly responseFormat: string | null;
  readonly fileName: string;
  readonly fileType: string;
  /** The uploaded audio as μ-law 8 kHz (empty when it could not be read). */
  readonly audio: Uint8Array;
  /** The WAV's encoding as read. */
  readonly encoding: string | null;
  readonly authorization: string | null;
  /** What was answered: the texts found, or the HTTP error status. */
  readonly texts: readonly string[];
  readonly status: number;
}

export interface SpeechRecord {
  readonly body: Readonly<Record<string, unknown>>;
  readonly input: string;
  readonly voice: string;
  readonly responseFormat: string;
  readonly status: number;
  /** `performance.now()` when the first bytes of the answer were handed to the socket. */
  firstByteAt: number | null;
  /** `performance.now()` when the answer's last bytes were handed to the socket. */
  lastByteAt: number | null;
  bytesSent: number;
}

export interface OpenAiSpeechServer {
  /** "http://127.0.0.1:<port>/v1" for `base_url`. */
  readonly baseUrl: string;
  readonly port: number;
  readonly script: OpenAiSpeechScript;
  readonly transcriptions: readonly TranscriptionRecord[];
  readonly speeches: readonly SpeechRecord[];
  /** The texts of every successful transcription, in order. */
  texts(): string[];
  /** The next `count` transcription requests get HTTP `status` (503 by default). */
  failTranscriptions(count: number, status?: number): void;
  /** The next `count` streamed transcriptions break off after their first delta. */
  cutStreams(count: number): void;
  /** The next `count` speech requests get HTTP `status` (503 by default). */
  failSpeech(count: number, status?: number): void;
  /** The next speech answer breaks off (connection reset) once `afterBytes` were sent. */
  cutSpeech(afterBytes: number): void;
  /** Stops listening (connections refused) now, and listens again after `ms`. */
  down(ms: number): Promise<void>;
  /** Whether it is listening. */
  readonly up: boolean;
  close(): Promise<void>;
}

const encoder = new TextEncoder();

function errorResponse(status: number, message: string, param: string | null = null): Response {
  const type = status === 429
    ? "rate_limit_exceeded"
    : status >= 500
    ? "server_error"
    : status === 401
    ? "authentication_error"
    : "invalid_request_error";
  return Response.json({ error: { message, type, param, code: null } }, { status });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(id);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const id = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A 44-byte PCM16 mono WAV header; `dataBytes` null declares the streaming sizes. */
function wavHeader(rate: number, dataBytes: number | null): Uint8Array {
  const header = new Uint8Array(44);
  const view = new DataView(header.buffer);
  header.set(encoder.encode("RIFF"), 0);
  view.setUint32(4, dataBytes === null ? 0xffffffff : 36 + dataBytes, true);
  header.set(encoder.encode("WAVEfmt "), 8);
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  header.set(encoder.encode("data"), 36);
  view.setUint32(40, dataBytes === null ? 0xffffffff : dataBytes, true);
  return header;
}

function sse(data: unknown): Uint8Array {
  return encoder.encode(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
}

/** Starts the server on 127.0.0.1 (port 0 = a free one); resolves once it listens. */
// deno-lint-ignore require-await -- async keeps the API free to await a listener later
export async function startOpenAiSpeechServer(
  options: OpenAiSpeechServerOptions,
): Promise<OpenAiSpeechServer> {
  const msPerChar = options.msPerChar ?? 60;
  const script: OpenAiSpeechScript = {
    sseFormat: options.sseFormat ?? "openai",
    transcribeLatencyMs: options.transcribeLatencyMs ?? 0,
    deltaDelayMs: options.deltaDelayMs ?? 0,
    speechLatencyMs: options.speechLatencyMs ?? 0,
    chunkBytes: options.chunkBytes ?? 4800,
    chunkDelayMs: options.chunkDelayMs ?? 0,
    sampleRate: options.sampleRate ?? 24_000,
    wavSizes: options.wavSizes ?? "streaming",
    speechAudio: options.speechAudio ?? ((text, rate) => synthWaveform(text, msPerChar, rate)),
  };
  // μ-law has two zeros; decoding and encoding again makes both sides of a match canonical.
  const clips = options.clips.map((clip) => ({
    ...clip,
    audio: encodeMulaw(decodeMulaw(clip.audio)),
  }));
  const transcriptions: TranscriptionRecord[] = [];
  const speeches: SpeechRecord[] = [];
  const transcriptionFailures: number[] = [];
  const speechFailures: number[] = [];
  let streamsToCut = 0;
  const speechCuts: number[] = [];
  const hostname = options.hostname ?? "127.0.0.1";
  let lifetime = new AbortController();
  const closed = new AbortController();
  let downTimer: ReturnType<typeof setTimeout> | undefined;

  async function transcribe(request: Request): Promise<Response> {
    let form: FormData;
    try {
      form = await request.formData();
    } catch {
      return errorResponse(400, "Could not parse multipart form");
    }
    const file = form.get("file");
    const field = (name: string) => {
      const value = form.get(name);
      return typeof value === "string" ? value : null;
    };
    const base = {
      model: field("model") ?? "",
      language: field("language"),
      prompt: field("prompt"),
      stream: field("stream") === "true",
      responseFormat: field("response_format"),
      fileName: file instanceof File ? file.name : "",
      fileType: file instanceof File ? file.type : "",
      authorization: request.headers.get("authorization"),
    };
    const reject = (status: number, message: string, param: string | null = null) => {
      transcriptions.push({ ...base, audio: new Uint8Array(0), encoding: null, texts: [], status });
      return errorResponse(status, message, param);
    };
    if (!(file instanceof File)) return reject(400, "you must provide a file", "file");
    if (base.model === "") return reject(400, "you must provide a model parameter", "model");
    let audio: Uint8Array;
    let encoding: string;
    try {
      const wav = parseWav(new Uint8Array(await file.arrayBuffer()));
      audio = wav.mulaw;
      encoding = wav.encoding;
    } catch (error) {
      return reject(400, `Audio file might be corrupted or unsupported: ${error}`, "file");
    }
    const failure = transcriptionFailures.shift();
    if (failure !== undefined) {
      transcriptions.push({ ...base, audio, encoding, texts: [], status: failure });
      return errorResponse(failure, `Scripted failure with status ${failure}`);
    }
    const texts = findClips(clips, audio).map((found) => found.text);
    transcriptions.push({ ...base, audio, encoding, texts, status: 200 });
    const text = texts.join(" ");
    if (!base.stream) {
      await sleep(script.transcribeLatencyMs, lifetime.signal);
      return Response.json({ text, usage: { type: "duration", seconds: audio.length / 8000 } });
    }
    const words = text.split(/\s+/).filter((w) => w !== "");
    const format = script.sseFormat;
    const cut = streamsToCut > 0;
    if (cut) streamsToCut--;
    const id = `trsc-${transcriptions.length}`;
    // Deno cancels the body when the client goes away (request.signal fires on success too).
    const left = new AbortController();
    const signal = AbortSignal.any([left.signal, lifetime.signal]);
    const body = new ReadableStream<Uint8Array>({
      cancel: () => left.abort(),
      async start(controller) {
        try {
          await sleep(script.transcribeLatencyMs, signal);
          for (let i = 0; i < words.length && !signal.aborted; i++) {
            if (i > 0) await sleep(script.deltaDelayMs, signal);
            const delta = i === 0 ? words[i] : ` ${words[i]}`;
            const last = i === words.length - 1;
            controller.enqueue(sse(
              format === "openai" ? { type: "transcript.text.delta", delta } : {
                id,
                object: "transcription.chunk",
                created: Math.floor(Date.now() / 1000),
                model: base.model,
                choices: [{ delta: { content: delta }, finish_reason: last ? "stop" : null }],
              },
            ));
            // Erroring the body makes Deno reset the connection: a broken stream.
            if (cut) throw new Error("Scripted stream cut (expected in tests)");
          }
          if (signal.aborted) {
            throw new Error("Client left or server going down (expected in tests)");
          }
          if (format === "openai") {
            controller.enqueue(sse({ type: "transcript.text.done", text }));
          } else {
            if (words.length === 0) {
              controller.enqueue(sse({
                id,
                object: "transcription.chunk",
                created: Math.floor(Date.now() / 1000),
                model: base.model,
                choices: [{ delta: { content: "" }, finish_reason: "stop" }],
              }));
            }
            controller.enqueue(sse("[DONE]"));
          }
          controller.close();
        } catch (error) {
          controller.error(error);
        }
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" },
    });
  }

  async function speak(request: Request): Promise<Response> {
    let body: Record<string, unknown>;
    try {
      const parsed: unknown = await request.json();
      if (typeof parsed !== "object" || parsed === null) throw new TypeError("not an object");
      body = parsed as Record<string, unknown>;
    } catch {
      return errorResponse(400, "We could not parse the JSON body of your request.");
    }
    const input = typeof body.input === "string" ? body.input : "";
    const voice = typeof body.voice === "string" ? body.voice : "";
    const format = typeof body.response_format === "string" ? body.response_format : "mp3";
    const record: SpeechRecord = {
      body,
      input,
      voice,
      responseFormat: format,
      status: 200,
      firstByteAt: null,
      lastByteAt: null,
      bytesSent: 0,
    };
    speeches.push(record);
    const fail = (status: number, message: string, param: string | null = null) => {
      (record as { status: number }).status = status;
      return errorResponse(status, message, param);
    };
    if (input.trim() === "") return fail(400, "[] is too short - 'input'", "input");
    if (voice === "") return fail(400, "[] is too short - 'voice'", "voice");
    if (format !== "pcm" && format !== "wav") {
      return fail(400, `The fake speaks only pcm and wav, not '${format}'`, "response_format");
    }
    const failure = speechFailures.shift();
    if (failure !== undefined) return fail(failure, `Scripted failure with status ${failure}`);
    const cutAfter = speechCuts.shift() ?? Infinity;
    const rate = script.sampleRate;
    const pcm = script.speechAudio(input, rate);
    const data = new Uint8Array(pcm.length * 2);
    const view = new DataView(data.buffer);
    for (let i = 0; i < pcm.length; i++) view.setInt16(i * 2, pcm[i], true);
    let bytes = data;
    if (format === "wav") {
      const header = wavHeader(rate, script.wavSizes === "exact" ? data.length : null);
      bytes = new Uint8Array(header.length + data.length);
      bytes.set(header);
      bytes.set(data, header.length);
    }
    const left = new AbortController();
    const signal = AbortSignal.any([left.signal, lifetime.signal]);
    const chunkBytes = Math.max(1, script.chunkBytes);
    const chunkDelayMs = script.chunkDelayMs;
    await sleep(script.speechLatencyMs, signal);
    const stream = new ReadableStream<Uint8Array>({
      cancel: () => left.abort(),
      async start(controller) {
        try {
          for (let at = 0; at < bytes.length && !signal.aborted; at += chunkBytes) {
            if (at > 0) await sleep(chunkDelayMs, signal);
            if (record.bytesSent >= cutAfter) {
              throw new Error("Scripted speech cut (expected in tests)");
            }
            record.firstByteAt ??= performance.now();
            const chunk = bytes.slice(at, at + chunkBytes);
            controller.enqueue(chunk);
            record.bytesSent += chunk.length;
          }
          if (signal.aborted) {
            throw new Error("Client left or server going down (expected in tests)");
          }
          record.lastByteAt = performance.now();
          controller.close();
        } catch (error) {
          controller.error(error);
        }
      },
    });
    return new Response(stream, {
      headers: { "content-type": format === "wav" ? "audio/wav" : "audio/pcm" },
    });
  }

  function handle(request: Request): Promise<Response> | Response {
    const path = new URL(request.url).pathname;
    if (request.method !== "POST") return errorResponse(405, "Method not allowed");
    if (path === "/v1/audio/transcriptions") return transcribe(request);
    if (path === "/v1/audio/speech") return speak(request);
    return errorResponse(404, `Invalid URL (POST ${path})`);
  }

  const listen = (port: number) =>
    Deno.serve({ port, hostname, signal: lifetime.signal, onListen() {} }, handle);
  let server = listen(options.port ?? 0);
  const port = server.addr.port;
  let up = true;

  const goDown = async () => {
    up = false;
    lifetime.abort();
    await server.finished;
  };

  return {
    baseUrl: `http://${hostname}:${port}/v1`,
    port,
    script,
    transcriptions,
    speeches,
    texts: () => transcriptions.filter((t) => t.status === 200).map((t) => t.texts.join(" ")),
    failTranscriptions(count, status = 503) {
      for (let i = 0; i < count; i++) transcriptionFailures.push(status);
    },
    cutStreams(count) {
      streamsToCut += count;
    },
    failSpeech(count, status = 503) {
      for (let i = 0; i < count; i++) speechFailures.push(status);
    },
    cutSpeech(afterBytes) {
      speechCuts.push(afterBytes);
    },
    get up() {
      return up;
    },
    async down(ms) {
      clearTimeout(downTimer);
      if (up) await goDown();
      downTimer = setTimeout(() => {
        if (closed.signal.aborted) return;
        lifetime = new AbortController();
        server = listen(port);
        up = true;
      }, ms);
    },
    async close() {
      closed.abort();
      clearTimeout(downTimer);
      if (up) await goDown();
    },
  };
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    clips: { type: "string", default: new URL("./fixtures/clips.json", import.meta.url).pathname },
    port: { type: "string", default: "8090" },
    host: { type: "string", default: "127.0.0.1" },
    sse: { type: "string", default: "openai" },
  });
  const server = await startOpenAiSpeechServer({
    clips: loadClips(values.clips),
    port: Number(values.port),
    hostname: values.host,
    sseFormat: values.sse === "vllm" ? "vllm" : "openai",
  });
  console.log(`OpenAI-compatible speech server on ${server.baseUrl}`);
  Deno.addSignalListener("SIGINT", () => void server.close().then(() => Deno.exit(0)));
}
