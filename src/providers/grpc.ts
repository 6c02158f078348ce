/**
 * gRPC plumbing shared by the Google STT and TTS adapters: endpoint parsing, client options
 * (plaintext without any credential lookup, or TLS with a key file / ADC), and the mapping of gRPC
 * failures (google-gax `GoogleError`, grpc-js `ServiceError`, google-auth-library errors) to one
 * `ProviderError`.
 */
import * as grpc from "@grpc/grpc-js";
import { ProviderError, type ProviderErrorCategory, type ProviderName } from "../errors.ts";

/** gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
export const GrpcCode = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
});

const CODE_NAMES: readonly string[] = Object.keys(GrpcCode);

/** The numeric gRPC status of an error, or null when it carries none. */
export function grpcCode(error: unknown): number | null {
  if (typeof error !== "object" || error === null || !("code" in error)) return null;
  const code = error.code;
  return typeof code === "number" && Number.isInteger(code) && code >= 0 && code <= 16
    ? code
    : null;
}

/** "UNAVAILABLE" for 14; "UNKNOWN" for anything unrecognized. */
export function grpcCodeName(code: number | null): string {
  return code === null ? "UNKNOWN" : CODE_NAMES[code] ?? "UNKNOWN";
}

function categoryOf(code: number | null, error: unknown): ProviderErrorCategory {
  switch (code) {
    case GrpcCode.UNAVAILABLE:
      return "connectivity";
    case GrpcCode.DEADLINE_EXCEEDED:
      return "timeout";
    case GrpcCode.RESOURCE_EXHAUSTED:
      return "rate_limit";
    case GrpcCode.PERMISSION_DENIED:
    case GrpcCode.UNAUTHENTICATED:
      return "authentication";
    case GrpcCode.INVALID_ARGUMENT:
    case GrpcCode.NOT_FOUND:
    case GrpcCode.ALREADY_EXISTS:
    case GrpcCode.FAILED_PRECONDITION:
    case GrpcCode.OUT_OF_RANGE:
    case GrpcCode.UNIMPLEMENTED:
      return "invalid_request";
    case GrpcCode.CANCELLED:
      return "cancelled";
    case GrpcCode.OK:
    case GrpcCode.UNKNOWN:
    case GrpcCode.ABORTED:
    case GrpcCode.INTERNAL:
    case GrpcCode.DATA_LOSS:
      return "server";
    default:
      // Not a gRPC status: google-auth-library fails before any call when credentials are unusable.
      return /credential|token|auth/i.test(messageOf(error)) ? "authentication" : "server";
  }
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : "";
}

/** The server's own text without grpc-js's "14 UNAVAILABLE: " prefix or a trailing period. */
function detailsOf(error: unknown): string {
  let text = "";
  if (typeof error === "object" && error !== null && "details" in error) {
    const details = error.details;
    if (typeof details === "string") text = details;
  }
  if (text === "") text = messageOf(error).replace(/^\d+ [A-Z_]+: /, "");
  return text.replace(/\.\s*$/, "").slice(0, 200);
}

/**
 * Wraps a failure of `action` (e.g. `Cannot open speech stream at "host:443"`). UNAVAILABLE,
 * DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are retryable; INVALID_ARGUMENT, PERMISSION_DENIED and
 * UNAUTHENTICATED are not (STYLE pattern 7). An existing `ProviderError` passes through.
 */
export function toProviderError(
  provider: ProviderName,
  action: string,
  error: unknown,
): ProviderError {
  if (error instanceof ProviderError) return error;
  const code = grpcCode(error);
  const category = categoryOf(code, error);
  const details = detailsOf(error);
  const suffix = details === "" ? "" : `: "${details}"`;
  return new ProviderError(provider, category, `${action}: ${grpcCodeName(code)}${suffix}`, {
    cause: error,
    retryable: category === "connectivity" || category === "timeout" ||
      category === "rate_limit" || (category === "server" && code !== null),
  });
}

/** "host", "host:port" or "[v6]:port" → host and port (443 when absent). */
export function parseEndpoint(endpoint: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\[\]]+))(?::(\d{1,5}))?$/.exec(endpoint.trim());
  const port = match?.[3] === undefined ? 443 : Number(match[3]);
  if (!match || port < 1 || port > 65535) {
    throw new TypeError(`Cannot parse gRPC endpoint "${endpoint}": expected host or host:port`);
  }
  return { host: match[1] ?? match[2], port };
}

