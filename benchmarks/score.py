#!/usr/bin/env python3
"""`chargen score` through the installed command: wall time and peak memory for a list under the
bundled names model, and under the base model's 267 labels (`--by-label`, and the blend of all
labels, the default), optionally beside another checkout's code in the same rounds.

    python benchmarks/score.py [--data ../shared/data/names.txt] [--lines 2000] [--rounds 2] \\
                               [--before /tmp/old] [--json bench-out/score.json]

`--before DIR`: a checkout (a worktree of an older commit, with its checkpoints/) put first on
PYTHONPATH for the "before" column, run alternately with the installed code; each row's median.
The lists: all of `--data` under names; its first `--lines` lines under base; and the same with
one 20,000-character line inserted after line 100 (a long line among many short ones).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from common import chargen_cmd, compiled, host, installed_package, print_table, run_measured, write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "names.txt")
    ap.add_argument("--lines", type=int, default=2000, help="lines of --data scored under the base model")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", type=Path, help="an older checkout to run beside the installed code")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.data.read_text(encoding="utf-8").splitlines()
    work = Path(tempfile.mkdtemp(prefix="chargen-score-"))
    head = work / f"first-{args.lines}.txt"
    head.write_text("\n".join(names[: args.lines]) + "\n", encoding="utf-8")
    long_line = work / "with-a-long-line.txt"
    long_line.write_text("\n".join(names[:100] + ["a" * 20000] + names[100:]) + "\n", encoding="utf-8")
    cases = {f"score names ({len(names):,} lines)": ["score", "names", str(args.data)],
             f"score names, one 20,000-character line among {len(names):,}": ["score", "names", str(long_line)],
             f"score base --by-label ({args.lines:,} lines)": ["score", "base", str(head), "--by-label", "--format", "jsonl"],
             f"score base, the blend of all labels ({args.lines:,} lines)": ["score", "base", str(head)]}
    sides = {"installed": dict(os.environ)}
    if args.before:
        compiled(installed_package(), args.before)
        sides = {"before": {**os.environ, "PYTHONPATH": str(args.before.resolve())}, **sides}
    got: dict[tuple[str, str], list[tuple[float, float]]] = {(c, s): [] for c in cases for s in sides}
    for _ in range(args.rounds):
        for case, argv in cases.items():
            for side, env in sides.items():
                _, wall, rss = run_measured([*chargen_cmd(), *argv], env, capture=False)
                got[(case, side)].append((wall, rss))
    rows, table = [], []
    for case in cases:
        row = {"case": case}
        cells = [case]
        for side in sides:
            wall = statistics.median(w for w, _ in got[(case, side)])
            rss = max(r for _, r in got[(case, side)])
            row[side] = {"seconds": wall, "peak_rss_mb": rss}
            cells.append(f"{wall:.2f} s, {rss:.0f} MB")
        if args.before:
            cells.append(f"{row['before']['seconds'] / row['installed']['seconds']:.2f}x")
        rows.append(row)
        table.append(cells)
    h = host()
    print_table(f"chargen score, median of {args.rounds} ({h['cpu']}; {h['cpu_flags']})",
                ["command", *sides, *(["speed-up"] if args.before else [])], table)
    if args.json:
        write_json(args.json, {"host": h, "data": str(args.data), "lines": args.lines, "rounds": args.rounds,
                               "before": str(args.before) if args.before else None, "rows": rows})


if __name__ == "__main__":
    main()
