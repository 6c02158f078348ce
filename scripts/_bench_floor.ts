/**
 * The floor: what Deno itself costs for a Twilio media server's traffic, with none of Kav's work.
 * A minimal server in the style of Twilio's echo sample: `POST /twiml` returns the same TwiML as
 * Kav, status callbacks get 204 (no signature check), and each media socket parses every message
 * with `JSON.parse` and echoes each caller frame straight back, so every call carries 50 frames a
 * second each way (Kav sends agent audio only while the agent speaks). `/metrics` has the few
 * counters the bench reads. `deno task bench -- --floor` runs the ramp against it.
 */
import { connectStreamTwiml } from "../src/twilio/twiml.ts";

interface FloorOptions {
  readonly hostname: string;
  readonly port: number;
  readonly publicUrl: string;
}

/** Serves until the process ends; resolves once listening. */
export function serveFloor(o: FloorOptions): Promise<void> {
  let active = 0, rxFrames = 0, txFrames = 0;
  const listening = Promise.withResolvers<void>();
  const noContent = () =>
    new Response(null, { status: 204, headers: { "cache-control": "no-store" } });
  Deno.serve(
    { hostname: o.hostname, port: o.port, onListen: () => listening.resolve() },
    (request) => {
      const path = new URL(request.url).pathname;
      if (request.method === "POST" && path === "/twiml") {
        return request.formData().then((form) =>
          new Response(
            connectStreamTwiml({
              publicUrl: o.publicUrl,
              parameters: [["CallSid", String(form.get("CallSid") ?? "")]],
            }),
            { headers: { "content-type": "text/xml; charset=utf-8" } },
          )
        );
      }
      if (request.method === "POST" && path.startsWith("/webhook/")) {
        return request.arrayBuffer().then(noContent);
      }
      if (path === "/healthz") return new Response("ok");
      if (path === "/metrics") {
        return new Response(
          `kav_rx_frames_total ${rxFrames}\nkav_rx_dropped_frames_total 0\n` +
            `kav_tx_frames_total ${txFrames}\nkav_tx_late_frames_total 0\nkav_active_calls ${active}\n`,
        );
      }
      if (path === "/ws/twilio-media") {
        const { socket, response } = Deno.upgradeWebSocket(request, {
          protocol: "audio.twilio.com",
        });
        let streamSid = "";
        active++;
        socket.addEventListener("message", (event) => {
          const message = JSON.parse(String(event.data));
          switch (message.event) {
            case "start":
              streamSid = message.start.streamSid;
              break;
            case "media":
              rxFrames++;
              txFrames++;
              socket.send(JSON.stringify({
                event: "media",
                streamSid,
                media: { payload: message.media.payload },
              }));
              break;
            case "stop":
              socket.close();
              break;
          }
        });
        socket.addEventListener("close", () => active--);
        return response;
      }
      return new Response("not found", { status: 404 });
    },
  );
  return listening.promise;
}
