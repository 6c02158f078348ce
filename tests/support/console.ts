/**
 * A sandbox Kav with its operator console on (SPEC 7): a free loopback port for `admin.listen`
 * and a token, for the console's API and browser tests.
 */
import { type Sandbox, type SandboxOptions, startSandbox } from "../../tools/sandbox/sandbox.ts";

/** The admin token the console sandbox runs with. */
export const ADMIN_TOKEN = "console-test-token-0123456789";

export interface ConsoleSandbox extends Sandbox {
  /** "http://127.0.0.1:<admin port>" */
  readonly consoleUrl: string;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Starts the sandbox with the console on; `extra` TOML is merged after the admin table. */
export async function startConsoleSandbox(
  options: SandboxOptions = {},
): Promise<ConsoleSandbox> {
  const port = freePort();
  const sandbox = await startSandbox({
    ...options,
    extra: `[admin]\nlisten = "127.0.0.1:${port}"\n${options.extra ?? ""}`,
    env: { KAV_ADMIN_TOKEN: ADMIN_TOKEN, ...options.env },
  });
  return { ...sandbox, consoleUrl: `http://127.0.0.1:${port}` };
}
