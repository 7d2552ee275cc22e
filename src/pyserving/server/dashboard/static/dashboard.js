// pyserving dashboard: polls api/state once a second and updates the page in place.
// Every string that comes from the server (model names, error messages, signature names,
// labels, flags) is put in the page with textContent or as an attribute value, never
// parsed as HTML. No library, no inline script or style (the page's CSP forbids both).
"use strict";

(function () {
  const POLL_MS = 1000;
  const RETRY_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const STATES = ["START", "LOADING", "AVAILABLE", "UNLOADING", "END", "ERROR", "UNKNOWN"];

  const view = {
    since: 0,
    tag: "",
    models: [],
    transitions: [],
    started: null,
    series: new Map(), // model name -> array of points [seq, requests, errors, p50, p99, batch]
    cards: new Map(), // model name -> card elements
    transitionsKey: "",
    flagsKey: "",
    budget: null,
    seq: 0,
    step: 2,
    points: 150,
  };

  // ------------------------------------------------------------------ small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const key of Object.keys(attrs || {})) node.setAttribute(key, String(attrs[key]));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function stateClass(state) {
    return "state state-" + (STATES.includes(state) ? state : "UNKNOWN");
  }

  function bytes(n) {
    if (n === null || n === undefined) return "\u2013";
    const sign = n < 0 ? "-" : "";
    let v = Math.abs(n);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return sign + (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "\u2013";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + "d " + h + "h " + m + "m";
    if (h > 0) return h + "h " + m + "m";
    return m + "m " + (s % 60) + "s";
  }

  function clock(epochSeconds) {
    const date = new Date(epochSeconds * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
      "." + pad(date.getMilliseconds(), 3);
  }

  function ms(value) {
    if (value === null || value === undefined) return "\u2013";
    return value < 10 ? value.toFixed(2) + " ms" : value.toFixed(1) + " ms";
  }

  // ------------------------------------------------------------------ polling

  async function poll() {
    let delay = POLL_MS;
    try {
      const url = "api/state/" + view.since + (view.tag ? "/" + view.tag : "");
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      render(doc);
      setConnection(true, "live");
    } catch (error) {
      setConnection(false, "server unreachable (" + error.message + "), retrying");
      delay = RETRY_MS;
    }
    window.setTimeout(poll, delay);
  }

  function setConnection(ok, text) {
    const node = document.getElementById("connection");
    node.textContent = text;
    node.className = "connection " + (ok ? "ok" : "down");
  }

  // ------------------------------------------------------------------ rendering

  function render(doc) {
    const began = performance.now();
    if (view.started !== null && view.started !== doc.server.started) {
      // The server restarted: its sequence numbers start again.
      view.series.clear();
    }
    view.started = doc.server.started;
    view.seq = doc.series.seq;
    view.step = doc.series.step_s;
    view.points = doc.series.points;
    view.since = doc.series.seq;
    // models and transitions are null when unchanged since the tag this page sent.
    if (doc.models !== null) {
      view.models = doc.models;
      view.transitions = doc.transitions;
    }
    view.tag = doc.tag;
    renderServer(doc.server, view.models);
    renderModels(view.models, doc.points || {});
    renderTransitions(view.transitions);
    document.body.dataset.seq = String(doc.series.seq);
    // How long this update took the page (read by benchmarks/dashboard.py).
    document.body.dataset.renderMs = (performance.now() - began).toFixed(2);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function fact(list, name, value) {
    list.appendChild(el("dt", null, name));
    list.appendChild(el("dd", null, value));
  }

  function renderServer(server, models) {
    const modelCount = models.length;
    let grown = 0;
    for (const model of models) {
      for (const v of model.versions) if (v.state === "AVAILABLE") grown += v.ram_growth_bytes || 0;
    }
    document.getElementById("server-version").textContent =
      server.version + " \u00b7 Python " + server.python +
      (server.tensorflow ? " \u00b7 TensorFlow " + server.tensorflow : "");
    const facts = document.getElementById("server-facts");
    clear(facts);
    fact(facts, "Uptime", duration(server.uptime_s));
    fact(facts, "Started", new Date(server.started * 1000).toLocaleString());
    fact(facts, "PID", server.pid);
    if (server.worker) {
      // Each worker answers with its own figures: requests, memory and its budget share.
      fact(facts, "Worker", (server.worker.index + 1) + " of " + server.worker.count +
        " (this page shows this worker's requests and memory)");
    }
    fact(facts, "gRPC port", server.ports.grpc || (server.ports.grpc_socket ? "\u2013" : "off"));
    if (server.ports.grpc_socket) fact(facts, "gRPC socket", server.ports.grpc_socket);
    fact(facts, "REST port", server.ports.rest);
    fact(facts, "Models", modelCount);
    fact(facts, "Batching", server.batching ? "on" : "off");

    const memory = server.memory;
    view.budget = memory.budget_bytes;
    const label = document.getElementById("memory-label");
    let text = "Memory in use (RSS) " + bytes(memory.rss_bytes) + " \u00b7 reserved by models " +
      bytes(memory.reserved_bytes);
    text += memory.budget_bytes === null ? " \u00b7 no budget" : " of a budget of " +
      bytes(memory.budget_bytes) + (server.worker ? " (this worker's share)" : "");
    text += " \u00b7 loading the versions now AVAILABLE grew memory by " + bytes(grown) +
      " (bar: measured in orange, reserved in blue, of the " +
      (memory.budget_bytes === null ? "largest" : "budget") + ")";
    label.textContent = text;
    const bar = document.getElementById("memory-bar");
    clear(bar);
    bar.appendChild(svg("rect", { x: 0, y: 0, width: 100, height: 6, class: "bar-bg" }));
    const limit = memory.budget_bytes || Math.max(memory.rss_bytes, memory.reserved_bytes, grown, 1);
    const reserved = Math.min(100, (100 * memory.reserved_bytes) / limit);
    const measured = Math.min(100, (100 * Math.max(0, grown)) / limit);
    bar.appendChild(svg("rect", { x: 0, y: 0, width: measured, height: 6, class: "bar-growth" }));
    bar.appendChild(svg("rect", { x: 0, y: 2, width: reserved, height: 2, class: "bar-fill" }));

    const key = JSON.stringify(server.flags);
    if (key !== view.flagsKey) {
      view.flagsKey = key;
      const rows = document.getElementById("flag-rows");
      clear(rows);
      if (server.flags.length === 0) {
        const tr = el("tr");
        tr.appendChild(el("td", "muted", "all flags at their defaults"));
        rows.appendChild(tr);
      }
      for (const pair of server.flags) {
        const tr = el("tr");
        tr.appendChild(el("td", "flag-name", "--" + pair[0]));
        tr.appendChild(el("td", "flag-value", pair[1]));
        rows.appendChild(tr);
      }
    }
  }

  function renderModels(models, points) {
    const container = document.getElementById("models");
    const seen = new Set();
    models.forEach((model, index) => {
      seen.add(model.name);
      let card = view.cards.get(model.name);
      if (!card) {
        card = makeCard(model.name);
        view.cards.set(model.name, card);
      }
      if (container.children[index] !== card.root) {
        container.insertBefore(card.root, container.children[index] || null);
      }
      mergePoints(model.name, points[model.name]);
      updateCard(card, model);
    });
    for (const [name, card] of view.cards) {
      if (!seen.has(name)) {
        card.root.remove();
        view.cards.delete(name);
        view.series.delete(name);
      }
    }
    applyFilter();
    document.getElementById("model-count").textContent =
      models.length + (models.length === 1 ? " model" : " models");
  }

  function mergePoints(name, points) {
    let series = view.series.get(name) || [];
    if (points && points.length) {
      const last = series.length ? series[series.length - 1][0] : 0;
      for (const point of points) if (point[0] > last) series.push(point);
    }
    const oldest = view.seq - view.points;
    series = series.filter((p) => p[0] > oldest);
    view.series.set(name, series);
  }

  function makeCard(name) {
    const root = el("article", "model");
    root.dataset.model = name;
    const head = el("header", "model-head");
    const title = el("h2", "model-name", name);
    title.title = name;
    const status = el("span", "state");
    head.appendChild(title);
    head.appendChild(status);
    root.appendChild(head);
    const meta = el("div", "model-meta");
    root.appendChild(meta);

    const table = el("table", "versions");
    const thead = el("thead");
    const hr = el("tr");
    for (const h of ["Version", "State", "Since", "Load", "RAM est.", "Growth"]) {
      hr.appendChild(el("th", null, h));
    }
    thead.appendChild(hr);
    table.appendChild(thead);
    const tbody = el("tbody");
    table.appendChild(tbody);
    root.appendChild(table);
    const hidden = el("div", "muted small");
    root.appendChild(hidden);

    const chart = el("div", "chart");
    const summary = el("div", "chart-summary");
    const rateSvg = svg("svg", { class: "spark rate", viewBox: "0 0 300 40", preserveAspectRatio: "none" });
    const latSvg = svg("svg", { class: "spark latency", viewBox: "0 0 300 40", preserveAspectRatio: "none" });
    const paths = {};
    for (const [target, name, className] of [
      [rateSvg, "ok", "bar-ok"], [rateSvg, "err", "bar-err"],
      [latSvg, "p99", "bar-p99"], [latSvg, "p50", "bar-p50"],
    ]) {
      if (!target.firstChild) {
        target.appendChild(svg("rect", { x: 0, y: 0, width: 300, height: 40, class: "spark-bg" }));
      }
      paths[name] = svg("path", { d: "", class: className });
      target.appendChild(paths[name]);
    }
    const rateLabel = el("div", "spark-label");
    const latLabel = el("div", "spark-label");
    chart.appendChild(summary);
    chart.appendChild(rateLabel);
    chart.appendChild(rateSvg);
    chart.appendChild(latLabel);
    chart.appendChild(latSvg);
    root.appendChild(chart);

    const tryit = makeTryIt(name);
    root.appendChild(tryit.root);
    return {
      root, status, meta, tbody, hidden, chart, summary, rateSvg, latSvg, rateLabel, latLabel,
      tryit, paths, versionsKey: "", chartKey: "",
    };
  }

  function updateCard(card, model) {
    card.status.className = stateClass(model.status);
    card.status.textContent = model.status;
    card.root.dataset.status = model.status;
    const labels = Object.keys(model.labels).map((k) => k + "\u2192" + model.labels[k]);
    let reserved = 0;
    let growth = 0;
    for (const v of model.versions) {
      reserved += v.ram_estimate_bytes || 0;
      if (v.state === "AVAILABLE") growth += v.ram_growth_bytes || 0;
    }
    let memory = "RAM est. " + bytes(reserved) + ", measured +" + bytes(growth);
    if (view.budget) memory += " (" + ((100 * reserved) / view.budget).toFixed(1) + "% of the budget)";
    const parts = [
      "platform " + (model.platform || "\u2013"),
      "policy " + model.version_policy,
      labels.length ? "labels " + labels.join(", ") : "no labels",
      memory,
    ];
    card.meta.textContent = parts.join(" \u00b7 ");
    card.meta.title = model.base_path;

    const key = JSON.stringify(model.versions);
    if (key !== card.versionsKey) {
      card.versionsKey = key;
      renderVersions(card.tbody, model.versions);
    }
    card.hidden.textContent = model.hidden_versions
      ? model.hidden_versions + " older ended version(s) not shown"
      : "";
    const chartKey = view.seq + ":" + (view.series.get(model.name) || []).length;
    if (chartKey !== card.chartKey) {
      card.chartKey = chartKey;
      renderChart(card, view.series.get(model.name) || []);
    }
  }

  function renderVersions(tbody, versions) {
    clear(tbody);
    if (versions.length === 0) {
      const tr = el("tr");
      const td = el("td", "muted", "no version seen yet");
      td.colSpan = 6;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    for (const v of versions) {
      const tr = el("tr", "version");
      tr.dataset.version = String(v.version);
      const shown = v.error ? "ERROR" : v.state;
      tr.dataset.state = shown;
      tr.appendChild(el("td", "num", v.version));
      const stateCell = el("td");
      const badge = el("span", stateClass(shown), v.state + (v.error ? " (error)" : ""));
      badge.title = v.cause || "";
      stateCell.appendChild(badge);
      if (v.state === "LOADING") {
        let text = " " + duration(v.loading_s);
        if (v.progress && v.progress.total_bytes) {
          const pct = Math.min(100, (100 * v.progress.done_bytes) / v.progress.total_bytes);
          text += " \u00b7 " + pct.toFixed(0) + "% of " + bytes(v.progress.total_bytes);
          const meter = el("progress", "load-progress");
          meter.max = v.progress.total_bytes;
          meter.value = v.progress.done_bytes;
          stateCell.appendChild(meter);
        }
        stateCell.appendChild(el("span", "muted", text));
      }
      tr.appendChild(stateCell);
      tr.appendChild(el("td", "num", clock(v.since)));
      tr.appendChild(el("td", "num", duration(v.load_s)));
      tr.appendChild(el("td", "num", bytes(v.ram_estimate_bytes)));
      tr.appendChild(el("td", "num", bytes(v.ram_growth_bytes)));
      tbody.appendChild(tr);
      if (v.error) {
        const er = el("tr", "version-error");
        const td = el("td", "error-text", v.error);
        td.colSpan = 6;
        er.appendChild(td);
        tbody.appendChild(er);
      }
    }
  }

  function renderChart(card, series) {
    const first = view.seq - view.points + 1;
    const width = 300;
    const height = 40;
    const x = (seq) => ((seq - first) / Math.max(1, view.points - 1)) * width;
    let total = 0;
    let errors = 0;
    let maxRate = 0;
    let maxLatency = 0;
    let batchMax = null;
    for (const p of series) {
      total += p[1];
      errors += p[2];
      maxRate = Math.max(maxRate, p[1] / view.step);
      maxLatency = Math.max(maxLatency, p[4] || 0, p[3] || 0);
      if (p[5] !== null && p[5] !== undefined) batchMax = Math.max(batchMax || 0, p[5]);
    }
    card.chart.dataset.requests = String(total);
    card.chart.dataset.points = String(series.length);

    // Each chart is a few <path> elements (one per colour) whatever the number of points:
    // with 50 models, an update rewrites 200 attributes rather than thousands of nodes.
    const barWidth = Math.max(1, width / view.points - 0.3);
    const bar = (p, h) => {
      if (h <= 0) return "";
      const left = (x(p[0]) - barWidth / 2).toFixed(2);
      return "M" + left + "," + height + "V" + (height - h).toFixed(2) + "h" + barWidth.toFixed(2) +
        "V" + height + "Z";
    };
    const paths = { ok: "", err: "", p99: "", p50: "" };
    const latency = (value) => value === null || value === undefined
      ? 0 : Math.max(1, (value / (maxLatency || 1)) * (height - 2));
    for (const p of series) {
      const rate = p[1] / view.step;
      const h = maxRate > 0 ? (rate / maxRate) * (height - 2) : 0;
      paths.ok += bar(p, h);
      if (p[2] > 0) paths.err += bar(p, (p[2] / p[1]) * h);
      paths.p99 += bar(p, latency(p[4]));
      paths.p50 += bar(p, latency(p[3]));
    }
    card.paths.ok.setAttribute("d", paths.ok);
    card.paths.err.setAttribute("d", paths.err);
    card.paths.p99.setAttribute("d", paths.p99);
    card.paths.p50.setAttribute("d", paths.p50);

    const last = series.length ? series[series.length - 1] : null;
    const windowText = duration(view.step * view.points);
    if (total === 0) {
      card.summary.textContent = "No requests in the last " + windowText + ".";
    } else {
      let text = total + (total === 1 ? " request" : " requests") + " in the last " + windowText + ", errors " +
        ((100 * errors) / total).toFixed(1) + "%";
      if (last && last[0] === view.seq) {
        text += " \u00b7 now " + (last[1] / view.step).toFixed(1) + " req/s, p50 " + ms(last[3]) +
          ", p99 " + ms(last[4]);
        if (last[5] !== null && last[5] !== undefined) text += ", mean batch " + last[5];
      }
      if (batchMax !== null) text += " \u00b7 largest mean batch " + batchMax;
      card.summary.textContent = text;
    }
    card.rateLabel.textContent = "requests/s, max " + maxRate.toFixed(1) + " (errors in red)";
    card.latLabel.textContent = "latency p50 (green) / p99 (orange), max " + ms(maxLatency);
  }

  function renderTransitions(transitions) {
    const first = transitions[0];
    const key = transitions.length + ":" + (first ? first.time + first.model + first.version + first.state : "");
    if (key === view.transitionsKey) return;
    view.transitionsKey = key;
    const body = document.getElementById("transitions");
    clear(body);
    for (const t of transitions) {
      const tr = el("tr");
      tr.appendChild(el("td", "num", clock(t.time)));
      tr.appendChild(el("td", "model-ref", t.model));
      tr.appendChild(el("td", "num", t.version));
      const stateCell = el("td");
      stateCell.appendChild(el("span", stateClass(t.error ? "ERROR" : t.state), t.state));
      tr.appendChild(stateCell);
      tr.appendChild(el("td", "num", t.duration_s === null ? "" : duration(t.duration_s)));
      tr.appendChild(el("td", null, t.cause));
      tr.appendChild(el("td", "error-text", t.error || ""));
      body.appendChild(tr);
    }
  }

  function applyFilter() {
    const text = document.getElementById("filter").value.trim().toLowerCase();
    for (const [name, card] of view.cards) {
      card.root.classList.toggle("hidden", text !== "" && !name.toLowerCase().includes(text));
    }
  }

  // ------------------------------------------------------------------ try it

  function makeTryIt(name) {
    const root = el("details", "tryit");
    const summary = el("summary", null, "Try it");
    root.appendChild(summary);
    const note = el("div", "tryit-note muted");
    const body = el("textarea", "tryit-body");
    body.spellcheck = false;
    body.rows = 6;
    body.setAttribute("aria-label", "Predict request body");
    const send = el("button", "tryit-send", "Send predict");
    send.type = "button";
    const latency = el("span", "tryit-latency");
    const result = el("pre", "tryit-result");
    root.appendChild(note);
    root.appendChild(body);
    const row = el("div", "tryit-row");
    row.appendChild(send);
    row.appendChild(latency);
    root.appendChild(row);
    root.appendChild(result);
    let loaded = false;

    root.addEventListener("toggle", async () => {
      if (!root.open || loaded) return;
      loaded = true;
      note.textContent = "Building a request\u2026";
      try {
        const response = await fetch("api/example/" + encodeURIComponent(name), { cache: "no-store" });
        const example = await response.json();
        if (!response.ok) throw new Error(example.error || "HTTP " + response.status);
        const compact = JSON.stringify(example.body);
        body.value = compact.length <= 200 ? compact : JSON.stringify(example.body, null, 1);
        note.textContent = example.note + " Version " + example.version +
          (example.signature_name ? ", signature " + example.signature_name : "") + ".";
        root.dataset.ready = "true";
      } catch (error) {
        loaded = false;
        note.textContent = "Could not build a request: " + error.message;
        body.value = "{\"inputs\": {}}";
        root.dataset.ready = "true";
      }
    });

    send.addEventListener("click", async () => {
      send.disabled = true;
      latency.textContent = "sending\u2026";
      result.textContent = "";
      const url = "../v1/models/" + encodeURIComponent(name) + ":predict";
      const started = performance.now();
      try {
        const response = await fetch(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: body.value,
          cache: "no-store",
        });
        const text = await response.text();
        const took = performance.now() - started;
        latency.textContent = "HTTP " + response.status + " in " + took.toFixed(1) + " ms";
        latency.className = "tryit-latency " + (response.ok ? "ok" : "failed");
        let shown = text;
        try {
          shown = JSON.stringify(JSON.parse(text), null, 1);
        } catch (ignored) {
          // not JSON: shown as it came
        }
        result.textContent = shown.length > 20000 ? shown.slice(0, 20000) + "\n\u2026" : shown;
        root.dataset.status = String(response.status);
      } catch (error) {
        latency.textContent = "failed: " + error.message;
        latency.className = "tryit-latency failed";
        root.dataset.status = "error";
      } finally {
        send.disabled = false;
      }
    });
    return { root, body, send, latency, result };
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("filter").addEventListener("input", applyFilter);
    poll();
  });
})();
