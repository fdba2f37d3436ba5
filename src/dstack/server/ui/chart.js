// A line chart as inline SVG: one series, its time axis and a few value ticks. No chart
// library: the metrics pages draw a handful of small series and this is all they need.
import { h, s } from "./dom.js";
import { bytes } from "./format.js";

const W = 420, H = 140, PAD_L = 52, PAD_B = 20, PAD_T = 8, PAD_R = 8;

function formatter(name) {
  if (name.includes("bytes")) return bytes;
  if (name.includes("percent")) return (v) => `${Math.round(v)}%`;
  return (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1));
}

export function lineChart(series) {
  const fmt = formatter(series.name);
  const times = series.timestamps.map((t) => Date.parse(t));
  const values = series.values.map(Number);
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const isPercent = series.name.includes("percent");
  let v0 = Math.min(0, ...values), v1 = Math.max(...values);
  if (isPercent) v1 = Math.max(v1, 100);
  if (v1 === v0) v1 = v0 + 1;
  const x = (t) => PAD_L + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD_L - PAD_R);
  const y = (v) => PAD_T + (1 - (v - v0) / (v1 - v0)) * (H - PAD_T - PAD_B);
  const points = times.map((t, i) => `${x(t).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ");
  const ticks = [v0, (v0 + v1) / 2, v1];
  const last = values.length ? fmt(values[values.length - 1]) : "";
  return h(
    "figure",
    { class: "chart", "data-metric": series.name },
    h("figcaption", {}, series.name, h("span", { class: "muted" }, ` ${last}`)),
    s(
      "svg",
      { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": series.name },
      ticks.map((v) => [
        s("line", { x1: PAD_L, x2: W - PAD_R, y1: y(v), y2: y(v), class: "grid" }),
        s("text", { x: PAD_L - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v)),
      ]),
      s("text", { x: PAD_L, y: H - 4, class: "tick" }, new Date(t0).toLocaleTimeString()),
      s("text", { x: W - PAD_R, y: H - 4, "text-anchor": "end", class: "tick" },
        new Date(t1).toLocaleTimeString()),
      values.length > 1
        ? s("polyline", { points, class: "series" })
        : s("circle", { cx: x(times[0] || t0), cy: y(values[0] || 0), r: 3, class: "dot" }),
    ),
  );
}
