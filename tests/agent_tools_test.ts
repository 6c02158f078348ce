/**
 * `ToolBox` on its own (SPEC 6): a refused connection, oversized or invalid arguments, unknown
 * tools and the built-ins, against a real local CRM where one is needed.
 */
import assert from "node:assert/strict";
import { ToolBox } from "../src/agent/tools.ts";
import type { ToolConfig } from "../src/config/types.ts";
import { startToolServer } from "../tools/sandbox/tool_server.ts";

const CALLER = { callSid: "CA1", from: "+972501234567", to: "+97231234567" };

function tool(name: string, url: string): ToolConfig {
  return {
    name,
    description: "x",
    url,
    timeout_ms: 2000,
    filler: null,
    parameters: { type: "object", properties: { q: { type: "string" } }, required: ["q"] },
  };
}

Deno.test("ToolBox.run() turns a refused connection into an error result", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const box = new ToolBox({
    tools: [tool("lookup", `http://127.0.0.1:${port}/lookup`)],
    call: { end_call: false, transfer: {} },
    secret: null,
  });
  const outcome = await box.run({ id: "c1", name: "lookup", arguments: '{"q":"x"}' }, CALLER);
  assert.equal(outcome.error, "the tool connection refused");
  assert.deepEqual(JSON.parse(outcome.content), { error: "the tool connection refused" });
  assert.equal(outcome.action, null);
});

Deno.test("ToolBox.run() refuses oversized, unparsable and invalid arguments without sending", async () => {
  const crm = await startToolServer();
  try {
    const box = new ToolBox({
      tools: [tool("lookup", crm.url("lookup"))],
      call: { end_call: true, transfer: { sales: "+97231234567" } },
      secret: "s",
    });
    const run = (name: string, args: string) => box.run({ id: "c", name, arguments: args }, CALLER);
    assert.match(
      (await run("lookup", JSON.stringify({ q: "x".repeat(9000) }))).error ?? "",
      /longer than 8192/,
    );
    assert.equal((await run("lookup", "{oops")).error, "arguments are not valid JSON");
    assert.match((await run("lookup", "{}")).error ?? "", /must have required property 'q'/);
    assert.equal((await run("nope", "{}")).error, 'no tool named "nope"');
    assert.equal(crm.requests.length, 0, "nothing reached the CRM");
    // The built-ins: a department from the enum only, never a number.
    assert.match(
      (await run("transfer_call", '{"department":"+97231234567"}')).error ?? "",
      /allowed values/,
    );
    const transfer = await run("transfer_call", '{"department":"sales"}');
    assert.deepEqual(transfer.action, {
      kind: "transfer",
      department: "sales",
      target: "+97231234567",
    });
    assert.deepEqual((await run("end_call", "")).action, { kind: "hangup" });
    assert.deepEqual(box.specs.map((s) => s.name), ["lookup", "end_call", "transfer_call"]);
  } finally {
    await crm.close();
  }
});

Deno.test("callDetailView() masks keypad turns and transfer numbers unless personal data may show", async () => {
  const { callDetailView } = await import("../src/admin/_views.ts");
  const turn = {
    index: 1,
    speaker: "caller" as const,
    text: "4271",
    generated: null,
    cut: false,
    startedAt: 0,
    endedAt: 1,
    timings: null,
    input: "keypad" as const,
  };
  const transfer = {
    at: 0,
    department: "sales",
    target: "+97231234567",
    dialStatus: null,
    dialEndedAt: null,
    dialDurationS: null,
  };
  const detail = {
    call: {
      callSid: "CA1",
      node: null,
      streamSid: "MZ1",
      accountSid: "AC1",
      from: null,
      to: null,
      customParameters: {},
      startedAt: 0,
      endedAt: null,
      outcome: null,
      reason: null,
      counters: null,
      turns: 1,
      latency: {} as never,
    },
    turns: [turn],
    events: [],
    toolCalls: [],
    transfers: [transfer, { ...transfer, target: "sip:support@pbx.example.com" }],
  };
  const masked = callDetailView(detail, { personalData: false });
  assert.equal(masked.turns[0].text, "••••");
  assert.deepEqual(masked.transfers.map((t) => t.target), [
    "+•••••••4567",
    "sip:support@pbx.example.com",
  ]);
  const shown = callDetailView(detail, { personalData: true });
  assert.equal(shown.turns[0].text, "4271");
  assert.equal(shown.transfers[0].target, "+97231234567");
});
