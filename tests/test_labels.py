"""Labelled models: --labels file|tab, --label (one, a part, a blend), score --by-label.

A toy corpus with two perfectly separable labels (words of a, b, c against words of x, y, z) is
learnt: each label samples only its own letters, a blend draws both in its proportions, the
classifier tells them apart. A blend under exact constraints is held to the enumerated mixture
conditioned on them by a chi-square test; resume is exact, torchrun matches one process, both
backends draw the same samples.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import chargen
from chargen.checkpoint import LAST, read_checkpoint
from chargen.config import ModelConfig, SampleConfig
from chargen.npmodel import NumpyCharRNN
from chargen.sampling import derive_key, generate
from chargen.sampling.constraints import Automaton, Constraints
from chargen.sampling.labels import resolve_labels
from chargen.training.callbacks import TrainCallbacks

from .conftest import LABEL_FLAGS, assert_clean_error, run, run_on_terminal, toy_words
from .test_constraints import LIMIT, VOCAB, chi_square_fits, counted, enumerate_probs_of, satisfies

FLAGS = LABEL_FLAGS


@pytest.fixture(scope="module")
def toy(trained_labels):
    return trained_labels.parent


def test_each_label_samples_only_its_own_kind(toy):
    for label, own in (("abc", set("abc")), ("xyz", set("xyz"))):
        proc = run(["sample", "-c", str(toy / "run"), "--label", label, "-n", "200", "--seed", "3"])
        assert proc.returncode == 0, proc.stderr.decode()
        names = proc.stdout.decode().splitlines()
        assert len(names) == 200
        assert all(set(n) <= own for n in names), [n for n in names if not set(n) <= own][:5]
    # --novel: never a line of the sample's own label
    model = chargen.load(str(toy / "run"))
    abc_lines = set((toy / "abc.txt").read_text().split())
    novel = [s.text for s in model.samples(300, seed=1, label="abc", novel=True)]
    assert not set(novel) & abc_lines and len(set(novel)) > 100
    plain = [s.text for s in model.samples(300, seed=1, label="abc")]
    assert set(plain) & abc_lines  # (without --novel, it does write some)
    info = json.loads(run(["info", str(toy / "run"), "--json"]).stdout)
    assert info["labels"]["names"] == ["abc", "xyz"] and 850 < sum(info["labels"]["lines"]) < 950
    assert set(info["labels"]["val_loss"]) == {"abc", "xyz"}
    listed = [line.split("\t") for line in run(["info", str(toy / "run"), "--labels"]).stdout.decode().splitlines()]
    assert [(n, int(c), float(v)) for n, c, v in listed] == [
        (n, c, round(info["labels"]["val_loss"][n], 4)) for n, c in zip(info["labels"]["names"], info["labels"]["lines"])]
    as_json = json.loads(run(["info", str(toy / "run"), "--labels", "--json"]).stdout)["labels"]  # (it was the TSV)
    assert [(r["label"], r["lines"], round(r["val_loss"], 4)) for r in as_json] == [
        (n, int(c), float(v)) for n, c, v in listed]
    assert_clean_error(run(["info", "names", "--labels"]), "has no labels")
    assert_clean_error(run(["info", str(toy / "run"), "--plot", "--json"]), "--plot draws a run's curve")


def test_a_blend_draws_both_kinds_in_its_proportions(toy):
    proc = run(["sample", "-c", str(toy / "run"), "--label", "abc=0.3,xyz=0.7", "-n", "1000", "--seed", "4",
                "--format", "jsonl"])
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    kinds = [r["label"] for r in records]
    assert all(set(r["text"]) <= set(r["label"]) for r in records)  # each drawn from its own label
    share = kinds.count("abc") / len(kinds)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(kinds)), share
    # a blend of the labels it names says nothing more; a part that asks for several says which (the
    # largest share first)
    assert proc.stderr == b"" and run(["sample", "-c", str(toy / "run"), "--label", "abc", "-n", "3"]).stderr == b""
    # With no --label, the labels as trained (equal line counts here); a part of a name selects.
    default = chargen.load(str(toy / "run")).samples(1000, seed=5)
    share = sum(s.label == "abc" for s in default) / 1000
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 1000), share


def test_blend_samples_do_not_depend_on_the_batch_width(toy):
    model = chargen.load(str(toy / "run"))
    a = [(s.text, s.label) for s in model.samples(300, seed=8, label="abc=0.5,xyz=0.5")]
    from chargen.sampling.drawing import run as run_drawings

    b = [(s.text, s.label) for s in run_drawings(model.stepper, model.vocab,
                                                  model.drawings(300, seed=8, label="abc=0.5,xyz=0.5"), batch_size=7)]
    assert a == b


def test_score_by_label_tells_the_kinds_apart(toy):
    lines = toy_words("abc", 50, 9) + toy_words("xyz", 50, 10)
    proc = run(["score", str(toy / "run"), "--by-label", "--format", "jsonl"], input=lines.encode())
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(records) == 100
    assert all(r["likeliest"] == ("abc" if set(r["text"]) <= set("abc") else "xyz") for r in records)
    counts = chargen.load(str(toy / "run")).checkpoint.label_counts
    r = records[0]  # the mixture's probability: log sum_k w_k p_k, w in training proportions
    mixed = math.log(sum(math.exp(v) * n / sum(counts) for v, n in zip(r["by_label"].values(), counts)))
    assert r["logprob"] == pytest.approx(mixed, abs=1e-3)
    # text: the likeliest label and its probability at columns 5 and 6 (cut -f5,6), then LABEL=logp
    text = run(["score", str(toy / "run"), "--by-label"], input=lines.encode()).stdout.decode().splitlines()
    for row, rec in zip(text, records, strict=True):
        cols = row.split("\t")
        assert cols[4] == rec["likeliest"] and float(cols[5]) == pytest.approx(rec["p_likeliest"], abs=1e-4)
        logps = dict(c.split("=") for c in cols[6:])
        assert list(logps) == list(rec["by_label"])
        assert all(float(logps[k]) == pytest.approx(v, abs=1e-4) for k, v in rec["by_label"].items())
    one = run(["score", str(toy / "run"), "--label", "xyz"], input=(r["text"] + "\n").encode()).stdout.decode()
    assert float(one.split("\t")[1]) == pytest.approx(r["by_label"]["xyz"], abs=1e-3)
    # eval under the own label beats eval under the other
    own = chargen.load(str(toy / "run")).eval(toy_words("abc", 100, 11), label="abc")["loss"]
    other = chargen.load(str(toy / "run")).eval(toy_words("abc", 100, 11), label="xyz")["loss"]
    assert own < 1.4 < 3 < other


def test_unknown_label_and_bad_labelled_input_are_one_error(toy, tmp_path):
    assert_clean_error(run(["sample", "-c", str(toy / "run"), "--label", "abd"]), "unknown label 'abd'", "abc")
    assert_clean_error(run(["sample", "-c", str(toy / "run"), "--label", "abc=x"]), "weight")
    assert_clean_error(run(["sample", "--label", "abc"]), "no labels")
    # a label's note ("--label italian draws from 2 labels") comes after the options are checked: a bad
    # one is the only line (the note came first)
    for bad, needle in ((["--ends-with", "Ω"], "not in the model's vocabulary"), (["--top", "3", "--seed", "1"], "drop --seed")):
        assert_clean_error(run(["sample", "-c", "base", "--label", "italian", *bad]), needle)
    ok = run(["sample", "-c", "base", "--label", "italian", "-n", "2", "--seed", "1"])
    assert ok.returncode == 0 and "draws from" in ok.stderr.decode() and len(ok.stdout.splitlines()) == 2
    (tmp_path / "t.tsv").write_text("it\tMario\nes Juan\n")
    assert_clean_error(run(["train", "t.tsv", "--labels", "tab", "--max-steps", "1"], cwd=tmp_path),
                       "t.tsv, line 2", "no TAB")
    # what a labelled list refuses, said before the notes of adapting the base (they came first)
    (tmp_path / "ok.tsv").write_text("it\tMario\nes\tJuan\n" * 20)
    for flag, needle in (("--val-file=ok.tsv", "holds out its own validation lines; drop --val-file"),
                         ("--no-line-mode", "trains line by line")):
        assert_clean_error(run(["train", "ok.tsv", "--labels", "tab", flag, "--max-steps", "1"], cwd=tmp_path), needle)
    from chargen.errors import ChargenError
    from chargen.training.labels import read_labelled

    for name, text, needles in (("e.tsv", "it\tMario\n\tJuan\n", ("e.tsv, line 2", "empty")),
                                ("c.tsv", "it\tMario\nes\x07\tJuan\n", ("c.tsv, line 2", "control")),
                                ("b.tsv", "it\tMario\nes=1\tJuan\n", ("b.tsv, line 2", "'='")),
                                ("t.tsv", "it\tMario\n", ())):
        (tmp_path / name).write_text(text)
        if needles:
            with pytest.raises(ChargenError) as bad:
                read_labelled([str(tmp_path / name)], "tab")
            assert all(n in str(bad.value) for n in needles) and "\n" not in str(bad.value), str(bad.value)
    with pytest.raises(ChargenError, match="--labels tab"):
        read_labelled(["-"], "file")
    notes = []  # a TSV with more columns: the rest is the text, and a note says so, naming the first line
    (tmp_path / "more.tsv").write_text("it\tMario\nit\tLuigi\t12\nes\tJuan\t3\n")
    kept = read_labelled([str(tmp_path / "more.tsv")], "tab", notice=notes.append)
    assert kept.text().split("\n")[1] == "Luigi\t12"
    assert len(notes) == 1 and "2 lines hold a second TAB" in notes[0] and "more.tsv, line 2" in notes[0]
    read_labelled([str(tmp_path / "t.tsv")], "tab", notice=notes.append)
    assert len(notes) == 1
    with pytest.raises(ChargenError, match="/dev/fd/63 has none"):  # bash's <(...): a number, not a kind
        read_labelled([str(tmp_path / "t.tsv"), "/dev/fd/63"], "file")
    assert not (tmp_path / "checkpoints").exists()  # nothing written


def test_a_label_with_no_training_lines_is_one_error_not_a_crash(tmp_path):
    """A label whose few lines the run's split all held out to validate has a start state it never
    trained (the base model had one: ko_KR:country, none of its lines trained): asked for, it is one
    `Error:` line saying so, on the command line and in Python (it was an IndexError); asked
    within a part or with no label, it weighs nothing, as its training lines do."""
    from .test_webexport import random_labelled_model

    path = random_labelled_model(tmp_path / "m.safetensors", counts=(100, 0, 150, 100))
    assert_clean_error(run(["sample", "-c", str(path), "--label", "it_IT:surname"]),
                       "label 'it_IT:surname' has no training lines in this model")
    model = chargen.load(path)
    with pytest.raises(chargen.UsageError, match="no training lines"):
        model.sample(1, label="it_IT:surname=0.5,it_IT:first=0.5")
    assert model.label_mix("it").names == ["it_IT:first"]
    assert "it_IT:surname" not in model.label_mix(None).names
    assert {s.label for s in model.samples(50, seed=1, label="it")} == {"it_IT:first"}


def test_pruning_labels_leaves_every_other_label_exactly_as_it_was(tmp_path):
    """scripts/prune_labels.py (how the base lost the 16 labels its corpus no longer has): the
    labels the corpus lacks go, with their start states, counts and training lines; every other
    label draws and scores to the bit as before."""
    import subprocess
    import sys

    from .conftest import REPO
    from .test_webexport import LABELS, random_labelled_model

    path = random_labelled_model(tmp_path / "m.safetensors")
    before = chargen.load(path)
    gone, keep = LABELS[1], [label for label in LABELS if label != LABELS[1]]
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"{label}\tAnna\n" for label in keep), encoding="utf-8")
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "prune_labels.py"), str(path), str(corpus)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and f"dropped 1 label(s): {gone}" in p.stderr, p.stderr
    after = chargen.load(path)
    assert after.labels == keep and after.checkpoint.label_counts == [100, 150, 100]
    assert not any(line.startswith(gone + "\t") for line in after.checkpoint.training_lines)
    names = before.sample(20, seed=9)
    for label in keep:
        assert after.sample(30, seed=4, label=label) == before.sample(30, seed=4, label=label)
        assert [s.logprob for s in after.score(names, label=label)] == \
            [s.logprob for s in before.score(names, label=label)]
    with pytest.raises(chargen.UsageError, match="unknown label"):
        after.sample(1, label=gone)


def test_every_label_trains_on_a_line_where_the_split_would_hold_all_of_its_lines_out(tmp_path):
    """A label of one line lands in the seeded validation tenth now and then (the base model's
    ko_KR:country did: its start state never trained). The split moves one line of such a label
    into training; where every label has a training line, the split is the plain one, unchanged."""
    from types import SimpleNamespace

    from chargen.training.data import _labelled_split, joined, shuffled_order, split_train_val
    from chargen.training.labels import read_labelled

    rows = [f"big\t{w}" for w in toy_words("abc", 60, seed=5).split()] + ["tiny\tXyzzy"]
    (tmp_path / "c.tsv").write_text("".join(r + "\n" for r in rows))
    labelled = read_labelled([str(tmp_path / "c.tsv")], "tab")
    lines, tiny = labelled.text().splitlines(), labelled.labels.names.index("tiny")
    plain = {}
    for seed in range(60):  # the plain split of each seed: does the one tiny line train?
        order = shuffled_order(len(lines), seed)
        train, val = split_train_val(joined(lines, order), 0.1)
        plain[seed] = (train, val, "Xyzzy" in train.split("\n"))
    held, kept = [k for k, v in plain.items() if not v[2]], [k for k, v in plain.items() if v[2]]
    assert held and kept  # both happen
    for seed in held[:3] + kept[:3]:
        train, val, train_labels, _, _ = _labelled_split(labelled.text(), labelled.labels,
                                                         SimpleNamespace(seed=seed, val_fraction=0.1))
        assert tiny in train_labels.of_line.tolist() and "Xyzzy" in train.split("\n"), seed
        assert sorted((train + val).split()) == sorted(lines)  # every line once
        if seed in kept:
            assert (train, val) == plain[seed][:2]


def test_what_a_label_spec_asks_for():
    names = ["it_IT:first", "it_IT:surname", "es_ES:city", "es_MX:city", "es_ES:first", "el_GR:first"]
    counts = [100, 300, 50, 150, 200, 10]

    def asked(spec):
        mix = resolve_labels(spec, names, counts)
        return dict(zip(mix.names, np.round(mix.weights, 6)))

    assert asked(None) == {n: round(c / 810, 6) for n, c in zip(names, counts)}  # as trained
    assert asked("it_IT:surname") == {"it_IT:surname": 1.0}
    assert asked("it") == {"it_IT:first": 0.25, "it_IT:surname": 0.75}  # a locale's language
    assert asked("es:city") == {"es_ES:city": 0.25, "es_MX:city": 0.75}  # two parts: both
    assert asked("MX") == {"es_MX:city": 1.0} and asked("ES:first") == {"es_ES:first": 1.0}  # a territory
    assert asked("first") == {"it_IT:first": round(100 / 310, 6), "es_ES:first": round(200 / 310, 6),
                              "el_GR:first": round(10 / 310, 6)}
    assert asked("el_GR:first=3,it=1") == {"it_IT:first": 0.0625, "it_IT:surname": 0.1875, "el_GR:first": 0.75}
    with pytest.raises(chargen.UsageError, match="unknown label 'es:citi': no label has 'citi'; did you mean 'es:city'"):
        resolve_labels("es:citi", names, counts)
    # A language by its English name, in any case, asks as its code does
    assert asked("italian") == asked("Italian") == asked("it") and asked("Spanish:city") == asked("es:city")
    assert asked("greek=1,SPANISH:first=1") == {"es_ES:first": 0.5, "el_GR:first": 0.5}
    with pytest.raises(chargen.UsageError, match="unknown label 'Itallian'; close: italian"):
        resolve_labels("Itallian", names, counts)
    with pytest.raises(chargen.UsageError, match="unknown label 'german'"):  # no German label here
        resolve_labels("german", names, counts)
    assert resolve_labels("Italian", ["Italian:poets", "it_IT:first", "en:first"], [1, 1, 1]).names == \
        ["Italian:poets", "it_IT:first"]  # a part as given, and a language's name
    # Pieces apart by spaces too; a kind in the plural or in capitals; "names" where no label has it
    assert asked("greek first names") == asked("Greek First") == asked("el:first") == {"el_GR:first": 1.0}
    assert asked("Spanish Cities") == asked("es cities") == asked("es:city") and asked("italian surnames") == \
        {"it_IT:surname": 1.0}
    assert asked("IT") == asked("it") and len(asked("ES")) == 2  # codes keep their case: ES, a territory
    # A kind by other words: last names are surnames, towns cities, given names first names
    assert asked("italian last names") == asked("Italian Family Names") == asked("it:surname")
    assert asked("spanish towns") == asked("es:city") and asked("Greek given names") == asked("el:first")
    assert resolve_labels("forenames", ["elves:first", "elves:last"], [1, 1]).names == ["elves:first"]
    assert resolve_labels("last", ["elves:first", "elves:last"], [1, 1]).names == ["elves:last"]  # a part as given
    with pytest.raises(chargen.UsageError, match="no label has all of greek, towns"):
        resolve_labels("greek towns", names, counts)
    # ... but a territory's code typed in lower case asks for it where no label has the code so
    assert asked("mx") == asked("MX") and asked("gr first names") == {"el_GR:first": 1.0}
    assert asked("es") == {n: w for n, w in asked("spanish").items()} and "es_MX:city" in asked("es")  # es: Spanish
    with pytest.raises(chargen.UsageError, match="unknown label 'us'"):  # no US label here: still unknown
        resolve_labels("us", names, counts)
    # A territory by its English name, in any case, asks as its code does; words that name one together
    assert asked("spain") == asked("ES") and asked("Mexico cities") == {"es_MX:city": 1.0}
    assert asked("Greece first names") == asked("greece:first") == {"el_GR:first": 1.0}
    us = ["en_US:city", "en_GB:city", "en_US:first"]
    assert resolve_labels("United States cities", us, [1, 1, 1]).names == ["en_US:city"]
    assert resolve_labels("usa=1,britain=1", us, [1, 1, 1]).names == us
    # A language or territory no label is in says so, with what there is instead of close matches
    for term, said in (("russian", "in Russian (ru)"), ("ru", "in Russian (ru)"), ("RU", "from Russia (RU)"),
                       ("Russia", "from Russia (RU)"), ("russian first", "in Russian (ru)")):
        with pytest.raises(chargen.UsageError, match=rf"^unknown label '{term}': no label is {re.escape(said)}; it has 6: "):
            resolve_labels(term, names, counts)
    with pytest.raises(chargen.UsageError, match="^unknown label 'italian cities': no label has all of italian, cities; "
                                                 "italian: it_IT:first, it_IT:surname "):
        resolve_labels("italian cities", names, counts)
    with pytest.raises(chargen.UsageError, match="^unknown label 'greek poets': no label has 'poets'.*; greek: el_GR:first "):
        resolve_labels("greek poets", names, counts)  # and what the other pieces ask for
    # a mistyped word: the term with the closest word that makes it ask for labels, where one is close
    for typed, meant in (("it:frist", "it:first"), ("grek first names", "greek first names"),
                         ("Italain surnames", "italian surnames")):
        with pytest.raises(chargen.UsageError, match=rf"no label has '\w+'; did you mean '{meant}'\? \(chargen"):
            resolve_labels(typed, names, counts)
    # "names" or "people" with no kind asks for people's names: the first names and surnames
    assert asked("italian names") == asked("Italian People") == asked("it") and asked("greek names") == asked("el:first")
    assert set(asked("names")) == {"it_IT:first", "it_IT:surname", "es_ES:first", "el_GR:first"}
    with pytest.raises(chargen.UsageError, match="no label has all of es, names; es: es_ES:city"):
        resolve_labels("es names", ["es_ES:city", "it_IT:first"], [1, 1])  # Spanish places are no people
    assert resolve_labels("es names", ["es_ES:city", "it_IT:street"], [1, 1]).names == ["es_ES:city"]  # nobody: a filler
    with pytest.raises(chargen.UsageError, match="^unknown label 'names'"):  # a filler alone, and no people
        resolve_labels("names", ["es_ES:city", "it_IT:street"], [1, 1])
    assert resolve_labels("names", ["names", "b"], [1, 1]).names == ["names"]  # a label's name is its name
    with pytest.raises(chargen.UsageError, match="no label has all of first, names"):  # where a label has "names"
        resolve_labels("first names", ["en:names", "en:first"], [1, 1])


def test_tab_labels_from_stdin_train(tmp_path):
    lines = "".join(f"abc\t{w}\n" for w in toy_words("abc", 200, 1).split()) + \
        "".join(f"xyz\t{w}\n" for w in toy_words("xyz", 200, 2).split())
    proc = run(["train", "-", "--labels", "tab", *FLAGS, "--max-steps", "20", "--out", "run", "--quiet"],
               input=lines.encode(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_checkpoint(tmp_path / "run", prefer=LAST).labels == ["abc", "xyz"]


def test_labelled_resume_is_exact(toy, tmp_path):
    files = [str(toy / "abc.txt"), str(toy / "xyz.txt")]
    common = dict(labels="file", start_from="none", layers=1, hidden=48, embed=16, dropout=0.0, weight_drop=0.0,
                  batch_size=16, lr=1e-2, warmup=10, eval_every=10, sample_every=0, precision="fp32")
    chargen.train(files, out=tmp_path / "whole", max_steps=20, **common)
    chargen.train(files, out=tmp_path / "split", max_steps=10, **common)
    chargen.train(resume=tmp_path / "split", max_steps=20)
    a = read_checkpoint(tmp_path / "whole", prefer=LAST)
    b = read_checkpoint(tmp_path / "split", prefer=LAST)
    assert a.labels == b.labels == ["abc", "xyz"]
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)
    assert a.info["labels"] == b.info["labels"]


def test_numpy_and_torch_backends_draw_the_same_labelled_samples(toy):
    a = chargen.load(str(toy / "run"), backend="numpy")
    b = chargen.load(str(toy / "run"), backend="torch")
    options = dict(seed=2, label="abc=0.5,xyz=0.5", max_len=5, ends_with="a")
    assert [(s.text, s.label) for s in a.samples(100, **options)] == [(s.text, s.label) for s in b.samples(100, **options)]


# --- a blend under exact constraints, against enumeration -----------------------------------------

def labelled_stepper():
    """A random 1-layer LSTM with two labels' start states (as a labelled checkpoint holds them)."""
    config = ModelConfig(vocab_size=len(VOCAB), layers=1, hidden=8, embed=4, learned_start=True, n_labels=2)
    rng = np.random.default_rng(7)
    weights = {name: rng.normal(0, 0.8, shape).astype(np.float32) for name, shape in config.weight_shapes().items()}
    weights["head.bias"] = np.array([-0.6, 0.3, 0.0, -0.2], np.float32)
    starts = [rng.normal(0, 1.5, (2, 1, 8)).astype(np.float32) for _ in range(2)]  # [h, c], each (labels, layers, H)
    return NumpyCharRNN(config, weights), starts


