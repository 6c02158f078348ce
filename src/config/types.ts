/**
 * The validated, frozen configuration tree. Only `src/config/` builds it; every other module
 * receives the slice it needs. Field names mirror the TOML keys of SPEC section 4.
 */

export interface ServerConfig {
  /** Host to bind, from `server.listen` ("0.0.0.0:8080"). */
  readonly hostname: string;
  /** Port to bind, from `server.listen`; 0 picks a free port (tests). */
  readonly port: number;
  /** Public base URL without trailing slash, e.g. "https://kav.example.com". */
  readonly public_url: string;
  readonly drain_timeout_s: number;
  /** PEM paths; both set ⇒ Kav terminates TLS itself. */
  readonly tls_cert: string | null;
  readonly tls_key: string | null;
  /** Concurrent calls accepted; over it the TwiML says busy and the upgrade gets 503. */
  readonly max_calls: number;
  /** Largest inbound WebSocket text message accepted, in bytes. */
  readonly max_ws_message_bytes: number;
  /** Largest webhook request body accepted, in bytes. */
  readonly max_body_bytes: number;
  /** No inbound media for this long ⇒ the call is closed with outcome `idle`. */
  readonly idle_media_timeout_s: number;
  /** Hard cap on one call's length. */
  readonly max_call_duration_s: number;
  /** Requests with bad signatures allowed per remote IP per minute before 429. */
  readonly bad_signature_per_ip_per_min: number;
  /**
   * Nice increment for V8's GC and compiler helper threads relative to the event loop (0 leaves
   * them alone): on a shared core they wait instead of taking turns with frames and webhooks.
   */
  readonly helper_thread_nice: number;
  /**
   * Call workers (SPEC 8): each an event loop of its own on the shared listen port. 0 = one per
   * core this process may run on (CPU affinity and cgroup quota); 1 runs calls on the main thread.
   */
  readonly workers: number;
  /** This node's name in a fleet's records (`server.node_id`, default the host name). */
  readonly node_id: string;
  /**
   * A fleet's shared base URL in front of `/twiml` (a load balancer), without trailing slash: a
   * `/twiml` request signed for it is accepted too. Null: only `public_url`.
   */
  readonly voice_url: string | null;
}

export interface TwilioConfig {
  readonly validate_signatures: boolean;
  /** From env TWILIO_AUTH_TOKEN or credential `twilio_auth_token`; null when absent. */
  readonly auth_token: string | null;
}

export interface CallConfig {
  readonly language: string;
  readonly greeting: string;
  readonly system_prompt: string;
  /** Spoken when the LLM or TTS fails; synthesized at boot. */
  readonly apology: string;
  /** Offer the model the built-in `end_call` tool (SPEC 6). */
  readonly end_call: boolean;
  /** A tool slower than this (ms) gets its filler phrase spoken. */
  readonly filler_after_ms: number;
  /**
   * `[call.transfer]`: department → "+E164" number or "sip:" URI, for the built-in
   * `transfer_call(department)` tool; empty when transfers are off.
   */
  readonly transfer: Readonly<Record<string, string>>;
}

/** One `[[tools]]` entry: an operator tool, an HTTPS endpoint of the CRM (SPEC 6). */
export interface ToolConfig {
  /** The function name the model calls (letters, digits, "_" and "-", up to 64). */
  readonly name: string;
  readonly description: string;
  readonly url: string;
  /** Deadline of the one request (never retried), ms. */
  readonly timeout_ms: number;
  /** Spoken once when the tool has not answered within `call.filler_after_ms`; null for none. */
  readonly filler: string | null;
  /** JSON Schema of the arguments (compiled and checked at load). */
  readonly parameters: Readonly<Record<string, unknown>>;
}

export interface AudioConfig {
  readonly rx_queue_frames: number;
  readonly tx_queue_frames: number;
  readonly tx_lead_ms: number;
  /** TX pauses while the socket's bufferedAmount is above this many bytes. */
  readonly tx_max_buffered_bytes: number;
}

export interface GoogleEndpointConfig {
  /** "host" or "host:port". */
  readonly endpoint: string;
  /** Plaintext gRPC, no Google credential lookup: local/test servers only. */
  readonly insecure: boolean;
}

export interface SttGoogleConfig extends GoogleEndpointConfig {
  /** Tried when the primary refuses the language or stays unavailable; null to disable. */
  readonly fallback_endpoint: string | null;
  readonly model: string;
  readonly use_enhanced: boolean;
}

/** An OpenAI-compatible speech server (OpenAI itself, or an on-prem Whisper or vLLM server). */
export interface OpenAiSpeechServerConfig {
  /** API root, e.g. "https://api.openai.com/v1"; plain http only to loopback or private hosts. */
  readonly base_url: string;
  readonly model: string;
  /**
   * From env OPENAI_STT_API_KEY / OPENAI_TTS_API_KEY (credential openai_stt_api_key /
   * openai_tts_api_key), else the LLM's OPENAI_API_KEY (credential openai_api_key); null when none.
   */
  readonly api_key: string | null;
  /** Deadline of one request (ms). */
  readonly timeout_ms: number;
}

