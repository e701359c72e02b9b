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


def test_a_list_the_rare_character_filter_cuts_to_a_remnant_is_dropped():
    """The base once had ko_KR:city with 1 of Faker's 99 Korean cities, the one name in characters
    common enough to keep, and drew it for every Korean city asked for; a label's other lists stay."""
    build = load_build()
    common = ["Ab" + "a" * i for i in range(build.MIN_CHAR_COUNT)]  # A and b in each: common characters
    rare = ["Ωmega", "Ψi", "Φo"]  # each character seen once
    pairs = build.common_characters([("xx:city", common[:2] + rare), ("xx:first", common[:2] + rare[:1]),
                                     ("xx:first", rare[1:]), ("yy:first", common)])
    assert pairs == {("xx:first", n) for n in common[:2]} | {("yy:first", n) for n in common}
    labels = Counter(row.split("\t")[0] for row in (REPO / "corpora" / "many-names.tsv")
                     .read_text(encoding="utf-8").splitlines())
    assert not {"ko_KR:city", "ja_JP:city", "zh_TW:street"} & set(labels) and labels["zh_TW:first"] > 100


def test_the_base_corpus_has_the_kinds_its_readme_asks_for():
    """The README asks the base for Spanish streets and cities and Greek first names."""
    kinds = defaultdict(set)
    for row in (REPO / "corpora" / "many-names.tsv").read_text(encoding="utf-8").splitlines():
        label = row.split("\t")[0]
        locale, kind = label.split(":")
        kinds[kind].add(locale.split("_")[0])
    assert "es" in kinds["street"] and "es" in kinds["city"] and "el" in kinds["first"]


def test_us_names_hold_out_the_names_the_bundled_model_held_out():
    """us-names.txt is validated on us-names-val.txt: names.txt's validation split as chargen cuts
    it at the defaults (what the bundled names model held out), so a us-names model's loss compares
    with the bundled one's; none of those names may be among its training lines."""
    from chargen.config import TrainConfig
    from chargen.training.data import shuffle_lines, split_train_val

    build = load_build()
    names = (REPO / "corpora" / "names.txt").read_text(encoding="utf-8")
    held = split_train_val(shuffle_lines(names, TrainConfig().seed), TrainConfig().val_fraction)[1].splitlines()
    assert (REPO / "corpora" / "us-names-val.txt").read_text(encoding="utf-8").splitlines() == held
    us = (REPO / "corpora" / "us-names.txt").read_text(encoding="utf-8").splitlines()
    assert len(us) == len(set(us)) > 30_000 and not set(us) & set(held)
    assert set(names.splitlines()) - set(held) <= set(us)
    # and the rule itself, on a toy: the common names in, the rare out, the held-out ones out
    births = Counter({"Zorro": build.US_NAMES_MIN_BIRTHS, "Rarity": build.US_NAMES_MIN_BIRTHS - 1, held[0]: 10**6})
    corpus, val = build.build_us_names(names, births)
    assert "Zorro" in corpus.splitlines() and "Rarity" not in corpus.splitlines() and held[0] not in corpus.splitlines()
    assert val.splitlines() == held and len(corpus.splitlines()) == len(set(names.splitlines()) - set(held)) + 1


def test_the_bundled_base_has_the_labels_of_its_corpus():
    """The base answers every label of corpora/many-names.tsv and no other (scripts/prune_labels.py
    dropped the remnants' labels from it), each with training lines to have learnt from."""
    from chargen.checkpoint import checkpoint_path, read_checkpoint

    base = read_checkpoint(checkpoint_path("base"))
    rows = (REPO / "corpora" / "many-names.tsv").read_text(encoding="utf-8").splitlines()
    assert set(base.labels) == {row.split("\t")[0] for row in rows}
    assert all(base.label_counts)
