import { startCallServer } from "./support/call_server.ts";
Deno.test("smoke", async () => {
  const arrivals: number[] = [];
  const server = await startCallServer({
    greeting: new Uint8Array(0),
    agentFactory: () => ({
      onInboundAudio: () => arrivals.push(performance.now()),
      onSpeech() {}, onMark() {}, onDtmf() {}, close: () => Promise.resolve(),
    }),
  });
  const client = await server.connect();
  client.begin();
  await client.streamSilence(3000);
  client.sendStop();
  await client.closed;
  await server.close();
  const iv = arrivals.slice(1).map((t, i) => t - arrivals[i]);
  iv.sort((a, b) => a - b);
  console.log("n", arrivals.length, "p50", iv[iv.length >> 1].toFixed(1), "p99", iv[Math.floor(iv.length * 0.99)].toFixed(1), "max", iv[iv.length - 1].toFixed(1), "min", iv[0].toFixed(1));
});