@pytest.mark.parametrize("rows", [2, 5, 512])
def test_score_under_every_label_at_once_equals_one_label_at_a_time(rows):
    """mixture_nlls runs a batch's lines under all labels together (label-major rows); each label's
    NLLs must be what scoring the lines from that label's start state alone gives."""
    from chargen.evaluation import NumpyScorer, line_nlls, mixture_nlls

    stepper, starts = labelled_stepper()
    rng = np.random.default_rng(2)
    lines = [np.append(rng.integers(1, len(VOCAB), rng.integers(0, 7)), 0) for _ in range(9)]  # id 0 ends a line
    per_label = [[t[k] for t in starts] for k in range(2)]
    weights = np.array([0.25, 0.75])
    mixed, each = mixture_nlls(NumpyScorer(stepper), lines, per_label, weights, 0, rows=rows)
    alone = np.stack([line_nlls(NumpyScorer(stepper), lines, s, 0) for s in per_label], axis=1)
    np.testing.assert_allclose(each, alone, rtol=1e-6)
    np.testing.assert_allclose(mixed, -np.log(np.exp(-alone) @ weights), rtol=1e-6)
    assert not np.allclose(alone[:, 0], alone[:, 1])  # the labels do differ


@pytest.mark.parametrize("rejection", [False, True], ids=["adaptive", "rejection"])
def test_a_blend_under_constraints_is_the_mixture_conditioned_exactly(rejection):
    stepper, starts = labelled_stepper()
    c = Constraints(max_len=5, contains=("b",), ends_with="a")
    mix = resolve_labels("p=0.3,q=0.7", ["p", "q"], [1, 1])
    target = {}
    for k, name in enumerate(mix.names):
        for text, p in enumerate_probs_of(stepper, [t[k] for t in starts]).items():
            if satisfies(text, c):
                target[f"{name}:{text}"] = mix.weights[k] * p
    cfg = SampleConfig(num=20_000, temperature=1.0, length=LIMIT, rejection=rejection, max_len=5, contains=["b"],
                       ends_with="a")
    samples = list(generate(stepper, VOCAB, "", cfg, lines=True, key=derive_key(3), labels=mix, start_state=starts,
                            automaton=Automaton(Constraints.of(cfg), VOCAB)))
    assert all(satisfies(s.text, c) for s in samples)
    ok, stat, critical = chi_square_fits(counted(f"{s.label}:{s.text}" for s in samples), target)
    assert ok, (stat, critical)


