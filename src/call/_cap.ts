/** Awaiting something with a cap, cancelling the timer either way (no leaked timers). */

/** Resolves `true` when `promise` settles within `ms`, `false` when the cap is hit first. */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const capped = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), capped]);
  } finally {
    clearTimeout(timer);
  }
}
