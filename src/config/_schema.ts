/**
 * Every key of the TOML file: its type, default and bounds. Defaults are SPEC section 4 values.
 * Keys are dotted paths ("stt.google.endpoint"); the tables are derived from them.
 */
import { checkHttpUrl, checkSpeechUrl } from "./_urls.ts";

/** What a validated value can be; `null` only for nullable strings ("" in the file). */
export type ConfigValue = string | number | boolean | null;

/** Returns a problem message, or null when the value is acceptable. */
export type Check = (value: string) => string | null;

export type Rule =
  | { readonly kind: "int"; readonly default: number; readonly min: number; readonly max: number }
  | {
    readonly kind: "number";
    readonly default: number;
    readonly min: number;
    readonly max: number;
  }
  | { readonly kind: "bool"; readonly default: boolean }
  | { readonly kind: "string"; readonly default: string | null; readonly check?: Check }
  /** "" in the file means "off" (null): TOML has no null. */
  | { readonly kind: "nullable_string"; readonly default: string | null; readonly check?: Check }
  | { readonly kind: "enum"; readonly default: string; readonly values: readonly string[] };

const MIB = 1024 * 1024;

/** Whether `hostname` can only be reached from this host (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.toLowerCase();
  return host === "localhost" || host === "::1" || /^127(?:\.\d{1,3}){3}$/.test(host);
}

/** "host:port" or "[v6]:port", port 0-65535. */
export function parseListen(value: string): { hostname: string; port: number } | null {
  const match = /^(?:\[([0-9A-Fa-f:.%\w]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(value);
  if (!match) return null;
  const port = Number(match[3]);
  if (port > 65535) return null;
  return { hostname: match[1] ?? match[2], port };
}

function checkListen(value: string): string | null {
  return parseListen(value) === null
    ? `must be "host:port" (IPv6 as "[::]:8080") with a port up to 65535: current value is ${
      JSON.stringify(value)
    }`
    : null;
}

function checkEndpoint(value: string): string | null {
  return /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/.test(value)
    ? null
    : `must be "host" or "host:port": current value is ${JSON.stringify(value)}`;
}

function checkNonEmpty(value: string): string | null {
  return value.trim() === "" ? "must not be empty" : null;
}

/** A fleet node's name: letters, digits, ".", "_" and "-", as host names are. */
function checkNodeId(value: string): string | null {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(value)
    ? null
    : `must be 1-63 letters, digits, ".", "_" or "-": current value is ${JSON.stringify(value)}`;
}

/**
 * `postgres://user@host[:port][,host2[:port]]/database[?options]`. The password never comes from
 * the file (env PGPASSWORD or the credential db_password), so a URL that carries one is refused.
 */
export function checkPostgresUrl(value: string): string | null {
  const match = /^postgres(?:ql)?:\/\/(?:([^@/?#]*)@)?([^/?#]+)(?:\/([^?#]*))?(?:\?[^#]*)?$/.exec(
    value,
  );
  if (match === null) {
    return `must be a URL like "postgres://kav@db.example.com/kav": current value is ${
      JSON.stringify(value)
    }`;
  }
  const userInfo = match[1] ?? "";
  if (userInfo.includes(":")) {
    return "must not carry a password: remove it from the URL and set env PGPASSWORD or the systemd credential db_password";
  }
  if (userInfo === "" || (match[3] ?? "") === "") {
    return `must name the user and the database ("postgres://kav@db.example.com/kav"): current value is ${
      JSON.stringify(value)
    }`;
  }
  return null;
}

function checkLanguage(value: string): string | null {
  return /^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$/.test(value)
    ? null
    : `must be a BCP-47 language tag like "he-IL": current value is ${JSON.stringify(value)}`;
}

const int = (def: number, min: number, max: number): Rule => ({
  kind: "int",
  default: def,
  min,
  max,
});
const num = (def: number, min: number, max: number): Rule => ({
  kind: "number",
  default: def,
  min,
  max,
});
const bool = (def: boolean): Rule => ({ kind: "bool", default: def });
const str = (def: string | null, check?: Check): Rule => ({ kind: "string", default: def, check });

/** The default spoken greeting ("Hello, you have reached us. How can I help?"). */
export const DEFAULT_GREETING = "שלום, הגעתם אלינו. במה אפשר לעזור?";
/** The default apology ("Sorry, I have a momentary problem. Could you repeat that?"). */
export const DEFAULT_APOLOGY = "סליחה, יש לי תקלה רגעית. אפשר לחזור על זה?";
export const DEFAULT_SYSTEM_PROMPT =
  "You are a polite phone agent for a business. Answer in short spoken Hebrew sentences, " +
  "without lists, markup or emojis. If you do not know something, say so and offer to pass a message.";

/** All keys; `default: null` on a plain string means the key is required. */
export const SCHEMA: ReadonlyMap<string, Rule> = new Map<string, Rule>([
  ["server.listen", str("0.0.0.0:8080", checkListen)],
  ["server.public_url", str(null, checkHttpUrl)],
  ["server.drain_timeout_s", num(30, 0, 3600)],
  ["server.tls_cert", { kind: "nullable_string", default: null }],
  ["server.tls_key", { kind: "nullable_string", default: null }],
  ["server.max_calls", int(500, 1, 100_000)],
  ["server.max_ws_message_bytes", int(65536, 1024, 16 * MIB)],
  ["server.max_body_bytes", int(65536, 1024, 16 * MIB)],
  ["server.idle_media_timeout_s", num(15, 0.1, 3600)],
  ["server.max_call_duration_s", num(3600, 1, 86_400)],
  ["server.bad_signature_per_ip_per_min", int(30, 1, 1_000_000)],
  ["server.helper_thread_nice", int(10, 0, 19)],
  ["server.workers", int(0, 0, 256)],
  ["server.node_id", { kind: "nullable_string", default: null, check: checkNodeId }],
  ["server.voice_url", { kind: "nullable_string", default: null, check: checkHttpUrl }],
  ["twilio.validate_signatures", bool(true)],
  ["call.language", str("he-IL", checkLanguage)],
  ["call.greeting", str(DEFAULT_GREETING, checkNonEmpty)],
  ["call.system_prompt", str(DEFAULT_SYSTEM_PROMPT, checkNonEmpty)],
  ["call.apology", str(DEFAULT_APOLOGY, checkNonEmpty)],
  ["call.end_call", bool(true)],
  ["call.filler_after_ms", int(800, 0, 60_000)],
  ["audio.rx_queue_frames", int(200, 10, 50_000)],
  ["audio.tx_queue_frames", int(144, 10, 50_000)],
  ["audio.tx_lead_ms", int(60, 0, 1000)],
  ["audio.tx_max_buffered_bytes", int(32768, 1024, 16 * MIB)],
  ["stt.provider", { kind: "enum", default: "google", values: ["google", "openai"] }],
  ["stt.batch_ms", int(40, 20, 200)],
  ["stt.partial_debounce_ms", int(90, 0, 2000)],
  ["stt.timeout_ms", int(320, 20, 10_000)],
  ["stt.vad_hangover_ms", int(180, 0, 5000)],
  ["stt.restart_after_s", num(290, 0.1, 295)],
  ["stt.google.endpoint", str("speech.googleapis.com", checkEndpoint)],
  ["stt.google.fallback_endpoint", {
    kind: "nullable_string",
    default: "us-central1-speech.googleapis.com",
    check: checkEndpoint,
  }],
  ["stt.google.insecure", bool(false)],
  ["stt.google.model", str("phone_call", checkNonEmpty)],
  ["stt.google.use_enhanced", bool(true)],
  ["stt.openai.base_url", str("https://api.openai.com/v1", checkSpeechUrl)],
  ["stt.openai.fallback_base_url", {
    kind: "nullable_string",
    default: null,
    check: checkSpeechUrl,
  }],
  ["stt.openai.model", str("gpt-4o-transcribe", checkNonEmpty)],
  ["stt.openai.stream", bool(false)],
  ["stt.openai.prompt", { kind: "nullable_string", default: null }],
  ["stt.openai.silence_ms", int(500, 100, 5000)],
  ["stt.openai.max_utterance_s", int(15, 2, 120)],
  ["stt.openai.timeout_ms", int(10_000, 500, 600_000)],
  ["tts.provider", { kind: "enum", default: "google", values: ["google", "openai"] }],
  ["tts.voice", str("he-IL-Wavenet-A", checkNonEmpty)],
  ["tts.google.endpoint", str("texttospeech.googleapis.com", checkEndpoint)],
  ["tts.google.insecure", bool(false)],
  ["tts.openai.base_url", str("https://api.openai.com/v1", checkSpeechUrl)],
  ["tts.openai.model", str("gpt-4o-mini-tts", checkNonEmpty)],
  ["tts.openai.voice", str("alloy", checkNonEmpty)],
  ["tts.openai.instructions", { kind: "nullable_string", default: null }],
  ["tts.openai.response_format", { kind: "enum", default: "pcm", values: ["pcm", "wav"] }],
  ["tts.openai.sample_rate", int(24_000, 8000, 48_000)],
  ["tts.openai.stream", bool(true)],
  ["tts.openai.timeout_ms", int(10_000, 500, 600_000)],
  ["llm.provider", { kind: "enum", default: "openai", values: ["openai"] }],
  ["llm.base_url", str("https://api.openai.com/v1", checkHttpUrl)],
  ["llm.model", str("gpt-4o-mini", checkNonEmpty)],
  ["llm.timeout_ms", int(8000, 100, 600_000)],
  ["llm.temperature", num(0.3, 0, 2)],
  ["llm.max_tokens", int(300, 1, 100_000)],
  ["storage.path", str("/var/lib/kav/kav.db", checkNonEmpty)],
  ["storage.retention_days", int(0, 0, 36_500)],
  ["storage.url", { kind: "nullable_string", default: null, check: checkPostgresUrl }],
  ["log.transcripts", bool(true)],
  ["crm.url", { kind: "nullable_string", default: null, check: checkHttpUrl }],
  ["crm.context_url", { kind: "nullable_string", default: null, check: checkHttpUrl }],
  // The operator console's own listener (SPEC 7); "" turns it off.
  ["admin.listen", { kind: "nullable_string", default: "127.0.0.1:9090", check: checkListen }],
]);

/** Secrets (and the Google credential path) never read from the file, with where they come from. */
export const SECRET_KEYS: ReadonlyMap<string, { env: string; credential: string }> = new Map([
  ["twilio.auth_token", { env: "TWILIO_AUTH_TOKEN", credential: "twilio_auth_token" }],
  ["llm.api_key", { env: "OPENAI_API_KEY", credential: "openai_api_key" }],
  // Per speech provider, for a speech server with its own key; else the LLM's key is used.
  ["stt.openai.api_key", { env: "OPENAI_STT_API_KEY", credential: "openai_stt_api_key" }],
  ["tts.openai.api_key", { env: "OPENAI_TTS_API_KEY", credential: "openai_tts_api_key" }],
  ["crm.secret", { env: "KAV_CRM_SECRET", credential: "crm_secret" }],
  ["storage.password", { env: "PGPASSWORD", credential: "db_password" }],
  ["admin.token", { env: "KAV_ADMIN_TOKEN", credential: "admin_token" }],
  [
    "google.credentials_path",
    { env: "GOOGLE_APPLICATION_CREDENTIALS", credential: "google_credentials" },
  ],
]);

/**
 * Tables whose keys the operator names (`[call.transfer]` departments) or arrays of tables
 * (`[[tools]]`): `_agent_acts.ts` validates them, the flat walk skips them.
 */
export const FREE_FORM_KEYS: ReadonlySet<string> = new Set(["call.transfer", "tools"]);

/** Every table path that may appear ("server", "stt", "stt.google", ...). */
export const TABLES: ReadonlySet<string> = new Set(
  [...SCHEMA.keys(), ...SECRET_KEYS.keys()].flatMap((key) => {
    const parts = key.split(".");
    return parts.slice(1).map((_, i) => parts.slice(0, i + 1).join("."));
  }),
);
