#!/usr/bin/env python3
"""numpy's BLAS on one thread or on every core, for the commands that step a network in numpy
(sample, score, eval), on an idle machine and beside one busy process: the measurements behind
chargen.sampling.parallel.SMALL_NETWORK.

    python benchmarks/blas_threads.py [--rounds 3] [--shapes 256,384,512] [--json bench-out/blas_threads.json]

About 50 minutes on 2 cores at the defaults (`--shapes 256`: about 12). Models: the bundled names
(2x96) and base (2x192) models, and 2-layer line models of --shapes' widths trained for one step
here (their speed is their shape's, their names long; needs PyTorch). Commands: plain sampling
(`sample -n 20000`: worker processes, each on one BLAS thread, beside the parent), constrained
sampling (`sample -n 500 --contains an`: the adaptive exact sampler, in one process) and `score`
of 2,000 names. Each runs with OPENBLAS_NUM_THREADS=1 and =cores (chargen leaves a thread count
the environment sets alone), alternated in rounds, first with nothing else running, then beside
a busy loop (one process spinning, as a training run or the other end of a pipeline keeps a core
busy). Reported: the median wall time of each, the ratio (cores / one thread: above 1, one thread
is faster) and the count chargen picks for that model by itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA, chargen_cmd, host, print_table, run_measured, write_json

def line_models(folder: Path, names: Path, shapes: list[int]) -> dict[str, str]:
    """The bundled models and 2-layer line models of these widths, trained one step."""
    models = {"names 2x96": "names", "base 2x192": "base"}
    for hidden in shapes:
        out = folder / f"h{hidden}"
        run_measured([*chargen_cmd(), "train", str(names), "--from", "none", "--layers", "2", "--hidden", str(hidden),
                      "--embed", "64", "--max-steps", "1", "--out", str(out), "--quiet"], capture=False)
        models[f"2x{hidden}"] = str(out)
    return models


def commands(model: str, lines: Path) -> dict[str, list[str]]:
    label = ["--label", "en_US:first"] if model == "base" else []
    return {"sample -n 20000": ["sample", "-c", model, "-n", "20000", "--seed", "1", *label],
            "sample -n 500 --contains an": ["sample", "-c", model, "-n", "500", "--contains", "an", "--seed", "1",
                                            *label],
            "score 2,000 names": ["score", model, str(lines), "--skip-unknown", *label]}


def picks(model: str) -> int:
    """The BLAS threads chargen holds a command to for this model, by its own rule."""
    import chargen
    from chargen.sampling.parallel import SMALL_NETWORK

    weights = chargen.load(model).checkpoint.model_config.matmul_weights
    return 1 if weights < SMALL_NETWORK else os.cpu_count() or 1


def timed(cmd: list[str], counts: tuple[int, ...], rounds: int) -> list[float]:
    """The median wall time of `cmd` at each BLAS thread count, the counts alternated in rounds."""
    times: list[list[float]] = [[] for _ in counts]
    for _ in range(rounds):
        for k, threads in enumerate(counts):
            env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads)}
            times[k].append(run_measured([*chargen_cmd(), *cmd], env, capture=False)[1])
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default="256,384,512", help="hidden sizes of the 2-layer models trained here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "names.txt"
        names = (DATA / "names.txt").read_text().split()
        lines.write_text("".join(n.capitalize() + "\n" for n in names[:2000]))
        models = line_models(Path(tmp), lines, [int(h) for h in args.shapes.split(",") if h])
        rows, records = [], []
        for load in ("idle", "beside a busy process"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
            try:
                for name, model in models.items():
                    for what, cmd in commands(model, lines).items():
                        one, every = timed(cmd, (1, cores), args.rounds)
                        rows.append([load, name, what, f"{one:.2f}", f"{every:.2f}", f"{every / one:.2f}",
                                     str(picks(model))])
                        records.append({"load": load, "model": name, "command": what, "one_thread_s": one,
                                        "all_cores_s": every, "picks": picks(model)})
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(host())
    print_table(f"BLAS threads for a command ({cores} cores; medians of {args.rounds} rounds)",
                ["load", "model", "command", "1 thread s", f"{cores} threads s", "ratio", "chargen picks"], rows)
    if args.json:
        write_json(args.json, {"host": host(), "rounds": args.rounds, "rows": records})


if __name__ == "__main__":
    main()
