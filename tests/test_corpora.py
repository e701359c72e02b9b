"""The bundled corpora as corpora/build.py reads its sources (no download: the parts that need none)."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter, defaultdict

from .conftest import REPO


def load_build():
    spec = importlib.util.spec_from_file_location("corpora_build", REPO / "corpora" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_a_list_gives_its_names_however_faker_keeps_it():
    strings = load_build()._strings
    assert list(strings(["Arica", "Iquique"])) == ["Arica", "Iquique"]
    assert list(strings({"15101": "Arica", "TA": "Región de Tarapacá"})) == ["Arica", "Región de Tarapacá"]  # code: name
    assert list(strings({"Maria": 0.4, "Anna": 0.6})) == ["Maria", "Anna"]  # name: weight
    assert list(strings((("AG", "Aargau"), ("05001", "Medellín"), ("1004", "Constitución", "CABA")))) == \
        ["Aargau", "Medellín", "Constitución"]  # the codes left out
    assert list(strings((("Benjamín Vicuña Mackenna", "Vicuña Mackenna"),))) == \
        ["Benjamín Vicuña Mackenna", "Vicuña Mackenna"]  # a street and its short forms
    assert list(strings({"JHR": ["Johor Darul Ta'zim", "Johor"]})) == ["Johor Darul Ta'zim", "Johor"]


def test_no_label_of_the_base_corpus_is_codes():
    """The first labelled corpus read Faker's dicts by their keys: es_CL:region was 'TA', 'AN', ...
    (16 of 16 lines), es_AR:region and en_MS:region likewise; a model asked for Chilean regions
    drew two capital letters."""
    lines, codes = Counter(), Counter()
    for row in (REPO / "corpora" / "many-names.tsv").read_text(encoding="utf-8").splitlines():
        label, text = row.split("\t")
        lines[label] += 1
        codes[label] += bool(re.fullmatch(r"[A-Z0-9]{1,3}", text))
    mostly_codes = [label for label in lines if codes[label] > lines[label] / 2]
    assert not mostly_codes, mostly_codes


def test_the_base_corpus_has_the_kinds_its_readme_asks_for():
    """The README asks the base for Spanish streets and cities and Greek first names."""
    kinds = defaultdict(set)
    for row in (REPO / "corpora" / "many-names.tsv").read_text(encoding="utf-8").splitlines():
        label = row.split("\t")[0]
        locale, kind = label.split(":")
        kinds[kind].add(locale.split("_")[0])
    assert "es" in kinds["street"] and "es" in kinds["city"] and "el" in kinds["first"]
