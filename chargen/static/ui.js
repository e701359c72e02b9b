// What the playground (served by chargen serve) and an exported page (chargen export --html) share:
// the status line, the model's facts, a row of samples, the clipboard. Plain JavaScript, no build.
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

// A field of texts separated by commas (`contains`: several texts), the empty ones dropped.
function commaList(id) {
  return ($(id).value || "").split(",").map((s) => s.trim()).filter(Boolean);
}

// The label field's suggestions: what a label is asked by (labels.py's label_asks: an adapted
// model's own labels, the languages, the territories, the kinds), then the labels.
function labelChoices(labels) {
  return labels ? [...new Set([...labels.asks || [], ...labels.names])] : [];
}

// What drawing the samples cost, for the status line (as chargen sample's note on stderr): the
// draws kept of those made, and under the adaptive exact sampler what the draws say of how much
// of the model's samples the constraints hold.
function drawsNote(samples, draws, accepted) {
  if (!(draws > samples.length)) return "";
  const last = samples[samples.length - 1];
  const held = last && typeof last.p_constraints === "number" ?
    " · the constraints hold about " + last.p_constraints.toPrecision(3) + " of the model's samples" : "";
  return " · " + accepted + " of " + draws + " draws kept" + held;
}

function loss(v) {
  return typeof v === "number" ? v.toFixed(4) + " nats (" + (v / Math.LN2).toFixed(3) + " bpc)" : "n/a";
}

function human(n) {
  if (typeof n !== "number") return "n/a";
  for (const [unit, size] of [["G", 1e9], ["M", 1e6], ["k", 1e3]]) if (n >= size) return (n / size).toPrecision(3) + unit;
  return String(n);
}

function showFacts(m) {
  const c = m.model;
  const facts = [
    ["shape", c.layers + " × " + c.hidden + " " + c.cell + ", embed " + c.embed],
    ["parameters", m.parameters.toLocaleString()],
    ["vocabulary", m.vocab_size + " characters"],
    ["corpus", (m.corpus || "n/a") + (m.line_oriented ? " (lines)" : " (prose)")],
    ["training lines", m.training_lines ? m.training_lines.toLocaleString() : "n/a"],
    ["trained", (m.steps ?? "n/a") + " steps, " + human(m.chars_seen) + " characters"],
    ["best val loss", loss(m.best_val_loss ?? m.val_loss)],
  ];
  if (m.from) facts.push(["started from", m.from.name + " (" + loss(m.from.val_loss) + " before)"]);
  const l = m.labels;  // (own: what a model adapted with --labels draws with no label)
  if (l) facts.push(["labels", l.names.length + (l.own ? " (with no label: " + l.own.join(", ") + ")" : "")]);
  $("facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  $("summary-line").textContent = c.layers + "×" + c.hidden + " " + c.cell + " · " +
    (m.line_oriented ? "one sample per line" : "prose") + " · best val " + loss(m.best_val_loss ?? m.val_loss);
}

function row(s, i) {
  const tr = document.createElement("tr");
  const num = document.createElement("td"); num.textContent = i + 1;
  const cell = document.createElement("td"); cell.className = "sample";
  const button = document.createElement("button");
  button.type = "button";
  button.title = "log p " + s.logprob.toFixed(3) + " over " + s.chars + " characters (the ending newline included); click to copy";
  if (s.prompt) {
    const p = document.createElement("span"); p.className = "prompt"; p.textContent = s.prompt;
    button.append(p, s.text.slice(s.prompt.length));
  } else button.textContent = s.text;
  button.addEventListener("click", () => copy(s.text, "copied " + JSON.stringify(s.text)));
  cell.append(button);
  if (s.label) {
    const label = document.createElement("span"); label.className = "label"; label.textContent = s.label;
    label.title = "drawn under this label";
    cell.append(" ", label);
  }
  const lp = document.createElement("td"); lp.textContent = s.logprob_per_char.toFixed(3);
  lp.title = "total " + s.logprob.toFixed(3) + " nats";
  tr.append(num, cell, lp);
  return tr;
}

async function copy(value, message) {
  try {
    if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(value);
    else copyByHand(value);  // plain http from another machine: no Clipboard API there
    setStatus(message);
  } catch (e) {
    setStatus("the browser refused the clipboard; select the text instead", true);
  }
}

function copyByHand(value) {
  const area = document.createElement("textarea");
  area.value = value;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy refused");
}
