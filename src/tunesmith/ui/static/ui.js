// tunesmith ui: the few things htmx does not do. Uploads, live training curves (uPlot), streamed playground
// answers and the sign-in form. Every POST carries the page's CSRF token in X-CSRF-Token.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : (document.getElementById("login") || {}).dataset.csrf;
}

function post(url, body, contentType) {
  const headers = { "X-CSRF-Token": csrfToken() };
  if (contentType) headers["Content-Type"] = contentType;
  return fetch(url, { method: "POST", headers: headers, body: body, credentials: "same-origin" });
}

// ------------------------------------------------------------------------------------------- sign in
function setupLogin() {
  const form = document.getElementById("login");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = document.getElementById("key").value;
    const res = await post("/login", new URLSearchParams({ key: key }), "application/x-www-form-urlencoded");
    if (res.ok) window.location.href = form.dataset.next || "/";
    else document.getElementById("login-error").textContent = "That key is not accepted.";
  });
}

// -------------------------------------------------------------------------------------------- upload
function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = document.getElementById("datafile").files[0];
    const error = document.getElementById("upload-error");
    if (!file) { error.textContent = "Choose a file first."; return; }
    const model = document.getElementById("upload-model").value;
    const url = "/start/upload?name=" + encodeURIComponent(file.name) + "&model=" + encodeURIComponent(model);
    error.textContent = "";
    document.getElementById("upload-button").disabled = true;
    try {
      const res = await post(url, file, "application/octet-stream");
      const text = await res.text();
      let answer = {};
      try { answer = JSON.parse(text); } catch (e) { answer = { error: text }; }
      if (res.ok && answer.url) { window.location.href = answer.url; return; }
      error.textContent = answer.error || ("upload refused (" + res.status + ")");
    } finally {
      document.getElementById("upload-button").disabled = false;
    }
  });
}

// ------------------------------------------------------------------------------------- live curves
function chart(el, title, series, width) {
  const opts = {
    title: title, width: width, height: 220,
    scales: { x: { time: false } },
    series: [{ label: "step" }].concat(series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: true }))),
    axes: [{ label: "step" }, {}],
  };
  return new uPlot(opts, [[]].concat(series.map(() => [])), el);
}

function setupCurves() {
  const box = document.getElementById("curves");
  if (!box || typeof uPlot === "undefined") return;
  const run = box.dataset.run;
  const width = Math.max(320, Math.floor((box.clientWidth - 40) / 3));
  const data = { step: [], loss: [], val_loss: [], lr: [], tokens_per_s: [] };
  const charts = [
    [chart(document.getElementById("chart-loss"), "loss", [{ label: "train loss", color: "#2563eb" }, { label: "val loss", color: "#dc2626" }], width), ["loss", "val_loss"]],
    [chart(document.getElementById("chart-lr"), "learning rate", [{ label: "lr", color: "#059669" }], width), ["lr"]],
    [chart(document.getElementById("chart-tps"), "tokens / s", [{ label: "tokens/s", color: "#7c3aed" }], width), ["tokens_per_s"]],
  ];
  const status = document.getElementById("curve-status");
  let last = -1;
  function add(points) {
    for (const p of points) {
      data.step.push(p.step);
      for (const k of ["loss", "val_loss", "lr", "tokens_per_s"]) data[k].push(p[k] === undefined ? null : p[k]);
      last = p.step;
    }
    if (points.length) {
      for (const [c, keys] of charts) c.setData([data.step].concat(keys.map((k) => data[k])));
    }
    box.dataset.points = String(data.step.length);
  }
  async function poll() {
    let answer;
    try {
      const res = await fetch("/runs/" + encodeURIComponent(run) + "/metrics.json?after=" + last, { credentials: "same-origin" });
      answer = await res.json();
      if (!res.ok) {
        // A damaged metrics.jsonl does not mend itself: say what the server says, stop polling.
        status.textContent = answer.error || ("the server answered " + res.status);
        status.classList.add("problem");
        return;
      }
    } catch (e) {
      status.textContent = "cannot reach the server; retrying";
      window.setTimeout(poll, 1000);
      return;
    }
    add(answer.points);
    status.textContent = data.step.length
      ? data.step.length + " steps logged, last step " + last + (answer.done ? " (training over)" : " (training…)")
      : (answer.done ? "no metrics were logged" : "waiting for the first step…");
    if (!answer.done) window.setTimeout(poll, 1000);
  }
  poll();
}

// -------------------------------------------------------------------------------------- playground
function column(name) {
  const col = document.createElement("div");
  col.className = "column";
  col.dataset.model = name;
  const head = document.createElement("h3");
  head.textContent = name;
  const out = document.createElement("pre");
  out.className = "answer";
  col.append(head, out);
  return col;
}

async function streamInto(col, body) {
  const out = col.querySelector("pre");
  col.dataset.done = "0";
  try {
    const res = await post("/playground/generate", JSON.stringify(body), "application/json");
    if (!res.ok) {
      out.classList.add("problem");
      out.textContent = await res.text();
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out.textContent += decoder.decode(value, { stream: true });
    }
  } catch (e) {
    out.classList.add("problem");
    out.textContent += "\n[connection lost]";
  } finally {
    col.dataset.done = "1";
  }
}

function setupPlayground() {
  const form = document.getElementById("playground-form");
  if (!form) return;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const runs = Array.from(form.querySelectorAll('input[name="run"]:checked')).map((i) => i.value);
    const columns = document.getElementById("columns");
    columns.replaceChildren();
    if (!runs.length) {
      columns.textContent = "Pick at least one tuned run.";
      return;
    }
    const models = (document.getElementById("with-base").checked ? ["base"] : []).concat(runs);
    const common = {
      runs: runs,
      prompt: document.getElementById("prompt").value,
      max_tokens: Number(form.elements.max_tokens.value),
      temperature: Number(form.elements.temperature.value),
    };
    for (const m of models) {
      const col = column(m);
      columns.append(col);
      streamInto(col, Object.assign({ model: m }, common));
    }
  });
}

// --------------------------------------------------------------------------- htmx: reload on success
document.addEventListener("htmx:afterSwap", () => {
  const flash = document.getElementById("flash-message");
  if (flash && flash.dataset.reload) window.setTimeout(() => window.location.reload(), 600);
});

setupLogin();
setupUpload();
setupCurves();
setupPlayground();
