#!/usr/bin/env python3
"""Install size and time: the base install (sampling, no PyTorch), `[serve]`, and `[train]` with PyTorch's CPU build.

    python benchmarks/install.py [--torch "torch==2.13.0"] [--torch-index URL] [--json bench-out/install.json]

Builds a wheel from this checkout, then for each row makes a fresh virtual environment and times
`pip install` into it, and measures what the environment holds on disk (du of the venv, less an
empty venv's). Timings include pip's downloads, so they depend on the network and pip's cache:
run it twice and keep the second (warm cache) numbers for comparisons, and say which.

Rows:
  base    pip install chargen.whl                                    (what `chargen sample` needs)
  serve   pip install 'chargen.whl[serve]'                           (what `chargen serve` needs)
  train   pip install TORCH [--index-url TORCH_INDEX] && pip install 'chargen.whl[train]'
On a machine without an NVIDIA GPU a user gets the CPU build with
  --torch torch --torch-index https://download.pytorch.org/whl/cpu
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from common import HERE, print_table, write_json


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def pip(env: Path, *args: str) -> float:
    t = time.perf_counter()
    p = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pip install {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0", help="the PyTorch requirement for the train row")
    parser.add_argument("--torch-index", help="pip --index-url for PyTorch (e.g. its CPU wheel index)")
    parser.add_argument("--json", type=Path, default=Path("bench-out/install.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(HERE.parent)],
                       check=True)
        (wheel,) = tmp.glob("chargen-*.whl")
        venv.create(tmp / "empty", with_pip=True)
        empty = du_mb(tmp / "empty")
        rows, results = [], []
        for name in ("base", "serve", "train"):
            env = tmp / name
            venv.create(env, with_pip=True)
            seconds = 0.0
            if name == "train":
                seconds += pip(env, args.torch, *(["--index-url", args.torch_index] if args.torch_index else []))
            seconds += pip(env, str(wheel) if name == "base" else f"{wheel}[{name}]")
            size = du_mb(env) - empty
            check = subprocess.run([str(env / "bin" / "chargen"), "sample", "-n", "3", "--seed", "1"],
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
            results.append({"install": name, "seconds": round(seconds, 1), "mb": round(size, 1)})
            rows.append([name, f"{seconds:.1f}", f"{size:,.0f}"])
    print_table("install: fresh virtual environment, pip install (time includes downloads)", ["install", "seconds", "MB on disk"], rows)
    write_json(args.json, {"torch": args.torch, "torch_index": args.torch_index, "results": results})


if __name__ == "__main__":
    main()
