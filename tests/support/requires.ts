/**
 * For tests that need something this machine may lack (a tool, a `denort` binary, Linux): a test
 * that cannot run here is ignored, so it reports as ignored rather than passed, and its name says
 * why.
 */

/** Whether `command` runs here and exits 0 with `args` (a version probe). */
export function commandRuns(command: string, args: readonly string[]): boolean {
  try {
    return new Deno.Command(command, { args: [...args], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/**
 * `name` and `ignore` for `Deno.test({ ...ignoredWhen(name, reason), fn })`. `reason` says why the
 * test cannot run here, or is null when it can; an ignored test's name ends "(ignored: reason)".
 */
export function ignoredWhen(
  name: string,
  reason: string | null,
): { name: string; ignore: boolean } {
  return reason === null
    ? { name, ignore: false }
    : { name: `${name} (ignored: ${reason})`, ignore: true };
}

/** Null on Linux, else why a test that reads `/proc` or runs systemd tools cannot run. */
export const NOT_LINUX: string | null = Deno.build.os === "linux"
  ? null
  : `needs Linux, this is ${Deno.build.os}`;
