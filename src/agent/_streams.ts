/** Small async helpers of an answer: racing an abort, and audio as a stream of chunks. */

/** `promise`, or `signal.reason` as soon as `signal` aborts (the promise runs on). */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** `audio` as a one-chunk stream; null stays null. */
export function once(audio: Uint8Array | null): AsyncIterable<Uint8Array> | null {
  if (audio === null) return null;
  return (async function* () {
    yield audio;
  })();
}

/** Waits for the first chunk of `stream` (rejecting as it does), then replays it before the rest. */
export async function firstChunk(
  stream: AsyncIterable<Uint8Array>,
): Promise<AsyncIterable<Uint8Array>> {
  const iterator = stream[Symbol.asyncIterator]();
  const head = await iterator.next();
  return (async function* () {
    try {
      if (head.done) return;
      yield head.value;
      for (;;) {
        const next = await iterator.next();
        if (next.done) return;
        yield next.value;
      }
    } finally {
      // Stops the download when playing stopped early (barge-in, clear).
      await iterator.return?.();
    }
  })();
}
