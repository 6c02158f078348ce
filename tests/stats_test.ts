import assert from "node:assert/strict";
import { median, quantile, quantileOfSorted, round2, spread } from "../tools/stats.ts";

Deno.test("quantile() is the nearest rank, on a sorted copy", () => {
  const values = [4, 1, 3, 2];
  assert.equal(quantile(values, 0.5), 2);
  assert.equal(quantile(values, 0.75), 3);
  assert.equal(quantile(values, 0.76), 4);
  assert.equal(quantile(values, 0), 1);
  assert.equal(quantile(values, 1), 4);
  assert.deepEqual(values, [4, 1, 3, 2], "the input is not sorted in place");
  assert.equal(quantile([], 0.5), NaN);
  const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
  assert.equal(quantile(hundred, 0.99), 99);
  assert.equal(quantileOfSorted(new Float64Array([1, 2, 3]), 0.5), 2);
});

Deno.test("median() takes the middle, or the mean of the two middles", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([]), NaN);
});

Deno.test("spread() gives p50, p95, p99 and max, rounded", () => {
  const values = Array.from({ length: 200 }, (_, i) => (i + 1) / 3);
  assert.deepEqual(spread(values), { p50: 33.3, p95: 63.3, p99: 66, max: 66.7 });
  assert.deepEqual(spread(values, round2), { p50: 33.33, p95: 63.33, p99: 66, max: 66.67 });
  const empty = spread([]);
  assert.ok(Object.values(empty).every(Number.isNaN));
});
