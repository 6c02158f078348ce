/**
 * `analyzeCapture` (scripts/_bench_wire.ts) on pcap bytes built here: loopback Ethernet, IPv4, TCP,
 * as `tcpdump -i lo --time-stamp-precision=nano` writes them.
 */
import assert from "node:assert/strict";
import { analyzeCapture } from "../scripts/_bench_wire.ts";
import { concatBytes } from "../tools/bytes.ts";

const PORT = 8080; // Kav
const T0 = 1_700_000_000; // capture start, epoch seconds
const text = new TextEncoder();

interface Packet {
  /** ms after T0 */
  t: number;
  src: number;
  dst: number;
  seq: number;
  data: Uint8Array;
}

/** A pcap file: nanosecond magic (little-endian), then one Ethernet/IPv4/TCP record per packet. */
function pcap(packets: Packet[], linkType = 1, magic = 0xa1b23c4d): Uint8Array {
  const size = 24 + packets.reduce((n, p) => n + 16 + 54 + p.data.length, 0);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, magic, true);
  view.setUint16(4, 2, true);
  view.setUint16(6, 4, true);
  view.setUint32(16, 262144, true); // snap length
  view.setUint32(20, linkType, true);
  let at = 24;
  for (const p of packets) {
    const ns = Math.round(p.t * 1e6);
    const length = 54 + p.data.length;
    view.setUint32(at, T0 + Math.floor(ns / 1e9), true);
    view.setUint32(at + 4, ns % 1e9, true);
    view.setUint32(at + 8, length, true);
    view.setUint32(at + 12, length, true);
    const ip = at + 16 + 14;
    view.setUint16(ip - 2, 0x0800); // EtherType IPv4
    bytes[ip] = 0x45;
    view.setUint16(ip + 2, 40 + p.data.length);
    bytes[ip + 9] = 6; // TCP
    const tcp = ip + 20;
    view.setUint16(tcp, p.src);
    view.setUint16(tcp + 2, p.dst);
    view.setUint32(tcp + 4, p.seq >>> 0);
    bytes[tcp + 12] = 0x50; // data offset 5 words
    bytes.set(p.data, tcp + 20);
    at += 16 + length;
  }
  return bytes;
}

/** An unmasked server text frame (FIN + opcode 1). */
function frame(json: string): Uint8Array {
  const body = text.encode(json);
  const head = body.length < 126
    ? [0x81, body.length]
    : [0x81, 126, body.length >> 8, body.length & 0xff];
  return concatBytes(Uint8Array.from(head), body);
}

/** A 20 ms μ-law chunk is 160 bytes, 216 in base64: a 16-bit frame length, as Kav sends. */
const media = (payload = "A".repeat(216)) =>
  frame(`{"event":"media","streamSid":"MZ1","media":{"payload":"${payload}"}}`);
const mark = () => frame('{"event":"mark","streamSid":"MZ1","mark":{"name":"s1"}}');
const UPGRADE = text.encode(
  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
);

/** One TCP connection from a caller's `client` port; numbers Kav's bytes from an arbitrary seq. */
function connection(client: number, seq = 0xfffff000) {
  return {
    /** Kav sends `data` at `t`. */
    out(t: number, data: Uint8Array): Packet {
      const p = { t, src: PORT, dst: client, seq, data };
      seq = (seq + data.length) >>> 0; // starts near 2^32 so the wrap is exercised too
      return p;
    },
    /** The caller sends `data` at `t` (its own seq does not matter to the analysis). */
    in(t: number, data: string): Packet {
      return { t, src: client, dst: PORT, seq: 1, data: text.encode(data) };
    },
  };
}

