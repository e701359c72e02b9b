// The exported page's worker: draws samples off the page's thread, so the page never freezes.
self.onmessage = (event) => {
  const { id, options, mostLikely } = event.data;
  const started = performance.now();
  try {
    let shown = started;  // a long search says how far it has got, a few times a second
    const progress = (k) => { if (performance.now() - shown > 250) { shown = performance.now(); self.postMessage({ id, searched: k }); } };
    const stats = {}, records = mostLikely ? top(options, progress) : sampleRecords(options, stats);
    self.postMessage({ id, records, mostLikely, seconds: (performance.now() - started) / 1000, draws: stats.draws, accepted: stats.accepted });
  } catch (err) {
    self.postMessage({ id, error: err instanceof ChargenError ? err.message : `internal error: ${err}` });
  }
};
self.postMessage({ ready: true, info: MODEL.info, backend: backend(), lineOriented: MODEL.line_oriented, novel: MODEL.training_lines !== null,
                  labels: MODEL.labels });
