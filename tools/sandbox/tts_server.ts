/**
 * A real gRPC `google.cloud.texttospeech.v1.TextToSpeech` server for tests and the local sandbox,
 * built from the `cloud_tts.proto` shipped in `@google-cloud/text-to-speech`. `SynthesizeSpeech`
 * answers MULAW (or LINEAR16) with a WAV header, as Google does ("Audio content returned as MULAW
 * also contains a WAV header", cloud_tts.proto), `msPerChar` of audio per character of text, in a
 * deterministic non-silent waveform (`synthWaveform`). Latency and failures are scriptable; requests
 * are recorded.
 *
 * Standalone: `deno run -A tools/sandbox/tts_server.ts --port 50052`
 */
import * as grpc from "@grpc/grpc-js";
import alawmulaw from "alawmulaw";
import { readCommandLine } from "../../src/command_line.ts";
import { ttsService } from "./_protos.ts";

export interface TtsScript {
  /** Delay (ms) before answering. */
  latencyMs: number;
  /** Milliseconds of audio per character (code point) of text. */
  msPerChar: number;
  /** Add LIST and fact chunks before `data` (a parser must walk the chunks, not assume 44 bytes). */
  extraChunks: boolean;
}

export interface TtsRequestRecord {
  readonly text: string;
  readonly languageCode: string;
  readonly voice: string;
  readonly encoding: string;
  readonly sampleRateHertz: number;
}

export interface TtsServer {
  readonly port: number;
  readonly address: string;
  readonly script: TtsScript;
  readonly requests: TtsRequestRecord[];
  /** Fail the next `count` requests with `code`. */
  failNext(count: number, code?: grpc.status, message?: string): void;
  close(): Promise<void>;
}

type Unary = grpc.ServerUnaryCall<Record<string, unknown>, Record<string, unknown>>;

function field(value: unknown, key: string): unknown {
  return typeof value === "object" && value !== null
    ? (value as Record<string, unknown>)[key]
    : undefined;
}

/** The PCM16 samples the fake speaks for `text`: one tone per character, 8000 Hz samples per second. */
export function synthWaveform(text: string, msPerChar: number, sampleRate: number): Int16Array {
  const chars = [...text];
  const perChar = Math.round(sampleRate * msPerChar / 1000);
  const out = new Int16Array(chars.length * perChar);
  chars.forEach((ch, i) => {
    const hz = 300 + ((ch.codePointAt(0) ?? 0) % 20) * 25;
    for (let n = 0; n < perChar; n++) {
      out[i * perChar + n] = Math.round(8000 * Math.sin(2 * Math.PI * hz * n / sampleRate));
    }
  });
  return out;
}

function chunk(id: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + body.length + (body.length % 2));
  out.set(new TextEncoder().encode(id), 0);
  new DataView(out.buffer).setUint32(4, body.length, true);
  out.set(body, 8);
  return out;
}

