/**
 * Kav's timing as seen on the wire: `tcpdump` on loopback timestamps each packet in the kernel
 * when Kav's `write` hands it to the loopback device, so neither the load generator's event loop
 * nor its core's load shows up in the figures. Measured from the capture:
 *
 * - agent-frame inter-arrival per call: the interval between two `media` messages Kav wrote on one
 *   WebSocket, leaving out the first frame after a `mark` (a new sentence), exactly as the
 *   simulator counts them;
 * - status-callback latency: last packet of a `POST /webhook/stream_status` request to the first
 *   packet of its response.
 *
 * Needs `tcpdump` and the right to capture (root or CAP_NET_RAW); `startWireCapture` returns null
 * otherwise and the bench reports client-side figures only.
 */
import { MsHistogram } from "../tools/stats.ts";
import { concatBytes } from "../tools/bytes.ts";

export interface WireCapture {
  /** Stops the capture and analyses it. */
  stop(): Promise<WireReport>;
}

export interface WireReport {
  /** Agent-frame inter-arrival (ms) of every call, merged. */
  readonly tx: MsHistogram;
  /** Status-callback latencies (ms) with the request's epoch ms. */
  readonly webhooks: readonly { readonly at: number; readonly ms: number }[];
  readonly packets: number;
  /** Packets the kernel dropped before tcpdump read them (its own count). */
  readonly kernelDrops: number;
  /** Connections whose byte stream had a hole (a lost packet); their frames after it are skipped. */
  readonly brokenFlows: number;
  readonly mediaFrames: number;
}

/** Starts `tcpdump` on `lo` for Kav's `port`, on `core` when given; null when it cannot run. */
export async function startWireCapture(
  port: number,
  path: string,
  core: number | null,
): Promise<WireCapture | null> {
  // Packets that carry data: all Kav sends, and what it receives except WebSocket frames from
  // callers (a first byte of 0x81, FIN + text), which are most of the traffic and not needed.
  const data = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0";
  const filter = `tcp and ${data} and (src port ${port} or ` +
    `(dst port ${port} and tcp[((tcp[12] & 0xf0) >> 2)] != 0x81))`;
  const args = [
    "-i",
    "lo",
    "-n",
    "-s",
    "0",
    "-B",
    "65536",
    "--time-stamp-precision=nano",
    "-w",
    path,
    filter,
  ];
  const command = core === null ? "tcpdump" : "taskset";
  const child = (() => {
    try {
      return new Deno.Command(command, {
        args: core === null ? args : ["-c", String(core), "tcpdump", ...args],
        stdout: "null",
        stderr: "piped",
      }).spawn();
    } catch {
      return null;
    }
  })();
  if (child === null) return null;
  const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  const drained = (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) return;
      log += value;
    }
  })();
  // tcpdump says "listening on lo" once the capture is armed.
  const deadline = performance.now() + 5000;
  while (!log.includes("listening on") && performance.now() < deadline) {
    const status = await Promise.race([
      child.status,
      new Promise<null>((r) => setTimeout(() => r(null), 50)),
    ]);
    if (status !== null) {
      await drained;
      return null;
    }
  }
  if (!log.includes("listening on")) {
    child.kill("SIGKILL");
    await child.status;
    return null;
  }
  return {
    async stop(): Promise<WireReport> {
      child.kill("SIGINT");
      await child.status;
      await drained;
      const drops = /(\d+) packets? dropped by kernel/.exec(log);
      const report = analyzeCapture(await Deno.readFile(path), port);
      await Deno.remove(path).catch(() => {});
      return { ...report, kernelDrops: drops === null ? NaN : Number(drops[1]) };
    },
  };
}