export interface SttOpenAiConfig extends OpenAiSpeechServerConfig {
  /** Tried after `base_url` on each attempt that fails retryably; null when none. */
  readonly fallback_base_url: string | null;
  /** Read the SSE stream of partial text (`transcript.text.delta`, vLLM's chunks). */
  readonly stream: boolean;
  /** Sent as `prompt` (vocabulary, names); null sends none. */
  readonly prompt: string | null;
  /** Silence that ends an utterance cut by Kav's VAD and sent for transcription (ms). */
  readonly silence_ms: number;
  /** An utterance longer than this is cut and sent (s). */
  readonly max_utterance_s: number;
}

export interface TtsOpenAiConfig extends OpenAiSpeechServerConfig {
  readonly voice: string;
  /** Sent as `instructions` (tone, accent; gpt-4o-mini-tts); null sends none. */
  readonly instructions: string | null;
  /** "pcm": raw PCM16 at `sample_rate`; "wav": PCM16 WAV at the rate its header says. */
  readonly response_format: "pcm" | "wav";
  /** Sample rate of "pcm" answers (OpenAI's is 24000). */
  readonly sample_rate: number;
  /** Play the first frames while the rest is still arriving. */
  readonly stream: boolean;
}

export interface SttConfig {
  readonly provider: "google" | "openai";
  readonly batch_ms: number;
  readonly partial_debounce_ms: number;
  readonly timeout_ms: number;
  readonly vad_hangover_ms: number;
  /** Restart the stream at the first final after this many seconds (Google closes near 300 s). */
  readonly restart_after_s: number;
  readonly google: SttGoogleConfig;
  readonly openai: SttOpenAiConfig;
}

export interface TtsConfig {
  readonly provider: "google" | "openai";
  /** Google's voice name (OpenAI's is `openai.voice`). */
  readonly voice: string;
  readonly google: GoogleEndpointConfig;
  readonly openai: TtsOpenAiConfig;
}

export interface LlmConfig {
  readonly provider: "openai";
  readonly base_url: string;
  readonly model: string;
  readonly timeout_ms: number;
  /** From env OPENAI_API_KEY or credential `openai_api_key`; null when absent. */
  readonly api_key: string | null;
  readonly temperature: number;
  readonly max_tokens: number;
}

export interface StorageConfig {
  /** The SQLite file; with `url` set, its directory holds the PostgreSQL outage journal. */
  readonly path: string;
  /** Calls older than this are deleted; 0 keeps everything. */
  readonly retention_days: number;
  /** "postgres://user@host/db": records in PostgreSQL (a fleet) instead of SQLite; null for SQLite. */
  readonly url: string | null;
  /** From env PGPASSWORD or credential `db_password`; null when absent. */
  readonly password: string | null;
}

export interface LogConfig {
  /** Whether `[PARTIAL]`/`[FINAL]` lines carry the text (the store always keeps it). */
  readonly transcripts: boolean;
}

export interface CrmConfig {
  /** POST target for call summaries; null disables delivery. */
  readonly url: string | null;
  /** HMAC-SHA256 key for the signature header; null sends unsigned. */
  readonly secret: string | null;
  /** POSTed `{call_sid, from, to}` at stream start; its "context" joins the prompt. Null: off. */
  readonly context_url: string | null;
}

/** The operator console (SPEC 7), on its own listener apart from the port Twilio reaches. */
export interface AdminConfig {
  /** Where the console listens, from `admin.listen`; null when "" (off). */
  readonly listen: { readonly hostname: string; readonly port: number } | null;
  /**
   * From env KAV_ADMIN_TOKEN or credential `admin_token`; null when absent (then the console stays
   * off, and a non-loopback `listen` is refused).
   */
  readonly token: string | null;
}

export interface GoogleCredentials {
  /** Path to a service-account JSON, from env GOOGLE_APPLICATION_CREDENTIALS or credential `google_credentials`. */
  readonly credentials_path: string | null;
}

export interface Config {
  readonly server: ServerConfig;
  readonly twilio: TwilioConfig;
  readonly call: CallConfig;
  readonly audio: AudioConfig;
  readonly stt: SttConfig;
  readonly tts: TtsConfig;
  readonly llm: LlmConfig;
  readonly storage: StorageConfig;
  readonly log: LogConfig;
  readonly crm: CrmConfig;
  readonly google: GoogleCredentials;
  readonly admin: AdminConfig;
  /** `[[tools]]`, in file order. */
  readonly tools: readonly ToolConfig[];
}
