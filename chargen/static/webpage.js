// An exported page (chargen export --html): the form, and a Web Worker that draws the samples with
// the model held in this file. Nothing is fetched: the worker starts from the page's own text.
const page = { worker: null, ready: false, busy: false, rows: [], next: 0, lineOriented: true, labelled: false };

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// "sample", or "top": the most likely (a line model's)
function mode() { return page.lineOriented ? document.querySelector("input[name=mode]:checked").value : "sample"; }

// The sampling settings hidden while listing the most likely
function syncMode() {
  for (const el of document.querySelectorAll(".for-sample")) el.hidden = mode() !== "sample";
}

function options() {
  const sampling = mode() === "sample", o = { n: number("n") ?? 1, prompt: $("prompt").value };
  if (sampling) {
    Object.assign(o, { temperature: Number($("temperature").value), seed: $("seed").value.trim() === "" ? undefined : $("seed").value.trim(),
                       unique: $("unique").checked, topK: number("top_k"), topP: number("top_p") });
  }
  if (page.labelled && $("label").value.trim()) o.label = $("label").value.trim();
  if (page.lineOriented) {
    Object.assign(o, { minLen: number("min_len"), maxLen: number("max_len"), endsWith: $("ends_with").value || undefined });
    const contains = commaList("contains");
    if (contains.length) o.contains = contains;
    if ($("regex").value) o.regex = $("regex").value;
    if ($("novel").checked) o.novel = true;
    if (sampling && $("rejection").checked) o.rejection = true;
  } else {
    o.length = number("length");
  }
  return o;
}

function generate(event) {
  event.preventDefault();
  if (!page.ready || page.busy) return;
  page.busy = true;
  $("go").disabled = true;
  $("copy").disabled = true;
  setStatus(mode() === "top" ? "searching…" : "drawing…");
  page.worker.postMessage({ id: ++page.next, options: options(), mostLikely: mode() === "top" });
}

function show(data) {
  page.busy = false;
  $("go").disabled = false;
  if (data.error) { setStatus(data.error, true); return; }
  page.rows = data.records;
  const ms = Math.round(data.seconds * 1000);
  if (page.lineOriented) {
    $("prose").hidden = true;
    $("results").hidden = false;
    $("results").querySelector("tbody").replaceChildren(...data.records.map(row));
    setStatus(data.records.length + (data.mostLikely ? " most likely" : " samples") + " in " + ms + " ms" +
              (data.mostLikely ? "" : drawsNote(data.records, data.draws, data.accepted)) + " · click a sample to copy it");
  } else {
    $("results").hidden = true;
    $("prose").hidden = false;
    $("prose").textContent = data.records.map((r) => r.text).join("\n\n");
    setStatus(data.records.length + " samples in " + ms + " ms");
  }
  $("copy").disabled = data.records.length === 0;
}

function start() {
  const source = $("worker-source").textContent;
  page.worker = new Worker(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
  page.worker.onmessage = (event) => {
    const data = event.data;
    if (data.searched !== undefined) { setStatus("searching… " + data.searched.toLocaleString() + " prefixes"); return; }
    if (!data.ready) { show(data); return; }
    page.ready = true;
    page.lineOriented = data.lineOriented;
    for (const el of document.querySelectorAll(".for-lines")) el.hidden = !data.lineOriented;
    for (const el of document.querySelectorAll(".for-prose")) el.hidden = data.lineOriented;
    $("novel").parentElement.hidden = !data.lineOriented || !data.novel;  // (an export may not carry the lines)
    document.querySelector("fieldset.mode").hidden = !data.lineOriented;
    syncMode();  // (a reload may have kept "the most likely" checked)
    page.labelled = !!data.labels;
    document.querySelector(".for-labels").hidden = !page.labelled;
    $("label-list").replaceChildren(...labelChoices(data.labels).map((v) => new Option(v, v)));
    showFacts(data.info);
    const dd = document.createElement("dd");
    dd.textContent = data.backend === "wasm-simd" ? "WebAssembly SIMD, in this page" : "JavaScript, in this page";
    const dt = document.createElement("dt");
    dt.textContent = "sampler";
    $("facts").append(dt, dd);
    const e = data.info.export;
    $("export-note").textContent = "Drawn in this page by chargen's sampler, with no server and no network. " +
      (e.lossless ? "The same seed gives the samples `chargen sample` prints."
                  : "Its weights are rounded to " + e.weights + ", so now and then a sample for a seed differs from " +
                    "what `chargen sample` prints for the checkpoint.");
    setStatus("Type a prompt (or none), press Enter.");
  };
  page.worker.onerror = (e) => { setStatus("the sampler failed to start: " + e.message, true); };
  $("form").addEventListener("submit", generate);
  for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", syncMode);
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); });
  $("copy").addEventListener("click", () => copy(page.rows.map((s) => s.text).join("\n") + "\n",
                                                 "copied " + page.rows.length + " to the clipboard"));
  $("prompt").focus();
}

start();
