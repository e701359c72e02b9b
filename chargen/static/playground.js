// The chargen playground: plain JavaScript over the server's own /v1/ API (no CDN, no build).
"use strict";

const state = { models: [], model: null, busy: false, rows: [] };

function token() { return sessionStorage.getItem("chargen-token") || ""; }

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, body === undefined ? { headers } :
    { method: "POST", headers, body: JSON.stringify(body) });
  if (response.status === 401) {
    $("token-box").hidden = false;
    $("token").focus();
    throw new Error("this server needs a token: type it above, then try again");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// --- models -----------------------------------------------------------------------------------

async function loadModels() {
  try {
    const data = await (await api("/v1/models")).json();
    state.models = data.models;
    const select = $("model");
    select.replaceChildren(...data.models.map((m) => new Option(m.name, m.name)));
    pickModel(data.models[0]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function pickModel(model) {
  state.model = model;
  const lines = model.line_oriented;
  document.body.dataset.kind = lines ? "lines" : "prose";
  if (!lines) document.querySelector("input[value=sample]").checked = true;
  document.querySelector("input[value=top]").disabled = !lines;
  $("n").value = lines ? ($("n").value || 10) : 1;
  $("n").disabled = !lines;
  const labels = model.labels ? model.labels.names : [];
  document.querySelector(".for-labels").hidden = labels.length === 0;
  $("label-list").replaceChildren(...labelChoices(model.labels).map((v) => new Option(v, v)));
  $("label").value = "";
  syncMode();
  showSummary(model);
}

function showSummary(m) {
  showFacts(m);
  drawCurve(m.curve || []);
}

function drawCurve(points) {
  const svg = $("curve");
  $("curve-box").hidden = points.length < 2;
  if (points.length < 2) return;
  const ns = "http://www.w3.org/2000/svg";
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const X = (x) => 30 + (x - x0) / ((x1 - x0) || 1) * 265, Y = (y) => 8 + (y1 - y) / ((y1 - y0) || 1) * 95;
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    return e;
  };
  svg.replaceChildren(
    el("line", { class: "axis", x1: 30, y1: 103, x2: 295, y2: 103 }),
    el("line", { class: "axis", x1: 30, y1: 8, x2: 30, y2: 103 }),
    el("text", { x: 0, y: 12 }, y1.toFixed(2)), el("text", { x: 0, y: 103 }, y0.toFixed(2)),
    el("text", { x: 30, y: 116 }, human(x0)), el("text", { x: 270, y: 116 }, human(x1)),
    el("polyline", { class: "line", points: points.map((p) => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" ") }),
  );
}

// --- the form ---------------------------------------------------------------------------------

function mode() { return document.querySelector("input[name=mode]:checked").value; }

// Show what applies: line-only options for a line model, prose-only for prose, sampling options
// unless listing the most likely.
function syncMode() {
  const lines = !state.model || state.model.line_oriented, sampling = mode() === "sample";
  for (const el of document.querySelectorAll(".for-lines, .for-prose, .for-sample")) {
    el.hidden = (el.classList.contains("for-lines") && !lines) || (el.classList.contains("for-prose") && lines) ||
                (el.classList.contains("for-sample") && !sampling);
  }
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function text(id) {
  const v = $(id).value;
  return v === "" ? undefined : v;
}

function request() {
  const body = { model: state.model.name, prompt: $("prompt").value };
  if (state.model.labels && text("label")) body.label = text("label").trim();
  const lines = state.model.line_oriented;
  if (lines) body.n = number("n");
  if (mode() === "sample") {
    Object.assign(body, { temperature: Number($("temperature").value), seed: number("seed"),
                          top_k: number("top_k"), top_p: number("top_p") });
    if ($("unique").checked) body.unique = true;
    if (!lines) body.length = number("length");
  }
  if (lines) {
    if ($("novel").checked) body.novel = true;
    Object.assign(body, { min_len: number("min_len"), max_len: number("max_len"), ends_with: text("ends_with"),
                          regex: text("regex") });
    const contains = commaList("contains");
    if (contains.length) body.contains = contains;
    if (mode() === "sample" && $("guided").checked) body.guided = true;
    if (mode() === "sample" && $("rejection").checked) body.rejection = true;
  }
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return body;
}

async function generate(event) {
  if (event) event.preventDefault();
  if (state.busy || !state.model) return;
  state.busy = true;
  $("go").disabled = true;
  $("copy").disabled = true;
  const started = performance.now();
  setStatus("drawing…");
  try {
    if (state.model.line_oriented) await drawLines(started);
    else await streamProse(started);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
    $("go").disabled = false;
  }
}

async function drawLines(started) {
  const top = mode() === "top";
  const data = await (await api(top ? "/v1/top" : "/v1/sample", request())).json();
  state.rows = data.samples;
  $("prose").hidden = true;
  $("results").hidden = false;
  const tbody = $("results").tBodies[0];
  tbody.replaceChildren(...data.samples.map((s, i) => row(s, i)));
  const ms = Math.round(performance.now() - started);
  const share = top ? "" : drawsNote(data.samples, data.draws, data.accepted);
  setStatus(data.samples.length + (top ? " most likely" : " samples") + " in " + ms + " ms" + share +
            " · click a sample to copy it");
  $("copy").disabled = data.samples.length === 0;
}

async function streamProse(started) {
  const response = await api("/v1/stream", request());
  const pre = $("prose");
  $("results").hidden = true;
  pre.hidden = false;
  pre.textContent = "";
  pre.dataset.chunks = "0";
  pre.dataset.done = "false";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", record = null, chunks = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [, "{}"])[1]);
      if (kind === "text") { pre.append(data.text); pre.dataset.chunks = String(++chunks); }
      else if (kind === "sample") record = data;
      else if (kind === "error") throw new Error(data.error);
    }
  }
  pre.dataset.done = "true";
  state.rows = record ? [record] : [];
  const ms = Math.round(performance.now() - started);
  setStatus((record ? record.chars + " characters, log p/char " + record.logprob_per_char.toFixed(3) : "done") +
            " in " + ms + " ms (" + chunks + " chunks as drawn)");
  $("copy").disabled = !record;
}

// --- this model as a web page or a JS module (GET /v1/export) ---------------------------------

async function download(format) {
  const name = state.model.name;
  setStatus("building " + name + (format === "html" ? ".html" : ".mjs") + "…");
  try {
    const response = await api("/v1/export?model=" + encodeURIComponent(name) + "&format=" + format);
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name + (format === "html" ? ".html" : ".mjs");
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    setStatus("downloaded " + a.download + ": " + (format === "html" ? "open it in any browser, no server needed"
                                                                      : "import { sample } from \"./" + a.download + "\""));
  } catch (e) {
    setStatus(e.message, true);
  }
}

function init() {
  $("export-html").addEventListener("click", () => download("html"));
  $("export-js").addEventListener("click", () => download("js"));
  $("form").addEventListener("submit", generate);
  $("form").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e);
  });
  $("model").addEventListener("change", () => pickModel(state.models.find((m) => m.name === $("model").value)));
  for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", syncMode);
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); });
  $("copy").addEventListener("click", () => copy(state.rows.map((s) => s.text).join("\n") + "\n",
                                                  "copied " + state.rows.length + " to the clipboard"));
  $("token").addEventListener("change", () => { sessionStorage.setItem("chargen-token", $("token").value); loadModels(); });
  loadModels();
  $("prompt").focus();
}

init();
