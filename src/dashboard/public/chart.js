// Spend over time as a stacked area chart (uPlot, served from node_modules/uplot/dist).
// Amounts come as decimal strings; they become floats only here, for drawing pixels: totals and
// labels are computed on integer micro-units.
import { micros } from "./dom.js";

const STEP = { HOUR: 3_600_000, DAY: 86_400_000 };
const COLORS = ["#2f6fb0", "#e08a1e", "#3f9e5a", "#b5484b", "#7a5cb0", "#8c6d4f", "#c765a8", "#6f7f8f", "#a7a833", "#27a5b5"];

/** The window a chart of this interval shows, ending now: 48 hours, 30 days or 12 months. */
export function rangeFor(interval, now = new Date()) {
  const to = new Date(now.getTime() + 1);
  if (interval === "HOUR") return { from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours() - 47)), to };
  if (interval === "DAY") return { from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - 29)), to };
  return { from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 11, 1)), to };
}

/** Every bucket start in the range, so empty hours / days / months draw as zero. */
function bucketStarts(interval, from, to) {
  const starts = [];
  for (let t = new Date(from); t < to; ) {
    starts.push(t.getTime());
    t = interval === "MONTH" ? new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth() + 1, 1)) : new Date(t.getTime() + STEP[interval]);
  }
  return starts;
}

/** Enough decimals to tell ticks `step` apart (money has at most 6). */
const decimalsFor = (step) => Math.min(6, Math.max(0, -Math.floor(Math.log10(step || 1))));

const formatMicros = (m) => {
  const negative = m < 0n;
  const abs = negative ? -m : m;
  return `${negative ? "-" : ""}${abs / 1_000_000n}.${String(abs % 1_000_000n).padStart(6, "0")}`;
};

/**
 * Draws points (SpendPoint[] of one bucket) into container, stacked by group.
 * labelOf turns a group (a key / project / route id, or a model name) into a display name.
 * Returns { total, currency } in micro-units for the caption.
 */
export function drawSpendChart(container, previous, { points, interval, from, to, labelOf }) {
  previous?.destroy();
  container.replaceChildren();
  const xs = bucketStarts(interval, from, to);
  const index = new Map(xs.map((x, i) => [x, i]));
  const groups = [...new Set(points.map((p) => p.group))];
  const raw = groups.map(() => xs.map(() => 0n));
  let total = 0n;
  for (const p of points) {
    const i = index.get(new Date(p.bucketStart).getTime());
    if (i === undefined) continue;
    const amount = micros(p.spend.amount);
    raw[groups.indexOf(p.group)][i] += amount;
    total += amount;
  }
  const currency = points[0]?.spend.currency ?? "";
  // Stacked: series k draws the running sum of groups 0..k; the legend shows each group's own amount.
  const stacked = raw.map((_, k) => xs.map((_, i) => Number(raw.slice(0, k + 1).reduce((sum, row) => sum + row[i], 0n)) / 1e6));
  const series = [
    { label: "time" },
    ...groups.map((g, k) => ({
      label: labelOf(g),
      stroke: COLORS[k % COLORS.length],
      fill: `${COLORS[k % COLORS.length]}55`,
      width: 1.5,
      value: (_u, _v, _s, i) => (i === null || i === undefined ? "" : `${formatMicros(raw[k][i])} ${currency}`),
    })),
  ];
  // uPlot fills each area down to zero: draw the tallest (last) stack first so lower ones stay visible.
  const order = groups.map((_, k) => groups.length - k);
  const opts = {
    width: Math.max(320, container.clientWidth),
    height: 240,
    series: [series[0], ...order.map((s) => series[s])],
    axes: [{}, { size: 80, label: currency, labelSize: 20, values: (_u, ticks, _axis, _space, step) => ticks.map((t) => t.toFixed(decimalsFor(step))) }],
    scales: { x: { time: true } },
    cursor: { drag: { x: false, y: false } },
  };
  const data = [xs.map((x) => x / 1000), ...order.map((s) => stacked[s - 1])];
  const chart = groups.length ? new uPlot(opts, data, container) : null;
  if (!chart) container.append(Object.assign(document.createElement("p"), { className: "muted", textContent: "No spend in this range." }));
  return { chart, total: formatMicros(total), currency };
}
