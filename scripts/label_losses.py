#!/usr/bin/env python3
"""The per-kind and per-label tables of a labelled model's held-out losses, as Markdown
(checkpoints/README.md's tables for the base model), from what its checkpoint stores:

    python scripts/label_losses.py base            # a bundled model, a checkpoint or a run directory
    python scripts/label_losses.py runs/base-new/best.safetensors --columns 3

Labels are LOCALE:KIND (corpora/build.py); a kind's loss is its labels' held-out losses
weighted by their training lines; labels with no held-out line ("-" in the label table) are
left out of the kinds' columns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict


def label_facts(model: str) -> list[tuple[str, int, float | None]]:
    done = subprocess.run([sys.executable, "-m", "chargen", "info", model, "--json"],
                          capture_output=True, text=True, check=True)
    labels = json.loads(done.stdout)["labels"]
    if not labels:
        raise SystemExit(f"{model} has no labels")
    losses = labels["val_loss"] or {}  # label -> held-out loss, for the labels with held-out lines
    return [(name, lines, losses.get(name)) for name, lines in zip(labels["names"], labels["lines"])]


def kind_table(facts: list[tuple[str, int, float | None]]) -> str:
    kinds: dict[str, list[tuple[int, float | None]]] = defaultdict(list)
    for name, lines, loss in facts:
        kinds[name.split(":")[-1]].append((lines, loss))
    rows = ["| kind | labels | training lines | held-out loss (line-weighted) |", "|---|---:|---:|---:|"]
    for kind, members in sorted(kinds.items()):
        scored = [(n, loss) for n, loss in members if loss is not None]
        mean = sum(n * loss for n, loss in scored) / sum(n for n, _ in scored) if scored else None
        rows.append(f"| {kind} | {len(scored)} | {sum(n for n, _ in scored):,} | "
                    f"{'-' if mean is None else f'{mean:.3f}'} |")
    return "\n".join(rows)


def label_table(facts: list[tuple[str, int, float | None]], columns: int) -> str:
    cells = [f"`{name}` | {lines:,} | {'-' if loss is None else f'{loss:.3f}'}" for name, lines, loss in facts]
    per_column = -(-len(cells) // columns)
    rows = ["| " + " | ".join(["label | lines | loss"] * columns) + " |",
            "|" + "---|---:|---:|" * columns]
    for r in range(per_column):
        row = [cells[c * per_column + r] if c * per_column + r < len(cells) else " |  | "
               for c in range(columns)]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--columns", type=int, default=3)
    args = ap.parse_args()
    facts = label_facts(args.model)
    print(kind_table(facts))
    print()
    print(label_table(facts, args.columns))


if __name__ == "__main__":
    main()