def test_a_blends_labels_are_roots_of_one_tree_that_steps_them_together(monkeypatch):
    """The adaptive sampler draws a blend's labels in one PrefixTree with a root per label: a round
    steps the network once a depth for every label's new prefixes (a tree per label stepped each
    label apart), and the labels' prefixes share the tree's nodes and memory."""
    from chargen.sampling.constraints import guide_for
    from chargen.sampling.drawing import prime
    from chargen.sampling.tree import LabelTree, PrefixTree

    stepper, starts = labelled_stepper()
    cfg = SampleConfig(num=100, temperature=1.0, length=LIMIT, max_len=5, contains=["b"], ends_with="a")
    guide = guide_for(Automaton(Constraints.of(cfg), VOCAB), VOCAB, "", cfg, True)
    logits, state = prime(stepper, VOCAB, "", True, starts=[[t[k] for t in starts] for k in range(2)])
    key = derive_key(1)
    tree = LabelTree(PrefixTree(stepper, VOCAB, guide, cfg, key, logits, state), np.array([0.3, 0.7]), key)
    calls: list[int] = []
    step = stepper.step
    monkeypatch.setattr(stepper, "step", lambda ids, s: (calls.append(len(ids)), step(ids, s))[1])
    tree.run(np.arange(2048))
    assert {0, 1} <= set(tree.picked.tolist())  # both labels drawn in the round
    assert 0 < len(calls) <= guide.steps, calls  # one step a depth for both labels
    n = tree.tree.nodes
    assert n.count > 2 and set(n.parent[2: n.top][n.depth[2: n.top] == 1].tolist()) == {0, 1}  # both roots grew
    assert 0 < tree.tree.root_psi.max() <= 1 and tree.psi <= 1  # their bounds learnt, and the top one


