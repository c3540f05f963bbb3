// The dashboard page: polls api/run and draws what it returns. In a report written by
// `el report --html` the snapshot is embedded in the page (#el-snapshot) and nothing is
// fetched. Charts are inline SVG drawn here: no library, no network.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#3b6fd8", "#d1435b", "#2e9d5b", "#e39b2d", "#7b55c7", "#1f9ab3",
                  "#b3478c", "#5b6b2e", "#8c5a3c", "#4c5d7a", "#c76b55", "#3ea37f"];
  const LIVE_POLL_MS = 1500, IDLE_POLL_MS = 5000;
  const $ = (id) => document.getElementById(id);

  function element(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function number(value) {
    return value === null || value === undefined ? "?" : String(value);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    if (value < 60) return value.toFixed(value < 10 ? 2 : 1) + " s";
    const s = Math.round(value);
    return Math.floor(s / 3600) + ":" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") +
      ":" + String(s % 60).padStart(2, "0");
  }

  function bytes(value) {
    if (value === null || value === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return value.toFixed(i ? 1 : 0) + " " + units[i];
  }

  // --- progress -----------------------------------------------------------------------

  const FIELDS = ["finished", "succeeded", "failed", "not_run", "cancelled", "running",
                  "queued", "pending"];

  function progressBar(e) {
    const total = e.total || (e.finished + e.running + e.queued) || 1;
    const bar = element("div", {class: "bar"});
    const parts = [["ok", e.succeeded], ["bad", e.failed],
                   ["other", e.not_run + e.cancelled], ["run", e.running], ["wait", e.queued]];
    for (const [kind, n] of parts) {
      const span = element("span", {class: kind, title: kind});
      span.style.width = (100 * n / total) + "%";
      bar.appendChild(span);
    }
    return bar;
  }

  function progressRow(e, name, cls) {
    const row = element("tr", {"data-ensemble": name, class: cls || ""});
    row.appendChild(element("td", {class: "text", text: name}));
    row.appendChild(element("td", {class: "bar-cell"}, [progressBar(e)]));
    for (const field of FIELDS) {
      const text = field === "finished" ? e.finished + "/" + number(e.total) : number(e[field]);
      row.appendChild(element("td", {"data-field": field, text: text}));
    }
    row.appendChild(element("td", {"data-field": "rate", text: e.rate.toFixed(1)}));
    return row;
  }

  function renderProgress(snapshot) {
    const body = $("ensembles").tBodies[0];
    body.replaceChildren();
    const sum = {total: 0, rate: snapshot.run.rate};
    for (const field of FIELDS) sum[field] = 0;
    for (const e of snapshot.ensembles) {
      body.appendChild(progressRow(e, e.name));
      for (const field of FIELDS) {
        sum[field] = sum[field] === null || e[field] === null ? null : sum[field] + e[field];
      }
      sum.total = sum.total === null || e.total === null ? null : sum.total + e.total;
    }
    if (snapshot.ensembles.length > 1) body.appendChild(progressRow(sum, "all", "total"));
  }

  // --- charts -------------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  // series: [{name, xs, ys}] with xs in seconds since the run's origin.
  function lineChart(container, series, yMax, yUnit) {
    container.replaceChildren();
    const points = series.filter((s) => s.xs.length);
    if (!points.length) {
      container.appendChild(element("div", {class: "empty", text: container.dataset.empty ||
                                             "nothing yet"}));
      return;
    }
    const W = 600, H = 230, L = 44, R = 12, T = 10, B = 40;
    const xMax = Math.max(1e-3, ...points.map((s) => Math.max(...s.xs)));
    const highest = Math.max(...points.map((s) => Math.max(...s.ys.map((y) => y || 0))));
    const top = yMax || 4 * niceMax(1.15 * highest / 4);
    const x = (v) => L + (W - L - R) * v / xMax;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
    for (let i = 0; i <= 4; i += 1) {
      const v = top * i / 4;
      chart.appendChild(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef0f3"}));
      const label = svg("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"});
      label.textContent = (Math.round(v * 10) / 10) + (yUnit || "");
      chart.appendChild(label);
    }
    for (let i = 0; i <= 5; i += 1) {
      const v = xMax * i / 5;
      const label = svg("text", {x: x(v), y: H - B + 16, "text-anchor": "middle"});
      label.textContent = seconds(v);
      chart.appendChild(label);
    }
    const axis = svg("text", {x: L + (W - L - R) / 2, y: H - 6, "text-anchor": "middle"});
    axis.textContent = "time since the first task started";
    chart.appendChild(axis);
    points.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const path = s.xs.map((v, j) => (s.ys[j] === null ? null : `${x(v)},${y(s.ys[j])}`))
        .filter((p) => p !== null).join(" ");
      chart.appendChild(svg("polyline", {points: path, fill: "none", stroke: color,
                                         "stroke-width": 1.6}));
      const legend = svg("text", {x: W - R - 4, y: T + 12 + 13 * i, "text-anchor": "end",
                                  class: "legend", fill: color});
      legend.textContent = s.name;
      chart.appendChild(legend);
    });
    container.appendChild(chart);
  }

  function renderBusy(busy) {
    const series = busy.series.map((s) => ({
      name: s.name, ys: s.values,
      xs: s.values.map((_, i) => (i + 0.5) * busy.width)}));
    lineChart($("busy-chart"), series, null, "");
  }

  function renderNodes(nodes, origin, state) {
    const note = state === "running" ? "no node samples yet" :
      "this run recorded no node samples";
    $("cpu-chart").dataset.empty = note;
    $("mem-chart").dataset.empty = note;
    const start = origin === null ? Math.min(...nodes.map((s) => s.at[0])) : origin;
    const shift = (s) => s.at.map((t) => Math.max(0, t - start));
    lineChart($("cpu-chart"), nodes.map((s) => ({name: s.node, xs: shift(s), ys: s.cpu})),
              100, "%");
    lineChart($("mem-chart"), nodes.map((s) => ({
      name: s.node + " (" + bytes(s.mem_total) + ")", xs: shift(s), ys: s.mem})), 100, "%");
  }

  // --- tables -------------------------------------------------------------------------

  const COLUMNS = {
    task_id: ["task", (t) => t.task_id, "text mono"],
    state: ["state", (t) => t.state, "text"],
    reason: ["reason", (t) => t.reason || "", "text"],
    attempt: ["attempt", (t) => String(t.attempt), ""],
    returncode: ["exit", (t) => (t.returncode === null ? "" : String(t.returncode)), ""],
    duration: ["duration", (t) => seconds(t.duration), ""],
    host: ["node", (t) => t.host || "", "text"],
    cpu: ["CPU time", (t) => (t.cpu_user === null ? "" :
      seconds(t.cpu_user + (t.cpu_system || 0))), ""],
    max_rss: ["peak RSS", (t) => bytes(t.max_rss), ""],
    stderr: ["exception / stderr tail", (t) => [t.exception, t.stderr].filter(Boolean)
      .join("\n").trim(), "stderr"],
  };

  function renderTasks(table, tasks, columns, empty) {
    table.replaceChildren();
    const head = element("tr", {}, columns.map((c) => element("th", {
      class: COLUMNS[c][2].includes("text") || c === "stderr" ? "text" : "", text: COLUMNS[c][0]})));
    table.appendChild(element("thead", {}, [head]));
    const body = element("tbody");
    if (!tasks.length) {
      body.appendChild(element("tr", {}, [element("td", {class: "text note", text: empty,
                                                          colspan: columns.length})]));
    }
    for (const t of tasks) {
      body.appendChild(element("tr", {"data-task": t.task_id}, columns.map((c) => element(
        "td", {class: COLUMNS[c][2], "data-field": c, text: COLUMNS[c][1](t)}))));
    }
    table.appendChild(body);
  }

  function renderFirings(snapshot) {
    const table = $("firings");
    table.replaceChildren();
    table.appendChild(element("thead", {}, [element("tr", {}, ["time", "rule", "trigger",
      "action", "detail"].map((h, i) => element("th", {class: i ? "text" : "", text: h})))]));
    const body = element("tbody");
    const origin = snapshot.run.started || 0;
    const rows = snapshot.firings.slice().reverse();
    if (!rows.length) {
      body.appendChild(element("tr", {}, [element("td", {class: "text note", colspan: 5,
                                                          text: "no rule fired"})]));
    }
    for (const f of rows) {
      body.appendChild(element("tr", {}, [
        element("td", {text: "+" + seconds(Math.max(0, f.at - origin))}),
        element("td", {class: "text mono", text: f.rule}),
        element("td", {class: "text", text: f.trigger}),
        element("td", {class: "text", text: f.action}),
        element("td", {class: "text stderr", text: f.detail})]));
    }
    table.appendChild(body);
    $("firings-count").textContent = snapshot.firings_total ?
      `(${snapshot.firings_total}${snapshot.firings_total > rows.length ?
        ", the latest " + rows.length : ""})` : "";
  }

  // --- the page -----------------------------------------------------------------------

  function render(snapshot) {
    const run = snapshot.run;
    $("run-dir").textContent = run.dir;
    $("run-state").textContent = run.state;
    $("run-state").dataset.state = run.state;
    $("run-rate").textContent = run.rate.toFixed(1) + " tasks/s" +
      (run.eta !== null && run.state === "running" ? ", ETA " + seconds(run.eta) : "");
    $("updated").textContent = (document.body.dataset.mode === "report" ? "written " :
      "updated ") + new Date(run.now * 1000).toLocaleString();
    renderProgress(snapshot);
    renderBusy(snapshot.busy);
    renderNodes(snapshot.nodes, snapshot.busy.origin, run.state);
    renderTasks($("failures"), snapshot.failures, ["task_id", "state", "reason", "returncode",
      "attempt", "host", "stderr"], "no task failed");
    $("failures-count").textContent = `(${snapshot.failures_total}` +
      (snapshot.failures_total > snapshot.failures.length ?
        `, the latest ${snapshot.failures.length}` : "") + ")";
    renderTasks($("slowest"), snapshot.slowest, ["task_id", "state", "duration", "host", "cpu",
      "max_rss"], "no task ran yet");
    const measured = snapshot.largest.length > 0 ||
      snapshot.slowest.some((t) => t.max_rss !== null);
    $("largest-note").hidden = measured || !snapshot.slowest.length;
    renderTasks($("largest"), snapshot.largest, ["task_id", "state", "max_rss", "cpu",
      "duration", "host"], measured ? "no task ran yet" : "not measured");
    renderFirings(snapshot);
    $("error").hidden = true;
    document.body.dataset.state = run.state;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = false;
  }

  async function poll() {
    let delay = LIVE_POLL_MS;
    try {
      const response = await fetch("api/run", {cache: "no-store", credentials: "same-origin"});
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || response.statusText);
      render(data);
      if (data.run.state !== "running") delay = IDLE_POLL_MS;
    } catch (error) {
      showError("cannot read the run: " + error.message + " (trying again)");
    }
    setTimeout(poll, delay);
  }

  let searching = 0;
  async function search() {
    const text = $("search").value.trim();
    const mine = ++searching;
    if (!text) { $("search-results").replaceChildren(); return; }
    const response = await fetch("api/search?q=" + encodeURIComponent(text),
                                 {cache: "no-store", credentials: "same-origin"});
    const tasks = await response.json();
    if (mine !== searching) return;
    renderTasks($("search-results"), response.ok ? tasks : [], ["task_id", "state", "reason",
      "attempt", "duration", "host", "cpu", "max_rss", "stderr"], "no task id holds " + text);
  }

  function start() {
    const embedded = $("el-snapshot");
    if (embedded) {
      document.body.dataset.mode = "report";
      render(JSON.parse(embedded.textContent));
      return;
    }
    $("search").addEventListener("input", search);
    poll();
  }

  start();
})();
