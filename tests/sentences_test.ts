import assert from "node:assert/strict";
import fc from "fast-check";
import { cutSentences, SentenceCutter } from "../src/llm/sentences.ts";

/** Feeds `deltas` and returns every sentence, the flushed rest included. */
function cut(deltas: readonly string[], maxChars?: number): string[] {
  const cutter = new SentenceCutter({ maxChars });
  const out: string[] = [];
  for (const delta of deltas) out.push(...cutter.push(delta));
  const rest = cutter.flush();
  if (rest !== null) out.push(rest);
  return out;
}

/** One character per delta: the hardest split. */
function chars(text: string): string[] {
  return [...text];
}

Deno.test("SentenceCutter cuts Hebrew sentences at . ! ? and ׃", () => {
  assert.deepEqual(
    cut(chars("שלום! מה שלומך? אני בסדר. פסוק אחרון׃ וזהו")),
    ["שלום!", "מה שלומך?", "אני בסדר.", "פסוק אחרון׃", "וזהו"],
  );
});

Deno.test("SentenceCutter cuts Latin sentences, ellipses, semicolons and newlines", () => {
  assert.deepEqual(
    cut(chars("Hello there. Wait… really?! Yes; fine\nNext line\n\nLast")),
    ["Hello there.", "Wait…", "really?!", "Yes;", "fine", "Next line", "Last"],
  );
});

Deno.test("SentenceCutter releases a sentence as soon as the next delta shows it ended", () => {
  const cutter = new SentenceCutter();
  assert.deepEqual(cutter.push("הת"), []);
  assert.deepEqual(cutter.push("ור נקבע."), [], "a period alone may still be a decimal point");
  assert.deepEqual(cutter.push(" להת"), ["התור נקבע."]);
  assert.deepEqual(cutter.push("ראות"), []);
  assert.equal(cutter.flush(), "להתראות");
  assert.equal(cutter.flush(), null);
});

Deno.test("SentenceCutter keeps decimals, dotted names and times together", () => {
  assert.deepEqual(
    cut(chars('המחיר 3.5 ש"ח לדקה. ראו kav.example.com או 10:30. תודה')),
    ['המחיר 3.5 ש"ח לדקה.', "ראו kav.example.com או 10:30.", "תודה"],
  );
  assert.deepEqual(cut(["It costs 3", ".", "5 dollars. OK"]), ["It costs 3.5 dollars.", "OK"]);
});

Deno.test("SentenceCutter does not cut after abbreviations, initials or list numbers", () => {
  assert.deepEqual(
    cut(chars("Ask Dr. Cohen and J. Smith, e.g. today. Steps:\n1. Call us. 2. Wait.")),
    ["Ask Dr. Cohen and J. Smith, e.g. today.", "Steps:", "1. Call us.", "2. Wait."],
  );
});

Deno.test("SentenceCutter keeps closing quotes and brackets with their sentence", () => {
  assert.deepEqual(
    cut(chars('הוא אמר "כן." ואז הלך. (זה נכון!) »בסדר?« טוב')),
    ['הוא אמר "כן."', "ואז הלך.", "(זה נכון!)", "»בסדר?« טוב"],
  );
});

Deno.test("SentenceCutter cuts a run-on at the last comma, else the last space", () => {
  const clause = "אני רוצה לקבוע תור לרופא המשפחה";
  const runOn = `${clause}, ${clause}, ${clause}, ${clause}, ${clause}, ${clause} וזהו`;
  const out = cut(chars(runOn), 80);
  assert.ok(out.length >= 3, JSON.stringify(out));
  for (const sentence of out) assert.ok(sentence.length <= 80, `too long: ${sentence.length}`);
  for (const sentence of out.slice(0, -1)) assert.ok(sentence.endsWith(","), sentence);
  assert.equal(out.join(" "), runOn);

  const words = Array.from({ length: 40 }, (_, i) => `מילה${i}`).join(" ");
  const spaced = cut([words], 50);
  for (const sentence of spaced) assert.ok(sentence.length <= 50);
  assert.equal(spaced.join(" "), words);

  const solid = "א".repeat(30);
  assert.deepEqual(cut([solid], 12), ["א".repeat(12), "א".repeat(12), "א".repeat(6)]);
});

Deno.test("SentenceCutter rejects a tiny maxChars", () => {
  assert.throws(() => new SentenceCutter({ maxChars: 3 }), RangeError);
});

Deno.test("SentenceCutter gives the same sentences for any split of the text", () => {
  const pieces = fc.constantFrom(
    "שלום",
    " ",
    ".",
    "?",
    "!",
    ",",
    "3.5",
    "Dr.",
    "\n",
    '"',
    "תור",
    "…",
    "Hello",
    "ok",
    "אני רוצה לקבוע",
    "  ",
    "״",
  );
  fc.assert(
    fc.property(
      fc.array(pieces, { maxLength: 60 }),
      fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 20 }),
      (parts, sizes) => {
        const text = parts.join("");
        const deltas: string[] = [];
        for (let at = 0, k = 0; at < text.length; k++) {
          const size = sizes[k % sizes.length];
          deltas.push(text.slice(at, at + size));
          at += size;
        }
        const whole = cut([text], 24);
        assert.deepEqual(cut(deltas, 24), whole);
        // Nothing is lost or reordered: only whitespace differs.
        assert.equal(whole.join("").replace(/\s+/g, ""), text.replace(/\s+/g, ""));
        for (const sentence of whole) {
          assert.ok(sentence.length <= 24, sentence);
          assert.equal(sentence, sentence.trim());
          assert.notEqual(sentence, "");
        }
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("cutSentences() turns a delta stream into a sentence stream", async () => {
  async function* deltas() {
    yield* ["כן", ", מח", "ר בב", "וקר. ", "בשע", "ה 9.", "30"];
  }
  const out: string[] = [];
  for await (const sentence of cutSentences(deltas())) out.push(sentence);
  assert.deepEqual(out, ["כן, מחר בבוקר.", "בשעה 9.30"]);
});
