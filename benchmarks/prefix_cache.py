#!/usr/bin/env python3
"""The row engine's prefix cache at three sizes, on a backend and device: names/s in-process.

    python benchmarks/prefix_cache.py [--device cuda] [--n 20000] [--repeat 3] [--json bench-out/prefix_cache.json]

`RowEngine` (chargen.sampling.engine) with its cache of prefixes at 32 MB (the default), 8 MB and
none, at the command's width (1,024) and 4,096, drawing --n names of the bundled model at seed 1:
best names/s of --repeat, the share of rows the network stepped, and whether every size drew the
same names. With --device cuda, the torch backend on the GPU beside numpy on the host.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import host, print_table, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="torch's device for the torch backend (numpy runs too)")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("bench-out/prefix_cache.json"))
    args = ap.parse_args()

    import chargen
    from chargen.sampling.drawing import _run_full
    from chargen.sampling.engine import RowEngine

    rows, out = [], []
    backends = [("torch", args.device), ("numpy", None)] if args.device != "cpu" else [("numpy", None)]
    for backend, device in backends:
        model = chargen.load(backend=backend, device=device)
        for width in (1024, 4096):
            texts = None
            for mb in (32, 8, 0):
                best, same = float("inf"), True
                for _ in range(args.repeat):
                    engine = RowEngine(model.stepper, model.vocab, prefix_memory=mb << 20)
                    drawing = next(iter(model.drawings(args.n, seed=1)))
                    t = time.perf_counter()
                    got = [s.text for s in _run_full(engine, drawing, width)]
                    best = min(best, time.perf_counter() - t)
                    same &= texts is None or got == texts
                    texts = texts or got
                stepped = engine.computed / engine.row_steps
                out.append({"backend": backend, "device": device or "cpu", "width": width, "memory_mb": mb,
                            "names_per_s": args.n / best, "stepped": stepped, "same_names": same})
                rows.append([f"{backend} {device or 'cpu'}", str(width), f"{mb} MB", f"{args.n / best:,.0f}",
                             f"{stepped:.0%}", "yes" if same else "NO"])
    h = host()
    print_table(f"prefix cache, {args.n:,} names, best of {args.repeat} ({h['cpu']}; {h['cpu_flags']})",
                ["backend", "width", "cache", "names/s", "rows stepped", "same names"], rows)
    write_json(args.json, {"prefix_cache": out})


if __name__ == "__main__":
    main()
