#!/usr/bin/env python3
"""Build the name lists the fine-tuning benchmark adapts to, from the Faker package's data.

    pip install faker==40.54.0 && python benchmarks/finetune_lists.py [--out bench-out/lists]

Provenance: Faker (https://pypi.org/project/Faker/, MIT licence) ships per-locale lists of first
names, surnames and place names in its provider modules; this script reads those lists (no
random generation) and writes one deduplicated list per source, shuffled with a fixed seed:

  it-places      Italian place names (faker.providers.address.it_IT cities)          16,559 lines
  surnames       surnames in Latin script, every locale's last_names                   22,670 lines
  first-names    first names in Latin script from non-English locales                  15,201 lines
  cyrillic       Russian, Ukrainian and Bulgarian first and last names, in Cyrillic      3,238 lines

None of them is the bundled model's corpus (US first names), though `first-names` shares some
names with it. The counts are for Faker 40.54.0; another version may differ a little.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import random
from pathlib import Path

ENGLISH = {"en", "en_US", "en_GB", "en_CA", "en_AU", "en_IE", "en_IN", "en_NZ", "en_PH", "en_TH", "en_PK"}
CYRILLIC_LOCALES = {"ru_RU", "uk_UA", "bg_BG"}


def _latin(s: str) -> bool:
    return bool(s) and all(ord(c) < 0x250 for c in s)


def _cyrillic(s: str) -> bool:
    return bool(s) and all("\u0400" <= c <= "\u04ff" or c in "-' " for c in s)


def _lists(package: str, prefixes: tuple[str, ...]):
    """(locale, attribute, strings) for every list attribute of every locale's Provider."""
    pkg = importlib.import_module(package)
    for m in pkgutil.iter_modules(pkg.__path__):
        try:
            provider = importlib.import_module(f"{package}.{m.name}").Provider
        except (ImportError, AttributeError):
            continue
        for attr in dir(provider):
            value = getattr(provider, attr)
            if attr.startswith(prefixes) and isinstance(value, (list, tuple, dict, set)):
                yield m.name, attr, [v for v in value if isinstance(v, str)]


def build() -> dict[str, list[str]]:
    first, last, cyrillic = set(), set(), set()
    for locale, attr, values in _lists("faker.providers.person", ("first_names", "last_names")):
        if attr.startswith("first_names") and locale not in ENGLISH:
            first |= {v for v in values if _latin(v)}
        if attr.startswith("last_names"):
            last |= {v for v in values if _latin(v)}
        if locale in CYRILLIC_LOCALES:
            cyrillic |= {v for v in values if _cyrillic(v)}
    from faker.providers.address.it_IT import Provider as ItalianAddresses

    places = {c for c in ItalianAddresses.cities if c.strip()}
    out = {"it-places": places, "surnames": last, "first-names": first, "cyrillic": cyrillic}
    return {name: random.Random(0).sample(sorted(v), len(v)) for name, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/lists"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in build().items():
        (args.out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name:12} {len(lines):>7,} lines  {args.out / (name + '.txt')}")


if __name__ == "__main__":
    main()