/** A RIFF/WAVE file: `format` 7 = μ-law, 1 = PCM. */
export function wav(
  data: Uint8Array,
  format: number,
  sampleRate: number,
  bits: number,
  extraChunks: boolean,
): Uint8Array {
  const fmt = new Uint8Array(18);
  const f = new DataView(fmt.buffer);
  f.setUint16(0, format, true);
  f.setUint16(2, 1, true);
  f.setUint32(4, sampleRate, true);
  f.setUint32(8, sampleRate * bits / 8, true);
  f.setUint16(12, bits / 8, true);
  f.setUint16(14, bits, true);
  const parts = [chunk("fmt ", fmt)];
  if (extraChunks) {
    const fact = new Uint8Array(4);
    new DataView(fact.buffer).setUint32(0, data.length / (bits / 8), true);
    parts.push(
      chunk("fact", fact),
      chunk("LIST", new TextEncoder().encode("INFOISFT\x05\x00\x00\x00kav!\x00")),
    );
  }
  parts.push(chunk("data", data));
  const bodyLength = 4 + parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(8 + bodyLength);
  out.set(new TextEncoder().encode("RIFF"), 0);
  new DataView(out.buffer).setUint32(4, bodyLength, true);
  out.set(new TextEncoder().encode("WAVE"), 8);
  let at = 12;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Starts the fake TextToSpeech server on 127.0.0.1 (port 0 = a free one). */
export async function startTtsServer(
  options: Partial<TtsScript> & { port?: number; hostname?: string } = {},
): Promise<TtsServer> {
  const host = options.hostname ?? "127.0.0.1";
  const script: TtsScript = {
    latencyMs: options.latencyMs ?? 0,
    msPerChar: options.msPerChar ?? 60,
    extraChunks: options.extraChunks ?? true,
  };
  const requests: TtsRequestRecord[] = [];
  const failures: { code: grpc.status; message: string }[] = [];
  const timers = new Set<ReturnType<typeof setTimeout>>();

  function answer(call: Unary): { error: grpc.ServiceError | null; audio?: Uint8Array } {
    const text = String(field(call.request.input, "text") ?? "");
    const voice = call.request.voice;
    const audioConfig = call.request.audioConfig;
    const record: TtsRequestRecord = {
      text,
      languageCode: String(field(voice, "languageCode") ?? ""),
      voice: String(field(voice, "name") ?? ""),
      encoding: String(field(audioConfig, "audioEncoding") ?? ""),
      sampleRateHertz: Number(field(audioConfig, "sampleRateHertz") ?? 0),
    };
    requests.push(record);
    const failure = failures.shift();
    const error = (code: grpc.status, details: string) => ({
      error: Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() }),
    });
    if (failure) return error(failure.code, failure.message);
    if (text === "") {
      return error(
        grpc.status.INVALID_ARGUMENT,
        "Either `input.text` or `input.ssml` must be set.",
      );
    }
    if (record.voice !== "" && !record.voice.startsWith(record.languageCode)) {
      return error(grpc.status.INVALID_ARGUMENT, `Voice '${record.voice}' does not exist.`);
    }
    const rate = record.sampleRateHertz || 24000;
    const pcm = synthWaveform(text, script.msPerChar, rate);
    switch (record.encoding) {
      case "MULAW":
        return {
          error: null,
          audio: wav(alawmulaw.mulaw.encode(pcm), 7, rate, 8, script.extraChunks),
        };
      case "LINEAR16":
        return {
          error: null,
          audio: wav(new Uint8Array(pcm.buffer), 1, rate, 16, script.extraChunks),
        };
      default:
        return error(
          grpc.status.INVALID_ARGUMENT,
          `Unsupported audio encoding '${record.encoding}'.`,
        );
    }
  }

  const server = new grpc.Server();
  server.addService(ttsService(), {
    synthesizeSpeech(call: Unary, callback: grpc.sendUnaryData<Record<string, unknown>>) {
      const result = answer(call);
      const id = setTimeout(() => {
        timers.delete(id);
        if (result.error) callback(result.error);
        else callback(null, { audioContent: result.audio });
      }, script.latencyMs);
      timers.add(id);
    },
    listVoices(_call: Unary, callback: grpc.sendUnaryData<Record<string, unknown>>) {
      callback(null, {
        voices: [{ languageCodes: ["he-IL"], name: "he-IL-Wavenet-A", ssmlGender: "FEMALE" }],
      });
    },
    streamingSynthesize(call: grpc.ServerDuplexStream<unknown, unknown>) {
      call.emit("error", {
        code: grpc.status.UNIMPLEMENTED,
        details: "Not implemented by the fake",
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      `${host}:${options.port ?? 0}`,
      grpc.ServerCredentials.createInsecure(),
      (err, bound) => {
        if (err) reject(err);
        else resolve(bound);
      },
    );
  });

  return {
    port,
    address: `${host}:${port}`,
    script,
    requests,
    failNext(count, code = grpc.status.UNAVAILABLE, message = "The service is unavailable") {
      for (let i = 0; i < count; i++) failures.push({ code, message });
    },
    close() {
      for (const id of timers) clearTimeout(id);
      timers.clear();
      server.forceShutdown();
      return Promise.resolve();
    },
  };
}

if (import.meta.main) {
  const { values } = readCommandLine(Deno.args, {
    port: { type: "string", default: "50052" },
    host: { type: "string", default: "127.0.0.1" },
    "latency-ms": { type: "string", default: "0" },
    "ms-per-char": { type: "string", default: "60" },
  });
  const server = await startTtsServer({
    port: Number(values.port),
    hostname: values.host,
    latencyMs: Number(values["latency-ms"]),
    msPerChar: Number(values["ms-per-char"]),
  });
  console.log(`tts_server listening on ${server.address}`);
  Deno.addSignalListener("SIGINT", () => server.close().then(() => Deno.exit(0)));
}
