/**
 * The functions the model may call (SPEC 6): the operator's `[[tools]]`, each a signed POST to the
 * CRM, and the built-in `end_call` and `transfer_call(department)`. Arguments are checked against
 * each tool's JSON Schema (ajv) before anything is sent; invalid ones go back to the model as an
 * error, never to the CRM. Every outcome is a `tool` message the model can speak about: a failing
 * tool never ends the call, and only the built-ins return a call action.
 */
import type { CallConfig, ToolConfig } from "../config/types.ts";
import type { ToolCall, ToolSpec } from "../llm/types.ts";
import * as metrics from "../observe/metrics.ts";
import { compileSchema, type SchemaCheck } from "../json_schema.ts";
import type { CallAction } from "../call/agent.ts";
import { signedPost } from "./_signed_post.ts";

/** Largest arguments text sent to a tool (the model's JSON), bytes. */
export const MAX_TOOL_ARGUMENTS_BYTES = 8 * 1024;
/** Largest tool answer handed to the model, bytes. */
export const MAX_TOOL_ANSWER_BYTES = 16 * 1024;

/** What one call of a tool came to. */
export interface ToolOutcome {
  readonly call: ToolCall;
  /** The `tool` message for the model (JSON text). */
  readonly content: string;
  /** Null on success. */
  readonly error: string | null;
  /** The answer's JSON text, for the record; null on failure and for built-ins. */
  readonly result: string | null;
  /** Set by `end_call` and `transfer_call`. */
  readonly action: CallAction | null;
  /** Whether this was an operator tool (recorded and counted) or a built-in. */
  readonly operator: boolean;
  /** Time spent waiting on the CRM (0 when nothing was sent), ms. */
  readonly waitMs: number;
  /** Whole time, checks included, ms. */
  readonly ms: number;
}

/** Who is calling, for the request body. */
export interface ToolCaller {
  readonly callSid: string;
  readonly from: string | null;
  readonly to: string | null;
}

export interface ToolBoxOptions {
  readonly tools: readonly ToolConfig[];
  readonly call: Pick<CallConfig, "end_call" | "transfer">;
  /** `crm.secret`, the HMAC key of tool requests; null sends them unsigned. */
  readonly secret: string | null;
}

interface OperatorTool {
  readonly config: ToolConfig;
  readonly check: SchemaCheck;
}

const END_CALL: ToolSpec = {
  name: "end_call",
  description:
    "Hang up. Call it only after the caller's needs are met and you are saying goodbye: the call ends once your goodbye has been heard.",
  parameters: { type: "object", properties: {}, additionalProperties: false },
};

export class ToolBox {
  readonly #operator = new Map<string, OperatorTool>();
  readonly #specs: ToolSpec[] = [];
  readonly #transfer: Readonly<Record<string, string>>;
  readonly #secret: string | null;
  readonly #endCall: boolean;
  readonly #transferCheck: SchemaCheck | null;

