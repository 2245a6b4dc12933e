// The operator console. Plain DOM, no framework, no build step, nothing loaded from elsewhere.
// Every text that came from the server (tuner names, labels, errors) reaches the page through textContent or
// an attribute set by the DOM API, never as HTML; the Content-Security-Policy forbids inline script anyway.
"use strict";

(function () {
  const API = "../"; // the page lives at /ui/; the API beside it (relative, so a path prefix in front still works)
  let adminToken = ""; // only in this variable: never in storage, cookies or the URL
  let lastMetrics = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // -- talking to the server --------------------------------------------------------------------------------

  class ServerError extends Error {
    constructor(status, body) {
      super(body && typeof body.error === "string" ? body.error : `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function call(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (options.admin && adminToken) headers["Authorization"] = "Bearer " + adminToken;
    let response;
    try {
      response = await fetch(API + path, Object.assign({}, options, { headers }));
    } catch (err) {
      throw new ServerError(0, { error: "the server cannot be reached (" + err.message + ")" });
    }
    const type = response.headers.get("content-type") || "";
    let body = null;
    if (type.startsWith("application/json")) {
      try { body = await response.json(); } catch (err) { body = null; }
    } else {
      body = { text: await response.text() };
    }
    if (!response.ok) {
      throw new ServerError(response.status, body && body.error ? body : { error: `HTTP ${response.status} ${response.statusText}` });
    }
    return body;
  }

  function showError(box, err) {
    box.replaceChildren();
    const status = err.status ? `${err.status}: ` : "";
    box.append(el("p", { class: "message", text: status + err.message }));
    const details = [];
    for (const key of ["problems", "unknown", "details"]) {
      const items = err.body && err.body[key];
      if (Array.isArray(items)) {
        for (const item of items) details.push(typeof item === "string" ? item : JSON.stringify(item));
      }
    }
    if (details.length) box.append(el("ul", { class: "problems" }, ...details.map((d) => el("li", { text: d }))));
    box.hidden = false;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  async function busy(button, work) {
    button.disabled = true;
    try { return await work(); } finally { button.disabled = false; }
  }

  // -- classify ---------------------------------------------------------------------------------------------

  function renderClassify(answer) {
    const box = $("classify-results");
    box.replaceChildren();
    const tasks = Object.keys(answer.results);
    for (const task of tasks) {
      const result = answer.results[task];
      const list = el("ol", { "aria-label": "labels of " + task });
      result.labels.forEach((label, i) => {
        const score = result.scores[i];
        const fill = el("div", { class: "fill" });
        fill.style.width = Math.max(0, Math.min(100, score * 100)).toFixed(1) + "%"; // CSSOM, allowed by the CSP
        list.append(el("li", {},
          el("span", { class: "label", text: label }),
          el("span", { class: "score", text: (score * 100).toFixed(1) + "%" }),
          el("div", { class: "track", "aria-hidden": "true" }, fill)));
      });
      box.append(el("article", { class: "task", "data-task": task },
        el("h3", { text: task }), el("p", { class: "ref", text: result.tuner }), list));
    }
    const t = answer.timings_ms;
    $("classify-timings").textContent = `${tasks.length} task results · queue ${t.queue} ms · backbone ${t.backbone} ms ` +
      `· heads ${t.heads} ms · batch of ${t.batch_size}`;
  }

  async function classify(file) {
    const errorBox = $("classify-error");
    clearError(errorBox);
    if (!file) {
      showError(errorBox, new ServerError(0, { error: "choose an image first" }));
      return;
    }
    const form = new FormData();
    form.append("file", file);
    form.append("top_k", $("classify-topk").value || "3");
    const tasks = $("classify-tasks").value.trim();
    if (tasks) form.append("tasks", tasks);
    await busy($("classify-button"), async () => {
      try {
        renderClassify(await call("v1/classify", { method: "POST", body: form }));
      } catch (err) {
        $("classify-results").replaceChildren();
        $("classify-timings").textContent = "";
        showError(errorBox, err);
      }
    });
  }

  function setUpClassify() {
    const input = $("classify-file");
    const zone = $("drop-zone");
    $("classify-form").addEventListener("submit", (event) => {
      event.preventDefault();
      classify(input.files[0]);
    });
    input.addEventListener("change", () => { if (input.files[0]) classify(input.files[0]); });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) classify(file);
    });
  }

  // -- tuners -----------------------------------------------------------------------------------------------

  const labelCache = new Map(); // name@version -> labels (a version never changes)

  async function labelsOf(tuner) {
    if (!labelCache.has(tuner.ref)) {
      const detail = await call(`v1/tuners/${encodeURIComponent(tuner.name)}?version=${tuner.version}`);
      labelCache.set(tuner.ref, detail.labels);
    }
    return labelCache.get(tuner.ref);
  }

  function sizeText(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MiB" : (bytes / 1024).toFixed(1) + " KiB";
  }

  function tunerRow(tuner) {
    const labels = el("td", { class: "labels" }, `${tuner.num_labels} labels`);
    let serving;
    if (tuner.serving) serving = el("td", {}, el("span", { class: "serving", text: "serving" }));
    else if (tuner.problem) serving = el("td", {}, el("span", { class: "problem", text: tuner.problem }));
    else if (tuner.serving_version) serving = el("td", { text: `serving v${tuner.serving_version}` });
    else serving = el("td", { text: "not serving" });
    const del = el("button", { type: "button", class: "danger", "aria-label": `Delete ${tuner.ref}`,
      text: `Delete v${tuner.version}` });
    del.addEventListener("click", () => deleteVersion(tuner, del));
    const row = el("tr", { "data-tuner": tuner.name },
      el("th", { scope: "row", text: tuner.name }),
      el("td", { text: tuner.kind }),
      el("td", { text: String(tuner.version) }),
      labels, serving,
      el("td", { text: sizeText(tuner.size_bytes) }),
      el("td", {}, el("time", { datetime: tuner.created_at, text: tuner.created_at.replace("T", " ").slice(0, 19) })),
      el("td", { text: tuner.backbone_name }),
      el("td", {}, del));
    return { row, labels };
  }

  async function fillLabels(jobs) {
    // a few at a time: a store of thousands of tuners must not open thousands of requests at once
    const queue = jobs.slice();
    const worker = async () => {
      while (queue.length) {
        const { tuner, cell } = queue.shift();
        try {
          const labels = await labelsOf(tuner);
          cell.replaceChildren(labels.length ? labels.join(", ") : "—"); // style tuners have no labels
          cell.setAttribute("title", labels.join(", "));
        } catch (err) {
          cell.replaceChildren(`${tuner.num_labels} labels`);
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  async function refreshTuners() {
    const errorBox = $("tuners-error");
    try {
      const answer = await call("v1/tuners");
      const body = $("tuners-body");
      const jobs = [];
      body.replaceChildren(...answer.tuners.map((tuner) => {
        const { row, labels } = tunerRow(tuner);
        jobs.push({ tuner, cell: labels });
        return row;
      }));
      $("tuners-status").textContent = `${answer.tuners.length} tuners · store revision ${answer.store_revision}`;
      refreshStyles(answer.tuners);
      await fillLabels(jobs);
    } catch (err) {
      showError(errorBox, err);
    }
  }

  async function upload(event) {
    event.preventDefault();
    const errorBox = $("tuners-error");
    clearError(errorBox);
    const file = $("upload-file").files[0];
    if (!file) {
      showError(errorBox, new ServerError(0, { error: "choose a .safetensors artifact first" }));
      return;
    }
    await busy($("upload-button"), async () => {
      try {
        const answer = await call("v1/tuners", { method: "POST", admin: true, body: file,
          headers: { "Content-Type": "application/octet-stream" } });
        $("tuners-status").textContent = `uploaded ${answer.ref}` + (answer.created ? "" : " (already stored)");
        await waitAndRefresh(answer.name);
      } catch (err) {
        showError(errorBox, err);
      }
    });
  }

  async function waitAndRefresh(name) {
    // the server hot-loads an upload from the store within moments; show it once it serves (or failed to)
    for (let i = 0; i < 20; i++) {
      await refreshTuners();
      const row = document.querySelector(`tr[data-tuner="${CSS.escape(name)}"]`);
      if (row && (row.querySelector(".serving") || row.querySelector(".problem"))) return;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  async function deleteVersion(tuner, button) {
    if (button.dataset.armed !== "yes") { // a second click confirms, so one slip deletes nothing
      button.dataset.armed = "yes";
      button.textContent = `Confirm delete v${tuner.version}`;
      return;
    }
    const errorBox = $("tuners-error");
    clearError(errorBox);
    await busy(button, async () => {
      try {
        await call(`v1/tuners/${encodeURIComponent(tuner.name)}?version=${tuner.version}`,
          { method: "DELETE", admin: true });
        $("tuners-status").textContent = `deleted ${tuner.ref}`;
        await refreshTuners();
      } catch (err) {
        button.dataset.armed = "";
        button.textContent = `Delete v${tuner.version}`;
        showError(errorBox, err);
      }
    });
  }

  // -- generate ---------------------------------------------------------------------------------------------

  function refreshStyles(tuners) {
    const box = $("generate-styles");
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    const styles = ["base", ...tuners.filter((t) => t.kind === "diffusion" && t.serving).map((t) => t.name)];
    const legend = el("legend", { text: "Styles" });
    box.replaceChildren(legend, ...styles.map((style, i) => {
      const id = "style-" + i;
      const input = el("input", { type: "checkbox", id, value: style });
      input.checked = checked.size ? checked.has(style) : true;
      return el("label", { for: id }, input, " " + style);
    }));
  }

  async function generate(event) {
    event.preventDefault();
    const errorBox = $("generate-error");
    clearError(errorBox);
    const prompts = $("generate-prompts").value.split("\n").map((p) => p.trim()).filter(Boolean);
    const styles = [...$("generate-styles").querySelectorAll("input:checked")].map((i) => i.value);
    const body = { prompts, styles, steps: Number($("generate-steps").value) || 4,
      seed: Number($("generate-seed").value) || 0 };
    await busy($("generate-button"), async () => {
      try {
        const answer = await call("v1/generate", { method: "POST", body: JSON.stringify(body),
          headers: { "Content-Type": "application/json" } });
        renderGrid(answer, prompts, styles);
      } catch (err) {
        $("generate-grid").hidden = true;
        showError(errorBox, err);
      }
    });
  }

  function renderGrid(answer, prompts, styles) {
    const grid = $("generate-grid");
    const head = el("tr", {}, el("th", { scope: "col", text: "prompt \\ style" }),
      ...styles.map((s) => el("th", { scope: "col", text: s })));
    const rows = prompts.map((prompt) => {
      const cells = styles.map((style) => {
        const image = answer.images.find((im) => im.prompt === prompt && im.style === style);
        if (!image) return el("td", { text: "–" });
        const img = el("img", { alt: `${prompt} — ${style} (seed ${image.seed})` });
        img.src = "data:image/png;base64," + image.png_base64;
        return el("td", {}, img);
      });
      return el("tr", {}, el("th", { scope: "row", text: prompt }), ...cells);
    });
    grid.replaceChildren(el("caption", { text: `${prompts.length} prompts × ${styles.length} styles, one call` }),
      el("thead", {}, head), el("tbody", {}, ...rows));
    grid.hidden = false;
    const t = answer.timings_ms || {};
    $("generate-timings").textContent = Object.entries(t).map(([k, v]) => `${k} ${v}`).join(" · ");
  }

  // -- live state -------------------------------------------------------------------------------------------

  function parseMetrics(text) {
    // Prometheus text format: `name{label="value",…} number`; the sums this page needs, by name
    const sums = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const [, name, labels, value] = match;
      if (name === "restune_http_requests_total") {
        const endpoint = /endpoint="([^"]*)"/.exec(labels || "");
        if (!endpoint || !(endpoint[1] === "/v1/classify" || endpoint[1].endsWith("/infer"))) continue;
      }
      sums[name] = (sums[name] || 0) + Number(value);
    }
    sums.at = performance.now();
    return sums;
  }

  async function refreshLive() {
    try {
      const response = await fetch(API + "metrics");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const now = parseMetrics(await response.text());
      $("stat-queue").textContent = String(now.restune_queue_depth ?? 0);
      if (lastMetrics) {
        const dt = (now.at - lastMetrics.at) / 1000;
        const delta = (name) => (now[name] || 0) - (lastMetrics[name] || 0);
        $("stat-rps").textContent = (delta("restune_http_requests_total") / dt).toFixed(1);
        const batches = delta("restune_batch_size_count");
        $("stat-batch").textContent = batches ? (delta("restune_batch_size_sum") / batches).toFixed(2) : "idle";
      }
      const hits = now.restune_feature_cache_hits_total || 0;
      const misses = now.restune_feature_cache_misses_total || 0;
      $("stat-cache").textContent = hits + misses ? ((100 * hits) / (hits + misses)).toFixed(1) + "%" : "–";
      lastMetrics = now;
    } catch (err) {
      $("stat-queue").textContent = "unreachable";
    }
  }

  async function refreshReady() {
    const pill = $("server-state");
    try {
      const response = await fetch(API + "readyz");
      const body = await response.json();
      pill.textContent = response.ok ? `ready · ${body.backbone} · ${body.classification_tuners} classifiers`
        : `not ready: ${body.error}`;
      pill.className = "pill " + (response.ok ? "ok" : "bad");
    } catch (err) {
      pill.textContent = "server unreachable";
      pill.className = "pill bad";
    }
  }

  // -- start ------------------------------------------------------------------------------------------------

  async function start() {
    $("token-form").addEventListener("submit", (event) => event.preventDefault());
    $("admin-token").addEventListener("input", (event) => { adminToken = event.target.value.trim(); });
    setUpClassify();
    $("upload-form").addEventListener("submit", upload);
    $("refresh-button").addEventListener("click", refreshTuners);
    $("generate-form").addEventListener("submit", generate);
    try {
      const config = await call("ui/config.json");
      $("generate").hidden = !config.generation;
      $("generate-link").hidden = !config.generation;
    } catch (err) { /* an older server: no generate section */ }
    await Promise.all([refreshReady(), refreshTuners(), refreshLive()]);
    setInterval(refreshLive, 2000);
    setInterval(refreshReady, 5000);
    document.body.dataset.ready = "yes"; // for the browser tests: the first render is done
  }

  document.addEventListener("DOMContentLoaded", start);
})();
