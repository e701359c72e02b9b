#!/usr/bin/env python3
"""The long fuzzing run: each reader of tests/test_fuzz.py with many cases, its time and peak memory.

    python benchmarks/fuzz.py [--examples 100000] [--json bench-out/fuzz.json]

Runs `pytest tests/test_fuzz.py::test_<reader>_reader` once per reader in a child process with
CHARGEN_FUZZ_EXAMPLES set (random, not derandomized), and reports pass/fail, the wall time and the
child's peak resident memory, the bound that no input may push memory past.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import HERE, print_table, run_measured, write_json

READERS = ("checkpoint", "corpus", "config", "prompt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--json", type=Path, default=Path("bench-out/fuzz.json"))
    args = ap.parse_args()
    env = {**os.environ, "CHARGEN_FUZZ_EXAMPLES": str(args.examples)}
    rows, results = [], []
    for reader in args.readers.split(","):
        test = f"{HERE.parent / 'tests' / 'test_fuzz.py'}::test_{reader}_reader"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "--hypothesis-show-statistics"]
        done, wall, rss = run_measured(cmd, env=env)
        results.append({"reader": reader, "examples": args.examples, "passed": done.returncode == 0,
                        "seconds": round(wall, 1), "peak_rss_mb": round(rss, 1)})
        rows.append([reader, f"{args.examples:,}", "pass" if done.returncode == 0 else "FAIL", f"{wall:,.0f}",
                     f"{rss:,.0f}"])
        print(done.stdout.decode()[-1500:], file=sys.stderr)
    print_table("fuzzing the readers", ["reader", "cases", "result", "seconds", "peak RSS MB"], rows)
    write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
