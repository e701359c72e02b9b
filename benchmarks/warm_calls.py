#!/usr/bin/env python3
"""Repeated constrained calls without a seed, in-process: what a program calling
`model.sample(10, regex=...)` in a loop, or a server's requests, get from the adaptive sampler's
trees kept between calls (chargen.sampling.tree.WarmTrees).

    python benchmarks/warm_calls.py [--seconds 6] [--n 10] [--json bench-out/warm_calls.json]

For each of issue 28's three constraints: names/s over calls of --n names for --seconds, the
first call's time, and the draws a call made at the start and at the end. Run it from two trees
(PYTHONPATH=<tree>) to compare code before and after.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import host, print_table, write_json

CONSTRAINTS = {"regex": {"regex": "[A-Z][a-z]*(el|ia)"}, "contains": {"contains": "th", "min_len": 6},
               "ends-with": {"max_len": 8, "ends_with": "a"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--n", type=int, default=10, help="names a call")
    ap.add_argument("--json", type=Path, default=Path("bench-out/warm_calls.json"))
    args = ap.parse_args()

    import chargen
    from chargen.sampling import SampleStats

    model = chargen.load()
    rows, out = [], {}
    for name, options in CONSTRAINTS.items():
        draws, started, first = [], time.perf_counter(), None
        while time.perf_counter() - started < args.seconds:
            stats, t = SampleStats(), time.perf_counter()
            model.sample(args.n, stats=stats, **options)
            first = first if first is not None else time.perf_counter() - t
            draws.append(stats.draws)
        wall = time.perf_counter() - started
        k = max(1, len(draws) // 10)
        out[name] = {"names_per_s": len(draws) * args.n / wall, "calls": len(draws), "first_call_ms": 1000 * first,
                     "draws_first_tenth": sum(draws[:k]) / k, "draws_last_tenth": sum(draws[-k:]) / k}
        rows.append([name, f"{out[name]['names_per_s']:,.0f}", str(len(draws)), f"{1000 * first:.0f}",
                     f"{out[name]['draws_first_tenth']:.0f} / {out[name]['draws_last_tenth']:.0f}"])
    h = host()
    print_table(f"{args.n} names a call, no seed, {args.seconds:.0f} s each ({h['cpu']}; {h['cpu_flags']})",
                ["constraints", "names/s", "calls", "first call ms", "draws a call, first / last tenth"], rows)
    write_json(args.json, {"warm_calls": out, "n": args.n, "seconds": args.seconds})


if __name__ == "__main__":
    main()
