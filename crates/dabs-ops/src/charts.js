// The operator page's charts: the last minutes of every member and of the farm, from
// /api/history (columns aligned on t, one sample a second), drawn with uPlot (served by the
// node at /assets/uplot.min.js). The page calls dabsCharts.update(history) on each refresh.
"use strict";
(function () {
  // Each chart: its title, the unit on its axis and the columns it draws. Latency draws p99
  // for every member and the farm, and p50 dashed (hidden for members until picked in the legend).
  const CHARTS = [
    { id: "calls", title: "Calls per second", cols: [["calls_per_s", ""]], digits: 1 },
    { id: "latency", title: "Call latency, ms (p99 solid, p50 dashed)", cols: [["p99_ms", " p99"], ["p50_ms", " p50"]], digits: 2 },
    { id: "load", title: "Load score", cols: [["load", ""]], digits: 1 },
    { id: "sessions", title: "Sessions", cols: [["sessions", ""]], digits: 0 },
    { id: "portions", title: "Portions", cols: [["portions", ""]], digits: 0 },
  ];
  const FARM_COLOUR = "#1c2026";
  // Distinct, colour-blind-friendly hues (Okabe–Ito), one per member by name order.
  const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#a08c00", "#7f4fc9"];
  const plots = new Map(); // chart id -> { plot, key }
  let shape = "";

  function colour(i) {
    return PALETTE[i % PALETTE.length];
  }

  // The series of one chart: the farm's first, then each member's.
  function seriesOf(chart, names) {
    const series = [{}];
    const add = (label, stroke, width, [col, suffix], member) => {
      const p50 = col === "p50_ms";
      series.push({
        label: label + suffix,
        stroke,
        width,
        dash: p50 ? [6, 4] : undefined,
        show: !(p50 && member),
        spanGaps: true,
        points: { show: false },
      });
    };
    for (const c of chart.cols) add("farm", FARM_COLOUR, 2.5, c, false);
    names.forEach((n, i) => {
      for (const c of chart.cols) add(n, colour(i), 1.6, c, true);
    });
    return series;
  }

  function dataOf(chart, h, names) {
    const data = [h.t];
    for (const [col] of chart.cols) data.push(h.farm[col]);
    for (const n of names) for (const [col] of chart.cols) data.push(h.nodes[n][col]);
    return data;
  }

  function width(el) {
    return Math.max(280, Math.floor(el.getBoundingClientRect().width) - 4);
  }

  function build(h, names) {
    const root = document.getElementById("charts");
    root.innerHTML = "";
    plots.clear();
    for (const chart of CHARTS) {
      const box = document.createElement("figure");
      box.className = "chart";
      box.dataset.chart = chart.id;
      root.appendChild(box);
      const plot = new uPlot({
        title: chart.title,
        width: width(box),
        height: 170,
        series: seriesOf(chart, names),
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [{}, { size: 56, values: (u, vals) => vals.map((v) => +v.toFixed(chart.digits ? 2 : 0)) }],
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      }, dataOf(chart, h, names), box);
      plots.set(chart.id, plot);
    }
  }

  function update(h) {
    if (typeof uPlot === "undefined") throw new Error("uPlot did not load (/assets/uplot.min.js)");
    const names = Object.keys(h.nodes).sort();
    const key = names.join("\n");
    if (key !== shape || plots.size === 0) {
      // Members came or went: the series change, so the charts are made again.
      shape = key;
      build(h, names);
      return;
    }
    for (const chart of CHARTS) plots.get(chart.id).setData(dataOf(chart, h, names));
  }

  window.addEventListener("resize", () => {
    for (const plot of plots.values()) {
      plot.setSize({ width: width(plot.root.parentNode), height: 170 });
    }
  });

  window.dabsCharts = { update, plots, palette: PALETTE, farmColour: FARM_COLOUR };
})();
