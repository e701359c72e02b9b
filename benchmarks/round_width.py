#!/usr/bin/env python3
"""The adaptive exact sampler's round width (chargen.sampling.tree: MAX_BATCH, round_width): seconds and
draws for issue 28's three constraint sets at several widths, alternated in one process so that
the VM's drift hits every width alike.

    python benchmarks/round_width.py [--widths 1024,2048,4096,8192] [--rounds 4] [--n 5000]
                                     [--model names|base|PATH] [--json bench-out/round_width.json]

A wider round steps more new nodes a network step and makes fewer numpy calls a draw, but learns
its bounds later (every attempt of a round descends with the bounds of its start), so it needs
more draws: the table shows both. The width is part of what a seed means for the adaptive sampler
(the exported page reads it from the export), so it is a rule of the model's node size, chosen
here: each width below is run as is (ROUND_BYTES lifted). Peak memory: run one width a process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import host, peak_rss_mb, print_table, write_json

CONSTRAINTS = {"ends-with": {"max_len": 8, "ends_with": "a"}, "regex": {"regex": "[A-Z][a-z]*(el|ia)"},
               "contains": {"contains": "th", "min_len": 6}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="1024,2048,4096,8192")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of all widths (seeds 1..rounds)")
    ap.add_argument("--n", type=int, default=5000, help="names a call")
    ap.add_argument("--model", default="names", help="a bundled model's name or a checkpoint")
    ap.add_argument("--json", type=Path, default=Path("bench-out/round_width.json"))
    args = ap.parse_args()

    import chargen
    from chargen.sampling import SampleStats
    from chargen.sampling import tree

    widths = [int(w) for w in args.widths.split(",")]
    model = chargen.load(args.model)
    cfg = model.checkpoint.model_config
    chosen = tree.round_width(tree.node_bytes(cfg.vocab_size, cfg.layers * cfg.state_tensors * cfg.hidden))
    model.sample(50, seed=0, **CONSTRAINTS["regex"])  # (compiles, primes, warms the allocator)
    seconds: dict[tuple[int, str], list[float]] = {}
    draws: dict[tuple[int, str], list[int]] = {}
    default = tree.MAX_BATCH, tree.ROUND_BYTES
    try:
        for r in range(args.rounds):
            for width in widths:
                tree.MAX_BATCH, tree.ROUND_BYTES = width, 1 << 62  # (read at each round: PrefixTree.round_width)
                for name, options in CONSTRAINTS.items():
                    stats, started = SampleStats(), time.perf_counter()
                    model.sample(args.n, seed=1 + r, stats=stats, **options)
                    seconds.setdefault((width, name), []).append(time.perf_counter() - started)
                    draws.setdefault((width, name), []).append(stats.draws)
    finally:
        tree.MAX_BATCH, tree.ROUND_BYTES = default
    out, rows = {}, []
    for name in CONSTRAINTS:
        base = statistics.median(seconds[(widths[0], name)])
        for width in widths:
            s, d = statistics.median(seconds[(width, name)]), statistics.median(draws[(width, name)])
            out[f"{name} {width}"] = {"seconds": s, "draws": d, "speed_vs_first": base / s}
            rows.append([name, f"{width:,}" + (" (this model's)" if width == chosen else ""), f"{s:.3f}", f"{d:,.0f}",
                         f"{base / s:.2f}x"])
    h = host()
    print_table(f"adaptive exact sampler, {args.model} model, {args.n:,} names, medians of {args.rounds} alternations "
                f"({h['cpu']}; {h['cpu_flags']})", ["constraints", "round width", "seconds", "draws",
                                                    f"speed vs {widths[0]:,}"], rows)
    write_json(args.json, {"round_width": out, "n": args.n, "rounds": args.rounds, "model": args.model, "default": chosen,
                           "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
