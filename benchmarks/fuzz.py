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

import subprocess
import time

from common import HERE, print_table, write_json


def run_child(cmd: list[str], env: dict) -> tuple[int, str, float, float]:
    """(exit code, output, wall seconds, the child's peak RSS in MB); a failure is reported, not fatal."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace"), time.perf_counter() - t, usage.ru_maxrss / 1024

READERS = ("checkpoint", "corpus", "config", "prompt", "regex")


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
        code, out, wall, rss = run_child(cmd, env)
        failure = "" if code == 0 else "\n".join(
            line[:500] for line in out.splitlines()  # the failing input itself can be megabytes
            if line.startswith(("E ", "FAILED")) or ".py:" in line)
        results.append({"reader": reader, "examples": args.examples, "passed": code == 0,
                        "seconds": round(wall, 1), "peak_rss_mb": round(rss, 1), "failure": failure[-3000:]})
        rows.append([reader, f"{args.examples:,}", "pass" if code == 0 else "FAIL", f"{wall:,.0f}", f"{rss:,.0f}"])
        print(out[-1500:] if code == 0 else failure[-3000:], file=sys.stderr)
    print_table("fuzzing the readers", ["reader", "cases", "result", "seconds", "peak RSS MB"], rows)
    write_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
