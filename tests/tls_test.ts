/**
 * Issue 4, end to end: with `server.tls_cert` / `server.tls_key` the real Kav process terminates TLS
 * itself, and a `wss://` call works (greeting, then a caller turn answered). The certificate is
 * self-signed and generated here with openssl; the test's clients trust exactly that certificate.
 */
import assert from "node:assert/strict";
import { fixtureClip, sayAndWait, startKavProcess } from "./support/kav_process.ts";
import { commandRuns, ignoredWhen } from "./support/requires.ts";
import { startProviderServers } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 30_000;

/** A self-signed P-256 leaf certificate for 127.0.0.1 and localhost, valid for two days. */
async function selfSigned(dir: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/cert.pem`;
  const key = `${dir}/key.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      // rustls refuses a CA certificate as the server's own (end-entity) certificate.
      "-addext",
      "basicConstraints=critical,CA:FALSE",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return { cert, key };
}

const NO_OPENSSL = commandRuns("openssl", ["version"])
  ? null
  : "openssl is not installed, so no certificate can be generated";

Deno.test({
  ...ignoredWhen("a wss:// call works end to end against Kav terminating TLS itself", NO_OPENSSL),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "kav-tls-" });
    const servers = await startProviderServers();
    let client: TwilioClient | null = null;
    let http: Deno.HttpClient | null = null;
    try {
      const { cert, key } = await selfSigned(dir);
      const kav = await startKavProcess({
        servers,
        dir,
        extra: `[server]\ntls_cert = "${cert}"\ntls_key = "${key}"`,
      });
      try {
        assert.match(kav.mediaUrl, /^wss:\/\/127\.0\.0\.1:\d+\/ws\/twilio-media$/);
        http = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(cert)] });
        const health = await fetch(`${kav.baseUrl}/healthz`, { client: http });
        assert.equal(health.status, 200);
        assert.equal(await health.text(), "ok\n");
        // Without the certificate the connection is refused: the trust really comes from it.
        await assert.rejects(fetch(`${kav.baseUrl}/healthz`));
        await assert.rejects(fetch(`http://127.0.0.1:${kav.port}/healthz`));

        servers.llm.script("שלום, הגעתם בחיבור מאובטח.");
        client = await TwilioClient.connect({ url: kav.mediaUrl, client: http });
        client.begin();
        await client.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS });
        assert.ok(client.mediaFrames > 0);
        await sayAndWait(
          client,
          fixtureClip("goodbye").audio,
          client.waitForEcho("a1_0", { timeoutMs: TIMEOUT_MS }),
        );
        assert.deepEqual(client.invalid, []);
        client.sendStop();
        await client.closed;
        await kav.waitForLine(new RegExp(`call=${client.callSid} ended outcome=completed`), {
          timeoutMs: TIMEOUT_MS,
        });
        kav.kill("SIGTERM");
        assert.equal((await kav.status).code, 0, kav.log());
      } finally {
        await client?.close();
        await kav.close();
      }
    } finally {
      http?.close();
      await servers.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
