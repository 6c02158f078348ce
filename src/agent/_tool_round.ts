/**
 * One tool round of an answer: the calls the model made run concurrently, each once, each with its
 * own deadline (`ToolBox.run`). They are never cancelled by the answer being cut: a request may
 * already have changed data in the CRM, so its result is still recorded and handed to the model.
 * The filler phrase is asked for once if a tool has not answered within `fillerAfterMs`.
 */
import type { ChatMessage, ToolCall } from "../llm/types.ts";
import type { AgentContext, CallAction } from "../call/agent.ts";
import type { ToolBox, ToolCaller, ToolOutcome } from "./tools.ts";
import type { TurnClock } from "./turns.ts";

export interface ToolRoundOptions {
  readonly tools: ToolBox;
  readonly calls: readonly ToolCall[];
  readonly caller: ToolCaller;
  readonly ctx: AgentContext;
  readonly clock: TurnClock;
  /** Null: no filler this round (one was already spoken in this answer). */
  readonly fillerAfterMs: number | null;
  /** Called at most once, with the tool whose filler should play now. */
  readonly onFiller: (tool: string, filler: string) => void;
}

/** A round in flight; `settled` resolves when every call has its outcome (never rejects). */
export class ToolRound {
  /** What the model said before its calls (the heard part goes in the history). */
  readonly round: number;
  readonly calls: readonly ToolCall[];
  readonly settled: Promise<readonly ToolOutcome[]>;
  #outcomes: readonly ToolOutcome[] | null = null;
  #actionCancelled = false;

  constructor(round: number, options: ToolRoundOptions) {
    this.round = round;
    this.calls = options.calls;
    const { tools, ctx, caller, clock } = options;
    const pending = new Set<string>(options.calls.map((call) => call.id));
    const runs = options.calls.map(async (call) => {
      const at = Date.now();
      const outcome = await tools.run(call, caller);
      pending.delete(call.id);
      if (outcome.action === null) record(ctx, at, outcome);
      ctx.log.info("TOOL", outcome.error === null ? "answered" : "failed", {
        name: call.name,
        ms: Math.round(outcome.ms * 10) / 10,
        ...(outcome.error === null ? {} : { error: outcome.error }),
      });
      return outcome;
    });
    let cancelFiller: (() => void) | null = null;
    if (options.fillerAfterMs !== null) {
      cancelFiller = clock.setTimer(options.fillerAfterMs, () => {
        cancelFiller = null;
        const slow = options.calls.find((call) =>
          pending.has(call.id) && tools.filler(call.name) !== null
        );
        if (slow !== undefined) options.onFiller(slow.name, tools.filler(slow.name)!);
      });
    }
    this.settled = Promise.all(runs).then((outcomes) => {
      cancelFiller?.();
      this.#outcomes = outcomes;
      return outcomes;
    });
  }

  /** The built-in action among the outcomes, once settled (null before, or when none). */
  get action(): CallAction | null {
    return this.#outcomes?.find((o) => o.action !== null)?.action ?? null;
  }

  /**
   * The caller interrupted before an action happened (or before its call even answered): the
   * model will read that it was not done.
   */
  cancelAction(): void {
    this.#actionCancelled = true;
  }

  /** Time the CRM took: the slowest call of the round (they run concurrently), ms. */
  get waitMs(): number {
    return Math.max(0, ...(this.#outcomes ?? []).map((o) => o.waitMs));
  }

  /** The assistant message with the calls, then one `tool` message per call (after `settled`). */
  messages(heardText: string): ChatMessage[] {
    const outcomes = this.#outcomes ?? [];
    const out: ChatMessage[] = [{ role: "assistant", content: heardText, toolCalls: this.calls }];
    for (const call of this.calls) {
      const outcome = outcomes.find((o) => o.call.id === call.id);
      let content = outcome?.content ?? JSON.stringify({ error: "no result" });
      if (outcome?.action && this.#actionCancelled) {
        content = JSON.stringify({
          error:
            "Not done: the caller spoke before it happened. Ask whether they still want it before calling it again.",
        });
      }
      out.push({ role: "tool", toolCallId: call.id, content });
    }
    return out;
  }
}

function record(ctx: AgentContext, at: number, outcome: ToolOutcome): void {
  ctx.store.toolCall(ctx.callSid, {
    at,
    toolCallId: outcome.call.id,
    name: outcome.call.name,
    arguments: outcome.call.arguments,
    result: outcome.result,
    error: outcome.error,
    ms: outcome.ms,
  });
}
