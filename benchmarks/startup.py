#!/usr/bin/env python3
"""Start-up of the installed `chargen` with and without packages put ahead on PYTHONPATH,
alternated in rounds: does a dependency's version cost every command?

    pip download typer==0.29.2 --no-deps -d /tmp/t29 && unzip -qo /tmp/t29/typer-0.29.2-*.whl -d /tmp/t29/x
    python benchmarks/startup.py --ahead /tmp/t29/x [--rounds 12] [--json bench-out/startup.json]

Each round runs every command once as installed, then once with --ahead first on PYTHONPATH (so
its packages shadow the installed ones); the medians and minimums of the wall times are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import host

COMMANDS = [["sample", "-n", "10", "--seed", "1"], ["--help"], ["info"]]


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ahead", type=Path, required=True, help="a folder of packages to put first on PYTHONPATH")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("chargen")
    chargen = str(exe) if exe.exists() else shutil.which("chargen") or "chargen"
    sides = {"installed": dict(os.environ), "ahead": {**os.environ, "PYTHONPATH": str(args.ahead.resolve())}}
    times = {(" ".join(c), side): [] for c in COMMANDS for side in sides}
    for _ in range(args.rounds):
        for c in COMMANDS:
            for side, env in sides.items():
                times[(" ".join(c), side)].append(timed([chargen, *c], env))
    rows = []
    print(json.dumps(host()))
    print(f"{'command':28} {'installed s':>12} {'ahead s':>9} {'ahead/installed':>16}")
    for c in COMMANDS:
        name = " ".join(c)
        a, b = (statistics.median(times[(name, side)]) for side in sides)
        print(f"{'chargen ' + name:28} {a:12.3f} {b:9.3f} {b / a:16.2f}")
        rows.append({"command": name, "installed_s": a, "ahead_s": b,
                     "min_installed_s": min(times[(name, 'installed')]), "min_ahead_s": min(times[(name, 'ahead')])})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"host": host(), "ahead": str(args.ahead), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
