/**
 * One call with every agent act as the store sees it (SPEC 6), for the SQLite, PostgreSQL and CRM
 * tests: a keypad turn, a tool that answered and one that failed, a transfer whose dial was not
 * answered, the caller connected back (the same CallSid on a new stream), then the agent's
 * hang-up. `phase` stops after the first stream's end or after the dial's outcome.
 */
import type { CallStore } from "../../src/store/types.ts";

const COUNTERS = {
  rx_frames: 100,
  rx_drops: 0,
  tx_frames: 90,
  tx_drops: 0,
  tx_late: 0,
  malformed: 0,
};

export function recordAgentActs(
  store: CallStore,
  callSid: string,
  t0: number,
  phase: "transferred" | "dialled" | "all" = "all",
): void {
  store.callStarted({
    callSid,
    streamSid: "MZ1",
    accountSid: "AC1",
    from: "+972501234567",
    to: "+97231234567",
    customParameters: {},
    startedAt: t0,
  });
  const turn = (index: number, speaker: "caller" | "agent", text: string, at: number) => ({
    index,
    speaker,
    text,
    generated: null,
    cut: false,
    startedAt: at,
    endedAt: at + 500,
    timings: null,
  });
  store.turnCompleted(callSid, { ...turn(0, "caller", "1234", t0 + 1000), input: "keypad" });
  store.toolCall(callSid, {
    at: t0 + 1600,
    toolCallId: "call_1",
    name: "lookup_customer",
    arguments: '{"id":"1234"}',
    result: '{"name":"דנה"}',
    error: null,
    ms: 41.25,
  });
  store.toolCall(callSid, {
    at: t0 + 1600,
    toolCallId: "call_2",
    name: "open_ticket",
    arguments: "{}",
    result: null,
    error: "timed out after 4000 ms",
    ms: 4000,
  });
  store.turnCompleted(callSid, turn(1, "agent", "מעבירה אותך למכירות.", t0 + 5700));
  store.transfer(callSid, { at: t0 + 6300, department: "sales", target: "+97231234500" });
  store.callEnded(callSid, {
    endedAt: t0 + 6300,
    outcome: "transferred",
    reason: "transfer to sales",
    counters: COUNTERS,
  });
  if (phase === "transferred") return;
  store.dialEnded(callSid, { at: t0 + 36_000, status: "no-answer", durationS: null });
  if (phase === "dialled") return;
  store.callStarted({
    callSid,
    streamSid: "MZ2",
    accountSid: "AC1",
    from: "+972501234567",
    to: "+97231234567",
    customParameters: {},
    startedAt: t0 + 37_000,
  });
  store.turnCompleted(callSid, turn(2, "agent", "לא ענו במכירות. להשאיר הודעה?", t0 + 38_000));
  store.callEnded(callSid, {
    endedAt: t0 + 45_000,
    outcome: "agent_hangup",
    reason: "end_call",
    counters: COUNTERS,
  });
}