const MEDIA = /^\{"event":"media"/;
const MARK = /^\{"event":"mark"/;
const STATUS_REQUEST = "POST /webhook/stream_status";

/** What Kav sent on one TCP connection. */
interface Flow {
  nextSeq: number;
  broken: boolean;
  /** Bytes received but not yet parsed (an incomplete HTTP head or WebSocket frame). */
  pending: Uint8Array;
  /** "http" until a `101` response, then "ws". */
  mode: "http" | "ws";
  lastMediaAt: number;
  markSinceMedia: boolean;
  /** Outbound side: when the last request packet on the reverse flow arrived (status callbacks). */
  requestAt: number;
}

const latin1 = new TextDecoder("latin1");

/** Analyses a pcap file (Ethernet, Linux cooked or BSD loopback framing; IPv4). */
export function analyzeCapture(
  bytes: Uint8Array,
  port: number,
): Omit<WireReport, "kernelDrops"> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 24) throw new RangeError("Capture too short for a pcap header");
  const magic = view.getUint32(0, true);
  const littleEndian = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  const nanos = magic === 0xa1b23c4d || magic === 0x4d3cb2a1;
  if (!littleEndian && magic !== 0xd4c3b2a1 && magic !== 0x4d3cb2a1) {
    throw new RangeError(`Not a pcap file (magic 0x${magic.toString(16)})`);
  }
  const linkType = view.getUint32(20, littleEndian);
  const linkHeader = linkType === 1 ? 14 : linkType === 113 ? 16 : linkType === 0 ? 4 : -1;
  if (linkHeader < 0) throw new RangeError(`Unsupported pcap link type ${linkType}`);

  const flows = new Map<number, Flow>();
  const tx = new MsHistogram();
  const webhooks: { at: number; ms: number }[] = [];
  let packets = 0, brokenFlows = 0, mediaFrames = 0;

  for (let at = 24; at + 16 <= bytes.length;) {
    const seconds = view.getUint32(at, littleEndian);
    const fraction = view.getUint32(at + 4, littleEndian);
    const captured = view.getUint32(at + 8, littleEndian);
    const record = at + 16;
    at = record + captured;
    if (at > bytes.length) break; // a record cut off when tcpdump stopped
    packets++;
    const timeMs = seconds * 1000 + (nanos ? fraction / 1e6 : fraction / 1e3);
    const ip = record + linkHeader;
    if (ip + 20 > at || bytes[ip] >> 4 !== 4 || bytes[ip + 9] !== 6) continue;
    const ipLength = view.getUint16(ip + 2);
    const tcp = ip + (bytes[ip] & 0x0f) * 4;
    if (tcp + 20 > at) continue; // TCP header cut short by the snap length: no ports or seq
    const sourcePort = view.getUint16(tcp);
    const destinationPort = view.getUint16(tcp + 2);
    const seq = view.getUint32(tcp + 4);
    const payload = tcp + (bytes[tcp + 12] >> 4) * 4;
    const payloadLength = ip + ipLength - payload;
    if (payloadLength <= 0) continue;
    if (sourcePort !== port) {
      // A request: only its timing matters. A new status callback, or more of one (its body).
      const head = latin1.decode(bytes.subarray(payload, Math.min(at, payload + 27)));
      const reverse = flowOf(flows, sourcePort, NaN);
      if (head === STATUS_REQUEST || !Number.isNaN(reverse.requestAt)) reverse.requestAt = timeMs;
      continue;
    }
    const flow = flowOf(flows, destinationPort, seq);
    if (Number.isNaN(flow.nextSeq)) flow.nextSeq = seq;
    if (flow.broken) continue;
    const skip = (flow.nextSeq - seq) | 0; // bytes already seen (a retransmission)
    if (skip < 0) {
      flow.broken = true;
      brokenFlows++;
      continue;
    }
    if (skip >= payloadLength) continue;
    if (payload + payloadLength > at) {
      flow.broken = true; // truncated by the snap length: cannot follow this stream
      brokenFlows++;
      continue;
    }
    flow.nextSeq = (seq + payloadLength) >>> 0;
    const data = bytes.subarray(payload + skip, payload + payloadLength);
    if (flow.mode === "http") {
      if (!Number.isNaN(flow.requestAt)) {
        webhooks.push({ at: flow.requestAt, ms: timeMs - flow.requestAt });
        flow.requestAt = NaN;
      }
      const text = latin1.decode(data);
      if (text.startsWith("HTTP/1.1 101")) {
        const end = text.indexOf("\r\n\r\n");
        flow.mode = "ws";
        flow.pending = end < 0 ? new Uint8Array(0) : data.slice(end + 4);
        mediaFrames += readFrames(flow, timeMs, tx);
      }
      continue;
    }
    flow.pending = concatBytes(flow.pending, data);
    mediaFrames += readFrames(flow, timeMs, tx);
  }
  return { tx, webhooks, packets, brokenFlows, mediaFrames };
}

/** Kav's side of the connection with the caller's `port` (sequence numbers from `seq`). */
function flowOf(flows: Map<number, Flow>, port: number, seq: number): Flow {
  const known = flows.get(port);
  if (known !== undefined) return known;
  const flow: Flow = {
    nextSeq: seq,
    broken: false,
    pending: new Uint8Array(0),
    mode: "http",
    lastMediaAt: NaN,
    markSinceMedia: false,
    requestAt: NaN,
  };
  flows.set(port, flow);
  return flow;
}

/** Parses the complete server-to-client WebSocket frames in `flow.pending` (arrived at `timeMs`). */
function readFrames(flow: Flow, timeMs: number, tx: MsHistogram): number {
  const bytes = flow.pending;
  let at = 0, media = 0;
  while (at + 2 <= bytes.length) {
    const opcode = bytes[at] & 0x0f;
    let length = bytes[at + 1] & 0x7f;
    let header = 2;
    if (length === 126) {
      if (at + 4 > bytes.length) break;
      length = (bytes[at + 2] << 8) | bytes[at + 3];
      header = 4;
    } else if (length === 127) {
      if (at + 10 > bytes.length) break;
      length = Number(new DataView(bytes.buffer, bytes.byteOffset + at + 2, 8).getBigUint64(0));
      header = 10;
    }
    if ((bytes[at + 1] & 0x80) !== 0) header += 4; // masked: not from a server, but tolerate it
    if (at + header + length > bytes.length) break;
    if (opcode === 1) {
      const head = latin1.decode(bytes.subarray(at + header, at + header + 17));
      if (MEDIA.test(head)) {
        media++;
        if (!flow.markSinceMedia && !Number.isNaN(flow.lastMediaAt)) {
          tx.add(timeMs - flow.lastMediaAt);
        }
        flow.markSinceMedia = false;
        flow.lastMediaAt = timeMs;
      } else if (MARK.test(head)) {
        flow.markSinceMedia = true;
      }
    }
    at += header + length;
  }
  flow.pending = at === 0 ? bytes : bytes.slice(at);
  return media;
}
