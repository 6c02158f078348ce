/**
 * Loads the real Google service definitions for the local test servers: the `.proto` files shipped
 * inside the installed `@google-cloud/speech` and `@google-cloud/text-to-speech` packages, with
 * google-gax's copies of `google/api`, `google/rpc`, `google/protobuf` and `google/longrunning`.
 * Paths are resolved through Node resolution, so the npm layout (`node_modules/.deno/...`) and
 * package versions do not matter.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { existsSync, readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** The directory holding `package.json` of `name`, resolved from `fromFile`. */
function packageRoot(name: string, fromFile: string): string {
  const entry = createRequire(fromFile).resolve(name);
  let dir = dirname(entry);
  for (;;) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest)) {
      const parsed: unknown = JSON.parse(readFileSync(manifest, "utf8"));
      if (
        typeof parsed === "object" && parsed !== null && "name" in parsed && parsed.name === name
      ) {
        return dir;
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`Cannot find the package root of "${name}"`);
    dir = parent;
  }
}

/** Where the proto trees live; exported so a failure can name them. */
export function protoPaths(): { speech: string; tts: string; gax: string } {
  const here = new URL(import.meta.url).pathname;
  const speech = packageRoot("@google-cloud/speech", here);
  const tts = packageRoot("@google-cloud/text-to-speech", here);
  const gax = packageRoot("google-gax", join(speech, "package.json"));
  return {
    speech: join(speech, "build", "protos"),
    tts: join(tts, "build", "protos"),
    gax: join(gax, "build", "protos"),
  };
}

/** Same conversions google-gax's clients see on the wire; camelCase fields, enums as names. */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: false,
  oneofs: true,
};

function loadService(
  root: string,
  file: string,
  service: string[],
): grpc.ServiceDefinition {
  const paths = protoPaths();
  const definition = protoLoader.loadSync(join(root, file), {
    ...LOADER_OPTIONS,
    includeDirs: [root, paths.gax],
  });
  let node: unknown = grpc.loadPackageDefinition(definition);
  for (const part of service) {
    if (typeof node !== "object" && typeof node !== "function") break;
    node = node === null ? undefined : (node as Record<string, unknown>)[part];
  }
  if (typeof node !== "function" || !("service" in node)) {
    throw new Error(`Cannot find service "${service.join(".")}" in "${file}"`);
  }
  return (node as unknown as { service: grpc.ServiceDefinition }).service;
}

/** `google.cloud.speech.v1.Speech` (Recognize, LongRunningRecognize, StreamingRecognize). */
export function speechService(): grpc.ServiceDefinition {
  return loadService(
    protoPaths().speech,
    "google/cloud/speech/v1/cloud_speech.proto",
    ["google", "cloud", "speech", "v1", "Speech"],
  );
}

/** `google.cloud.texttospeech.v1.TextToSpeech` (SynthesizeSpeech, ...). */
export function ttsService(): grpc.ServiceDefinition {
  return loadService(
    protoPaths().tts,
    "google/cloud/texttospeech/v1/cloud_tts.proto",
    ["google", "cloud", "texttospeech", "v1", "TextToSpeech"],
  );
}

/** A test clip: exact μ-law bytes and what the fake recognizer says they mean. */
export interface Clip {
  readonly name: string;
  readonly audio: Uint8Array;
  readonly text: string;
}

/** Reads a `clips.json` (file name → transcript) and the `.ulaw` files it names (same folder or `audio/`). */
export function loadClips(jsonPath: string): Clip[] {
  const parsed: unknown = JSON.parse(readFileSync(jsonPath, "utf8"));
  if (typeof parsed !== "object" || parsed === null) {
    throw new TypeError(`Cannot read clips from "${jsonPath}": not an object`);
  }
  const base = dirname(jsonPath);
  const clips: Clip[] = [];
  for (const [file, text] of Object.entries(parsed)) {
    if (typeof text !== "string") throw new TypeError(`Cannot read clip "${file}": not a string`);
    const direct = join(base, file);
    const path = existsSync(direct) ? direct : join(base, "audio", file);
    clips.push({
      name: file.replace(/\.ulaw$/, ""),
      audio: new Uint8Array(readFileSync(path)),
      text,
    });
  }
  return clips;
}
