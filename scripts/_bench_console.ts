/**
 * The operator console's live view as the benchmark holds it open (`bench.ts --console CALLS`): one
 * SSE client on `/api/live/stream`, reading every event as a browser would, so a step can be run
 * with the live view open and again with it closed (issue 16: it must cost the calls nothing).
 */

export interface LiveViewer {
  /** Stops reading; resolves with what was received. */
  stop(): Promise<{ events: number; bytes: number; lastCalls: number }>;
}

/** Connects to the console at `consoleUrl` with `token` and reads its live feed until stopped. */
export async function openLiveViewer(consoleUrl: string, token: string): Promise<LiveViewer> {
  const abort = new AbortController();
  const response = await fetch(`${consoleUrl}/api/live/stream`, {
    headers: { authorization: `Bearer ${token}` },
    signal: abort.signal,
  });
  if (response.status !== 200 || response.body === null) {
    await response.body?.cancel();
    throw new Error(`Cannot open the console's live view: HTTP ${response.status}`);
  }
  let events = 0;
  let bytes = 0;
  let lastCalls = 0;
  const reading = (async () => {
    let buffered = "";
    try {
      for await (const chunk of response.body!.pipeThrough(new TextDecoderStream())) {
        bytes += chunk.length;
        buffered += chunk;
        let end: number;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const data = event.slice(event.indexOf("data: ") + 6);
          // Parsed like the page does, so the client's cost is a browser's.
          lastCalls = (JSON.parse(data) as { calls: unknown[] }).calls.length;
          events++;
        }
      }
    } catch {
      // Aborted by stop().
    }
  })();
  return {
    async stop() {
      abort.abort();
      await reading;
      return { events, bytes, lastCalls };
    },
  };
}
