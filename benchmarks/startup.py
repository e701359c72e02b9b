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
import statistics
from pathlib import Path

from common import chargen_cmd, compiled, host, installed_package, run_measured, write_json

COMMANDS = [["sample", "-n", "10", "--seed", "1"], ["--help"], ["info"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ahead", type=Path, required=True, help="a folder of packages to put first on PYTHONPATH")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    chargen = chargen_cmd()
    compiled(installed_package(), args.ahead)
    sides = {"installed": dict(os.environ), "ahead": {**os.environ, "PYTHONPATH": str(args.ahead.resolve())}}
    times = {(" ".join(c), side): [] for c in COMMANDS for side in sides}
    for _ in range(args.rounds):
        for c in COMMANDS:
            for side, env in sides.items():
                times[(" ".join(c), side)].append(run_measured([*chargen, *c], env, capture=False)[1])
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
        write_json(args.json, {"host": host(), "ahead": str(args.ahead), "rows": rows})


if __name__ == "__main__":
    main()
