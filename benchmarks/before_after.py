#!/usr/bin/env python3
"""The same `chargen sample` commands on two source trees, alternated in rounds: is a change slower?

    git worktree add /tmp/before <old commit>
    python benchmarks/before_after.py --before /tmp/before --after . [--rounds 5] [--json bench-out/ab.json]
        [--before-packages /tmp/t29/x]   # the before side with the dependency versions it shipped with
        [--commands issue28|base|top|blends|kept]  # the names model's commands, the base model's under
                                            # constraints or --top, --top under blends, samples kept out after
                                            # constraints (--unique, --novel)

Each command runs as `python -m chargen ...` with PYTHONPATH set to the tree, so both use this
Python and its packages; rounds alternate old and new so that the machine's drift hits both. Both
trees and the packages ahead are compiled to bytecode first, as an install is (a fresh worktree
under PYTHONDONTWRITEBYTECODE=1 would otherwise compile its sources at every start). Prints the
median wall time of each command on each tree, their ratio, and each side's peak memory (the
largest resident set of its runs); a command that fails (exit status not 0) shows "failed" and its time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import compiled, host

ISSUE28 = {
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
# The base model under constraints: a blend of all its labels, a kind's labels, a language's, one label.
BASE = {cmd: ["sample", *shlex.split(cmd)] for cmd in (
    "-c base -n 2000 --seed 1 --ends-with a",
    "-c base -n 1000 --seed 1 --contains th --min-len 6",
    "-c base --label first -n 2000 --seed 1 --ends-with a",
    "-c base --label it -n 2000 --seed 1 --regex '[A-Z][a-z]*(el|ia)'",
    "-c base --label en_US:first -n 2000 --seed 1 --ends-with a")}
# The base model's most likely names: one label, two, a kind's 52, all 267 (a blend's search holds a state a label).
TOP = {cmd: ["sample", *shlex.split(cmd)] for cmd in (
    "-c base --top 8 --label en_US:first", "-c base --top 8 --label it", "-c base --top 8 --label first",
    "-c base --top 8 --label surname", "-c base --top 8 --label city", "-c base --top 8", "-c base --top 100",
    "--top 100", "--top 1000", "--top 100 --contains th --min-len 6", "--top 100 --regex '[A-Z][a-z]*(el|ia)'",
    "--top 10000", "--top 30000", "--top 1000 --ends-with a", "-c base --top 1000 --label it_IT:first")}
# The base model's most likely names under blends of a few labels to all 267, free and constrained: the searches
# whose prefixes hold a state a label (the floor's label drops, docs/benchmarks.md).
BLENDS = {cmd: ["sample", *shlex.split(cmd)] for cmd in (
    "-c base --top 1 --ends-with el", "-c base --top 10 --label surname --contains th",
    "-c base --top 1 --label surname --regex '[A-Z][a-z]*(el|ia)'", "-c base --top 100",
    "-c base --top 100 --label first", "-c base --top 1000 --label first", "-c base --top 100 --label german",
    "-c base --top 20 --label german --ends-with er", "-c base --top 100 --label 'spanish names'",
    "-c base --top 300 --label 'french surname'", "-c base --top 1000 --label it_IT:first=0.7,es_ES:first=0.3",
    "-c base --top 50 --label city --ends-with o")}

# Samples kept out after the constraints (repeats, training lines), and a pattern only training lines match.
KEPT = {cmd: ["sample", *shlex.split(cmd)] for cmd in (
    "-n 5000 --seed 1 --max-len 8 --ends-with a",
    "-n 5000 --seed 1 --max-len 8 --ends-with a --novel",
    "-n 5000 --seed 1 --max-len 8 --ends-with a --unique",
    "-n 5000 --seed 1 --max-len 8 --ends-with a --unique --novel",
    "-n 2000 --seed 1 --max-len 4 --ends-with a --unique",
    "-n 2000 --max-len 4 --ends-with a --unique",  # (no seed: a warm tree, as in a program or a server)
    "-n 1000 --seed 1 --max-len 5 --ends-with a --unique --novel",
    "-c base --label it -n 1000 --seed 1 --ends-with a --unique --novel",
    "-n 3 --seed 1 --novel --regex 'Anna|Emma'")}


def timed(tree: Path, args: list[str], ahead: list[Path] = ()) -> tuple[float, float, bool]:
    """Wall seconds and peak resident MB of one command, and whether it succeeded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p.resolve()) for p in [tree, *ahead])}
    t = time.perf_counter()
    # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH.
    proc = subprocess.Popen([sys.executable, "-m", "chargen", *args], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before-packages", type=Path, action="append", default=[],
                        help="a folder of packages the before side imports ahead of the installed ones (the "
                             "dependency versions it shipped with, e.g. an unpacked wheel); repeatable")
    parser.add_argument("--commands", choices=("issue28", "base", "top", "blends", "kept"), default="issue28")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    commands = {"issue28": ISSUE28, "base": BASE, "top": TOP, "blends": BLENDS, "kept": KEPT}[args.commands]
    compiled(args.before / "chargen", args.after / "chargen", *args.before_packages)
    times: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], float] = {}
    failed: set[tuple[str, str]] = set()
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            for side, tree, ahead in (("before", args.before, args.before_packages), ("after", args.after, [])):
                seconds, peak, ok = timed(tree, cmd, ahead)
                if not ok:
                    failed.add((name, side))
                times.setdefault((name, side), []).append(seconds)
                peaks[(name, side)] = max(peak, peaks.get((name, side), 0.0))
    rows = []
    print(json.dumps(host()))
    width = max(map(len, commands))
    print(f"{'command':{width}s} {'before s':>9s} {'after s':>9s} {'after/before':>13s} {'before MB':>10s} {'after MB':>9s}")
    for name in commands:
        a, b = statistics.median(times[(name, "before")]), statistics.median(times[(name, "after")])
        ma, mb = peaks[(name, "before")], peaks[(name, "after")]
        fa, fb = (name, "before") in failed, (name, "after") in failed
        rows.append({"command": name, "before_s": round(a, 4), "after_s": round(b, 4), "ratio": round(b / a, 4),
                     "before_peak_mb": round(ma), "after_peak_mb": round(mb), "before_failed": fa, "after_failed": fb})
        print(f"{name:{width}s} {a:9.3f} {b:9.3f} {b / a:13.3f} {ma:10.0f} {mb:9.0f}"
              + (f"  ({'before' if fa else ''}{' and ' if fa and fb else ''}{'after' if fb else ''} failed)" if fa or fb else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"host": host(), "rounds": args.rounds, "commands": args.commands, "rows": rows,
                                         "before_packages": [str(p) for p in args.before_packages]}, indent=1))


if __name__ == "__main__":
    main()
