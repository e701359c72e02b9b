#!/usr/bin/env python3
"""How should a label enter the network? Three ways, the same time each (issue 27).

    python benchmarks/label_mechanism.py [--time 8m] [--corpus corpora/many-names.tsv] \\
        [--json bench-out/label_mechanism.json] [-- EXTRA TRAIN FLAGS]

- `start`: what chargen does: one learned start state per label, nothing else (zero cost per
  character, and a label's state is all a sampler needs to carry);
- `input`: the usual way in the literature: a learned label embedding added to the character
  embedding at every step, one start state shared by all labels. (Added, not concatenated: a
  concatenated [e_char; e_label] times the first layer's W is e_char W1 + e_label W2, the same
  family of functions as (e_char + e_label) W when e_label has the embedding's width.)
- `both`: a start state per label and the label embedding at every step.

`start` is chargen's own model; `input` and `both` are prototypes made here by patching CharRNN
(an extra `label_input` embedding) in this process, trained by chargen's own loop on the same
90% of the corpus (labels.py's split) with the same flags and wall-clock budget, one run at a time
with nothing else running. Compared: the run's best held-out loss (its own validation split,
every line under its own label) overall and per kind. Not a feature: the numpy sampler, the
server and export know only `start`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from common import host, print_table, write_json
from labels import split

MODES = ("start", "input", "both")


def patch(mode: str) -> None:
    """Give CharRNN a label embedding added at every step (`input`, `both`); `input` also starts
    every row from label 0's start state, so the start state carries no label."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from chargen import config as config_mod
    from chargen import model as model_mod
    from chargen.evaluation import line_sums
    from chargen.training import loop

    if mode == "start":
        return
    current: dict[str, object] = {"label": None}  # the label validation is scoring (it passes no labels)
    shapes = config_mod.ModelConfig.weight_shapes

    def weight_shapes(self):
        s = shapes(self)
        if self.n_labels:
            s["label_input.weight"] = (self.n_labels, self.embed)
        return s

    config_mod.ModelConfig.weight_shapes = weight_shapes
    init = model_mod.CharRNN.__init__

    def __init__(self, config):
        init(self, config)
        if config.n_labels:
            self.label_input = nn.Embedding(config.n_labels, config.embed)
            nn.init.normal_(self.label_input.weight, std=0.1)

    model_mod.CharRNN.__init__ = __init__
    start_states = model_mod.CharRNN.start_states

    def shared_start(self, rows, labels=None):
        return start_states(self, rows, None if labels is None else torch.zeros_like(labels))

    if mode == "input":
        model_mod.CharRNN.start_states = shared_start

    def forward(self, idx, state=None, labels=None):
        c = self.config
        if labels is None and current["label"] is not None:
            labels = torch.full((idx.shape[0],), int(current["label"]), dtype=torch.long, device=idx.device)
        if state is None and self.start is not None:
            state = self.start_states(idx.shape[0], labels)
        x = self.embedding(idx) if not (self.training and c.embed_dropout) else \
            F.embedding(idx, self.embedding.weight * model_mod._mask(self.embedding.weight, (c.vocab_size, 1), c.embed_dropout))
        if labels is not None:
            x = x + self.label_input(labels)[:, None, :]  # (B, T, E)
        if self.training and c.input_dropout:
            x = x * model_mod._mask(x, (x.shape[0], 1, x.shape[2]), c.input_dropout)
        if self.training and c.weight_drop:
            dropped = {name: F.dropout(w, c.weight_drop) for name, w in self.rnn.named_parameters()
                       if name.startswith("weight_hh")}
            out, state = torch.func.functional_call(self.rnn, dropped, (x, state))
        else:
            out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state

    model_mod.CharRNN.forward = forward

    def label_line_sums(scorer, lines, labels, start, newline_id, n_labels, batch=512):
        totals, counts = np.zeros(n_labels), np.zeros(n_labels, dtype=np.int64)
        for k in np.unique(labels).tolist():
            rows = np.flatnonzero(labels == k).tolist()
            current["label"] = k
            own = 0 if mode == "input" else k
            totals[k], counts[k] = line_sums(scorer, [lines[i] for i in rows], [t[own] for t in start], newline_id, batch)
        current["label"] = None
        return totals, counts

    loop.label_line_sums = label_line_sums


def one_run(mode: str, corpus: Path, out: Path, time: str, extra: list[str]) -> None:
    patch(mode)
    from chargen.cli import app

    args = ["train", str(corpus), "--labels", "tab", "--from", "none", "--time", time, "--out", str(out),
            "--overwrite", "--quiet", *extra]
    app(args, standalone_mode=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="8m")
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent.parent / "corpora" / "many-names.tsv")
    ap.add_argument("--json", type=Path, default=Path("bench-out/label_mechanism.json"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="flags passed on to chargen train (after --)")
    args = ap.parse_args()
    if args.one:
        return one_run(args.one, args.corpus, args.out, args.time, args.extra)
    work = args.work or Path(tempfile.mkdtemp(prefix="chargen-mechanism-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line]
    train, _ = split(lines)
    (work / "train.tsv").write_text("".join(x + "\n" for x in train), encoding="utf-8")
    results = {}
    for mode in args.modes:
        out = work / mode
        subprocess.run([sys.executable, __file__, "--one", mode, "--out", str(out), "--time", args.time,
                        "--corpus", str(work / "train.tsv"), "--", *args.extra], check=True)
        from safetensors import safe_open

        with safe_open(str(out / "best.safetensors"), "np") as f:  # chargen's reader knows only `start`
            info = json.loads(f.metadata()["info"])
        labels = info["labels"]
        kinds = defaultdict(lambda: [0.0, 0])
        for name, n in zip(labels["names"], labels["lines"]):  # weighted by training lines
            loss = labels["val_loss"].get(name)
            if loss is not None:
                k = kinds[name.split(":")[-1]]
                k[0] += loss * n
                k[1] += n
        results[mode] = {"best_val_loss": info["best_val_loss"], "steps": info["step"],
                         "per_kind": {k: s / n for k, (s, n) in sorted(kinds.items())}}
        print(f"{mode}: {info['step']:,} steps, best val {info['best_val_loss']:.4f}", file=sys.stderr)
    h = host()
    kinds = sorted(next(iter(results.values()))["per_kind"])
    print_table(f"how the label enters, {args.time} each ({h['cpu']}, {h['cpu_flags']}, {h['cpus']} CPUs, "
                f"commit {h['commit']})", ["", *results],
                [["best val loss", *(f"{r['best_val_loss']:.4f}" for r in results.values())],
                 ["steps", *(f"{r['steps']:,}" for r in results.values())],
                 *([f"val, {k} (line-weighted)", *(f"{r['per_kind'][k]:.4f}" for r in results.values())] for k in kinds)])
    write_json(args.json, {"time": args.time, "extra": args.extra, "results": results})


if __name__ == "__main__":
    main()
