#!/usr/bin/env python3
"""The base label a list starts from, screened (chargen.training.finetune.ClosestLabels) against
every line scored under every label: how often the choice is the same, what a different choice
costs, and the time each takes.

    python benchmarks/finetune_lists.py            # builds bench-out/lists/ first
    python benchmarks/closest_label.py [--trials 200] [--json bench-out/closest_label.json]

For each list, `--pool` of its lines are scored under every one of the bundled base's labels once.
Each trial draws a list of `--sizes` lines from the pool; the screened choice is what
ClosestLabels.label_for returns (its scores filled in from the pool's, so it computes nothing), the
exhaustive choice the label with the least NLL summed over every line of the list; the regret of
a choice is its NLL per character on the pool's other lines minus the best label's there. Times
are of fresh objects on the first lines of a list, one after the other, nothing else running.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from common import print_table, read_list, write_json

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lists", type=Path, default=HERE.parent / "bench-out" / "lists")
    ap.add_argument("--sources", nargs="+", default=["it-places", "surnames", "first-names"])
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 100, 200])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--time-sizes", type=int, nargs="+", default=[10, 80, 200])
    ap.add_argument("--json", type=Path, default=HERE.parent / "bench-out" / "closest_label.json")
    args = ap.parse_args()

    from chargen.checkpoint import bundled_checkpoint, read_checkpoint
    from chargen.training.finetune import ClosestLabels

    base = read_checkpoint(bundled_checkpoint("base"))
    every = np.arange(len(base.labels))
    rows, timing, records = [], [], []
    for source in args.sources:
        known = [line for line in read_list(args.lists, source) if line and not base.vocab.unknown_chars(line)]
        pool = random.Random(1).sample(known, min(args.pool, len(known)))
        scored = ClosestLabels(base)
        nll = scored.nlls(pool, every)  # (pool, labels)
        chars = np.array([len(line) + 1 for line in pool])
        rng = np.random.default_rng(0)
        for size in args.sizes:
            same, regret_screened, regret_every = 0, [], []
            for _ in range(args.trials):
                order = rng.permutation(len(pool))
                ours, rest = order[:size], order[size:]
                on_rest = nll[rest].sum(axis=0) / chars[rest].sum()
                exhaustive = int(np.argmin(nll[ours].sum(axis=0)))
                screened = scored.label_for(sorted(pool[i] for i in ours), {})
                same += screened == exhaustive
                regret_screened.append(on_rest[screened] - on_rest.min())
                regret_every.append(on_rest[exhaustive] - on_rest.min())
            record = {"list": source, "lines": size, "same": same / args.trials,
                      "regret_screened": float(np.mean(regret_screened)), "regret_every": float(np.mean(regret_every))}
            records.append(record)
            rows.append([source, str(size), f"{record['same']:.0%}", f"{record['regret_every']:.4f}",
                         f"{record['regret_screened']:.4f}"])
        for size in args.time_sizes:
            lines = sorted(pool[:size])
            t0 = time.perf_counter()
            exhaustive = int(np.argmin(ClosestLabels(base).nlls(lines, every).sum(axis=0)))
            t1 = time.perf_counter()
            screened = ClosestLabels(base).label_for(lines, {})
            t2 = time.perf_counter()
            timing.append({"list": source, "lines": size, "every_s": t1 - t0, "screened_s": t2 - t1,
                           "same": screened == exhaustive})
    print_table(f"The closest label, screened against every line under every label ({args.trials} lists a row)",
                ["list", "lines", "same choice", "regret, every line (nats/char)", "regret, screened"], rows)
    print_table("Time to choose (s, one process)", ["list", "lines", "every line", "screened", "ratio", "same"],
                [[t["list"], str(t["lines"]), f"{t['every_s']:.2f}", f"{t['screened_s']:.2f}",
                  f"{t['every_s'] / t['screened_s']:.1f}x", "yes" if t["same"] else "no"] for t in timing])
    write_json(args.json, {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "choices": records, "timing": timing})


if __name__ == "__main__":
    main()
