#!/usr/bin/env python3
"""The whole benchmark suite, one script after another; prints every table and writes bench-out/*.json.

    python benchmarks/run.py [--quick]

1. benchmarks/sampling.py     names/s, long-sample chars/s, start-up times
2. benchmarks/ingest.py       10 MB / 100 MB / 1 GiB corpora into the encoded cache; training on 1 GiB
3. benchmarks/train_speed.py  the training grid (chargen vs a bare loop, fp32 and bf16) and whole runs

About 17 minutes on a 2-core CPU (--quick: about 5). Run it on a quiet machine: the ratios in
each table are measured back to back in one process, the absolute numbers drift with the host.
Separate, longer: python benchmarks/quality.py --time 5m (the 5-minute quality runs, ~10 min),
python benchmarks/precision.py (bf16 vs fp32 validation loss at 2x512 over 300 steps, ~15 min).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller grid, corpora up to 100 MB, one repeat")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    plan = [
        ["sampling.py", "--repeat", "1" if args.quick else "3", "--json", str(args.out / "sampling.json")],
        ["ingest.py", "--sizes", "10M,100M" if args.quick else "10M,100M,1G", "--json", str(args.out / "ingest.json"),
         "--corpora", str(args.out / "corpora")],
        ["train_speed.py", *(["--quick", "--seconds", "2", "--run-steps", "50"] if args.quick else []),
         "--json", str(args.out / "train_speed.json")],
    ]
    t0 = time.perf_counter()
    for script, *rest in plan:
        print(f"\n=== {script} {' '.join(rest)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / script), *rest], cwd=HERE.parent)
        print(f"=== {script}: {time.perf_counter() - t:.0f} s", flush=True)
        if proc.returncode != 0:
            sys.exit(f"{script} failed (exit {proc.returncode})")
    print(f"\nall benchmarks: {time.perf_counter() - t0:.0f} s; JSON in {args.out}/")


if __name__ == "__main__":
    main()