@pytest.mark.parametrize("cache", [None, 1, 640], ids=["states-kept", "states-computed-again", "ring-of-10"])
@pytest.mark.parametrize("drop,behind", [(None, math.inf), (0.5, math.inf), (None, -1.0)],
                         ids=["labels-kept", "labels-dropped", "labels-dropped-below-the-floor"])
@pytest.mark.parametrize("constraints", [{}, dict(max_len=5, contains=("b",))], ids=["free", "constrained"])
def test_top_under_a_blend_is_the_enumerated_mixtures_best_in_order(constraints, drop, behind, cache):
    """--top with a blend ranks by the mixture probability sum_l w_l P_l(x), exactly; also where a
    prefix drops a label whose mass is below e^-0.5 of its mixture (a bound on its descendants, and
    each complete sample under such a bound scored again exactly), which the default does only
    below e^-12; where it drops labels while the mass dropped on its path stays below e^1 times
    the floor (the 15th likeliest complete sample seen so far: looser than the default's e^-1,
    so that bounds, rescoring and the children left out below the floor all work hard); and
    where the states are dropped from the search's cache at once (a prefix's computed again from
    an ancestor's, for the labels it still keeps)."""
    from chargen.sampling.search import DROP, SEARCH_CACHE, most_likely

    stepper, starts = labelled_stepper()
    c = Constraints(**constraints)
    weights = np.array([0.3, 0.7])
    mixture: dict[str, float] = {}
    for k in range(2):
        for text, p in enumerate_probs_of(stepper, [t[k] for t in starts]).items():
            mixture[text] = mixture.get(text, 0.0) + weights[k] * p
    best = sorted(((p, t) for t, p in mixture.items() if satisfies(t, c)), reverse=True)[:15]
    found = list(most_likely(stepper, VOCAB, "", 15, Automaton(c, VOCAB).bounded(LIMIT), batch=4,
                             starts=[[t[k] for t in starts] for k in range(2)], weights=weights, drop=drop or DROP,
                             behind=behind, cache=cache or SEARCH_CACHE))
    assert [s.text for s in found] == [t for _, t in best]
    np.testing.assert_allclose([s.logprob for s in found], [math.log(p) for p, _ in best], atol=1e-5)
    # Not the best of either label alone: the ranking is the mixture's.
    alone = [sorted(enumerate_probs_of(stepper, [t[k] for t in starts]).items(), key=lambda kv: -kv[1]) for k in range(2)]
    assert [s.text for s in found] != [t for t, _ in alone[0][:15]]


