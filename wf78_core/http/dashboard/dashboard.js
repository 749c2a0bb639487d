// wf78 dashboard: polls {prefix}/status and {prefix}/runs every second with a bearer token
// and draws tables, bars, hand-written SVG line charts and a task timeline. No build step.
(() => {
  "use strict";

  const PREFIX = document.body.dataset.prefix || "/_wf78";
  const POLL_MS = 1000;
  const WINDOW_S = 120; // chart history
  const RUNS_SHOWN = 20;
  const STORAGE_KEY = "wf78.token";
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#dc2626"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  // -- the token: #token= in the URL, else this tab's sessionStorage, else the login field.
  // A fragment never reaches the server (no access log keeps it); it leaves the address bar
  // and the history at once. The token only ever travels in the Authorization header. --

  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromFragment) {
    sessionStorage.setItem(STORAGE_KEY, fromFragment);
    window.history.replaceState(null, "", location.pathname);
  }
  let token = sessionStorage.getItem(STORAGE_KEY) || "";

  const login = document.getElementById("login");
  login.addEventListener("submit", (event) => {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(STORAGE_KEY, token);
    login.hidden = true;
    poll();
  });

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(PREFIX + path, { headers, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error || message;
      } catch (_) { /* not JSON */ }
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  // -- small DOM helpers (textContent only: nothing from the server becomes markup) --

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    return node;
  }

  function meter(value, limit, text) {
    const fraction = limit > 0 ? Math.min(1, value / limit) : 0;
    const fill = el("div", { class: "fill" + (fraction >= 1 ? " full" : fraction >= 0.8 ? " high" : "") });
    fill.style.width = (fraction * 100).toFixed(1) + "%";
    return el("div", { class: "meter" }, el("div", { class: "bar" }, fill), el("span", { class: "text", text }));
  }

  function setRows(tableId, rows, emptyText, columns) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns, text: emptyText }))]));
  }

  // -- formatting --

  const integer = (n) => String(Math.round(n));

  function seconds(value) {
    if (!value) return "0";
    if (value < 1e-3) return (value * 1e6).toFixed(0) + " µs";
    if (value < 1) return (value * 1e3).toFixed(value < 0.01 ? 2 : 1) + " ms";
    return value.toFixed(2) + " s";
  }

  function rate(value) {
    if (value >= 100) return value.toFixed(0);
    if (value >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  function uptime(total) {
    total = Math.floor(total);
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }

  const clock = (epoch) => new Date(epoch * 1000).toLocaleTimeString();

  // -- history for charts: per source, rates from successive counts --

  const history = new Map(); // source -> {ops: [[t, v]], errors: [[t, v]], p50: [[t, v]], p99: [[t, v]]}
  const previous = new Map(); // source -> {t, ops, errors}
  const rates = new Map(); // source -> latest ops/s
  const colours = new Map();

  function colour(name) {
    if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
    return colours.get(name);
  }

  function swatch(name) {
    const node = el("i", { class: "swatch" });
    node.style.background = colour(name);
    return node;
  }

  function record(sources, now) {
    for (const source of sources) {
      let series = history.get(source.name);
      if (!series) history.set(source.name, (series = { ops: [], errors: [], p50: [], p99: [] }));
      const last = previous.get(source.name);
      if (last && now > last.t) {
        const dt = now - last.t;
        // A counter that went down means the engine restarted: start afresh.
        if (source.ops >= last.ops && source.errors >= last.errors) {
          const opsRate = (source.ops - last.ops) / dt;
          rates.set(source.name, opsRate);
          series.ops.push([now, opsRate]);
          series.errors.push([now, (source.errors - last.errors) / dt]);
        }
      }
      previous.set(source.name, { t: now, ops: source.ops, errors: source.errors });
      series.p50.push([now, source.latency_p50]);
      series.p99.push([now, source.latency_p99]);
      for (const points of Object.values(series)) {
        while (points.length && points[0][0] < now - WINDOW_S) points.shift();
      }
    }
  }

  // -- hand-written SVG line chart --

  function niceMax(value) {
    if (!(value > 0)) return 0;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function drawChart(id, series, format, floor) {
    const chart = document.getElementById(id);
    const legend = document.getElementById(id.replace("chart-", "legend-"));
    const width = 480, height = 150, left = 56, right = 10, top = 10, bottom = 22;
    const plotW = width - left - right, plotH = height - top - bottom;
    const now = Date.now() / 1000;
    // The window grows with the history, from 30 s up to WINDOW_S.
    const oldest = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
    const windowS = Math.min(WINDOW_S, Math.max(30, Math.ceil((now - oldest) / 30) * 30));
    const start = now - windowS;
    const values = series.flatMap((s) => s.points.map((p) => p[1]));
    const yMax = niceMax(Math.max(floor, ...values));
    const x = (t) => left + ((t - start) / windowS) * plotW;
    const y = (v) => top + plotH - (yMax ? (v / yMax) * plotH : 0);
    const nodes = [];
    for (const fraction of [0, 0.5, 1]) {
      const value = yMax * fraction;
      nodes.push(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
      nodes.push(svg("text", { class: "axis", x: left - 6, y: y(value) + 3, "text-anchor": "end", text: format(value) }));
    }
    const ago = (s) => "-" + (s >= 60 ? +(s / 60).toFixed(1) + "m" : Math.round(s) + "s");
    const ticks = [[ago(windowS), start, "start"], [ago(windowS / 2), start + windowS / 2, "middle"], ["now", now, "end"]];
    for (const [label, t, anchor] of ticks) {
      nodes.push(svg("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": anchor, text: label }));
    }
    let drawn = 0;
    for (const s of series) {
      const points = s.points.filter((p) => p[0] >= start);
      if (!points.length) continue;
      drawn += 1;
      const attributes = { class: "series" + (s.dashed ? " dashed" : ""), stroke: s.colour, "data-series": s.key };
      if (points.length === 1) {
        nodes.push(svg("circle", { ...attributes, cx: x(points[0][0]), cy: y(points[0][1]), r: 2.5, fill: s.colour }));
      } else {
        const path = points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
        nodes.push(svg("polyline", { ...attributes, points: path }));
      }
    }
    if (!drawn) {
      nodes.push(svg("text", { class: "placeholder", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle", text: "waiting for data…" }));
    }
    chart.replaceChildren(...nodes);
    const names = [...new Set(series.map((s) => s.source))];
    legend.replaceChildren(...names.map((name) => el("li", { "data-source": name }, swatch(name), name)));
  }

  function drawCharts() {
    const throughput = [], latency = [], errors = [];
    for (const [name, series] of history) {
      const c = colour(name);
      throughput.push({ key: name, source: name, colour: c, points: series.ops });
      errors.push({ key: name, source: name, colour: c, points: series.errors });
      latency.push({ key: name + ":p50", source: name, colour: c, points: series.p50 });
      latency.push({ key: name + ":p99", source: name, colour: c, points: series.p99, dashed: true });
    }
    drawChart("chart-throughput", throughput, rate, 1);
    drawChart("chart-latency", latency, seconds, 0.001);
    drawChart("chart-errors", errors, rate, 1);
  }

  // -- panels --

  function renderSummary(status) {
    const values = {
      submitted: integer(status.submitted),
      completed: integer(status.completed),
      failed: integer(status.failed),
      retries: integer(status.retries),
      fallbacks: integer(status.fallbacks),
      pending: integer(status.pending),
      runs_active: integer(status.runs_active),
      runs_finished: integer(status.runs_finished),
      uptime: uptime(status.uptime),
    };
    for (const [name, text] of Object.entries(values)) {
      document.querySelector('#summary [data-stat="' + name + '"] .value').textContent = text;
    }
    document.querySelector('#summary [data-stat="running"] .value').replaceChildren(
      el("span", { class: "running", text: integer(status.running) }),
      el("small", { class: "max", text: " / " + integer(status.max_running) }));
  }

  function renderQueues(status) {
    const depth = new Map();
    for (const workflow of status.workflows) depth.set(workflow.priority, 0);
    for (const [priority, count] of Object.entries(status.queued)) depth.set(Number(priority), count);
    const priorities = [...depth.keys()].sort((a, b) => a - b);
    const deepest = Math.max(1, ...depth.values());
    setRows("queues", priorities.map((priority) => el("tr", { "data-priority": priority },
      el("td", { text: String(priority) + (priority === priorities[0] ? " (most urgent)" : "") }),
      el("td", { class: "num depth", text: integer(depth.get(priority)) }),
      el("td", {}, meter(depth.get(priority), deepest, "")),
    )), "nothing queued", 3);
  }

  function renderWorkflows(status) {
    setRows("workflows", status.workflows.map((w) => el("tr", { "data-workflow": w.id },
      el("td", { class: "name", text: w.id }),
      el("td", { class: "num priority", text: String(w.priority) }),
      el("td", {}, meter(w.running, w.max_concurrent, "")),
      el("td", { class: "num queued", text: integer(w.queued) }),
    )), "no workflows configured", 4);
    // Stable hooks for the running / max numbers.
    for (const w of status.workflows) {
      const text = document.querySelector('#workflows tr[data-workflow="' + CSS.escape(w.id) + '"] .meter .text');
      text.replaceChildren(el("span", { class: "running", text: integer(w.running) }), " / ",
        el("span", { class: "max", text: integer(w.max_concurrent) }));
    }
  }

  function renderAgents(status) {
    setRows("agents", status.agents.map((a) => el("tr", { "data-agent": a.id, "data-status": a.status },
      el("td", {}, el("div", { class: "name", text: a.id }), el("div", { class: "caps", text: a.capabilities.join(", ") })),
      el("td", {}, el("span", { class: "badge status " + a.status, text: a.status.replace(/_/g, " ") })),
      el("td", { class: "load", "data-load": a.load.toFixed(3) }, meter(a.running, a.capacity, integer(a.running) + " / " + integer(a.capacity))),
      el("td", { class: "num completed", text: integer(a.completed) }),
    )), "no agents", 4);
  }

  function renderSources(status) {
    setRows("sources", status.sources.map((s) => {
      const perSecond = rates.get(s.name);
      return el("tr", { "data-source": s.name },
        el("td", { class: "name" }, swatch(s.name), " ", s.name),
        el("td", { class: "type", text: s.type }),
        el("td", {}, el("span", { class: "badge healthy " + (s.healthy ? "ok" : "bad"), text: s.healthy ? "healthy" : "down" })),
        el("td", { class: "num ops", text: integer(s.ops) }),
        el("td", { class: "num rate", text: perSecond === undefined ? "–" : rate(perSecond) }),
        el("td", { class: "num errors", text: integer(s.errors) }),
        el("td", { class: "num retries", text: integer(s.retries) }),
        el("td", { class: "num fallbacks", text: integer(s.fallbacks) }),
        el("td", { class: "num p50", text: seconds(s.latency_p50) }),
        el("td", { class: "num p99", text: seconds(s.latency_p99) }),
        el("td", { class: "num inflight", text: integer(s.in_flight) + " / " + integer(s.capacity) }),
      );
    }), "no data sources open", 11);
  }

  function renderRuns(runs) {
    const container = document.getElementById("runs");
    if (!runs.length) {
      container.replaceChildren(el("p", { class: "empty", text: "no runs yet" }));
      return;
    }
    const wallClock = Date.now() / 1000;
    container.replaceChildren(...runs.slice(0, RUNS_SHOWN).map((run) => {
      const tasks = Object.values(run.tasks);
      const stamps = [run.created, run.started, run.finished];
      for (const task of tasks) stamps.push(task.started, task.finished);
      const known = stamps.filter((t) => typeof t === "number");
      const begin = Math.min(...known);
      // An active run reaches up to now (never before its own latest stamp: clocks may differ).
      const end = run.finished || Math.max(wallClock, ...known);
      const span = Math.max(end - begin, 1e-6);
      const head = el("div", { class: "run-head" },
        el("span", { class: "workflow", text: run.workflow }),
        el("span", { class: "badge status " + run.status, text: run.status }),
        el("span", { class: "duration", text: seconds(end - begin) }),
        el("span", { class: "when", text: clock(run.created) }),
        el("span", { class: "run-id", title: run.id, text: run.id.slice(0, 12) }),
      );
      const rows = tasks.map((task) => {
        const track = el("div", { class: "track" });
        if (typeof task.started === "number") {
          const stop = typeof task.finished === "number" ? task.finished : end;
          const bar = el("div", {
            class: "span state-" + task.state,
            title: task.id + ": " + task.state + " (" + seconds(stop - task.started) + ")" +
              (task.attempts > 1 ? ", " + task.attempts + " attempts" : "") +
              (task.data_source ? ", on " + task.data_source : "") + (task.error ? " — " + task.error : ""),
          });
          bar.style.left = (((task.started - begin) / span) * 100).toFixed(2) + "%";
          bar.style.width = Math.max(0.5, ((stop - task.started) / span) * 100).toFixed(2) + "%";
          track.append(bar);
        } else if (task.state !== "pending") {
          // Never started (skipped, cancelled while queued): a faint bar across the run.
          const mark = el("div", { class: "span never state-" + task.state, title: task.id + ": " + task.state });
          mark.style.left = "0";
          mark.style.width = "100%";
          track.append(mark);
        }
        const took = typeof task.started === "number" && typeof task.finished === "number"
          ? seconds(task.finished - task.started) : task.state;
        return el("div", { class: "task", "data-task": task.id, "data-state": task.state },
          el("span", { class: "task-name", title: task.id, text: task.id }), track,
          el("span", { class: "task-time", text: took }));
      });
      return el("div", { class: "run", "data-run-id": run.id, "data-workflow": run.workflow, "data-status": run.status },
        head, run.error ? el("p", { class: "run-error", text: run.error }) : null, ...rows);
    }));
  }

  function renderDeadLetters(status) {
    const letters = Array.isArray(status.dead_letters) ? status.dead_letters : [];
    const count = document.getElementById("dead-letter-count");
    count.textContent = String(letters.length);
    count.classList.toggle("some", letters.length > 0);
    const container = document.getElementById("dead-letters");
    if (!letters.length) {
      container.replaceChildren(el("p", { class: "empty", text: "none" }));
      return;
    }
    container.replaceChildren(el("table", {}, el("tbody", {}, ...letters.map((letter, index) => {
      const item = letter && typeof letter === "object" ? letter : { value: letter };
      const what = [item.workflow, item.task].filter(Boolean).join(" / ") || item.id || "#" + (index + 1);
      const why = item.error || item.reason || JSON.stringify(item);
      return el("tr", { "data-dead-letter": item.id || index },
        el("td", { class: "what", text: what }),
        el("td", { class: "why", text: why }),
        el("td", { class: "num when", text: typeof item.time === "number" ? clock(item.time) : "" }));
    }))));
  }

  function setConnection(state, text) {
    const badge = document.getElementById("connection");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  // -- the poll loop (one request pair at a time, one per second) --

  let timer = null;

  async function poll() {
    clearTimeout(timer);
    const started = Date.now();
    try {
      const [status, recent] = await Promise.all([api("/status"), api("/runs?limit=" + RUNS_SHOWN)]);
      record(status.sources, Date.now() / 1000);
      renderSummary(status);
      renderQueues(status);
      renderWorkflows(status);
      renderAgents(status);
      renderSources(status);
      renderDeadLetters(status);
      renderRuns(recent.runs);
      drawCharts();
      setConnection("live", "live");
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
        setConnection("error", error.status === 401 ? "sign in needed" : "token lacks the admin role");
        login.hidden = false;
        return; // wait for a token from the login field
      }
      setConnection("error", "offline: " + error.message);
    }
    timer = setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }

  if (!token) {
    setConnection("error", "sign in needed");
    login.hidden = false;
  } else {
    poll();
  }
})();
