#!/usr/bin/env python3
"""Repeated constrained calls without a seed, in-process: what a program calling
`model.sample(10, regex=...)` in a loop, or a server's requests, get from the adaptive sampler's
trees kept between calls (chargen.sampling.tree.WarmTrees).

    python benchmarks/warm_calls.py [--seconds 6] [--n 10] [--module names.mjs] [--json bench-out/warm_calls.json]

For each of issue 28's three constraints: names/s over calls of --n names for --seconds, the
first call's time, and the draws a call made at the start and at the end. Run it from two trees
(PYTHONPATH=<tree>) to compare code before and after. `--module`: the same calls to an exported
module (`chargen export --js`) under Node instead (`sampleRecords` without a seed; the draws
where the module reports them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from common import host, print_table, write_json

CONSTRAINTS = {"regex": {"regex": "[A-Z][a-z]*(el|ia)"}, "contains": {"contains": "th", "min_len": 6},
               "ends-with": {"max_len": 8, "ends_with": "a"}}


NODE_CALLS = """
const m = await import(process.argv[1]);
const [n, seconds, options] = JSON.parse(process.argv[2]);
const draws = [];
const started = performance.now();
let first = null;
while (performance.now() - started < 1000 * seconds) {
  const stats = {}, t = performance.now();
  m.sampleRecords({ n, ...options }, stats);
  if (first === null) first = (performance.now() - t) / 1000;
  draws.push(stats.draws ?? 0);
}
process.stdout.write(JSON.stringify({ wall: (performance.now() - started) / 1000, first, draws }));
"""


def calls_in_node(module: Path, n: int, seconds: float, options: dict) -> tuple[list[int], float, float]:
    from chargen.webexport import camel  # (how an option is spelled in the module)

    node = shutil.which("node") or shutil.which("nodejs")
    proc = subprocess.run([node, "--input-type=module", "-e", NODE_CALLS, module.resolve().as_uri(),
                           json.dumps([n, seconds, {camel(k): v for k, v in options.items()}])], capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    return got["draws"], got["wall"], got["first"]


def calls_in_process(model, n: int, seconds: float, options: dict) -> tuple[list[int], float, float]:
    from chargen.sampling import SampleStats

    draws, started, first = [], time.perf_counter(), None
    while time.perf_counter() - started < seconds:
        stats, t = SampleStats(), time.perf_counter()
        model.sample(n, stats=stats, **options)
        first = first if first is not None else time.perf_counter() - t
        draws.append(stats.draws)
    return draws, time.perf_counter() - started, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--n", type=int, default=10, help="names a call")
    ap.add_argument("--module", type=Path, help="an exported module to call under Node instead")
    ap.add_argument("--json", type=Path, default=Path("bench-out/warm_calls.json"))
    args = ap.parse_args()

    if args.module is None:
        import chargen

        model = chargen.load()
    rows, out = [], {}
    for name, options in CONSTRAINTS.items():
        draws, wall, first = calls_in_node(args.module, args.n, args.seconds, options) if args.module else \
            calls_in_process(model, args.n, args.seconds, options)
        k = max(1, len(draws) // 10)
        out[name] = {"names_per_s": len(draws) * args.n / wall, "calls": len(draws), "first_call_ms": 1000 * first,
                     "draws_first_tenth": sum(draws[:k]) / k, "draws_last_tenth": sum(draws[-k:]) / k}
        rows.append([name, f"{out[name]['names_per_s']:,.0f}", str(len(draws)), f"{1000 * first:.0f}",
                     f"{out[name]['draws_first_tenth']:.0f} / {out[name]['draws_last_tenth']:.0f}"])
    h = host()
    where = f"the module {args.module.name} under Node" if args.module else "in-process"
    print_table(f"{args.n} names a call, no seed, {args.seconds:.0f} s each, {where} ({h['cpu']}; {h['cpu_flags']})",
                ["constraints", "names/s", "calls", "first call ms", "draws a call, first / last tenth"], rows)
    write_json(args.json, {"warm_calls": out, "n": args.n, "seconds": args.seconds,
                            "module": str(args.module) if args.module else None})


if __name__ == "__main__":
    main()