  constructor(options: ToolBoxOptions) {
    this.#secret = options.secret;
    this.#transfer = options.call.transfer;
    this.#endCall = options.call.end_call;
    for (const config of options.tools) {
      this.#operator.set(config.name, { config, check: compileSchema(config.parameters) });
      this.#specs.push({
        name: config.name,
        description: config.description,
        parameters: config.parameters,
      });
    }
    if (this.#endCall) this.#specs.push(END_CALL);
    const departments = Object.keys(this.#transfer);
    if (departments.length > 0) {
      const parameters = {
        type: "object",
        properties: { department: { type: "string", enum: departments } },
        required: ["department"],
        additionalProperties: false,
      };
      this.#transferCheck = compileSchema(parameters);
      this.#specs.push({
        name: "transfer_call",
        description:
          "Transfer the caller to a person in one of these departments. Tell the caller first: the transfer happens once that sentence has been heard.",
        parameters,
      });
    } else this.#transferCheck = null;
  }

  /** The functions offered to the model (empty when there are none). */
  get specs(): readonly ToolSpec[] {
    return this.#specs;
  }

  /** The operator tool's filler phrase, or null. */
  filler(name: string): string | null {
    return this.#operator.get(name)?.config.filler ?? null;
  }

  /** Runs one call; never throws (every failure is an error result). */
  async run(call: ToolCall, caller: ToolCaller): Promise<ToolOutcome> {
    const started = performance.now();
    const done = (
      fields: Pick<ToolOutcome, "content" | "error" | "result" | "action" | "waitMs">,
      operator: boolean,
    ): ToolOutcome => ({ call, operator, ...fields, ms: performance.now() - started });
    const fail = (error: string, operator: boolean, waitMs = 0) =>
      done(
        { content: JSON.stringify({ error }), error, result: null, action: null, waitMs },
        operator,
      );
    const tool = this.#operator.get(call.name);
    const builtin = call.name === "end_call"
      ? this.#endCall
      : call.name === "transfer_call"
      ? this.#transferCheck !== null
      : false;
    if (tool === undefined && !builtin) return fail(`no tool named "${call.name}"`, false);
    const operator = tool !== undefined;
    if (operator) metrics.toolCalled(call.name);
    const outcome = (() => {
      if (new TextEncoder().encode(call.arguments).length > MAX_TOOL_ARGUMENTS_BYTES) {
        return `arguments longer than ${MAX_TOOL_ARGUMENTS_BYTES} bytes`;
      }
      let args: unknown;
      try {
        args = call.arguments.trim() === "" ? {} : JSON.parse(call.arguments);
      } catch {
        return "arguments are not valid JSON";
      }
      const check = tool?.check ?? (call.name === "transfer_call" ? this.#transferCheck : null);
      const problem = check === null ? null : check(args);
      if (problem !== null) return `invalid arguments: ${problem}`;
      return { args };
    })();
    if (typeof outcome === "string") {
      if (operator) metrics.toolFailed(call.name, "invalid_arguments");
      return fail(outcome, operator);
    }
    if (tool === undefined) return done(this.#builtin(call, outcome.args), false);
    const body = JSON.stringify({
      call_sid: caller.callSid,
      tool: call.name,
      tool_call_id: call.id,
      arguments: outcome.args,
      from: caller.from,
      to: caller.to,
    });
    const answer = await signedPost(tool.config.url, body, {
      secret: this.#secret,
      timeoutMs: tool.config.timeout_ms,
      maxAnswerBytes: MAX_TOOL_ANSWER_BYTES,
    });
    metrics.toolDurationObserved(call.name, answer.ms / 1000);
    if (!answer.ok) {
      metrics.toolFailed(call.name, failureReason(answer.error));
      return fail(`the tool ${answer.error}`, true, answer.ms);
    }
    return done({
      content: answer.text,
      error: null,
      result: answer.text,
      action: null,
      waitMs: answer.ms,
    }, true);
  }

  #builtin(
    call: ToolCall,
    args: unknown,
  ): Pick<ToolOutcome, "content" | "error" | "result" | "action" | "waitMs"> {
    if (call.name === "end_call") {
      return {
        content: JSON.stringify({
          ok: true,
          note: "The call ends once your next sentence has been heard: say a short goodbye now.",
        }),
        error: null,
        result: null,
        action: { kind: "hangup" },
        waitMs: 0,
      };
    }
    const department = (args as { department: string }).department;
    return {
      content: JSON.stringify({
        ok: true,
        note:
          `The caller is transferred to ${department} once your next sentence has been heard: tell them briefly.`,
      }),
      error: null,
      result: null,
      action: { kind: "transfer", department, target: this.#transfer[department] },
      waitMs: 0,
    };
  }
}

/** The metric label of a failure reason. */
function failureReason(error: string): string {
  if (error.startsWith("timed out")) return "timeout";
  if (error.startsWith("answered with status")) return "status";
  if (error.startsWith("answer larger")) return "too_large";
  if (error === "answer is not JSON") return "bad_json";
  if (error === "connection refused") return "refused";
  return "request";
}
