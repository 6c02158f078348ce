/**
 * One line per event: `<iso time> [TAG] call=<sid> key=value ...`. Values with spaces are quoted.
 * Prompts and secrets never go into logs; transcripts only when `log.transcripts` is on.
 */
export type LogValue = string | number | boolean | null | undefined;
export type LogFields = Readonly<Record<string, LogValue>>;

export interface Logger {
  /** `tag` is printed as `[TAG]`; `message` is a short fixed phrase, not data. */
  info(tag: string, message: string, fields?: LogFields): void;
  warn(tag: string, message: string, fields?: LogFields): void;
  error(tag: string, message: string, fields?: LogFields): void;
  /** A logger that adds `call=<sid>` (or other fixed fields) to every line. */
  child(fields: LogFields): Logger;
}

export type LogSink = (line: string, level: "info" | "warn" | "error") => void;

const encoder = new TextEncoder();

function writeAll(stream: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(stream.writeSync(bytes));
}

/**
 * The process's stdout and stderr. Info lines are batched: one write per event-loop turn instead of
 * one per line (two telemetry lines a second per call add up to hundreds of writes a second). A
 * warning or error is written at once, after the info lines before it, so nothing that explains a
 * failure waits in the buffer; the rest is flushed at exit.
 */
class ConsoleSink {
  #pending = "";
  #timer: ReturnType<typeof setTimeout> | undefined;

  readonly write: LogSink = (line, level) => {
    if (level === "info") {
      this.#pending += line + "\n";
      if (this.#pending.length >= 65_536) this.flush();
      else if (this.#timer === undefined) {
        const timer = setTimeout(this.flush, 0);
        Deno.unrefTimer(timer);
        this.#timer = timer;
      }
      return;
    }
    this.flush();
    writeAll(Deno.stderr, line + "\n");
  };

  readonly flush = (): void => {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending === "") return;
    const text = this.#pending;
    this.#pending = "";
    writeAll(Deno.stdout, text);
  };
}

let consoleSink: ConsoleSink | undefined;

function defaultSink(line: string, level: "info" | "warn" | "error"): void {
  if (consoleSink === undefined) {
    const sink = new ConsoleSink();
    globalThis.addEventListener("unload", () => sink.flush());
    consoleSink = sink;
  }
  consoleSink.write(line, level);
}

function formatValue(value: LogValue): string {
  if (value === null || value === undefined) return "-";
  if (typeof value === "string") {
    return value === "" || /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  }
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(1);
  return String(value);
}

function formatFields(fields: LogFields | undefined): string {
  if (!fields) return "";
  let out = "";
  for (const key in fields) out += ` ${key}=${formatValue(fields[key])}`;
  return out;
}

class LineLogger implements Logger {
  readonly #prefix: string;
  readonly #sink: LogSink;
  constructor(prefix: string, sink: LogSink) {
    this.#prefix = prefix;
    this.#sink = sink;
  }
  #write(level: "info" | "warn" | "error", tag: string, message: string, fields?: LogFields) {
    const text = message === "" ? "" : ` ${message}`;
    this.#sink(
      `${new Date().toISOString()} [${tag}]${this.#prefix}${text}${formatFields(fields)}`,
      level,
    );
  }
  info(tag: string, message: string, fields?: LogFields): void {
    this.#write("info", tag, message, fields);
  }
  warn(tag: string, message: string, fields?: LogFields): void {
    this.#write("warn", tag, message, fields);
  }
  error(tag: string, message: string, fields?: LogFields): void {
    this.#write("error", tag, message, fields);
  }
  child(fields: LogFields): Logger {
    return new LineLogger(this.#prefix + formatFields(fields), this.#sink);
  }
  static sinkOf(log: LineLogger): LogSink {
    return log.#sink;
  }
}

/**
 * Where `log`'s finished lines go, so lines formatted elsewhere (a call worker's) can join them in
 * order. A logger not made by `createLogger` gets each line as the message of a `[LOG]` line.
 */
export function lineSinkOf(log: Logger): LogSink {
  if (log instanceof LineLogger) return LineLogger.sinkOf(log);
  return (line, level) => log[level]("LOG", line);
}

/** Creates the root logger; tests pass a sink that collects lines. */
export function createLogger(sink: LogSink = defaultSink): Logger {
  return new LineLogger("", sink);
}

/** A logger that always writes through `current()` (the call's logger changes at `start`). */
export function followingLogger(current: () => Logger): Logger {
  return {
    info: (tag, message, fields) => current().info(tag, message, fields),
    warn: (tag, message, fields) => current().warn(tag, message, fields),
    error: (tag, message, fields) => current().error(tag, message, fields),
    child: (fields) => current().child(fields),
  };
}
