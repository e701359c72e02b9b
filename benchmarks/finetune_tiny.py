#!/usr/bin/env python3
"""Adapting the base model to a list of 5 to 100 names, as a user does it, scored on 500 others.

    python benchmarks/finetune_lists.py      # once: builds bench-out/lists/ from Faker's data
    python benchmarks/finetune_tiny.py [--sizes 5 10 20 50 100] [--sources it-places surnames first-names] \\
        [--subsets 3] [--extra "--eval-every 25 --patience 8"] [--labelled] [--json bench-out/finetune_tiny.json]

For each source list and subset k (a seeded shuffle of it): the first 500 lines are the test
names, and the next N lines the user's list. `chargen train list.txt` runs with its defaults (no
--val-file: a list of up to 100 lines chooses its length by cross-validation, a longer one holds
out its own lines, as a user's run does; --from base, as any list under 5,000 lines) plus --extra, for
at most --time seconds; its best.safetensors is
scored on the 500 test names (`chargen eval --lines --skip-unknown`). So is the start: the base
model grown and calibrated for the list, under the label the list is closest to (`--max-steps 1
--lr 1e-9`: one step that moves nothing). The table: per size, the mean gain of the adapted model
over its start (nats per character on the test names), its standard error over the runs, the
worst run's gain, and the steps at which the best checkpoints were taken.

Lists this short have few names to choose a checkpoint (or a number of steps) on: what this
measures is whether that choice helps on names it never saw. With --extra "--val-fraction F" a
list holds out F of its names instead of cross-validating (the rule before chargen.training.folds).
With --labelled each list is a file named after its source, trained with `--labels file`: the base
gains that label (issue 27's flow), and the start and the adapted model are scored under it.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from common import chargen_cmd, host, print_table, read_list, run_measured, write_json

SOURCES = ["it-places", "surnames", "first-names"]
TEST_LINES = 500


def test_loss(cg: list[str], checkpoint: Path, test: Path, label: Optional[str]) -> float:
    done, _, _ = run_measured([*cg, "eval", str(checkpoint), str(test), "--lines", "--json", "--skip-unknown",
                               *(["--label", label] if label else [])])
    return json.loads(done.stdout)["loss"]


def one_list(cg: list[str], d: Path, names: list[str], test: Path, time_s: float, extra: list[str],
             label: Optional[str] = None) -> dict:
    """`label`: the list is a file of that name, trained with --labels file (the base gains the label)."""
    listed = d / f"{label or 'list'}.txt"
    listed.write_text("\n".join(names) + "\n", encoding="utf-8")
    common = [*cg, "train", str(listed), "-q", "--sample-every", "0", "--from", "base",
              *(["--labels", "file"] if label else [])]
    run_measured([*common, "-o", str(d / "start"), "--max-steps", "1", "--lr", "1e-9"])
    _, seconds, _ = run_measured([*common, "-o", str(d / "run"), "--time", f"{time_s}s", *extra])
    records = [json.loads(line) for line in (d / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    validated = [r for r in records if r["val_loss"] is not None]
    best = min(validated, key=lambda r: r["val_loss"])["step"] if validated else records[-1]["step"]
    start, adapted = test_loss(cg, d / "start" / "last.safetensors", test, label), test_loss(cg, d / "run", test, label)
    return {"start": start, "adapted": adapted, "gain": start - adapted, "best_step": best,
            "steps": records[-1]["step"], "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", type=Path, default=Path("bench-out/lists"))
    ap.add_argument("--sources", nargs="+", default=SOURCES)
    ap.add_argument("--sizes", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    ap.add_argument("--subsets", type=int, default=3, help="lists of each size per source (seeded shuffles)")
    ap.add_argument("--time", type=float, default=60.0, help="seconds of training per run at most")
    ap.add_argument("--extra", default="", help="more flags for every adapting run (e.g. an old setting)")
    ap.add_argument("--labelled", action="store_true", help="each list as a new label of the base (--labels file, "
                    "the file named after its source), scored under it")
    ap.add_argument("--json", type=Path, default=Path("bench-out/finetune_tiny.json"))
    args = ap.parse_args()
    cg, extra = chargen_cmd(), shlex.split(args.extra)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            lines = read_list(args.lists, source)
            for subset in range(args.subsets):
                order = random.Random(subset).sample(lines, len(lines))
                test = Path(tmp) / f"{source}-{subset}-test.txt"
                test.write_text("\n".join(order[:TEST_LINES]) + "\n", encoding="utf-8")
                for size in args.sizes:
                    d = Path(tmp) / f"{source}-{subset}-{size}"
                    d.mkdir()
                    r = {"source": source, "subset": subset, "size": size,
                         **one_list(cg, d, order[TEST_LINES:TEST_LINES + size], test, args.time, extra,
                                    source if args.labelled else None)}
                    results.append(r)
                    print(json.dumps(r), flush=True)
    rows = []
    for size in args.sizes:
        runs = [r for r in results if r["size"] == size]
        gains = [r["gain"] for r in runs]
        se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        rows.append([f"{size:,}", f"{statistics.fmean(r['start'] for r in runs):.3f}",
                     f"{statistics.fmean(r['adapted'] for r in runs):.3f}", f"{statistics.fmean(gains):+.3f} ± {se:.3f}",
                     f"{min(gains):+.3f}", " ".join(str(r["best_step"]) for r in runs)])
    facts = host()
    print_table(f"adapting the base to 5-100 names, scored on {TEST_LINES} others ({facts['cpu']}, {facts['cpus']} "
                f"CPUs, commit {facts['commit']}{', labelled' if args.labelled else ''}"
                f"{', ' + args.extra if args.extra else ''})",
                ["names", "start loss", "adapted loss", "gain (mean ± s.e.)", "worst gain", "best steps"], rows)
    write_json(args.json, {**facts, "time": args.time, "extra": args.extra, "labelled": args.labelled,
                           "results": results})


if __name__ == "__main__":
    main()