/**
 * What google-gax clients (SpeechClient, TextToSpeechClient) are constructed with. A type alias,
 * not an interface, so it fits google-gax's index-signature `ClientOptions`.
 */
export type GaxClientOptions = {
  apiEndpoint: string;
  port: number;
  sslCreds?: grpc.ChannelCredentials;
  universeDomain?: string;
  keyFilename?: string;
  grpc: typeof grpc;
  "grpc.initial_reconnect_backoff_ms": number;
  "grpc.max_reconnect_backoff_ms": number;
};

/**
 * Client options for `endpoint`. Insecure: plaintext channel credentials, so google-gax never asks
 * google-auth-library for credentials, and an explicit universe domain, so it does not look up
 * credentials to learn one either. Otherwise TLS with `credentialsPath` or Application Default
 * Credentials.
 */
export function gaxClientOptions(
  endpoint: string,
  insecure: boolean,
  credentialsPath: string | null,
): GaxClientOptions {
  const { host, port } = parseEndpoint(endpoint);
  const options: GaxClientOptions = {
    apiEndpoint: host,
    port,
    grpc,
    // google-gax sets 1 s; a shorter first backoff lets the 200 ms open retries reach a server
    // that has just come back, and a low cap keeps a long outage from delaying the recovery: a
    // channel in backoff fails every call at once, even when the server is back.
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2000,
  };
  if (insecure) {
    options.sslCreds = grpc.credentials.createInsecure();
    options.universeDomain = "googleapis.com";
  } else if (credentialsPath !== null) {
    options.keyFilename = credentialsPath;
  }
  return options;
}

/** Settles like `promise`, or rejects with `signal.reason` once aborted; the listener is removed. */
export function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Call options for one unary call: our own deadline, no google-gax retries (the caller owns them),
 * and the caller's signal, which makes google-gax cancel the gRPC call.
 */
export function unaryCallOptions(
  timeoutMs: number,
  signal?: AbortSignal,
): { timeout: number; retry: { retryCodes: [] }; signal?: AbortSignal } {
  return signal ? { timeout: timeoutMs, retry: { retryCodes: [] }, signal } : {
    timeout: timeoutMs,
    retry: { retryCodes: [] },
  };
}

/**
 * Asks the gRPC channel under a google-gax client to connect now (it otherwise connects on the
 * first call). `stub` is the client's stub promise (e.g. `SpeechClient.speechStub`).
 */
export async function connectEagerly(stub: Promise<unknown> | undefined): Promise<void> {
  const resolved: unknown = await stub;
  if (typeof resolved !== "object" || resolved === null || !("getChannel" in resolved)) return;
  const getChannel = resolved.getChannel;
  if (typeof getChannel !== "function") return;
  const channel: unknown = getChannel.call(resolved);
  if (typeof channel !== "object" || channel === null || !("getConnectivityState" in channel)) {
    return;
  }
  const state = channel.getConnectivityState;
  if (typeof state === "function") state.call(channel, true); // true: connect if idle
}

/** The part of a google-gax generated client the pool needs. */
export interface GaxClient {
  initialize(): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * One client (one channel) per endpoint, shared by all calls. google-gax clients rethrow a failed
 * stub creation (e.g. unusable credentials) from a dangling `initialize().catch((err) => { throw err
 * })` in every method, an unhandled rejection that would end the process; so `get()` awaits
 * `initialize()` first, and a client whose initialization failed is discarded (its rejected stub is
 * cached for good) and never called.
 */
export class GaxClientPool<C extends GaxClient> {
  readonly #create: (endpoint: string) => C;
  readonly #clients = new Map<string, { client: C; ready: Promise<C> }>();
  #closed = false;

  constructor(create: (endpoint: string) => C) {
    this.#create = create;
  }

  /** An initialized client for `endpoint`; rejects with the raw initialization error. */
  get(endpoint: string): Promise<C> {
    if (this.#closed) {
      return Promise.reject(new Error(`Cannot use gRPC client for "${endpoint}": provider closed`));
    }
    let entry = this.#clients.get(endpoint);
    if (!entry) {
      const client = this.#create(endpoint);
      const ready = client.initialize().then(() => client);
      entry = { client, ready };
      this.#clients.set(endpoint, entry);
      ready.catch(() => {
        if (this.#clients.get(endpoint)?.client === client) this.#clients.delete(endpoint);
        client.close().catch(() => {});
      });
    }
    return entry.ready;
  }

  /** Closes every client; later `get()` calls reject. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#clients.values()];
    this.#clients.clear();
    await Promise.allSettled(all.map(({ client }) => client.close()));
  }
}
