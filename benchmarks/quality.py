#!/usr/bin/env python3
"""What chargen learns in a fixed time with default settings: the two 5-minute quality targets.

    python benchmarks/quality.py [--time 5m] [--data ../shared/data] [--json bench-out/quality.json]

Trains with no flags but the corpus and the time budget (so the automatic sizes are what is
measured), through the installed `chargen` command, and prints the best validation loss next to
the target and the reference numbers measured on the same kind of machine (issue #5).
Takes 2 x --time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {
    "tinyshakespeare.txt": (1.55, "char-rnn.pytorch 2x100 GRU 1.630, nanoGPT CPU recipe 1.654, "
                                  "word_language_model 2x512 LSTM 1.954 (5 min, same machine)"),
    "names.txt": (1.90, "makemore transformer 1.971, makemore GRU 1.995 (5 min); ~1.92 after long training"),
}


def chargen_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("chargen")
    return [str(exe)] if exe.exists() else [shutil.which("chargen") or "chargen"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="5m")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    ap.add_argument("--json", type=Path, default=Path("bench-out/quality.json"))
    args = ap.parse_args()
    rows = []
    for name, (target, reference) in TARGETS.items():
        corpus = args.data / name
        if not corpus.exists():
            raise SystemExit(f"missing {corpus}; pass --data DIR")
        run_dir = args.out / corpus.stem
        t = time.perf_counter()
        subprocess.run([*chargen_cmd(), "train", str(corpus), "--time", args.time, "--out", str(run_dir),
                        "--overwrite", "--quiet"], check=True)
        wall = time.perf_counter() - t
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best = min(metrics, key=lambda m: m["val_loss"])
        config = json.loads((run_dir / "config.json").read_text())
        m = config["model"]
        rows.append({
            "corpus": name, "model": f"{m['layers']}x{m['hidden']} {m['cell']}, dropout {m['dropout']}",
            "best_val_loss": best["val_loss"], "best_step": best["step"], "steps": metrics[-1]["step"],
            "chars_seen": metrics[-1]["chars_seen"], "chars_per_sec": metrics[-1]["chars_per_sec"],
            "target": target, "met": best["val_loss"] <= target, "reference": reference, "wall_s": round(wall, 1),
            "precision": config["precision"],
        })

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chargen quality, --time {args.time}, default settings ({platform.node()}, {os.cpu_count()} CPUs)")
    for col in ("corpus", "model (auto)", "chars/s", "chars seen", "best val (nats/char)", "target", "met", "reference"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["corpus"], f"{r['model']}, {r['precision']}", f"{r['chars_per_sec']:,.0f}",
                      f"{r['chars_seen'] / 1e6:.1f}M", f"{r['best_val_loss']:.4f}", f"{r['target']:.2f}",
                      "yes" if r["met"] else "NO", r["reference"])
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "time": args.time,
                                     "rows": rows}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