@pytest.mark.parametrize("label", ["surname", None], ids=["52-labels", "all-267"])
def test_top_of_a_wide_blend_of_the_base_model_is_its_mixtures_best(label):
    """The base model's 52 surname labels, and all 267 (no label: the labels as trained): a prefix
    keeps only the labels that matter to it, and the states that do not fit the search's cache are
    computed again (with all of them it used to stop before finding one), and each name's
    log-probability is the blend's, as `score` gives it."""
    model = chargen.load("base")
    top = list(model.top(6, label=label))
    assert len(top) == 6 and [s.logprob for s in top] == sorted((s.logprob for s in top), reverse=True)
    scored = [s.logprob for s in model.score([s.text for s in top], label=label)]
    np.testing.assert_allclose([s.logprob for s in top], scored, atol=1e-4)
    if label is None:  # each name's label: the one that gives it most of its probability (the blend's
        # weights are the training proportions, the prior of score's likeliest label)
        assert [s.label for s in top] == [r.likeliest for r in model.score([s.text for s in top], by_label=True)]
    drawn = model.score(model.sample(200, seed=1, label=label), label=label)  # under the blend too
    assert top[0].logprob >= max(s.logprob for s in drawn) - 1e-6


def test_top_with_a_blend_through_the_api(trained_labels):
    model = chargen.load(str(trained_labels))
    mixed = list(model.top(20, label="abc=0.5,xyz=0.5"))  # (enough that both kinds are among them)
    assert [s.logprob for s in mixed] == sorted((s.logprob for s in mixed), reverse=True)
    assert {s.text[0] for s in mixed} & set("abc") and {s.text[0] for s in mixed} & set("xyz")
    for s in mixed:  # each one's mixture probability, from the per-label scores; its label the likelier
        by = next(model.score([s.text], by_label=True)).by_label
        assert s.logprob == pytest.approx(math.log(0.5 * math.exp(by["abc"]) + 0.5 * math.exp(by["xyz"])), abs=1e-4)
        assert s.label == max(by, key=by.get)
    assert {s.label for s in mixed} == {"abc", "xyz"}


