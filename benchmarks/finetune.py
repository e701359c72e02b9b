#!/usr/bin/env python3
"""Adapting the bundled models against training from scratch, on lists of 50 to 5,000 names.

    python benchmarks/finetune_lists.py      # once: builds bench-out/lists/ from Faker's data
    python benchmarks/finetune.py [--time 60] [--sizes 50 200 1000 5000] [--sources ...] \\
        [--modes scratch names base] [--seeds 3] [--json bench-out/finetune.json] [--extra "--lr 2e-3"]
    python benchmarks/finetune.py --modes scratch base old=OLD.safetensors   # another model beside the bundled

For each source list and size N: the first N lines of the (seeded, shuffled) list, split 90/10
with seed 0 into train.txt and val.txt. Then, through the installed command and with the same
wall-clock budget (--time), `chargen train train.txt --val-file val.txt` once per mode: from
scratch (`--from none`, chargen's automatic settings), `--from names` (the bundled US-first-names
model) and `--from base` (the bundled base model of many languages and kinds), the last two
with the adapting defaults. For
each: the held-out loss of best.safetensors (`chargen eval --lines` on val.txt: the same
number for both), the wall time at which the best checkpoint was written (from metrics.jsonl),
the run's whole wall time (early stopping ends adapting runs sooner), and the share of 1,000
samples (seed 1, temperature 0.8) that are lines of train.txt. One run at a time: nothing else
should run on the machine (a run slowed several times over reaches its schedule's clock-based
decay early, and ends elsewhere).

--train-lines M (a list's data scaling, against which to read a gain) keeps each size's held-out
lines but trains on more: its training lines, then the list's lines after the first N, up to M in
all (`--sizes 1000 --train-lines 3000 15000 --modes scratch`: how low a model from scratch gets on
the same 100 held-out lines with 3x and 15x the data).

--seeds K trains each mode K times (`--seed` 1337, the default, then 1338, ...; `--first-seed`
starts elsewhere, to add seeds to an earlier run): the seed alone moves a 1,000-line list's loss
by 0.02 or so, as much as many a setting does. The table then
shows each mode's mean loss with the runs' standard deviation, and each gain over scratch with
its standard error (the two means' errors combined).

--wide K scores every run on K more of the list's lines as well: the first K after all the lines
any run of that size trains on (the same K for every mode and seed). A 1,000-line list holds out
100 names, and which 100 moves a gain by up to 0.05 between lists; 3,000 others tell it closer.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

from common import chargen_cmd, host, print_table, read_list, run_measured, write_json

SOURCES = ["it-places", "surnames", "first-names", "cyrillic"]


def split(lines: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    order = random.Random(seed).sample(lines, len(lines))
    n_val = max(1, round(len(order) * 0.1))
    return order[n_val:], order[:n_val]


def best_record(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return min(records, key=lambda r: r["val_loss"] if r["val_loss"] is not None else float("inf"))


MODES = {"scratch": "none", "names": "names", "base": "base"}  # mode -> chargen train --from


def mode_arg(text: str) -> str:
    """--modes: one of MODES, or NAME=CHECKPOINT (adapting that model, e.g. a base before a change)."""
    if text in MODES or ("=" in text and text.split("=", 1)[0] not in MODES and all(text.split("=", 1))):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(MODES)}, or NAME=CHECKPOINT")


def name_of(mode: str) -> str:
    return mode.split("=", 1)[0]


def from_of(mode: str) -> str:
    return mode.split("=", 1)[1] if "=" in mode else MODES[mode]
SEED = 1337  # chargen train's default seed: the first run of each mode


def summary(runs: list[dict]) -> dict:
    """One mode's runs (one per seed) as one record: the means, and every run's loss (and its loss
    on the wide lines, with --wide)."""
    out = {key: statistics.fmean(r[key] for r in runs) for key in ("loss", "best_at_s", "wall_s", "copied")}
    out.update(losses=[r["loss"] for r in runs], sd=stdev_or_zero(r["loss"] for r in runs), skipped=runs[0]["skipped"],
               best_step=[r["best_step"] for r in runs], peak_rss_mb=max(r["peak_rss_mb"] for r in runs))
    if "wide_loss" in runs[0]:
        wide = [r["wide_loss"] for r in runs]
        out.update(wide_loss=statistics.fmean(wide), wide_loss_runs=wide, wide_sd=stdev_or_zero(wide))
    return out


def stdev_or_zero(values) -> float:
    """The sample standard deviation; 0 for one run."""
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def gain(scratch: dict, adapted: dict, wide: bool = False) -> str:
    """scratch's mean loss less the adapted one's (on the wide lines: wide), with its standard
    error when there are seeds."""
    loss, runs, sd = ("wide_loss", "wide_loss_runs", "wide_sd") if wide else ("loss", "losses", "sd")
    g = scratch[loss] - adapted[loss]
    n = len(adapted[runs])
    if n < 2:
        return f"{g:+.3f}"
    se = (scratch[sd] ** 2 / len(scratch[runs]) + adapted[sd] ** 2 / n) ** 0.5
    return f"{g:+.3f} ± {se:.3f}"


def datasets(lines: list[str], size: int, train_lines: list[int], wide: int = 0):
    """(training lines, held-out lines, wide lines) for one size: its own 90/10 split, then for
    each M in train_lines (0: none) the same held-out lines with the training lines topped up to M
    from the list's lines after the first `size`. An M the list cannot fill gives all of it, once:
    a larger M after it would train on the same lines again. The wide lines are the `wide` lines
    after the last any M trains on (the same for every M)."""
    own, val = split(lines[:size])
    reach = size + max(0, max(train_lines) - len(own))
    others = lines[reach : reach + wide]
    if len(others) < wide:
        print(f"{len(others)} wide lines, fewer than {wide}: the list has no more", file=sys.stderr)
    done = set()
    for more in train_lines:
        train = own + lines[size : size + max(0, more - len(own))]
        if more and len(train) < more:
            print(f"{len(train)} training lines, fewer than {more}: the list has no more", file=sys.stderr)
        if len(train) not in done:
            done.add(len(train))
            yield train, val, others


def table_row(r: dict, names: list[str], seeds: int, wide: bool) -> list[str]:
    runs = [r[m] for m in names]
    gains = [gain(r["scratch"], r[m], w) for w in ((False, True) if wide else (False,))
             for m in names if m != "scratch" and "scratch" in r]
    shown = [f"{x[loss]:.3f}" + (f" ± {x[sd]:.3f}" if seeds > 1 else "") for loss, sd in
             ((("loss", "sd"), ("wide_loss", "wide_sd")) if wide else (("loss", "sd"),)) for x in runs]
    return [r["source"], f"{r['lines']:,}", f"{r['train_lines']:,}", *shown, *gains,
            *(f"{x['best_at_s']:.0f} / {x['wall_s']:.0f}" for x in runs), *(f"{x['copied']:.1%}" for x in runs)]


def one_run(cg: list[str], train: Path, val: Path, out: Path, time_s: float, mode: str, extra: list[str],
            wide: Optional[Path] = None) -> dict:
    cmd = [*cg, "train", str(train), "--val-file", str(val), "--time", f"{time_s}s", "-o", str(out), "-q",
           "--sample-every", "0", "--from", from_of(mode), *extra]
    _, wall, rss = run_measured(cmd)
    # A held-out character that train.txt lacks is outside a from-scratch model's vocabulary: it
    # is skipped (and counted), which if anything flatters the from-scratch model.
    done, _, _ = run_measured([*cg, "eval", str(out), str(val), "--lines", "--json", "--skip-unknown"])
    scored = json.loads(done.stdout)
    loss = scored["loss"]
    more = {}
    if wide is not None:
        done, _, _ = run_measured([*cg, "eval", str(out), str(wide), "--lines", "--json", "--skip-unknown"])
        more = {"wide_loss": json.loads(done.stdout)["loss"]}
    done, _, _ = run_measured([*cg, "sample", "-c", str(out), "-n", "1000", "--seed", "1"])
    train_lines = set(train.read_text(encoding="utf-8").splitlines())
    samples = done.stdout.decode().splitlines()
    best = best_record(out)
    return {"loss": loss, "skipped": scored["skipped"], "best_at_s": best["elapsed"], "best_step": best["step"], "wall_s": wall, "peak_rss_mb": rss,
            "copied": sum(s in train_lines for s in samples) / len(samples), **more}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", type=Path, default=Path("bench-out/lists"))
    ap.add_argument("--sources", nargs="+", default=SOURCES)
    ap.add_argument("--sizes", nargs="+", type=int, default=[50, 200, 1000, 5000])
    ap.add_argument("--time", type=float, default=60.0, help="seconds of training per run (both ways)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), type=mode_arg,
                    help="scratch, names, base, or NAME=CHECKPOINT (another model to adapt)")
    ap.add_argument("--extra", default="", help="more flags for every `chargen train` (e.g. to try a setting)")
    ap.add_argument("--seeds", type=int, default=1, help="runs of each mode, seeds 1337, 1338, ...")
    ap.add_argument("--first-seed", type=int, default=SEED, help="the first of those seeds (to add seeds to a run "
                    "before: --first-seed 1339 after --seeds 2)")
    ap.add_argument("--train-lines", nargs="+", type=int, default=[0], metavar="M",
                    help="train on M lines: each size's own, then the list's lines after it (0: the size's own)")
    ap.add_argument("--wide", type=int, default=0, metavar="K",
                    help="score every run on K more of the list's lines too (after any run's training lines)")
    ap.add_argument("--json", type=Path, default=Path("bench-out/finetune.json"))
    args = ap.parse_args()
    cg = chargen_cmd()
    names = [name_of(m) for m in args.modes]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            lines = read_list(args.lists, source)
            for size in args.sizes:
                if size > len(lines):
                    print(f"{source}: {len(lines)} lines, fewer than {size}; skipped", file=sys.stderr)
                    continue
                for train_lines, val_lines, wide_lines in datasets(lines, size, args.train_lines, args.wide):
                    d = Path(tmp) / f"{source}-{size}-{len(train_lines)}"
                    d.mkdir()
                    (d / "train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
                    (d / "val.txt").write_text("\n".join(val_lines) + "\n", encoding="utf-8")
                    wide = d / "wide.txt" if wide_lines else None
                    if wide:
                        wide.write_text("\n".join(wide_lines) + "\n", encoding="utf-8")
                    r = {"source": source, "lines": size, "train_lines": len(train_lines), "wide_lines": len(wide_lines)}
                    for mode in args.modes:
                        runs = []
                        for k in range(args.seeds):
                            runs.append(one_run(cg, d / "train.txt", d / "val.txt", d / f"{name_of(mode)}-{k}", args.time,
                                                mode, [*shlex.split(args.extra), "--seed", str(args.first_seed + k)], wide))
                            print(f"{source} {size}/{len(train_lines)} {mode} seed {args.first_seed + k}: {runs[-1]}",
                                  file=sys.stderr, flush=True)
                        r[name_of(mode)] = summary(runs)
                    results.append(r)
                    rows.append(table_row(r, names, args.seeds, bool(args.wide)))
    facts = host()
    adapted = [m for m in names if m != "scratch"]
    print_table(f"adapting vs from scratch, {args.time:.0f} s each ({facts['cpu']}, {facts['cpus']} CPUs, "
                f"commit {facts['commit']})",
                ["list", "lines", "trained on", *(f"{m} loss" for m in names),
                 *(f"{m} on {args.wide:,} others" for m in names if args.wide),
                 *(f"gain {m}" for m in adapted if "scratch" in names),
                 *(f"gain {m} on others" for m in adapted if "scratch" in names and args.wide),
                 *(f"{m} best/wall s" for m in names), *(f"{m} copies" for m in names)], rows)
    write_json(args.json, {**facts, "time": args.time, "extra": args.extra, "seeds": args.seeds,
                           "first_seed": args.first_seed, "modes": args.modes, "train_lines": args.train_lines, "wide": args.wide,
                           "results": results})


if __name__ == "__main__":
    main()
