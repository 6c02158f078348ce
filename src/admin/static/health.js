// Health: providers' errors and latencies (since start, and over the last minutes), the store's
// queue, the CRM backlog, the runtime and the config without secrets (/api/health).
import { getJson } from "./api.js";
import { duration, h, ms, show } from "./dom.js";

function labels(l) {
  return Object.entries(l).map(([k, v]) => `${k}=${v}`).join(" ") || "—";
}

function countsTable(rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Series"), h("th", {}, "Recent"), h("th", {}, "Total"))),
    h(
      "tbody",
      {},
      ...rows.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, labels(r.labels)),
          h("td", { class: r.recent > 0 ? "num bad" : "num" }, r.recent),
          h("td", { class: "num" }, r.total),
        )
      ),
    ),
  );
}

function configRows(config, prefix = "") {
  return Object.entries(config).flatMap(([key, value]) =>
    value !== null && typeof value === "object"
      ? configRows(value, `${prefix}${key}.`)
      : [h("tr", {}, h("td", {}, `${prefix}${key}`), h("td", { dir: "auto" }, String(value)))]
  );
}

/** Shows the health page in `view`, refreshed every 5 s; returns what stops it. */
export async function showHealth(view) {
  const render = (health) => {
    const p = health.providers;
    show(
      view,
      h("h2", {}, "Health"),
      h(
        "dl",
        { class: "facts", id: "health-facts" },
        ...[
          ["Node", health.node],
          ["Up", duration(health.uptimeS)],
          ["Draining", health.draining ? "yes" : "no"],
          ["Active calls", `${health.calls.active ?? 0} / ${health.calls.max}`],
          ["Store", health.store.kind],
          ["Store queue", health.store.queued ?? 0],
          ["Journaled", health.store.journaled ?? 0],
          ["CRM backlog", health.crm.enabled ? health.crm.pending ?? 0 : "off"],
          ["Deno", health.runtime.deno],
          ["Live viewers", health.console.viewers],
        ].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v)))),
      ),
      h("h3", {}, `Provider errors (recent: last ${duration(p.recentWindowS)})`),
      countsTable(p.errors, "No provider errors since start."),
      h("h3", {}, "STT restarts"),
      countsTable(p.sttRestarts, "None."),
      h("h3", {}, "Latencies"),
      p.latency.length === 0 ? h("p", { class: "muted" }, "Nothing measured yet.") : h(
        "table",
        {},
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ...["What", "Provider", "Count", "Recent", "p50", "p95"].map((c) => h("th", {}, c)),
          ),
        ),
        h(
          "tbody",
          {},
          ...p.latency.map((l) =>
            h(
              "tr",
              {},
              h("td", {}, l.name),
              h("td", {}, l.provider ?? "—"),
              h("td", { class: "num" }, l.count),
              h("td", { class: "num" }, l.recentCount),
              h("td", { class: "num" }, ms(l.p50Ms)),
              h("td", { class: "num" }, ms(l.p95Ms)),
            )
          ),
        ),
      ),
      h("h3", {}, "Store write failures"),
      countsTable(health.store.writeFailures, "None."),
      h("h3", {}, "Configuration (no secrets)"),
      h("table", { id: "config" }, h("tbody", {}, ...configRows(health.config))),
    );
  };
  render(await getJson("/api/health"));
  const timer = setInterval(() => getJson("/api/health").then(render).catch(() => {}), 5000);
  return () => clearInterval(timer);
}
