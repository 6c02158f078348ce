/** Error classes that callers are meant to catch. Bad input otherwise uses the built-in classes. */

/** One problem in the configuration file, naming the key and (when known) the line. */
export interface ConfigProblem {
  readonly key: string;
  readonly line: number | null;
  readonly message: string;
}

/** Thrown when the configuration cannot be used; `problems` has one entry per problem. */
export class ConfigError extends Error {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[]) {
    super(problems.map(formatProblem).join("\n"));
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** "stt.batch_ms (line 12): must be between 20 and 200: current value is 5" */
export function formatProblem(problem: ConfigProblem): string {
  const where = problem.line === null ? "" : ` (line ${problem.line})`;
  return `${problem.key}${where}: ${problem.message}`;
}

/** Provider-independent failure categories; `retryable` says whether trying again can help. */
export type ProviderErrorCategory =
  | "authentication"
  | "invalid_request"
  | "rate_limit"
  | "timeout"
  | "connectivity"
  | "server"
  | "cancelled";

export type ProviderName = "stt" | "tts" | "llm";

/** A failure of STT, TTS or LLM, mapped from gRPC or HTTP errors by the adapter. */
export class ProviderError extends Error {
  readonly provider: ProviderName;
  readonly category: ProviderErrorCategory;
  readonly retryable: boolean;
  constructor(
    provider: ProviderName,
    category: ProviderErrorCategory,
    message: string,
    options?: { cause?: unknown; retryable?: boolean },
  ) {
    super(message, { cause: options?.cause });
    this.name = "ProviderError";
    this.provider = provider;
    this.category = category;
    this.retryable = options?.retryable ??
      (category === "rate_limit" || category === "timeout" || category === "connectivity" ||
        category === "server");
  }
}
