/**
 * The operator console in a real browser (SPEC 7, issue 16): Debian's headless Chromium driven by
 * puppeteer-core against a sandbox Kav. Logs in, watches simulated calls appear live and leave,
 * finds them in the history by a Hebrew word, opens one and finds its Hebrew transcript laid out
 * right-to-left, its keypad input and its timeline drawn; screenshots of each page go to
 * `tests/output/console/` (gitignored).
 */
import assert from "node:assert/strict";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { fixtureLines, simulate } from "../tools/twilio/simulation.ts";
import { fixtureClip, sayAndWait } from "./support/kav_process.ts";
import { ADMIN_TOKEN, type ConsoleSandbox, startConsoleSandbox } from "./support/console.ts";
import { ignoredWhen } from "./support/requires.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const CHROMIUM = "/usr/bin/chromium";
const OUTPUT = new URL("./output/console/", import.meta.url).pathname;
const ANSWER = "בשמחה, נקבע לך תור למחר בעשר.";

function chromiumMissing(): string | null {
  try {
    return Deno.statSync(CHROMIUM).isFile ? null : `${CHROMIUM} is not a file`;
  } catch {
    return `Chromium is not installed at ${CHROMIUM} (apt-get install chromium; .ci/run installs it)`;
  }
}

async function launch(profile: string): Promise<Browser> {
  return await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${profile}`,
    ],
  });
}

/** Rows of the live table whose call has a CallSid. */
function liveRows(page: Page): Promise<number> {
  return page.evaluate(
    `[...document.querySelectorAll("#live-table tbody tr")].filter((r) => r.dataset.callSid).length`,
  ) as Promise<number>;
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** One call with a caller turn, the agent's answer, and a keypad digit; returns its CallSid. */
async function callWithKeypad(kav: ConsoleSandbox): Promise<string> {
  const client = await TwilioClient.connect({ url: kav.mediaUrl });
  try {
    client.begin();
    await client.waitForEcho("greeting_end", { timeoutMs: 20_000 });
    await sayAndWait(
      client,
      fixtureClip("appointment").audio,
      client.waitForEcho("a1_0", { timeoutMs: 20_000 }),
    );
    client.sendDtmf("7");
    await new Promise((resolve) => setTimeout(resolve, 200));
    client.sendStop();
    await client.closed;
    return client.callSid;
  } finally {
    await client.close();
  }
}

Deno.test({
  ...ignoredWhen(
    "the console in Chromium: login, live calls, history search, a call's Hebrew transcript and timeline",
    chromiumMissing(),
  ),
  async fn(t) {
    await Deno.mkdir(OUTPUT, { recursive: true });
    const profile = await Deno.makeTempDir({ prefix: "kav-chromium-" });
    const kav = await startConsoleSandbox();
    const browser = await launch(profile);
    try {
      const page = await browser.newPage();
      await page.setViewport({ width: 1280, height: 900 });
      const foreign: string[] = [];
      page.on("request", (request) => {
        const url = request.url();
        // data: URLs are the browser's own (the date input's icon), not a fetch.
        if (!url.startsWith(kav.consoleUrl) && !url.startsWith("data:")) foreign.push(url);
      });
      const pageErrors: string[] = [];
      page.on("pageerror", (error) => pageErrors.push(String(error)));

      await t.step("a wrong token is refused, the right one logs in", async () => {
        await page.goto(kav.consoleUrl, { waitUntil: "networkidle0" });
        await page.waitForSelector("#login #token");
        await page.screenshot({ path: `${OUTPUT}/01-login.png` });
        await page.type("#token", "not-the-token");
        await page.click("#login button[type=submit]");
        await page.waitForFunction(
          `document.querySelector("#login .error")?.textContent?.includes("not right")`,
        );
        await page.$eval("#token", (el) => ((el as unknown as { value: string }).value = ""));
        await page.type("#token", ADMIN_TOKEN);
        await page.click("#login button[type=submit]");
        await page.waitForSelector("#live-table");
        const cookies = await browser.cookies();
        const session = cookies.find((c) => c.name === "kav_session");
        assert.ok(session, "session cookie set");
        assert.equal(session.httpOnly, true);
        assert.equal(session.sameSite, "Strict");
      });

      await t.step("simulated calls appear live, then leave when they end", async () => {
        const simulation = simulate({
          target: { baseUrl: kav.baseUrl, publicUrl: kav.baseUrl, authToken: null },
          calls: 2,
          rampMs: 200,
          turns: 1,
          minDurationMs: 8000,
          lines: fixtureLines(),
        });
        await waitUntil("2 live calls", async () => (await liveRows(page)) >= 2, 10_000);
        // Wait for a line said or an answer, so the screenshot shows a conversation.
        await page.waitForFunction(
          `document.querySelectorAll("#live-table .last-line").length >= 1`,
          { timeout: 20_000 },
        );
        await page.screenshot({ path: `${OUTPUT}/02-live.png` });
        const states = await page.evaluate(
          `[...document.querySelectorAll("#live-table tbody tr")].map((r) => r.dataset.state)`,
        ) as string[];
        const known = ["connecting", "greeting", "listening", "thinking", "speaking"];
        assert.ok(states.every((s) => known.includes(s ?? "")), states.join());
        const report = await simulation;
        assert.equal(report.overall.ok, 2, JSON.stringify(report.overall.errorKinds));
        await waitUntil("the live table to empty", async () => (await liveRows(page)) === 0, 5000);
      });

      // Queued answers go to the next LLM requests: this call's only turn gets it.
      kav.servers.llm.script(ANSWER);
      const keypadCall = await callWithKeypad(kav);

      await t.step("the history lists the calls and finds one by a Hebrew word", async () => {
        // Records are written off the calls' paths: reload until all three are on disk.
        await waitUntil("3 calls in the history", async () => {
          await page.goto(`${kav.consoleUrl}/#/calls`, { waitUntil: "networkidle0" });
          await page.reload({ waitUntil: "networkidle0" });
          await page.waitForSelector("#calls-table");
          const rows = await page.$$eval("#calls-table tbody tr", (r) => r.length);
          const mine = await page.$(`#calls-table tr[data-call-sid="${keypadCall}"]`);
          return rows === 3 && mine !== null;
        }, 10_000);
        await page.screenshot({ path: `${OUTPUT}/03-history.png` });
        await page.type("#search", "לקבוע");
        await page.click("#filters button[type=submit]");
        await page.waitForFunction(
          `location.hash.includes("q=") &&
            document.querySelector('#calls-table tr[data-call-sid="${keypadCall}"]') !== null`,
        );
        const found = await page.evaluate(
          `[...document.querySelectorAll("#calls-table tbody tr")].map((r) => r.dataset.callSid)`,
        ) as string[];
        assert.ok(found.includes(keypadCall), found.join());
        await page.screenshot({ path: `${OUTPUT}/04-history-search.png` });
      });

      await t.step("a finished call shows its Hebrew transcript, keypad and timeline", async () => {
        await page.click(`#calls-table tr[data-call-sid="${keypadCall}"] a`);
        await page.waitForSelector("#transcript li[data-speaker=caller]");
        await page.waitForFunction(`Number(document.getElementById("timeline")?.dataset.bars) > 0`);
        const caller = await page.$eval("#transcript li[data-speaker=caller] .said", (el) => ({
          text: el.textContent,
          rtl: el.matches(":dir(rtl)"),
        }));
        assert.equal(caller.text, "שלום, אני רוצה לקבוע תור");
        assert.equal(caller.rtl, true, "Hebrew is laid out right-to-left");
        const agent = await page.$$eval(
          "#transcript li[data-speaker=agent] .said.heard",
          (els) => els.map((el) => ({ text: el.textContent, rtl: el.matches(":dir(rtl)") })),
        );
        assert.ok(agent.some((a) => a.text === ANSWER && a.rtl), JSON.stringify(agent));
        const latin = await page.$eval("h2 code", (el) => el.matches(":dir(ltr)"));
        assert.equal(latin, true, "the CallSid beside it stays left-to-right");
        assert.equal(await page.$eval("#keypad p", (el) => el.textContent), "7");
        // Pixels in the speech bars' colors (caller teal, agent orange), not axis grey or white.
        const painted = await page.evaluate(`(() => {
          const c = document.querySelector("#timeline canvas");
          const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          let colored = 0;
          for (let i = 0; i < data.length; i += 4) {
            const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
            if (a > 0 && (Math.abs(r - g) > 40 || Math.abs(g - b) > 40)) colored++;
          }
          return colored;
        })()`) as number;
        assert.ok(painted > 500, `colored pixels on the timeline: ${painted}`);
        const bars = Number(
          await page.evaluate(`document.getElementById("timeline").dataset.bars`),
        );
        assert.ok(bars >= 3, `greeting, caller turn and answer drawn: ${bars}`);
        await page.screenshot({ path: `${OUTPUT}/05-call.png`, fullPage: true });
      });

      await t.step("the health page shows the runtime and the config without secrets", async () => {
        await page.goto(`${kav.consoleUrl}/#/health`, { waitUntil: "networkidle0" });
        await page.waitForSelector("#config");
        const config = await page.$eval("#config", (el) => el.textContent ?? "");
        assert.match(config, /admin_token/);
        assert.doesNotMatch(config, new RegExp(ADMIN_TOKEN));
        await page.screenshot({ path: `${OUTPUT}/06-health.png`, fullPage: true });
      });

      await t.step("the page loaded nothing from elsewhere and raised no errors", () => {
        assert.deepEqual(foreign, []);
        assert.deepEqual(pageErrors, []);
      });
    } finally {
      await browser.close();
      await kav.stop();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    }
  },
});
