#!/usr/bin/env python3
"""Build the name lists the fine-tuning benchmark adapts to, from the Faker package's data.

    python benchmarks/finetune_lists.py [--out bench-out/lists]

Provenance: Faker 40.54.0 (https://pypi.org/project/Faker/, MIT licence) ships per-locale lists
of first names, surnames and place names in its provider modules; `corpora/build.py` reads those
lists from the wheel (downloaded with pip, not installed; no random generation), and its
`benchmark_lists()` makes one deduplicated list per source, shuffled with a fixed seed:

  it-places      Italian place names (it_IT cities)                                  16,559 lines
  surnames       surnames in Latin script of 18 Central and Northern European locales
  first-names    first names in Latin script of the same locales
  cyrillic       Russian, Ukrainian and Bulgarian first and last names, in Cyrillic   3,238 lines

These sources are held out of the bundled base model's corpus (corpora/many-names.txt): their
locales are left out of it, and so is every line of these lists, so adapting is measured on
names the base model never saw. The bundled names model's corpus (US first names) shares some
first names with `first-names`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "corpora"))
from build import FAKER_WHEEL, benchmark_lists, download  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/lists"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        lists = benchmark_lists(download(FAKER_WHEEL, Path(tmp), wheel=True))
    for name, lines in lists.items():
        (args.out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name:12} {len(lines):>7,} lines  {args.out / (name + '.txt')}")


if __name__ == "__main__":
    main()
