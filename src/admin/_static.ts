/**
 * The console's page, styles and ES modules, and uPlot from npm: imported as text, so they are
 * inside the module graph that `deno compile` embeds and `deno bundle` inlines. No build step, no
 * CDN: the page works offline.
 */
import indexHtml from "./static/index.html" with { type: "text" };
import styleCss from "./static/style.css" with { type: "text" };
import apiJs from "./static/api.js" with { type: "text" };
import appJs from "./static/app.js" with { type: "text" };
import liveJs from "./static/live.js" with { type: "text" };
import historyJs from "./static/history.js" with { type: "text" };
import callJs from "./static/call.js" with { type: "text" };
import timelineJs from "./static/timeline.js" with { type: "text" };
import healthJs from "./static/health.js" with { type: "text" };
import domJs from "./static/dom.js" with { type: "text" };
import uplotJs from "uplot/dist/uPlot.iife.min.js" with { type: "text" };
import uplotCss from "uplot/dist/uPlot.min.css" with { type: "text" };

const JS = "text/javascript; charset=utf-8";

export interface StaticFile {
  readonly body: Uint8Array<ArrayBuffer>;
  readonly type: string;
  /** A strong validator: browsers revalidate and get 304 until Kav is upgraded. */
  readonly etag: string;
}

const encoder = new TextEncoder();

function file(text: string, type: string): StaticFile {
  const body = encoder.encode(text);
  // FNV-1a over the bytes: cheap, and enough to tell two builds' files apart.
  let hash = 0x811c9dc5;
  for (const byte of body) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return { body, type, etag: `"${hash.toString(16)}-${body.length.toString(16)}"` };
}

/** URL path → file. */
export const STATIC_FILES: ReadonlyMap<string, StaticFile> = new Map([
  ["/", file(indexHtml, "text/html; charset=utf-8")],
  ["/static/style.css", file(styleCss, "text/css; charset=utf-8")],
  ["/static/api.js", file(apiJs, JS)],
  ["/static/app.js", file(appJs, JS)],
  ["/static/live.js", file(liveJs, JS)],
  ["/static/history.js", file(historyJs, JS)],
  ["/static/call.js", file(callJs, JS)],
  ["/static/timeline.js", file(timelineJs, JS)],
  ["/static/health.js", file(healthJs, JS)],
  ["/static/dom.js", file(domJs, JS)],
  ["/static/uplot.js", file(uplotJs, JS)],
  ["/static/uplot.css", file(uplotCss, "text/css; charset=utf-8")],
]);
