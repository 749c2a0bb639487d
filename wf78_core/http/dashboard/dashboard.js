// wf78 dashboard: polls {prefix}/status, {prefix}/history and {prefix}/runs every second with
// a bearer token and draws tables, bars, hand-written SVG charts of the last 15 minutes (drawn
// at once from the server's history, then appended), the runs with a task timeline, a run's
// DAG, and the actions an admin may take (each after a confirmation). No build step.
(() => {
  "use strict";

  const PREFIX = document.body.dataset.prefix || "/_wf78";
  const POLL_MS = 1000;
  const WINDOW_S = 900; // the server keeps 15 minutes of samples
  const RUNS_SHOWN = 20;
  const WORKFLOWS_EVERY = 5; // polls between two reads of the workflows' next fire times
  const STORAGE_KEY = "wf78.token";
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#dc2626"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

  // -- the token: #token= in the URL, else this tab's sessionStorage, else the login field.
  // A fragment never reaches the server (no access log keeps it); it leaves the address bar
  // and the history at once. The token only ever travels in the Authorization header. --

  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromFragment = fragment.get("token");
  if (fromFragment) {
    sessionStorage.setItem(STORAGE_KEY, fromFragment);
    fragment.delete("token");
    const rest = fragment.toString();
    window.history.replaceState(null, "", location.pathname + (rest ? "#" + rest : ""));
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

  async function api(path, method, body) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method: method || "GET", headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(PREFIX + path, init);
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

  // -- the history: the server's per-second samples, 15 minutes of them --

  let samples = []; // oldest first
  const rates = new Map(); // source -> ops/s of the newest sample
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

  // Asked again for the last few seconds: in a cluster a process may publish a second late.
  const historyPath = () => "/history" + (samples.length ? "?since=" + (samples[samples.length - 1].t - 3) : "");

  function addSamples(view) {
    const byTime = new Map(samples.map((s) => [s.t, s]));
    for (const sample of view.samples) byTime.set(sample.t, sample);
    const times = [...byTime.keys()].sort((a, b) => a - b);
    const newest = times.length ? times[times.length - 1] : 0;
    samples = times.filter((t) => t > newest - WINDOW_S).map((t) => byTime.get(t));
    const last = samples[samples.length - 1];
    if (last) for (const [name, source] of Object.entries(last.sources)) rates.set(name, source.ops);
    const scope = document.getElementById("history-scope");
    scope.textContent = view.cluster
      ? "the cluster" + (last ? ", " + last.nodes + (last.nodes === 1 ? " process" : " processes") : "")
      : "this process" + (view.problem ? " (" + view.problem + ")" : "");
    scope.dataset.samples = String(samples.length);
  }

  // -- hand-written SVG line chart --

  function niceMax(value) {
    if (!(value > 0)) return 0;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function drawChart(id, series, format, floor, now) {
    const chart = document.getElementById(id);
    const legend = document.getElementById(id.replace("chart-", "legend-"));
    const width = 480, height = 150, left = 56, right = 10, top = 10, bottom = 22;
    const plotW = width - left - right, plotH = height - top - bottom;
    // The window grows with the history, from 60 s up to 15 minutes.
    const oldest = samples.length ? samples[0].t : now;
    const windowS = Math.min(WINDOW_S, Math.max(60, Math.ceil((now - oldest) / 60) * 60));
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
      const attributes = { class: "series" + (s.dashed ? " dashed" : ""), stroke: s.colour, "data-series": s.key, "data-points": points.length };
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
    chart.dataset.peak = String(Math.max(0, ...values));
    const names = [...new Set(series.map((s) => s.label || s.source))];
    legend.replaceChildren(...names.map((name) => el("li", { "data-source": name }, swatch(name), name)));
  }

  function drawCharts() {
    if (!samples.length) return;
    const now = samples[samples.length - 1].t;
    const sources = [...new Set(samples.flatMap((s) => Object.keys(s.sources)))];
    const throughput = [], latency = [], errors = [];
    for (const name of sources) {
      const c = colour(name);
      const of = (s) => s.sources[name];
      const seen = samples.filter(of);
      const busy = seen.filter((s) => of(s).ops > 0); // a latency needs operations
      throughput.push({ key: name, source: name, colour: c, points: seen.map((s) => [s.t, of(s).ops]) });
      errors.push({ key: name, source: name, colour: c, points: seen.map((s) => [s.t, of(s).errors]) });
      latency.push({ key: name + ":p50", source: name, colour: c, points: busy.map((s) => [s.t, of(s).p50]) });
      latency.push({ key: name + ":p99", source: name, colour: c, points: busy.map((s) => [s.t, of(s).p99]), dashed: true });
    }
    const work = [{ key: "queued", source: "queued", colour: colour("queued"), dashed: true, points: samples.map((s) => [s.t, s.queued]) }];
    const workflows = [...new Set(samples.flatMap((s) => Object.keys(s.workflows)))];
    for (const name of workflows) {
      if (!samples.some((s) => s.workflows[name] > 0)) continue; // never ran in the window
      work.push({ key: "running:" + name, source: name, colour: colour(name), points: samples.map((s) => [s.t, s.workflows[name] || 0]) });
    }
    drawChart("chart-throughput", throughput, rate, 1, now);
    drawChart("chart-latency", latency, seconds, 0.001, now);
    drawChart("chart-errors", errors, rate, 1, now);
    drawChart("chart-work", work, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)), 1, now);
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
      const filtered = runQuery.workflow || runQuery.status || runQuery.since || runQuery.offset;
      container.replaceChildren(el("p", { class: "empty", text: filtered ? "no runs match" : "no runs yet" }));
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
        el("a", { class: "run-id open-run", href: "#run=" + encodeURIComponent(run.id), title: "open run " + run.id, text: run.id.slice(0, 12) }),
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

  // -- the runs list: filters and pages --

  const runQuery = { workflow: "", status: "", since: "", offset: 0 };
  let nextOffset = null;

  function runsPath() {
    const query = new URLSearchParams({ limit: String(RUNS_SHOWN), offset: String(runQuery.offset) });
    if (runQuery.workflow) query.set("workflow", runQuery.workflow);
    if (runQuery.status) query.set("status", runQuery.status);
    if (runQuery.since) query.set("since", String(Math.floor(Date.now() / 1000 - Number(runQuery.since))));
    return "/runs?" + query.toString();
  }

  function renderPager(page) {
    nextOffset = page.next_offset;
    document.getElementById("page-prev").disabled = runQuery.offset === 0;
    document.getElementById("page-next").disabled = nextOffset === null || nextOffset === undefined;
    const first = page.runs.length ? runQuery.offset + 1 : 0;
    const total = typeof page.total === "number" ? " of " + page.total : "";
    document.getElementById("page-info").textContent = first + "–" + (runQuery.offset + page.runs.length) + total;
  }

  const filter = document.getElementById("run-filter");
  filter.addEventListener("change", () => {
    runQuery.workflow = document.getElementById("filter-workflow").value;
    runQuery.status = document.getElementById("filter-status").value;
    runQuery.since = document.getElementById("filter-since").value;
    runQuery.offset = 0;
    poll();
  });
  filter.addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("page-prev").addEventListener("click", () => {
    runQuery.offset = Math.max(0, runQuery.offset - RUNS_SHOWN);
    poll();
  });
  document.getElementById("page-next").addEventListener("click", () => {
    if (nextOffset === null || nextOffset === undefined) return;
    runQuery.offset = nextOffset;
    poll();
  });

  // -- dead letters, each with its retry --

  let deadLetters = [];

  function renderDeadLetters(status) {
    deadLetters = Array.isArray(status.dead_letters) ? status.dead_letters : [];
    const count = document.getElementById("dead-letter-count");
    const total = typeof status.dead_letter_count === "number" ? status.dead_letter_count : deadLetters.length;
    count.textContent = String(total);
    count.classList.toggle("some", total > 0);
    const container = document.getElementById("dead-letters");
    if (!deadLetters.length) {
      container.replaceChildren(el("p", { class: "empty", text: "none" }));
      return;
    }
    container.replaceChildren(el("table", {}, el("tbody", {}, ...deadLetters.map((letter) => el("tr", { "data-dead-letter": letter.id },
      el("td", { class: "what" }, el("a", { href: "#run=" + encodeURIComponent(letter.run_id), text: letter.workflow + " / " + letter.task })),
      el("td", { class: "why", text: letter.error }),
      el("td", { class: "num when", text: typeof letter.time === "number" ? clock(letter.time) : "" }),
      el("td", {}, retryButton(letter)),
    )))));
  }

  function retryButton(letter) {
    const button = el("button", { type: "button", class: "retry", "data-letter": letter.id, text: "Retry" });
    button.addEventListener("click", () => retryLetter(letter));
    return button;
  }

  // -- workflows: trigger, schedule, next fire, and a start button --

  let workflowsKnown = [];

  function renderTriggers(answer) {
    workflowsKnown = answer.workflows;
    const select = document.getElementById("filter-workflow");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "every workflow" }),
      ...workflowsKnown.map((w) => el("option", { value: w.id, text: w.id })));
    select.value = chosen;
    setRows("triggers", workflowsKnown.map((w) => {
      const start = el("button", { type: "button", class: "start", "data-workflow": w.id, text: "Start…" });
      start.addEventListener("click", () => startWorkflow(w));
      const what = w.trigger === "schedule" ? String(w.schedule) + (typeof w.schedule === "number" ? " s" : "")
        : w.trigger === "event" ? w.event : "";
      const next = typeof w.next_fire === "number" ? (w.next_fire_exact ? "" : "≈ ") + clock(w.next_fire) +
        " (in " + uptime(Math.max(0, w.next_fire - answer.now)) + ")" : "";
      return el("tr", { "data-trigger-of": w.id },
        el("td", { class: "name", title: w.name || w.id, text: w.id }),
        el("td", {}, el("span", { class: "badge trigger " + w.trigger, text: w.trigger })),
        el("td", { class: "mono cadence", text: what }),
        el("td", { class: "next-fire", text: next }),
        el("td", { class: "num", text: String(w.tasks.length) }),
        el("td", {}, start));
    }), "no workflows configured", 6);
  }

  // -- limits and per-tenant queue depth, when the engine's stats carry them --

  function cell(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function renderLimits(status) {
    const limits = status.limits;
    const tenants = status.queued_by_tenant || status.tenants || status.tenant_depth;
    const panel = document.getElementById("limits-panel");
    const some = (value) => (Array.isArray(value) ? value.length : value && Object.keys(value).length) > 0;
    panel.hidden = !some(limits) && !some(tenants) && !status.fair_by;
    if (panel.hidden) return;
    document.getElementById("fair-by").textContent = status.fair_by ? "fair shares by " + status.fair_by : "fair shares off";
    const rows = Array.isArray(limits) ? limits.map((l) => ({ ...l }))
      : Object.entries(limits || {}).map(([name, l]) => (l && typeof l === "object" ? { name, ...l } : { name, value: l }));
    const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
    const table = document.getElementById("limits");
    table.tHead.replaceChildren(el("tr", {}, ...columns.map((c) => el("th", { text: c.replace(/_/g, " ") }))));
    table.tBodies[0].replaceChildren(...(rows.length ? rows.map((row) => el("tr", { "data-limit": cell(row.name) },
      ...columns.map((c) => el("td", { class: "limit-" + c, text: cell(row[c]) }))))
      : [el("tr", {}, el("td", { class: "empty", text: "no limits configured" }))]));
    const depth = Array.isArray(tenants) ? tenants.map((t) => [t.tenant ?? t.name ?? "", t.queued ?? t.depth ?? 0])
      : Object.entries(tenants || {}).map(([name, v]) => [name, typeof v === "number" ? v : v.queued ?? v.depth ?? 0]);
    const deepest = Math.max(1, ...depth.map((d) => d[1]));
    setRows("tenants", depth.map(([name, queued]) => el("tr", { "data-tenant": name },
      el("td", { text: name === "" ? "(no identity)" : name }),
      el("td", { class: "num depth", text: integer(queued) }),
      el("td", {}, meter(queued, deepest, "")))), "no tenant waiting", 3);
  }

  // -- one run: its DAG, its tasks, cancel and retry --

  let openRunId = null;
  let openRun = null;

  function runFromHash() {
    const id = new URLSearchParams(location.hash.slice(1)).get("run");
    openRunId = id || null;
    document.getElementById("run-view").hidden = !openRunId;
    if (!openRunId) openRun = null;
  }

  window.addEventListener("hashchange", () => {
    runFromHash();
    if (openRunId) {
      document.getElementById("run-view-id").textContent = openRunId;
      document.getElementById("run-view").scrollIntoView();
    }
    poll();
  });
  document.getElementById("run-view-close").addEventListener("click", (event) => {
    event.preventDefault();
    window.history.replaceState(null, "", location.pathname);
    runFromHash();
  });
  document.getElementById("run-view-cancel").addEventListener("click", () => {
    if (openRun) cancelRun(openRun.run);
  });

  function layers(tasks) {
    const byId = new Map(tasks.map((t) => [t.id, t]));
    const depth = new Map();
    const depthOf = (id) => {
      if (depth.has(id)) return depth.get(id);
      depth.set(id, 0); // a cycle cannot be configured; this only guards the recursion
      const deps = byId.get(id).depends_on.filter((d) => byId.has(d));
      const value = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
      depth.set(id, value);
      return value;
    };
    const columns = [];
    for (const task of tasks) {
      const d = depthOf(task.id);
      (columns[d] = columns[d] || []).push(task);
    }
    return columns;
  }

  function took(task) {
    if (typeof task.started !== "number") return "";
    const stop = typeof task.finished === "number" ? task.finished : Date.now() / 1000;
    return seconds(Math.max(0, stop - task.started));
  }

  function drawDag(tasks) {
    const dag = document.getElementById("dag");
    const nodeW = 168, nodeH = 46, gapX = 56, gapY = 14, pad = 10;
    const columns = layers(tasks);
    const rows = Math.max(1, ...columns.map((c) => c.length));
    const width = pad * 2 + columns.length * nodeW + Math.max(0, columns.length - 1) * gapX;
    const height = pad * 2 + rows * nodeH + (rows - 1) * gapY;
    dag.setAttribute("viewBox", "0 0 " + width + " " + height);
    dag.setAttribute("width", String(width));
    dag.setAttribute("height", String(height));
    const where = new Map();
    columns.forEach((column, c) => column.forEach((task, r) => {
      const offset = ((rows - column.length) * (nodeH + gapY)) / 2; // centre short columns
      where.set(task.id, { x: pad + c * (nodeW + gapX), y: pad + offset + r * (nodeH + gapY) });
    }));
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }));
    const defs = svg("defs", {});
    defs.append(marker);
    const nodes = [defs];
    for (const task of tasks) {
      const to = where.get(task.id);
      for (const dep of task.depends_on) {
        const from = where.get(dep);
        if (!from) continue;
        const x1 = from.x + nodeW, y1 = from.y + nodeH / 2, x2 = to.x, y2 = to.y + nodeH / 2;
        const bend = gapX / 2;
        nodes.push(svg("path", { class: "edge", "data-edge": dep + "->" + task.id, "marker-end": "url(#arrow)",
          d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}` }));
      }
    }
    for (const task of tasks) {
      const at = where.get(task.id);
      const group = svg("g", { class: "node state-" + task.state, "data-task": task.id, "data-state": task.state, transform: `translate(${at.x},${at.y})`, tabindex: "0" });
      group.append(svg("title", { text: task.id + ": " + task.state + (task.error ? " — " + task.error : "") }));
      group.append(svg("rect", { width: nodeW, height: nodeH, rx: 7 }));
      const name = task.id.length > 22 ? task.id.slice(0, 21) + "…" : task.id;
      group.append(svg("text", { class: "node-name", x: 9, y: 18, text: name }));
      const meta = [task.state, took(task), task.attempts > 1 ? task.attempts + " attempts" : ""].filter(Boolean).join(" · ");
      group.append(svg("text", { class: "node-meta", x: 9, y: 35, text: meta }));
      group.addEventListener("click", () => {
        const row = document.querySelector('#run-tasks tr[data-task="' + CSS.escape(task.id) + '"]');
        if (row) { row.scrollIntoView({ block: "nearest" }); row.classList.add("picked"); setTimeout(() => row.classList.remove("picked"), 1500); }
      });
      nodes.push(group);
    }
    dag.replaceChildren(...nodes);
  }

  function renderRunView(view) {
    openRun = view;
    const run = view.run;
    document.getElementById("run-view-id").textContent = run.id;
    const badge = document.getElementById("run-view-status");
    badge.className = "badge status " + run.status;
    badge.textContent = run.status;
    badge.dataset.status = run.status;
    const end = run.finished || Date.now() / 1000;
    document.getElementById("run-view-meta").textContent = run.workflow + " · created " + clock(run.created) +
      " · " + seconds(Math.max(0, end - (run.started || run.created)));
    document.getElementById("run-view-cancel").hidden = FINISHED.has(run.status);
    const error = document.getElementById("run-view-error");
    error.hidden = !run.error;
    error.textContent = run.error || "";
    document.getElementById("run-view-context").textContent = run.context ? "context " + run.context : "";
    drawDag(view.tasks);
    setRows("run-tasks", view.tasks.map((task) => {
      const letter = task.dead_letter ? { id: task.dead_letter, run_id: run.id, task: task.id, workflow: run.workflow } : null;
      return el("tr", { "data-task": task.id, "data-state": task.state },
        el("td", { class: "name" }, el("i", { class: "swatch state-" + task.state }), " ", task.id,
          task.action ? el("div", { class: "caps", text: task.action }) : null),
        el("td", { class: "state", text: task.state }),
        el("td", { class: "num attempts", text: String(task.attempts) }),
        el("td", { class: "source", text: task.data_source || "" }),
        el("td", { class: "num took", text: took(task) }),
        el("td", { class: "mono params", text: task.params || "" }),
        el("td", { class: "mono result", title: task.result_truncated ? "cut: the result is longer" : null, text: task.result || "" }),
        el("td", { class: "error", text: task.error || "" }),
        el("td", {}, letter ? retryButton(letter) : null));
    }), "no tasks", 9);
  }

  function renderRunMissing(error) {
    openRun = null;
    document.getElementById("run-view-status").textContent = error.status === 404 ? "unknown" : "error";
    document.getElementById("run-view-meta").textContent = error.message;
    document.getElementById("run-view-cancel").hidden = true;
    document.getElementById("dag").replaceChildren();
    setRows("run-tasks", [], "", 9);
  }

  // -- the confirmation dialog, and the actions --

  const dialog = document.getElementById("confirm");

  function confirmAction(title, text, json) {
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-field").hidden = !json;
    const input = document.getElementById("confirm-input");
    input.value = json ? json.value : "";
    document.getElementById("confirm-label").textContent = json ? json.label : "";
    document.getElementById("confirm-problem").hidden = true;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "ok") return resolve(null);
        resolve(json ? JSON.parse(input.value || "{}") : {});
      }, { once: true });
      dialog.showModal();
    });
  }

  // A JSON field that is no JSON object keeps the dialog open and says why.
  dialog.querySelector("form").addEventListener("submit", (event) => {
    if (!event.submitter || event.submitter.value !== "ok" || document.getElementById("confirm-field").hidden) return;
    const problem = document.getElementById("confirm-problem");
    let value;
    try {
      value = JSON.parse(document.getElementById("confirm-input").value || "{}");
    } catch (error) {
      value = error;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Error) {
      event.preventDefault();
      problem.hidden = false;
      problem.textContent = value instanceof Error ? "not JSON: " + value.message : "must be a JSON object";
    }
  });

  let noticeTimer = null;

  function notice(kind, text) {
    const node = document.getElementById("notice");
    node.hidden = false;
    node.dataset.kind = kind;
    node.textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { node.hidden = true; }, 10000);
  }

  async function act(what, request, done) {
    try {
      const answer = await request();
      notice("ok", done(answer));
    } catch (error) {
      notice("error", what + " failed: " + error.message);
    }
    poll();
  }

  function showRun(id) {
    location.hash = "run=" + encodeURIComponent(id);
  }

  async function cancelRun(run) {
    if (!(await confirmAction("Cancel run", "Cancel run " + run.id + " of " + run.workflow + "? Its queued tasks are withdrawn and running ones interrupted."))) return;
    await act("cancel", () => api("/runs/" + encodeURIComponent(run.id) + "/cancel", "POST"),
      (answer) => "run " + answer.id + " is " + answer.status);
  }

  async function retryLetter(letter) {
    if (!(await confirmAction("Retry dead letter", "Run task " + letter.task + " of " + letter.workflow + " (run " + letter.run_id + ") again?"))) return;
    await act("retry", () => api("/dead-letters/" + encodeURIComponent(letter.id) + "/retry", "POST"), (answer) => {
      showRun(answer.run_id);
      return "task " + letter.task + " runs again in run " + answer.run_id;
    });
  }

  async function startWorkflow(workflow) {
    const context = await confirmAction("Start " + workflow.id, "Start a run of " + workflow.id + " with this context:", { label: "context (JSON object)", value: "{}" });
    if (!context) return;
    await act("start", () => api("/runs", "POST", { workflow: workflow.id, context }), (answer) => {
      showRun(answer.run_id);
      return "started run " + answer.run_id + " of " + workflow.id;
    });
  }

  document.getElementById("emit").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = document.getElementById("emit-event").value.trim();
    if (!name) return;
    const payload = await confirmAction("Emit " + name, "Emit the event " + name + " with this payload:", { label: "payload (JSON object)", value: "{}" });
    if (!payload) return;
    await act("emit", () => api("/events/" + encodeURIComponent(name), "POST", payload),
      (answer) => answer.run_ids.length ? "started " + answer.run_ids.length + " run(s): " + answer.run_ids.join(", ") : "no workflow listens to " + name);
  });

  function setConnection(state, text) {
    const badge = document.getElementById("connection");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  // -- the poll loop (one round of requests at a time, one per second) --

  let timer = null;
  let polls = 0;
  let polling = false; // one round at a time: a call meanwhile asks for another at once
  let again = false;

  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    clearTimeout(timer);
    const started = Date.now();
    const wait = await pollOnce();
    polling = false;
    if (again) {
      again = false;
      poll();
    } else if (wait) {
      timer = setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    }
  }

  // One round; false when it must wait for a token.
  async function pollOnce() {
    try {
      const runId = openRunId;
      const graph = runId ? api("/runs/" + encodeURIComponent(runId) + "/graph").catch((error) => error) : null;
      const triggers = polls % WORKFLOWS_EVERY === 0 ? api("/workflows") : null;
      const [status, history, recent, view, workflows] = await Promise.all([
        api("/status"), api(historyPath()), api(runsPath()), graph, triggers]);
      polls += 1;
      addSamples(history);
      renderSummary(status);
      renderQueues(status);
      renderWorkflows(status);
      renderAgents(status);
      renderSources(status);
      renderDeadLetters(status);
      renderLimits(status);
      renderRuns(recent.runs);
      renderPager(recent);
      if (workflows) renderTriggers(workflows);
      if (runId && runId === openRunId) {
        if (view instanceof HttpError) renderRunMissing(view);
        else if (view instanceof Error) throw view;
        else renderRunView(view);
      }
      drawCharts();
      setConnection("live", "live");
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (error instanceof HttpError && (error.status === 401 || error.status === 403)) {
        setConnection("error", error.status === 401 ? "sign in needed" : "token lacks the admin role");
        login.hidden = false;
        return false; // wait for a token from the login field
      }
      setConnection("error", "offline: " + error.message);
    }
    return true;
  }

  runFromHash();
  if (!token) {
    setConnection("error", "sign in needed");
    login.hidden = false;
  } else {
    poll();
  }
})();
