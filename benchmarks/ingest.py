#!/usr/bin/env python3
"""Ingest speed and memory: corpora of 10 MB, 100 MB and 1 GiB into the encoded cache, and training on 1 GiB.

    python benchmarks/ingest.py [--sizes 10M,100M,1G] [--json bench-out/ingest.json]

The corpora are tinyshakespeare's speeches drawn at random (seeded) until the size is reached,
written once to bench-out/corpora/ and reused. Each measurement runs in a fresh process, so its
peak resident memory (ru_maxrss) is its own:
- "ingest (cold)": chargen.training.ingest.ingest on an empty cache: both passes, the cache file written;
- "ingest (cached)": the same call again, which finds the cache and memory-maps it;
- training memory: the installed `chargen train` (`--max-steps 20 --eval-every 10`) on the
  smallest and on the largest corpus with an empty cache, so ingest, training, evaluation and
  checkpoints share one process; once with the automatic model (2x512 for these sizes on a CPU)
  and once with `--hidden 256`. Beside each, the floor: a bare training step of the same model,
  batch and precision alone (torch, weights, optimizer, activations), in its own process.
  Peak RSS equal on both corpora = memory does not grow with the corpus.
MB/s is corpus bytes over the ingest call's own time (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, print_table, run_measured, write_json

SIZES = {"10M": 10 * 10**6, "100M": 100 * 10**6, "1G": 1 << 30}

PROBE = r"""
import json, resource, sys, time
from chargen.training.ingest import ingest
t = time.perf_counter()
enc = ingest([sys.argv[1]], cache_dir=sys.argv[2])
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "chars": enc.n_chars, "vocab": len(enc.vocab), "dtype": str(enc.ids.dtype),
                  "reused": enc.reused, "line_oriented": enc.line_stats.line_oriented()}))
"""


FLOOR = r"""
import json, sys, torch, torch.nn.functional as F
from chargen.config import ModelConfig
from chargen.model import CharRNN, detach_state
from chargen.training.device import autocast
used = json.loads(sys.argv[1])
model = CharRNN(ModelConfig.from_dict(used["model"]))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
batch, seq = used["batch_size_used"], used["train"]["seq_len"]
x = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
state = None
for _ in range(5):
    with autocast(torch.device("cpu"), used["precision"]):
        logits, state = model(x[:, :-1], state)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    state = detach_state(state)
"""


def make_corpus(path: Path, size: int, source: Path) -> None:
    if path.exists() and path.stat().st_size >= size:
        return
    # Speeches (blocks between blank lines) drawn at random: the text stays prose, as the original.
    lines = [block.strip("\n") + "\n\n" for block in source.read_text(encoding="utf-8").split("\n\n") if block.strip()]
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            block = "".join(rng.choices(lines, k=20_000))
            f.write(block)
            written += len(block.encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10M,100M,1G")
    ap.add_argument("--data", type=Path, default=DATA / "tinyshakespeare.txt")
    ap.add_argument("--corpora", type=Path, default=Path("bench-out/corpora"))
    ap.add_argument("--no-train", action="store_true", help="skip the training run on the largest corpus")
    ap.add_argument("--json", type=Path, default=Path("bench-out/ingest.json"))
    args = ap.parse_args()
    rows, train_rows = [], []
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    chargen = Path(sys.executable).with_name("chargen")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sizes:
            path = args.corpora / f"shakespeare-{name}.txt"
            t = time.perf_counter()
            make_corpus(path, SIZES[name], args.data)
            print(f"corpus {path} ready ({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
            nbytes = path.stat().st_size
            cache = Path(tmp) / f"cache-{name}"
            for phase in ("cold", "cached"):
                done, wall, rss = run_measured([sys.executable, "-c", PROBE, str(path), str(cache)])
                info = json.loads(done.stdout)
                rows.append({"corpus": name, "bytes": nbytes, "phase": phase, "seconds": info["seconds"],
                             "mb_per_sec": nbytes / 1e6 / info["seconds"], "peak_rss_mb": rss, "wall": wall,
                             "chars": info["chars"], "dtype": info["dtype"], "reused": info["reused"]})
                print(f"{name} {phase}: {info['seconds']:.2f} s, {nbytes / 1e6 / info['seconds']:,.0f} MB/s, "
                      f"peak RSS {rss:.0f} MB", file=sys.stderr, flush=True)
            shutil.rmtree(cache, ignore_errors=True)
        if not args.no_train and sizes:
            # Training memory: the same model on the smallest and on the largest corpus (cold cache:
            # ingest runs in the same process), against the floor of that model's bare training step.
            for extra in ([], ["--hidden", "256"]):
                for name in dict.fromkeys([sizes[0], sizes[-1]]):
                    path = args.corpora / f"shakespeare-{name}.txt"
                    env = {**os.environ, "CHARGEN_CACHE_DIR": str(Path(tmp) / f"train-cache-{name}")}
                    run_dir = Path(tmp) / f"run-{name}-{len(extra)}"
                    cmd = [str(chargen), "train", str(path), "--max-steps", "20", "--eval-every", "10",
                           "--out", str(run_dir), *extra]
                    done, wall, rss = run_measured(cmd, env)
                    shutil.rmtree(env["CHARGEN_CACHE_DIR"], ignore_errors=True)
                    used = json.loads((run_dir / "config.json").read_text())
                    _, _, floor = run_measured([sys.executable, "-c", FLOOR, json.dumps(used)])
                    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                    model = f"{used['model']['layers']}x{used['model']['hidden']} {used['precision']}, " \
                            f"batch {used['batch_size_used']} x {used['train']['seq_len']}"
                    train_rows.append({"corpus": name, "bytes": path.stat().st_size, "model": model,
                                       "seconds": wall, "peak_rss_mb": rss, "bare_step_peak_rss_mb": floor,
                                       "val_loss": metrics[-1]["val_loss"], "command": "chargen " + " ".join(cmd[1:])})
                    print(f"train {name} ({model}): {wall:.1f} s, peak RSS {rss:.0f} MB (bare step {floor:.0f} MB)",
                          file=sys.stderr, flush=True)
    print_table("ingest: corpus -> encoded cache (fresh process each; peak RSS of that process)",
                ["corpus", "phase", "seconds", "MB/s", "peak RSS MB"],
                [[f"{r['corpus']} ({r['bytes'] / 1e6:,.0f} MB)", r["phase"], f"{r['seconds']:.2f}",
                  f"{r['mb_per_sec']:,.0f}" if r["mb_per_sec"] else "", f"{r['peak_rss_mb']:.0f}"] for r in rows])
    if train_rows:
        print_table("training memory: chargen train, 20 steps, cold cache, the same model on each corpus; "
                    "floor = that model's bare training step alone",
                    ["model", "corpus", "seconds", "peak RSS MB", "floor MB", "val loss"],
                    [[r["model"], f"{r['corpus']} ({r['bytes'] / 1e6:,.0f} MB)", f"{r['seconds']:.1f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['bare_step_peak_rss_mb']:.0f}", f"{r['val_loss']:.4f}"]
                     for r in train_rows])
    write_json(args.json, {"rows": rows, "training": train_rows})


if __name__ == "__main__":
    main()