def test_a_blend_given_as_a_mapping_is_the_blend_its_text_writes(trained_labels):
    """label={"abc": 0.4, "xyz": 0.6} (Python, JSON, a module) asks what "abc=0.4,xyz=0.6" asks,
    wherever a label is taken; a mapping that writes no blend is one error naming `label`."""
    model = chargen.load(str(trained_labels))
    mapping, text = {"abc": 0.4, "xyz": 0.6}, "abc=0.4,xyz=0.6"
    assert model.sample(30, seed=2, label=mapping) == model.sample(30, seed=2, label=text)
    assert model.sample(10, seed=2, label=mapping, max_len=4) == model.sample(10, seed=2, label=text, max_len=4)
    assert [(s.text, s.label) for s in model.top(5, label=mapping)] == [(s.text, s.label) for s in model.top(5, label=text)]
    assert [s.logprob for s in model.score(["abca", "zyx"], label=mapping)] == \
        [s.logprob for s in model.score(["abca", "zyx"], label=text)]
    assert model.eval("abca\nzyx\n", label={"abc": 1})["loss"] == model.eval("abca\nzyx\n", label="abc")["loss"]
    for wrong, words in [({}, "empty mapping"), ({"abc": "x"}, "must map text to numbers"), ({"abc": True}, "must map"),
                         ({"abc,xyz": 1}, "names no label"), ({"abc": -1}, "the weight in 'abc=-1.0'"),
                         ({"abd": 1}, "unknown label 'abd'"), (5, "must be text or a mapping of labels to weights")]:
        for call in (lambda: model.sample(2, label=wrong), lambda: list(model.score(["abc"], label=wrong))):
            with pytest.raises(chargen.ChargenError, match=re.escape(words)):
                call()


@pytest.mark.parametrize("defect", [{"lines": [3, -1]}, {"lines": [3, "4"]}, {"lines": [0, 0]}, {"lines": [3, True]},
                                    {"names": ["abc", "abc"]}, {"names": ["abc", 7]}, {"inherited": [4, 0]},
                                    {"inherited": [1]}, {"inherited": "all"}])
def test_a_checkpoint_with_bad_label_facts_is_reported_as_such(toy, tmp_path, defect):
    """Label names and counts decide what is drawn: bad ones are a CheckpointError when read, one
    Error line from the command, never a traceback later."""
    from chargen.checkpoint import read_checkpoint, save_checkpoint

    ckpt = read_checkpoint(toy / "run" / "best.safetensors")
    info = {**ckpt.info, "labels": {"names": ["abc", "xyz"], "lines": [3, 4], **defect}}
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, weights=ckpt.weights, model_config=ckpt.model_config, vocab_json=ckpt.vocab.to_json(),
                    train_config=ckpt.train_config, info=info, start_state=ckpt.start_state)
    assert_clean_error(run(["sample", "-c", str(bad), "-n", "2"]), "a labelled model without its 2 labels' names")
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, weights=ckpt.weights, model_config=ckpt.model_config, vocab_json=ckpt.vocab.to_json(),
                    train_config=ckpt.train_config, info={**info, "labels": {"names": ["abc", "xyz"], "lines": [3, 4],
                                                                             "inherited": [3, 0]}},
                    start_state=ckpt.start_state)
    assert chargen.load(good).label_mix(None).names == ["xyz"]


class _StopAtOnce(TrainCallbacks):
    """Training callbacks that stop a run before its first step, keeping its notes in `notices`."""

    def __init__(self, notices: list[str]):
        self.notices = notices

    def should_stop(self, step: int) -> bool:
        return True

    def on_notice(self, message: str) -> None:
        self.notices.append(message)


def test_fine_tuning_adds_a_label_and_leaves_the_others_unchanged_at_step_0(toy, tmp_path):
    """--labels file --from a labelled model: its labels keep their rows and start states (their
    log-probabilities unchanged to float32 rounding before the first step), the new one joins."""
    from chargen.errors import TrainingInterrupted

    notices = []
    (tmp_path / "abz.txt").write_text(toy_words("abz", 300, 12))
    with pytest.raises(TrainingInterrupted):
        chargen.train([str(tmp_path / "abz.txt")], labels="file", start_from=str(toy / "run"), out=tmp_path / "ft",
                      max_steps=5, precision="fp32", callbacks=_StopAtOnce(notices))
    assert "lines start from the base's label abc (abz), the closest to them; training moves it" in notices, notices
    base = chargen.load(str(toy / "run"))
    tuned = chargen.load(str(tmp_path / "ft" / "last.safetensors"))
    assert tuned.labels == ["abc", "xyz", "abz"]
    counts = tuned.checkpoint.label_counts
    assert counts[:2] == base.checkpoint.label_counts and counts[2] > 200
    for label, letters in (("abc", "abc"), ("xyz", "xyz")):
        lines = toy_words(letters, 30, 13).split()
        old = [s.logprob for s in base.score(lines, label=label)]
        new = [s.logprob for s in tuned.score(lines, label=label)]
        np.testing.assert_allclose(new, old, atol=1e-4)
    # The new label starts from the closest old one: abz words score best under abc.
    np.testing.assert_array_equal([t[2] for t in tuned.checkpoint.start_state], [t[0] for t in base.checkpoint.start_state])
    assert tuned.checkpoint.info["from"]["start_labels"] == {"abz": "abc"}  # recorded, and told (the notice)
    # Asked for no label, it draws what its own run trained (abz), not the labels it inherited;
    # those are there to ask for
    assert tuned.label_mix(None).names == ["abz"] and base.label_mix(None).names == ["abc", "xyz"]
    assert {s.label for s in tuned.samples(50, seed=1)} == {"abz"}
    assert {s.label for s in tuned.samples(50, seed=1, label="xyz")} == {"xyz"}
    shown = " ".join(run(["info", str(tmp_path / "ft" / "last.safetensors")]).stdout.decode().replace("│", " ").split())
    assert "labels 3 (with no --label, the ones its own run trained: abz): abc (" in shown
    line = f"chargen sample -c {tmp_path / 'ft' / 'last.safetensors'} --label "  # completion: its own label first
    proc = run([], env={"_CHARGEN_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": "5"})
    assert proc.stdout.decode().split() == ["abz", "abc", "xyz"], proc.stdout
    code, note = run_on_terminal(["sample", "-c", str(tmp_path / "ft" / "last.safetensors"), "-n", "3"],
                                 tmp_path / "out.txt", columns=300)
    assert code == 0 and " ".join(note.split()) == (
        "note: with no --label draws from the labels its own run trained (abz), as trained; it has 3 in all, ask "
        "for others: --label abc (chargen info lists them)"), note