const near = (actual: number, expected: number, what: string, tolerance = 0.01) =>
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what}: ${actual}, expected ~${expected}`);

Deno.test("media 20 ms apart on each connection gives 20 ms intervals", () => {
  const a = connection(50001), b = connection(50002, 1000);
  // Two calls interleaved 5 ms apart: mixing them up would give 5/15 ms intervals.
  const packets = [a.out(0, UPGRADE), b.out(1, UPGRADE)];
  for (let i = 1; i <= 4; i++) packets.push(a.out(i * 20, media()), b.out(i * 20 + 5, media()));
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.packets, 10);
  assert.equal(report.mediaFrames, 8);
  assert.equal(report.tx.count, 6); // 3 per call: the first frame has no predecessor
  near(report.tx.min, 20, "min");
  near(report.tx.max, 20, "max");
  near(report.tx.quantile(0.5), 20, "p50", 0.11); // a bin's upper edge
  assert.equal(report.brokenFlows, 0);
  assert.deepEqual(report.webhooks, []);
});

Deno.test("a split frame counts at its last byte; frames sharing a packet share its time", () => {
  const c = connection(50001);
  const second = media();
  const packets = [
    c.out(0, concatBytes(UPGRADE, media())), // a frame in the 101 packet itself
    c.out(20, second.subarray(0, 3)), // cut inside the 16-bit length
    c.out(23, second.subarray(3)),
    c.out(43, concatBytes(media(), media("AAAA"))), // a 16-bit and a 7-bit length frame
  ];
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.mediaFrames, 4);
  assert.equal(report.tx.count, 3); // 23, 20, 0
  near(report.tx.min, 0, "min");
  near(report.tx.max, 23, "max");
  near(report.tx.quantile(0.5), 20, "p50", 0.11); // a bin's upper edge
});

Deno.test("the first media after a mark starts a new sentence: that gap is not counted", () => {
  const c = connection(50001);
  const packets = [
    c.out(0, UPGRADE),
    c.out(10, media()),
    c.out(30, media()),
    c.out(31, mark()),
    c.out(500, media()), // 470 ms of thinking: not a playout gap
    c.out(520, media()),
  ];
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.mediaFrames, 4);
  assert.equal(report.tx.count, 2);
  near(report.tx.max, 20, "max");
});

Deno.test("retransmissions are ignored, a partial one is trimmed", () => {
  const c = connection(50001);
  const upgrade = c.out(0, UPGRADE), first = c.out(20, media()), second = c.out(40, media());
  const overlap = concatBytes(second.data, media()); // resends `second` and carries one new frame
  const packets = [
    upgrade,
    first,
    { ...first, t: 25 }, // same seq again
    second,
    { ...second, t: 60, data: overlap },
  ];
  c.out(0, media()); // advance past the new frame in `overlap`
  packets.push(c.out(80, media()));
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.mediaFrames, 4);
  assert.equal(report.tx.count, 3);
  near(report.tx.min, 20, "min");
  near(report.tx.max, 20, "max");
  assert.equal(report.brokenFlows, 0);
});

Deno.test("a hole in the byte stream breaks that connection only", () => {
  const lossy = connection(50001), fine = connection(50002);
  const packets = [lossy.out(0, UPGRADE), fine.out(0, UPGRADE)];
  packets.push(lossy.out(20, media()), lossy.out(40, media()));
  lossy.out(60, media()); // lost: never captured
  packets.push(lossy.out(80, media()), lossy.out(100, media()));
  packets.push(fine.out(20, media()), fine.out(40, media()));
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.brokenFlows, 1);
  assert.equal(report.mediaFrames, 4); // 2 before the hole + 2 on the other call
  assert.equal(report.tx.count, 2);
  near(report.tx.max, 20, "max");
});

Deno.test("status callback latency: last request packet to first response packet", () => {
  const status = connection(50010), twiml = connection(50011);
  const t = 1000;
  const packets = [
    status.in(
      t,
      "POST /webhook/stream_status HTTP/1.1\r\nHost: kav\r\n" +
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n",
    ),
    status.in(t + 0.2, "StreamEvent=stream-started&x"),
    twiml.in(t + 0.5, "POST /twiml HTTP/1.1\r\nHost: kav\r\nContent-Length: 0\r\n\r\n"),
    status.out(t + 1.2, text.encode("HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n")),
    twiml.out(t + 3, text.encode("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n<R/>\n")),
    // The same keep-alive connection again, answered in 0.5 ms.
    status.in(t + 10, "POST /webhook/stream_status HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
    status.out(t + 10.5, text.encode("HTTP/1.1 204 No Content\r\n\r\n")),
  ];
  const report = analyzeCapture(pcap(packets), PORT);
  assert.equal(report.webhooks.length, 2);
  near(report.webhooks[0].ms, 1.0, "first latency", 0.001);
  near(report.webhooks[0].at, T0 * 1000 + t + 0.2, "first at", 0.001);
  near(report.webhooks[1].ms, 0.5, "second latency", 0.001);
  assert.equal(report.mediaFrames, 0);
});

Deno.test("microsecond captures read their timestamps in µs", () => {
  const c = connection(50001);
  // 20.5 ms written as µs: read as ns it would come out 1000 times too small.
  const packets = [c.out(0, UPGRADE), c.out(1, media()), c.out(21.5, media())].map((p) => ({
    ...p,
    t: p.t / 1000,
  }));
  const report = analyzeCapture(pcap(packets, 1, 0xa1b2c3d4), PORT);
  near(report.tx.max, 20.5, "max");
});

Deno.test("garbage input: a clear RangeError, and a truncated last record is dropped", () => {
  const c = connection(50001);
  const good = pcap([c.out(0, UPGRADE), c.out(20, media()), c.out(40, media())]);
  const last = 16 + 54 + media().length; // the last record's size
  const notPcap = text.encode("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
  assert.throws(() => analyzeCapture(notPcap, PORT), { name: "RangeError", message: /Not a pcap/ });
  assert.throws(() => analyzeCapture(new Uint8Array(10), PORT), {
    name: "RangeError",
    message: /too short/,
  });
  const raw = good.slice();
  new DataView(raw.buffer).setUint32(20, 101, true); // LINKTYPE_RAW
  assert.throws(() => analyzeCapture(raw, PORT), {
    name: "RangeError",
    message: /Unsupported pcap link type 101/,
  });
  // A record whose bytes stop inside the TCP header (a tiny snap length) is skipped, not read past.
  const short = good.slice(0, good.length - last + 16 + 38);
  new DataView(short.buffer).setUint32(short.length - 38 - 8, 38, true);
  assert.equal(analyzeCapture(short, PORT).packets, 3);
  assert.equal(analyzeCapture(short, PORT).mediaFrames, 1);
  // tcpdump killed mid-write: the last record's data, or even its header, is incomplete.
  for (const cut of [good.length - 10, good.length - last + 8]) {
    const report = analyzeCapture(good.subarray(0, cut), PORT);
    assert.equal(report.packets, 2);
    assert.equal(report.mediaFrames, 1);
    assert.equal(report.tx.count, 0);
  }
});
