#!/usr/bin/env python3
"""The same `chargen sample` commands on two source trees, alternated in rounds: is a change slower?

    git worktree add /tmp/before <old commit>
    python benchmarks/before_after.py --before /tmp/before --after . [--rounds 5] [--json bench-out/ab.json]
        [--before-packages /tmp/t29/x]   # the before side with the dependency versions it shipped with

Each command runs as `python -m chargen ...` with PYTHONPATH set to the tree, so both use this
Python and its packages; rounds alternate old and new so that the machine's drift hits both. Both
trees and the packages ahead are compiled to bytecode first, as an install is (a fresh worktree
under PYTHONDONTWRITEBYTECODE=1 would otherwise compile its sources at every start). Prints the
median wall time of each command on each tree and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import compiled, host

COMMANDS = {
    "sample -n 20000": ["sample", "-n", "20000", "--seed", "1"],
    "sample -n 5000 --max-len 8 --ends-with a": ["sample", "-n", "5000", "--seed", "1", "--max-len", "8",
                                                 "--ends-with", "a"],
    "sample -n 5000 --regex '[A-Z][a-z]*(el|ia)'": ["sample", "-n", "5000", "--seed", "1", "--regex",
                                                     "[A-Z][a-z]*(el|ia)"],
    "sample -n 5000 --contains th --min-len 6": ["sample", "-n", "5000", "--seed", "1", "--contains", "th",
                                                 "--min-len", "6"],
    "sample --top 100": ["sample", "--top", "100"],
    "sample -n 10 (start-up)": ["sample", "-n", "10", "--seed", "1"],
}


def timed(tree: Path, args: list[str], ahead: list[Path] = ()) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p.resolve()) for p in [tree, *ahead])}
    t = time.perf_counter()
    # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH.
    subprocess.run([sys.executable, "-m", "chargen", *args], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before-packages", type=Path, action="append", default=[],
                        help="a folder of packages the before side imports ahead of the installed ones (the "
                             "dependency versions it shipped with, e.g. an unpacked wheel); repeatable")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    compiled(args.before / "chargen", args.after / "chargen", *args.before_packages)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            for side, tree, ahead in (("before", args.before, args.before_packages), ("after", args.after, [])):
                times.setdefault((name, side), []).append(timed(tree, cmd, ahead))
    rows = []
    print(json.dumps(host()))
    print(f"{'command':45s} {'before s':>9s} {'after s':>9s} {'after/before':>13s}")
    for name in COMMANDS:
        a, b = statistics.median(times[(name, "before")]), statistics.median(times[(name, "after")])
        rows.append({"command": name, "before_s": round(a, 4), "after_s": round(b, 4), "ratio": round(b / a, 4)})
        print(f"{name:45s} {a:9.3f} {b:9.3f} {b / a:13.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"host": host(), "rounds": args.rounds, "rows": rows,
                                         "before_packages": [str(p) for p in args.before_packages]}, indent=1))


if __name__ == "__main__":
    main()