def test_info_on_many_labels_says_what_a_label_can_ask_for():
    """The base's labels listed a dozen at a time said little; their kinds and languages say what to ask."""
    import chargen

    shown = " ".join(run(["info", "base"]).stdout.decode().replace("│", " ").split())
    assert f"{len(chargen.load('base').labels)}: kinds city, country, first, region, street, surname; languages arabic, armenian," in shown
    assert "greek" in shown and "it_IT:first" not in shown
    assert '--label english, --label "english first", --label usa:first;' in shown  # the largest label, the largest with a territory


def test_label_completes_in_the_shell_from_the_models_languages_kinds_and_labels(tmp_path):
    """`--label <TAB>` (bash's completion, as `chargen --install-completion` sets it up)."""

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        proc = run([], env={"_CHARGEN_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        return proc.stdout.decode().split()

    assert complete("chargen sample -c base --label gre") == ["greek", "greece"]  # a language, a territory
    assert complete("chargen sample -c base --label us") == ["usa"] and complete("chargen sample -c base --label sou") == []
    assert complete("chargen sample -c base --label it=0.5,sur") == ["it=0.5,surname"]  # a blend's last term
    assert complete("chargen score base --label el_GR:f") == ["el_GR:first"]  # the checkpoint as an argument
    assert "city" in complete("chargen eval base --label ") and "greek" in complete("chargen eval base --label ")
    assert complete("chargen sample --label x") == []  # the names model has no labels
    assert complete(f"chargen sample -c {tmp_path / 'none'} --label a") == []  # no checkpoint: no suggestions
    # a line being typed holds what would be an error once run (-p given -n): completion still answers, quietly
    assert complete("chargen sample -p -n 3 -c base --label el_GR:f") == ["el_GR:first"]


def test_on_a_terminal_scoring_under_every_label_says_what_it_costs(tmp_path):
    """`chargen score base` scores each line under all its labels (65 times the time of one on
    2,000 names): on a terminal a note says so, and how to ask for one; not under --label or
    --by-label (which asks for every label), not in a pipe, not for a model without labels."""
    names = tmp_path / "names.txt"
    names.write_text("Anna\nGiuseppe\n")
    code, shown = run_on_terminal(["score", "base", str(names)], tmp_path / "out.txt", columns=300)
    every = f"scored under all {len(chargen.load('base').labels)} labels"
    assert code == 0 and every in shown and "--label L scores under L alone" in shown, shown
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2
    for args in (["score", "base", str(names), "--label", "it_IT:first"], ["score", "base", str(names), "--by-label"],
                 ["score", "names", str(names)]):
        code, shown = run_on_terminal(args, tmp_path / "out.txt", columns=300)
        assert code == 0 and "note" not in shown, (args, shown)
    code, shown = run_on_terminal(["eval", "base", str(names)], tmp_path / "out.txt", columns=300)
    assert code == 0 and every in shown, shown
    assert run(["score", "base", str(names)]).stderr == b""


def test_on_a_terminal_a_labelled_model_says_it_has_labels_to_ask_for(tmp_path):
    """`chargen sample -c base` with no --label mixes every language and script: on a terminal, a
    note says there are labels to ask for; in a pipe, stderr stays empty."""
    code, shown = run_on_terminal(["sample", "-c", "base", "-n", "3", "--seed", "1"], tmp_path / "out.txt", columns=200)
    assert code == 0, shown
    shown = " ".join(shown.split())
    import chargen

    assert shown == (f'note: this model has {len(chargen.load("base").labels)} labels and with no --label draws from all of them, as trained; ask '
                     'for some: --label english, --label "english first", --label usa:first (chargen info lists them)'), shown
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 3  # stdout: the samples alone
    piped = run(["sample", "-c", "base", "-n", "3", "--seed", "1"])
    assert piped.returncode == 0 and piped.stderr == b"" and piped.stdout.decode().splitlines() == \
        (tmp_path / "out.txt").read_text().splitlines()


def test_a_label_asked_by_its_parts_is_named_on_stderr():
    """A term that is no label's name says what it drew, even where that is one label ("french
    cities": Algeria's, the one French-speaking locale with cities); labels by their names say nothing."""
    one = run(["sample", "-c", "base", "-n", "2", "--seed", "1", "--label", "french cities"])
    assert one.returncode == 0 and one.stderr.decode() == "note: --label french cities draws from fr_DZ:city\n"
    named = run(["sample", "-c", "base", "-n", "2", "--seed", "1", "--label", "fr_DZ:city=1,it_IT:first=1"])
    assert named.returncode == 0 and named.stderr == b"" and len(named.stdout.decode().splitlines()) == 2
    import chargen

    assert one.stdout.decode().splitlines() == chargen.load("base").sample(2, seed=1, label="fr_DZ:city")


def test_a_bad_option_beside_a_label_by_its_parts_is_the_one_line_on_stderr(tmp_path):
    """The options are checked before the label's note: a bad one is one Error: line, not a note
    about what would have been drawn and then the error."""
    for extra in ([], ["--top", "3"]):
        bad = run(["sample", "-c", "base", "--label", "first", "--top-k", "0", *extra])
        assert bad.returncode == 2 and bad.stdout == b"", extra
        assert bad.stderr.decode() == "Error: --top-k must be at least 1 (got 0)\n", (extra, bad.stderr)
    for command in ("score", "eval"):  # a file that is not there: said before the note, and nothing printed
        missing = run([command, "base", "--label", "first", "-", str(tmp_path / "nowhere.txt")], input=b"Maria\n")
        assert missing.returncode == 1 and missing.stdout == b"", command
        assert missing.stderr.decode() == f"Error: {tmp_path / 'nowhere.txt'} does not exist\n", (command, missing.stderr)


def test_a_new_label_in_a_script_the_base_never_saw_starts_from_its_largest_label(toy, tmp_path):
    """Lines the base can read none of (Greek for a base of Latin letters, with no stand-in) say
    nothing of which label is closest: the new label starts from the base's largest, and the note
    and the lineage say so, not "the closest"."""
    from chargen.errors import TrainingInterrupted

    notices = []
    base = chargen.load(str(toy / "run"))
    largest = base.labels[int(np.argmax(base.checkpoint.label_counts))]
    (tmp_path / "greek.txt").write_text(toy_words("αβγδ", 300, 12))
    (tmp_path / "abz.txt").write_text(toy_words("abz", 300, 12))
    with pytest.raises(TrainingInterrupted):
        chargen.train([str(tmp_path / "greek.txt"), str(tmp_path / "abz.txt")], labels="file",
                      start_from=str(toy / "run"), out=tmp_path / "ft", max_steps=5, precision="fp32",
                      callbacks=_StopAtOnce(notices))
    assert (f"lines start from the base's label abc (abz), the closest to them, and from its largest label "
            f"{largest} (greek), as each of their lines holds a character it does not know; training moves them") in notices, notices
    tuned = chargen.load(str(tmp_path / "ft" / "last.safetensors"))
    assert tuned.checkpoint.info["from"]["start_labels"] == {"greek": largest, "abz": "abc"}
    assert tuned.checkpoint.info["from"]["start_unread"] == ["greek"]
    k = tuned.labels.index("greek")
    np.testing.assert_array_equal([t[k] for t in tuned.checkpoint.start_state],
                                  [t[base.labels.index(largest)] for t in base.checkpoint.start_state])


def test_the_start_labels_notice_speaks_of_one_label_or_several():
    from chargen.training.loop import _start_labels_notice

    assert _start_labels_notice({"": "en:first"}) == \
        "lines start from the base's label en:first, the closest to them; training moves it"
    assert _start_labels_notice({"boys": "en:first", "girls": "en_US:first"}) == \
        "lines start from the base's labels en:first (boys), en_US:first (girls), the closest to them; training moves them"
    assert _start_labels_notice({"": "en_US:first"}, [""]) == \
        "lines start from the base's largest label en_US:first, as each of their lines holds a character it does not know; training moves it"


def test_files_of_one_name_in_two_folders_are_told_to_share_a_label(tmp_path):
    """girls/names.txt and boys/names.txt: one label, 'names', by the rule; a notice says so
    (shards of one kind in several folders are meant to share it), the same file twice is no news."""
    from chargen.training.labels import read_labelled

    for folder, letters in (("girls", "abc"), ("boys", "xyz")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "names.txt").write_text(toy_words(letters, 20, 1))
    (tmp_path / "it.txt").write_text(toy_words("abc", 20, 2))
    told: list[str] = []
    paths = [str(tmp_path / "girls" / "names.txt"), str(tmp_path / "boys" / "names.txt"), str(tmp_path / "it.txt")]
    corpus = read_labelled(paths, "file", notice=told.append)
    assert corpus.labels.names == ["it", "names"] and told == [
        f"{paths[0]} and {paths[1]} both label their lines 'names' (a file's name is its label): rename one to keep "
        f"them apart"]
    told.clear()
    read_labelled([paths[0], paths[0], paths[2]], "file", notice=told.append)
    assert told == []


def test_a_decomposed_file_name_labels_its_lines_composed(tmp_path):
    """A Mac writes file names decomposed (é as e and an accent): the label is the composed name,
    and asked either way it is found (in the module too: resolveLabels)."""
    import unicodedata

    from chargen.training.labels import read_labelled

    for name, letters in (("cafe\u0301s", "abc"), ("the\u0301s", "xyz")):
        (tmp_path / f"{name}.txt").write_text(toy_words(letters, 20, 1))
    corpus = read_labelled(sorted(str(p) for p in tmp_path.iterdir()), "file")
    assert corpus.labels.names == ["cafés", "thés"]
    for spec in ("cafés=0.5,thés=0.5", unicodedata.normalize("NFD", "cafés=0.5,thés=0.5")):
        assert resolve_labels(spec, corpus.labels.names, [20, 20]).names == ["cafés", "thés"]


def test_a_compressed_files_label_is_its_name_without_the_compression(tmp_path):
    import gzip
    import lzma

    from chargen.training.labels import read_labelled

    (tmp_path / "girls.txt.gz").write_bytes(gzip.compress(toy_words("abc", 20, 1).encode()))
    (tmp_path / "boys.xz").write_bytes(lzma.compress(toy_words("xyz", 20, 2).encode()))
    corpus = read_labelled([str(tmp_path / "girls.txt.gz"), str(tmp_path / "boys.xz")], "file")
    assert sorted(corpus.labels.names) == ["boys", "girls"]


def test_a_models_label_specs_are_resolved_once():
    """A server's requests ask the same few specs: each resolved once (0.4 ms among the base's 248
    labels), the same mix after; a bad spec raises every time."""
    model = chargen.load("base")
    assert model.label_mix("greek first") is model.label_mix("greek first")
    assert model.label_mix("greek first").names == ["el_GR:first"] and model.label_mix(None) is model.label_mix(None)
    for _ in range(2):
        with pytest.raises(chargen.UsageError, match="unknown label 'poets'"):
            model.label_mix("poets")


def test_info_names_an_adapted_models_own_labels_once():
    """A list adapted from a labelled base with --labels: `chargen info` named its own labels twice
    ("250 (with no --label, the ones its own run trained: boys, girls): labels boys, girls; kinds
    ..."); where the summary names them, it says there what they are."""
    from chargen.cli import _labels_row

    names = [f"{loc}:{kind}" for loc in ("it_IT", "el_GR", "es_ES", "de_DE") for kind in ("first", "surname", "city")]
    names += ["boys", "girls"]
    row = _labels_row({"names": names, "lines": [10] * 12 + [5, 6], "own": ["boys", "girls"]})
    assert row.startswith("14: labels boys, girls (the ones its own run trained: what no --label draws); kinds "), row
    assert row.count("boys") == 1
    inherited_own = _labels_row({"names": names, "lines": [10] * 14, "own": ["it_IT:first"]})  # not among "labels"
    assert inherited_own.startswith("14 (with no --label, the ones its own run trained: it_IT:first): labels boys, girls;")


def test_info_says_which_base_label_each_new_label_started_from():
    """`chargen info` listed the base labels alone ("lines from its label zu_ZA:city, zu_ZA:city"):
    it names the new label beside each, as the run's notice does."""
    from chargen.cli import _lineage

    row = _lineage({"path": "base.safetensors", "sha256": "ab" * 32, "start_labels": {"boys": "en:first",
                                                                                      "girls": "en_US:first"}}, False)
    assert row.endswith(", lines from its labels en:first (boys), en_US:first (girls)"), row
    assert _lineage({"path": "b", "sha256": "c", "start_labels": {"": "en:first"}}, False).endswith(
        ", lines from its label en:first")
