#!/usr/bin/env python3
"""Sampling speed and start-up times, measured through the installed `chargen` command.

    python benchmarks/sampling.py [--repeat 5] [--json bench-out/sampling.json]

Rows: `python -c "import torch"` (the cost chargen avoids), `chargen --help`, `chargen sample -n 10`
with the bundled model, names per second for `-n 20000` (and `-n 10000`), and characters per second
for one long prose sample from a 2x256 LSTM (random weights: speed does not depend on training).
Each is the median of --repeat runs, all in this one process, so the ratios are fair.

Constrained sampling (issues 16 and 28), with the bundled model at the default temperature 0.8:
names per second drawn in one warm process (no start-up, so the ratios are the sampler's own)
for no constraint (-n 20000, beside the matrix-work floor: FLOPs per name over numpy's measured
GEMM rate; by default in worker processes, and in one: --workers 1, the like-for-like rate for
the adaptive exact sampler, which runs in one) and three constraint sets (-n 5000), with the
adaptive exact sampler (the default),
--rejection and --guided, and the time to list the 100 most likely names (--top 100) in-process
and through the command. `--only constraints` runs just these rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import chargen_cmd, cold_samples, compiled, host, installed_package, run_measured

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    """Median wall time of `repeat` runs, and the largest peak RSS (MB) of those processes."""
    runs = [run_measured(cmd, capture=False) for _ in range(repeat)]
    return statistics.median(wall for _, wall, _ in runs), max(rss for _, _, rss in runs)


def prose_checkpoint(path: Path) -> Path:
    import torch

    from chargen.checkpoint import save_checkpoint
    from chargen.config import ModelConfig
    from chargen.model import CharRNN
    from chargen.tokenizer import Vocab
    from chargen.model import weights_of

    vocab = Vocab.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    config = ModelConfig(vocab_size=len(vocab), layers=2, hidden=256, embed=64)
    torch.manual_seed(0)
    save_checkpoint(path, weights=weights_of(CharRNN(config)), model_config=config, vocab_json=vocab.to_json(),
                    train_config={}, info={"line_oriented": False})
    return path


CONSTRAINT_CASES = [
    ("no constraint", {}, []),
    ("--max-len 8 --ends-with a", {"max_len": 8, "ends_with": "a"}, ["--max-len", "8", "--ends-with", "a"]),
    ("--regex '[A-Z][a-z]*(el|ia)'", {"regex": "[A-Z][a-z]*(el|ia)"}, ["--regex", "[A-Z][a-z]*(el|ia)"]),
    ("--contains th --min-len 6", {"contains": "th", "min_len": 6}, ["--contains", "th", "--min-len", "6"]),
]


def floor_row(model, names: list) -> dict:
    """The matrix-work floor of unconstrained sampling: FLOPs per name (the LSTM's products and
    the head, per character, times the mean characters per name, newline included) over the
    float32 GEMM rate numpy reaches here at the sampler's shapes (1,024 rows)."""
    import time

    import numpy as np

    c = model.checkpoint.model_config
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[c.cell]
    flops_per_char = 2 * (c.hidden * gates * c.hidden + (c.layers - 1) * 2 * c.hidden * gates * c.hidden
                          + c.hidden * c.vocab_size)
    chars = sum(s.n_chars for s in names) / len(names)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 2 * c.hidden), dtype=np.float32)
    w = rng.standard_normal((2 * c.hidden, gates * c.hidden), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            x @ w
        best = min(best, (time.perf_counter() - t) / 50)
    gflops = 2 * x.shape[0] * x.shape[1] * w.shape[1] / best / 1e9
    return {"config": f"floor: {flops_per_char / 1e6:.3f} MFLOP/char x {chars:.2f} chars/name at {gflops:.0f} GFLOP/s",
            "seconds": None, "names_per_sec": gflops * 1e9 / (flops_per_char * chars), "gemm_gflops": gflops,
            "flops_per_char": flops_per_char, "chars_per_name": chars}


SAMPLERS = [("", {}), (" --rejection", {"rejection": True}), (" --guided", {"guided": True})]
# Unconstrained: the default (worker processes, one per core, from 4,096 names on Linux) and one
# process, the like-for-like rate for the adaptive exact sampler, which runs in one.
UNCONSTRAINED = [("", {}), (" --workers 1", {"workers": 1})]


def constraint_rows(repeat: int, n: int = 20000, n_constrained: int = 5000) -> list[dict]:
    """Names/s in this process: no constraint (-n 20000), then each constraint set (-n 5000) with
    the adaptive exact sampler (the default), plain rejection and --guided; --top 100 times."""
    import time

    import chargen
    from chargen.sampling import SampleStats

    model = chargen.load()
    rows = []
    base = one = None
    for label, kw, flags in CONSTRAINT_CASES:
        for name, how in SAMPLERS if kw else UNCONSTRAINED:
            count = n_constrained if kw else n
            times, stats = [], SampleStats()
            for r in range(repeat):
                stats = SampleStats()
                t = time.perf_counter()
                drawn = cold_samples(model, count, seed=r + 1, stats=stats, **how, **kw)  # as a command draws
                times.append(time.perf_counter() - t)
            rate = count / statistics.median(times)
            if base is None:
                base = rate
                floor = floor_row(model, drawn)
            elif one is None:
                one = rate
            row = {"config": label + name + f" (-n {count}, in-process)", "seconds": statistics.median(times),
                   "names_per_sec": rate, "vs_unconstrained": rate / base, "kept_share": stats.accepted / stats.draws}
            if one is not None:
                row["vs_one_process"] = rate / one
            if stats.mass is not None:
                row.update(p_constraints=stats.mass.estimate, p_lower=stats.mass.lower, p_upper=stats.mass.upper)
            rows.append(row)
    rows.insert(1, floor)
    rows[0]["vs_floor"] = rows[0]["names_per_sec"] / floor["names_per_sec"]
    rows[2]["vs_floor"] = rows[2]["names_per_sec"] / floor["names_per_sec"]
    for label, kw, flags in CONSTRAINT_CASES:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            top = list(model.top(100, **kw))
            times.append(time.perf_counter() - t)
        rows.append({"config": f"--top 100 {label if kw else ''} (in-process)".replace("  ", " "),
                     "seconds": statistics.median(times), "first": top[0].text, "last": top[-1].text})
    return rows


def workers_rows(repeat: int) -> list[dict]:
    """Where worker processes start to pay: -n N in this process, one process against two
    workers (started afresh by each call, as a command starts them), N from 500 to 16,384."""
    import time

    import chargen

    model = chargen.load()
    cold_samples(model, 1000, seed=0, workers=1)
    rows = []
    for n in (500, 1000, 2000, 4096, 8192, 16384):
        times = {1: [], 2: []}
        for r in range(repeat):
            for w in (1, 2):  # alternated: the machine's drift hits both
                t = time.perf_counter()
                cold_samples(model, n, seed=r + 1, workers=w)  # a fresh engine each, as the workers' are
                times[w].append(time.perf_counter() - t)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        rows.append({"config": f"-n {n}: one process / two workers (in-process)", "seconds": two,
                     "names_per_sec": n / two, "one_process_seconds": one, "vs_one_process": one / two})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("bench-out/sampling.json"))
    ap.add_argument("--only", choices=["constraints", "workers"], help="run only the constrained-sampling rows, or "
                    "only the worker processes' break-even rows")
    ap.add_argument("--make-prose-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_prose_checkpoint:
        prose_checkpoint(args.make_prose_checkpoint)
        return
    cg = chargen_cmd()
    compiled(installed_package())
    rows = []
    if args.only == "workers":
        report(workers_rows(args.repeat), args)
        return
    if args.only != "constraints":
        rows += startup_and_speed_rows(cg, args.repeat)
    rows += constraint_rows(args.repeat)
    t, rss = timed([*cg, "sample", "--top", "100"], args.repeat)
    rows.append({"config": "chargen sample --top 100 (command, start-up included)", "seconds": t, "peak_rss_mb": rss})
    t, rss = timed([*cg, "sample", "-n", "20000", "--seed", "1", "--max-len", "8", "--ends-with", "a"], args.repeat)
    rows.append({"config": "chargen sample -n 20000 --max-len 8 --ends-with a (command)", "seconds": t,
                 "names_per_sec": 20000 / t, "peak_rss_mb": rss})
    report(rows, args)


def startup_and_speed_rows(cg: list[str], repeat: int) -> list[dict]:
    rows = []

    t_torch, rss_torch = timed([sys.executable, "-c", "import torch"], repeat)
    rows.append({"config": 'python -c "import torch"', "seconds": t_torch, "peak_rss_mb": rss_torch})
    t_help, rss_help = timed([*cg, "--help"], repeat)
    rows.append({"config": "chargen --help", "seconds": t_help, "vs_import_torch": t_help / t_torch, "peak_rss_mb": rss_help})
    t10, rss10 = timed([*cg, "sample", "-n", "10"], repeat)
    rows.append({"config": "chargen sample -n 10", "seconds": t10, "vs_import_torch": t10 / t_torch, "peak_rss_mb": rss10})
    for n in (10000, 20000):
        t, rss = timed([*cg, "sample", "-n", str(n), "--seed", "1"], repeat)
        rows.append({"config": f"chargen sample -n {n}", "seconds": t, "names_per_sec": n / t, "peak_rss_mb": rss})
    with tempfile.TemporaryDirectory() as tmp:
        # Made in a child process: importing torch here would inflate every later child's peak
        # RSS (a forked child counts its parent's pages until it execs).
        ckpt = Path(tmp) / "prose.safetensors"
        subprocess.run([sys.executable, __file__, "--make-prose-checkpoint", str(ckpt)], check=True)
        length = 20000
        t, rss = timed([*cg, "sample", "-c", str(ckpt), "-l", str(length), "--seed", "1"], max(1, repeat // 2))
        rows.append({"config": f"one prose sample, -l {length} (2x256 LSTM)", "seconds": t,
                     "chars_per_sec": length / t, "peak_rss_mb": rss})
    return rows


def report(rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    facts = host()
    table = Table(title=f"chargen sampling ({facts['cpu']}, {facts['cpus']} CPUs, commit {facts['commit']}, "
                        f"median of {args.repeat})")
    for col in ("config", "time (s)", "names/s", "chars/s", "x import torch", "x unconstrained",
                "x one process", "draws kept", "peak RSS (MB)"):
        table.add_column(col, justify="left" if col == "config" else "right")
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(escape(r["config"]), fmt(r.get("seconds"), ".3f"), fmt(r.get("names_per_sec"), ",.0f"),
                      fmt(r.get("chars_per_sec"), ",.0f"), fmt(r.get("vs_import_torch"), ".2f"),
                      fmt(r.get("vs_unconstrained"), ".2f"), fmt(r.get("vs_one_process"), ".2f"),
                      fmt(r.get("kept_share"), ".1%"),
                      fmt(r.get("peak_rss_mb"), ".0f"))
    Console(width=140).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    env_note = {k: os.environ.get(k) for k in ("CHARGEN_CHECKPOINT",) if os.environ.get(k)}
    args.json.write_text(json.dumps({"machine": platform.platform(), **host(), "env": env_note, "rows": rows},
                                    indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
