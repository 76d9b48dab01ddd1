// lambdalite console: fills the server-rendered pages with the figures /console/events pushes.
(function () {
  "use strict";
  const fmt = {
    int: (v) => (v == null ? "-" : Number(v).toLocaleString("en-US")),
    ms: (v) => (v == null ? "-" : v >= 10 ? Math.round(v).toLocaleString("en-US") + " ms" : v.toFixed(1) + " ms"),
    pct: (v) => (v == null ? "-" : v.toFixed(1) + " %"),
    age: (v) => (v == null ? "-" : v < 120 ? v.toFixed(1) + " s" : Math.round(v / 60) + " min"),
    usd: (v) => (v == null ? "-" : v < 1 ? "$" + v.toFixed(6) : "$" + v.toFixed(2)),
    text: (v) => (v == null ? "-" : String(v)),
  };
  const FORMAT = {  // each figure's format, as sources/http/console_render.py writes it
    success_rate: "pct", p50_ms: "ms", p99_ms: "ms", max_ms: "ms", oldest_age_s: "age", next_tick: "text",
    "cost_usd.x86_64": "usd", "cost_usd.arm64": "usd",
  };
  const when = (s) => {
    const d = new Date(s * 1000), p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  };
  const pick = (row, path) => path.split(".").reduce((o, k) => (o == null ? o : o[k]), row);

  let cells = null;  // function name -> its elements that show a figure

  function fill(name, row) {
    if (!cells) {
      cells = new Map();
      for (const box of document.querySelectorAll("[data-function]")) {
        cells.set(box.dataset.function, Array.from(box.querySelectorAll("[data-k]")));
      }
    }
    for (const el of cells.get(name) || []) {
      const text = fmt[FORMAT[el.dataset.k] || "int"](pick(row, el.dataset.k));
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function stamp(at) {
    const el = document.getElementById("updated");
    if (el) { el.textContent = when(at); el.dataset.at = at; }
  }

  // The function page's graphs: Lambda's Monitor tab, over the last hour or day.
  const CHARTS = [
    ["Invocations", [["invocations", "invocations", "#0b5cad"], ["errors", "errors", "#c62828"]]],
    ["Duration (ms)", [["duration_avg", "avg", "#0b5cad"], ["duration_min", "min", "#1a7f37"], ["duration_max", "max", "#c26a00"]]],
    ["Success rate (%)", [["success_rate", "success", "#1a7f37"]]],
    ["Throttles", [["throttles", "throttles", "#c62828"]]],
    ["Concurrent executions", [["concurrency", "max", "#6f42c1"]]],
    ["AGE", [["age_ms", "max", "#c26a00"]]],
    ["Queue depth", [["queued", "max", "#0b5cad"]]],
    ["Dead letters", [["dead", "dead-lettered", "#c62828"]]],
  ];
  let charts = [], series = {}, range = "hour";

  function columns(data, keys) {
    return [data.t, ...keys.map(([k]) => data[k])];
  }

  function drawCharts() {
    const box = document.getElementById("charts");
    if (!box || typeof uPlot === "undefined" || !series[range]) return;
    const data = series[range];
    if (charts.length) {
      charts.forEach(([plot, keys]) => plot.setData(columns(data, keys)));
      return;
    }
    const stream = box.dataset.stream === "true";
    for (const [title, keys] of CHARTS) {
      const el = document.createElement("div");
      el.className = "chart";
      const h = document.createElement("h3");
      h.textContent = title === "AGE" ? (stream ? "Iterator age (ms)" : "Async event age (ms)") : title;
      el.appendChild(h);
      box.appendChild(el);
      const width = Math.max(260, el.clientWidth - 10);
      const plot = new uPlot({
        width, height: 170, legend: { show: true },
        scales: { x: { time: true } },
        series: [{}, ...keys.map(([, label, stroke]) => ({ label, stroke, width: 1.5, points: { show: false } }))],
        axes: [{ size: 30 }, { size: 50 }],
      }, columns(data, keys), el);
      charts.push([plot, keys, el]);
    }
    box.dataset.drawn = String(charts.length);
    window.addEventListener("resize", () => charts.forEach(([plot, , el]) =>
      plot.setSize({ width: Math.max(260, el.clientWidth - 10), height: 170 })));
  }

  function recentRows(name, rows) {
    const body = document.getElementById("recent");
    if (!body) return;
    body.replaceChildren(...(rows.length ? rows : [null]).map((inv) => {
      const tr = document.createElement("tr");
      if (!inv) { tr.className = "empty"; tr.innerHTML = '<td colspan="7">no invocation kept yet</td>'; return tr; }
      const cells = [when(inv.at), null, inv.status, fmt.ms(inv.duration_ms), fmt.ms(inv.billed_ms),
        inv.max_memory_mb == null ? "-" : `${inv.max_memory_mb} / ${inv.memory_mb} MB`, fmt.ms(inv.init_ms)];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 1) {
          const a = document.createElement("a");
          a.href = `/console/functions/${encodeURIComponent(name)}/invocations/${encodeURIComponent(inv.request_id)}`;
          a.textContent = inv.request_id;
          td.appendChild(a);
        } else td.textContent = text;
        if (i === 2) td.className = "status-" + inv.status;
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  function decisions(list) {
    const ul = document.getElementById("decisions");
    if (!ul || !list.length) return;
    ul.replaceChildren(...list.map((d) => {
      const li = document.createElement("li");
      li.append(when(d.at) + ": ");
      const b = document.createElement("b");
      b.textContent = d.action;
      li.append(b, " " + d.reason);
      return li;
    }));
  }

  function functionPage(name, data) {
    fill(name, data.row);
    series.hour = data.hour;
    if (data.day) series.day = data.day;
    drawCharts();
    recentRows(name, data.recent);
    decisions(data.decisions);
  }

  function live(name) {
    const badge = document.getElementById("live");
    if (name) {
      const initial = document.getElementById("initial");
      if (initial) functionPage(name, JSON.parse(initial.textContent));
      for (const input of document.querySelectorAll('input[name="range"]')) {
        input.addEventListener("change", () => { range = input.value; drawCharts(); });
      }
    }
    if (typeof EventSource === "undefined") return;
    const source = new EventSource("/console/events" + (name ? "?function=" + encodeURIComponent(name) : ""));
    source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
    source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
    source.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (name) functionPage(name, data);
      else for (const [fn, row] of Object.entries(data.functions)) fill(fn, row);
      stamp(data.at);
    };
  }

  function selectAll() {
    const every = document.getElementById("every");
    if (every) every.addEventListener("change", () =>
      document.querySelectorAll('#selection input[name="id"]').forEach((box) => { box.checked = every.checked; }));
  }

  window.lambdalite = { live, selectAll };
})();
