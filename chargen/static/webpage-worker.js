// The exported page's worker: draws samples off the page's thread, so the page never freezes.
self.onmessage = (event) => {
  const { id, options } = event.data;
  const started = performance.now();
  try {
    const records = sampleRecords(options);
    self.postMessage({ id, records, seconds: (performance.now() - started) / 1000 });
  } catch (err) {
    self.postMessage({ id, error: err instanceof ChargenError ? err.message : `internal error: ${err}` });
  }
};
self.postMessage({ ready: true, info: MODEL.info, backend: backend(), lineOriented: MODEL.line_oriented, novel: MODEL.training_lines !== null,
                  labels: MODEL.labels ? MODEL.labels.names : [] });
