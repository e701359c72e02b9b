#!/usr/bin/env python3
"""bf16 against fp32 at hidden 512: the same validation loss after the same characters?

    python benchmarks/precision.py [--steps 300] [--eval-every 50] [--json bench-out/precision.json]

Three runs of chargen.training.train on tinyshakespeare, 2x512 LSTM, batch 64 x seq-len 128,
lr 3e-3, back to back in this process:

    fp32, seed 1337      the reference
    bf16, seed 1337      same initial weights, same data order: only the arithmetic differs
    bf16, seed 7         another initialization: how far apart two equally good runs land

The bf16 - fp32 gap is judged against the seed-to-seed gap: a difference smaller than that
is noise, not precision. Speed is characters per second over each whole run, evaluations
included (the same evaluations in every run). A 2-core CPU needs about 15 minutes for the
default 300 steps (2.5M characters), enough to leave the initial unigram plateau far behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from chargen.config import TrainConfig
from chargen.training.ingest import EncodedCorpus
from chargen.training.loop import train

from common import DATA, print_table, write_json

MODEL = {"layers": 2, "hidden": 512, "embed": 64, "dropout": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--data", type=Path, default=DATA / "tinyshakespeare.txt")
    ap.add_argument("--json", type=Path, default=Path("bench-out/precision.json"))
    args = ap.parse_args()
    text = args.data.read_text(encoding="utf-8")
    corpus = EncodedCorpus.from_text(text, "tinyshakespeare", [str(args.data)])
    runs = []
    for precision, seed in (("fp32", 1337), ("bf16", 1337), ("bf16", 7)):
        config = TrainConfig(batch_size=64, seq_len=128, lr=3e-3, warmup=100, max_steps=args.steps,
                             eval_every=args.eval_every, sample_every=0, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = train(corpus, config, MODEL, out_dir=Path(tmp) / "run", precision=precision)
            wall = time.perf_counter() - t
        curve = {m["step"]: m["val_loss"] for m in result.metrics}
        runs.append({"precision": precision, "seed": seed, "wall": wall, "chars": result.chars_seen,
                     "chars_per_sec": result.chars_seen / wall, "val_loss": curve})
        print(f"{precision} seed {seed}: {wall:.0f} s, {result.chars_seen / wall:,.0f} chars/s, "
              f"final val {result.last_val_loss:.4f}", file=sys.stderr, flush=True)
    fp32, bf16, other = runs
    steps = sorted(fp32["val_loss"])
    print_table(
        f"validation loss (nats/char) after the same characters, 2x512, batch 64 x 128, {args.steps} steps",
        ["step", "chars", "fp32", "bf16", "bf16 - fp32", "bf16 seed 7", "seed 7 - seed 1337"],
        [[str(s), f"{s * 64 * 128:,}", f"{fp32['val_loss'][s]:.4f}", f"{bf16['val_loss'][s]:.4f}",
          f"{bf16['val_loss'][s] - fp32['val_loss'][s]:+.4f}", f"{other['val_loss'][s]:.4f}",
          f"{other['val_loss'][s] - bf16['val_loss'][s]:+.4f}"] for s in steps])
    print_table("speed over each whole run (evaluations included)",
                ["run", "seconds", "chars/s", "x fp32"],
                [[f"{r['precision']} seed {r['seed']}", f"{r['wall']:.0f}", f"{r['chars_per_sec']:,.0f}",
                  f"{r['chars_per_sec'] / fp32['chars_per_sec']:.2f}"] for r in runs])
    last = steps[-1]
    print(f"final: bf16 - fp32 = {bf16['val_loss'][last] - fp32['val_loss'][last]:+.4f} nats "
          f"(target: within 0.02); seed-to-seed {other['val_loss'][last] - bf16['val_loss'][last]:+.4f}; "
          f"speed {bf16['chars_per_sec'] / fp32['chars_per_sec']:.2f}x (target: >= 1.6x)")
    write_json(args.json, {"model": MODEL, "batch": 64, "seq_len": 128, "steps": args.steps,
                           "runs": [{**r, "val_loss": {str(k): v for k, v in r["val_loss"].items()}} for r in runs]})


if __name__ == "__main__":
    main()
