/**
 * The sandbox LLM's way with tools (SPEC 6), so `deno task dev` + `deno task simulate` and the
 * bench can try tool calls, transfers and hang-ups without a phone or a real model. Given the
 * functions a request offers:
 * - after a tool result, it says what came back;
 * - "0" typed on the keypad asks for a person: `transfer_call` to the first department;
 * - "9" typed on the keypad says goodbye and ends the call with `end_call` (a spoken goodbye does
 *   not, so load runs of the simulator keep their calls);
 * - anything else calls the first operator tool (its required string arguments filled with the
 *   caller's words), when there is one;
 * - otherwise the usual echoing answer (`defaultReply`).
 */
import { defaultReply, type ReceivedMessage, type ScriptedReply } from "./openai_server.ts";

interface OfferedTool {
  readonly name: string;
  readonly parameters: {
    readonly required?: readonly string[];
    readonly properties?: Readonly<
      Record<string, { readonly type?: string; readonly enum?: readonly string[] }>
    >;
  };
}

function offered(body: Readonly<Record<string, unknown>>): OfferedTool[] {
  if (!Array.isArray(body.tools)) return [];
  return body.tools.map((tool: unknown) => {
    const fn = ((tool ?? {}) as { function?: OfferedTool }).function;
    return { name: String(fn?.name ?? ""), parameters: fn?.parameters ?? {} };
  });
}

/** The sandbox policy with tools; without any offered it is `defaultReply`. */
export function actsReply(
  messages: readonly ReceivedMessage[],
  body: Readonly<Record<string, unknown>>,
): string | ScriptedReply {
  const last = messages.at(-1);
  if (last?.role === "tool") {
    const result = last.content.length > 80 ? `${last.content.slice(0, 80)}...` : last.content;
    return `בדקתי במערכת וקיבלתי: ${result}. איך עוד אפשר לעזור?`;
  }
  const tools = offered(body);
  const said = last?.role === "user" ? last.content : "";
  const transfer = tools.find((t) => t.name === "transfer_call");
  if (transfer && /keypad: [0-9*]*0/.test(said)) {
    const department = transfer.parameters.properties?.department?.enum?.[0] ?? "";
    return {
      text: "מעבירה אותך לנציג, רק רגע.",
      toolCalls: [{ name: "transfer_call", arguments: { department } }],
    };
  }
  if (tools.some((t) => t.name === "end_call") && /keypad: [0-9*]*9/.test(said)) {
    return { text: "תודה שהתקשרת, להתראות.", toolCalls: [{ name: "end_call", arguments: {} }] };
  }
  const operator = tools.find((t) => t.name !== "end_call" && t.name !== "transfer_call");
  if (operator && said !== "" && !said.includes("keypad")) {
    const args: Record<string, string> = {};
    for (const name of operator.parameters.required ?? []) args[name] = said;
    return { toolCalls: [{ name: operator.name, arguments: args }] };
  }
  return defaultReply(messages);
}
