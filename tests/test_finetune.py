"""Fine-tuning (`--from`): exact vocabulary growth, lineage, resume, errors, and that it pays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import chargen
from chargen.cli import spelling
from chargen.checkpoint import BEST, LAST, read_checkpoint
from chargen.errors import UsageError
from chargen.training import finetune
from chargen.training.data import lines_per_batch
from chargen.training.finetune import NEW_CHAR_MASS, calibrated_bias, grow_weights, stand_in
from chargen.training.sizing import finetune_defaults
from chargen.npmodel import NumpyCharRNN
from chargen.sampling import log_softmax, prime
from chargen.tokenizer import Vocab

from .conftest import assert_clean_error, make_names, run

FAST = dict(max_steps=40, eval_every=20, batch_size=8, seq_len=32, precision="fp32", sample_every=0)


def per_char_logprobs(model: NumpyCharRNN, vocab: Vocab, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability of each character of `text` (one line, then its newline) and the mass
    the model puts on `extra` ids at each step (returned as the full log-softmax rows)."""
    logits, state = prime(model, vocab, "", True)
    rows, ids = [], vocab.encode(text + "\n").tolist()
    for i in ids:
        rows.append(log_softmax(logits[None])[0])
        logits, state = model.step(np.array([i]), state)
        logits = logits[0]
    rows = np.array(rows)
    return rows[np.arange(len(ids)), ids], rows


def test_growing_the_vocabulary_leaves_old_text_exactly_as_likely(trained_names):
    ckpt = read_checkpoint(trained_names, prefer=BEST)
    new_vocab = ckpt.vocab.union(Vocab(list("éßΩБ")))
    assert len(new_vocab) == len(ckpt.vocab) + 4 and new_vocab.chars == sorted(new_vocab.chars)
    grown = grow_weights(ckpt.weights, ckpt.vocab, new_vocab, finetune.stand_ins(ckpt.vocab, new_vocab))
    config = ckpt.model_config.__class__.from_dict({**ckpt.model_config.to_dict(), "vocab_size": len(new_vocab)})
    before = NumpyCharRNN(ckpt.model_config, ckpt.weights)
    after = NumpyCharRNN(config, grown)
    fresh = np.array([c in "éßΩБ" for c in new_vocab.chars])
    for line in make_names(20, seed=11).splitlines():
        old_lp, _ = per_char_logprobs(before, ckpt.vocab, line)
        new_lp, rows = per_char_logprobs(after, new_vocab, line)
        np.testing.assert_allclose(new_lp, old_lp, atol=2e-6, rtol=0)  # float32 resolution, nothing more
        new_mass = np.exp(rows[:, fresh]).sum(axis=1)
        assert (new_mass < NEW_CHAR_MASS).all() and (new_mass > 0).all()  # rare, but not impossible
    # A new character with a stand-in starts as a copy of its rows (é of e, Б of B);
    # one without (ß, Ω) from the mean embedding and an output row of zeros.
    for c, t in (("é", "e"), ("Б", "B")):
        for name in ("embedding.weight", "head.weight"):
            np.testing.assert_array_equal(grown[name][new_vocab.index[c]], ckpt.weights[name][ckpt.vocab.index[t]])
    np.testing.assert_allclose(grown["embedding.weight"][new_vocab.index["ß"]], ckpt.weights["embedding.weight"].mean(0))
    assert not grown["head.weight"][new_vocab.index["Ω"]].any()
    # Old characters keep their rows wherever they moved to.
    for c in ckpt.vocab.chars:
        np.testing.assert_array_equal(grown["head.weight"][new_vocab.index[c]], ckpt.weights["head.weight"][ckpt.vocab.index[c]])
        np.testing.assert_array_equal(grown["embedding.weight"][new_vocab.index[c]],
                                      ckpt.weights["embedding.weight"][ckpt.vocab.index[c]])


def test_a_new_character_stands_in_for_its_transliteration_its_bare_letter_or_its_other_case():
    assert stand_in("Ж", {"Ž", "Z"}) == "Ž" and stand_in("ж", {"z"}) == "z"  # without the accent if need be
    assert stand_in("щ", {"š", "s"}) == "š" and stand_in("Ы", {"I"}) == "I"
    assert stand_in("é", {"e"}) == "e" and stand_in("Ø", {"O"}) is None  # Ø has no decomposition
    assert stand_in("Ə", {"ə"}) == "ə" and stand_in("ß", {"s", "S"}) is None
    assert stand_in("中", {"a"}) is None and stand_in("ж", {"a"}) is None


def test_calibration_fits_each_chosen_character_to_its_frequency_over_the_contexts():
    """The biases of the chosen ids are the ones that make the training text likeliest: each one's
    mean prediction over the contexts equals its frequency (one formula's step from a single
    mean log-normaliser, the shortcut, is off by up to a nat with contexts this different)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 6))
    counts = np.array([40, 0, 25, 5, 100, 30])
    freq = (counts + 0.5) / (counts.sum() + 3)
    for fit in (np.ones(6, bool), np.array([False, True, False, True, True, False])):
        bias = calibrated_bias(logits, np.zeros(6, np.float32), fit, counts).astype(np.float64)
        z = logits + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(p.mean(0)[fit], freq[fit], rtol=0.02)  # (the fit stops within 0.01 nats)
        assert not bias[~fit].any()


def test_calibration_of_an_alphabet_that_takes_most_of_the_mass_takes_few_rounds():
    """Thousands of new characters (a CJK list) that must take 90% of the mass from the old ones:
    each round's step counts the normaliser's move, so a dozen rounds fit them (scaling each
    bias by its own ratio alone was 5% off after 12, and took 49 rounds, 5 s of the run)."""
    rng = np.random.default_rng(1)
    old, new = 60, 2000
    logits = np.concatenate([rng.normal(0, 2, (400, old)), rng.normal(-30, 1, (400, new))], axis=1)
    counts = np.concatenate([rng.integers(0, 20, old), rng.integers(1, 6, new)])
    counts[:old] = counts[:old] * (0.1 * counts[old:].sum() / 0.9 / counts[:old].sum())  # the old ones: 10%
    fit = np.arange(old + new) >= old
    freq = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    bias = calibrated_bias(logits, np.zeros(old + new), fit, counts, tolerance=0.0, rounds=12)
    z = logits + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(p.mean(0)[fit], freq[fit], rtol=0.002)


def test_calibration_starts_new_characters_at_their_frequency():
    bias = np.zeros(5, np.float32)
    fresh = np.array([False, False, False, True, True])
    counts = np.array([50, 30, 10, 8, 2])
    b = calibrated_bias(np.zeros((7, 5)), bias, fresh, counts, tolerance=1e-7, rounds=1000)  # old logits all 0
    p = np.exp(b) / np.exp(b).sum()
    np.testing.assert_allclose(p[3:], [8.5 / 102.5, 2.5 / 102.5], rtol=1e-5)
    np.testing.assert_allclose(b[:3], 0)


def test_a_list_in_another_script_trains_samples_and_records_its_lineage(trained_names, tmp_path):
    greek = tmp_path / "greek.txt"
    rng = np.random.default_rng(0)
    syllables = ["α", "λε", "ξαν", "δρο", "κα", "τε", "ρι", "νη", "μα", "ος", "ης"]
    names = {"".join(rng.choice(syllables, size=rng.integers(2, 4))).capitalize() for _ in range(200)}
    greek.write_text("\n".join(sorted(names)) + "\n", encoding="utf-8")
    out = chargen.train([str(greek)], out=tmp_path / "run", start_from=str(trained_names), **FAST)
    ckpt = read_checkpoint(out, prefer=LAST)
    lineage = ckpt.info["from"]
    assert lineage["path"] == str(read_checkpoint(trained_names, prefer=BEST).path)
    assert len(lineage["sha256"]) == 64 and lineage["new_chars"] >= 10
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 0 and metrics[0]["train_loss"] is None
    assert metrics[0]["val_loss"] == pytest.approx(lineage["val_loss"], abs=1e-4)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.3  # it learnt the new alphabet
    samples = chargen.load(out).sample(n=20, seed=1)
    assert sum(any("\u0370" <= ch <= "\u03ff" for ch in s) for s in samples) >= 15
    info = run(["info", str(out), "--json"])
    assert json.loads(info.stdout)["from"]["sha256"] == lineage["sha256"]


def test_a_cyrillic_list_starts_from_the_latin_names_it_transliterates(trained_names, tmp_path, monkeypatch):
    """The base's names written in Cyrillic: their letters start as copies of the Latin letters they
    transliterate, whose biases (unused here) are fitted with theirs, so before the first step they are about
    as likely as the Latin names are under the base. Without the stand-ins (every new letter from
    the mean row) the start is a nat and more worse."""
    to_cyrillic = {lat: cyr for cyr, lat in reversed(list(finetune.CYRILLIC_STAND_INS.items()))}
    to_cyrillic.update({lat.upper(): cyr.upper() for lat, cyr in list(to_cyrillic.items())})
    names = make_names(300, seed=21).split()
    val = names[250:]
    (tmp_path / "train.txt").write_text("".join("".join(map(to_cyrillic.get, n)) + "\n" for n in names[:250]))
    (tmp_path / "val.txt").write_text("".join("".join(map(to_cyrillic.get, n)) + "\n" for n in val))
    latin = chargen.load(trained_names).eval("\n".join(val) + "\n", lines=True)["loss"]

    def before_training(out: str) -> float:
        run_dir = chargen.train([str(tmp_path / "train.txt")], val_file=str(tmp_path / "val.txt"), out=tmp_path / out,
                                start_from=str(trained_names), **{**FAST, "max_steps": 1})
        lineage = read_checkpoint(run_dir, prefer=LAST).info["from"]
        assert lineage["new_chars"] >= 20
        return lineage["val_loss"], lineage.get("stand_ins", {})

    copied, stand_ins = before_training("copies")
    assert stand_ins["Б"] == "B" and stand_ins["и"] == "i" and len(stand_ins) >= 20
    assert copied < latin + 0.1, (copied, latin)
    monkeypatch.setattr(finetune, "CYRILLIC_STAND_INS", {})
    alone, stand_ins = before_training("alone")
    assert not stand_ins and alone > latin + 1.0, (alone, latin)


def test_adapting_beats_training_from_scratch_on_a_tiny_list(trained_names, tmp_path):
    """A base model that learnt the pseudo-name patterns, adapted to 60 new names of the same
    kind, against the same network from scratch: same steps, same seed, same data."""
    small = tmp_path / "small.txt"
    base_names = set(make_names().splitlines())
    fresh = [n for n in make_names(400, seed=9).splitlines() if n not in base_names][:60]
    small.write_text("\n".join(fresh) + "\n", encoding="utf-8")
    c = read_checkpoint(trained_names, prefer=BEST).model_config
    common = dict(FAST, max_steps=60, eval_every=20, lr=3e-3, warmup=5, dropout=0.0, patience=None)
    tuned = chargen.train([str(small)], out=tmp_path / "tuned", start_from=str(trained_names), **common)
    scratch = chargen.train([str(small)], out=tmp_path / "scratch", layers=c.layers, hidden=c.hidden, embed=c.embed,
                            **common)
    best = {name: read_checkpoint(d, prefer=BEST).info["best_val_loss"] for name, d in
            (("tuned", tuned), ("scratch", scratch))}
    assert best["tuned"] < best["scratch"] - 0.3, best


def test_a_list_of_five_names_adapts_a_model(trained_names, tmp_path):
    """Too short for one window of running text, a few names are a list: they adapt the model, one
    of them held out whole for validation."""
    few = tmp_path / "few.txt"
    few.write_text("Mirabel\nOrsolya\nTeodric\nVanessa\nIlario\n", encoding="utf-8")
    out = chargen.train([str(few)], out=tmp_path / "few", start_from=str(trained_names), **{**FAST, "max_steps": 10})
    ckpt = read_checkpoint(out, prefer=LAST)
    assert ckpt.line_oriented and ckpt.info["from"]["path"]
    assert ckpt.info["train_chars"] + ckpt.info["val_chars"] == 39 and ckpt.info["val_chars"] in (7, 8)
    assert len(chargen.load(out).sample(n=5, seed=1)) == 5


def test_a_short_list_is_evaluated_every_epoch_with_the_same_patience_in_steps():
    """Ten names are one step an epoch: evaluated every step (they are best after about ten
    epochs, overfit after twenty); a long list or running text every 25 steps; the patience is
    the same 200 steps."""
    def cadence(n_chars, n_lines, **given):
        train = finetune_defaults(n_chars, n_lines, given).train
        return train.get("eval_every"), train["patience"]

    assert cadence(70, 10) == (1, 200)
    per_step = lines_per_batch(1000, 9.0, 32, 64)
    assert per_step == 224 and cadence(9000, 1000) == (math.ceil(1000 / per_step), 40)
    assert cadence(450_000, 50_000) == cadence(300_000, None) == (25, 8)
    assert cadence(70, 10, eval_every=10) == (None, 20)  # a given interval is kept, the patience follows it
    assert cadence(9000, 1000, batch_size=8) == (18, 12)  # 56 lines a step: 18 steps an epoch


def test_a_short_list_holds_out_five_lines_or_at_most_thirty_percent():
    """One held-out name of ten chooses the checkpoint badly (docs/benchmarks.md); 10% is kept
    from 50 lines on, and a given fraction always."""
    fraction = lambda n_lines, **given: finetune_defaults(9 * n_lines, n_lines, given).train.get("val_fraction")  # noqa: E731
    assert fraction(10) == 0.3 and fraction(20) == 0.25 and fraction(40) == 0.125
    assert fraction(50) is None and fraction(1000) is None  # the default, 10%
    assert fraction(10, val_fraction=0.1) is None and finetune_defaults(9000, None, {}).train.get("val_fraction") is None


def test_a_fine_tuned_run_resumes_exactly(trained_names, tmp_path, names_file):
    whole = chargen.train([str(names_file)], out=tmp_path / "whole", start_from=str(trained_names), **FAST)
    part = chargen.train([str(names_file)], out=tmp_path / "part", start_from=str(trained_names),
                         **{**FAST, "max_steps": 20})
    chargen.train([str(names_file)], resume=part, max_steps=40)
    a, b = read_checkpoint(whole, prefer=LAST), read_checkpoint(part, prefer=LAST)
    assert b.info["from"] == a.info["from"]
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])


def test_flags_that_contradict_the_base_model_fail_clearly(trained_names, names_file, tmp_path):
    hidden = read_checkpoint(trained_names, prefer=BEST).model_config.hidden
    p = run(["train", str(names_file), "--from", str(trained_names), "--hidden", str(hidden * 2), "-o",
             str(tmp_path / "x")])
    assert_clean_error(p, f"--hidden {hidden * 2}", f"hidden {hidden}")
    assert not (tmp_path / "x").exists()
    assert_clean_error(run(["train", str(names_file), "--from", str(tmp_path / "nothing")]), "nothing")
    with pytest.raises(UsageError, match="resume continues a run"):
        chargen.train([str(names_file)], start_from=str(trained_names), resume=trained_names)


def test_a_config_file_can_name_the_model_to_start_from(tmp_path):
    from chargen.config import load_toml_config, merge_train_options

    f = tmp_path / "run.toml"
    f.write_text('from = "names"\ntime = "30s"\n')
    assert merge_train_options({"start_from": None, "lr": 1e-3}, str(f)) == {"start_from": "names", "time": 30.0, "lr": 1e-3}
    f.write_text("from = 3\n")
    with pytest.raises(UsageError, match="the key 'from' must be text") as info:  # as the file names it
        load_toml_config(str(f))
    assert info.value.render(spelling) == f"--config {f}: the key 'from' must be text (got 3)"


def test_a_config_file_takes_the_flags_and_names_them_as_flags(tmp_path):
    """learned_start and n_labels are set by the corpus, not by a flag: a config file that sets them
    is refused (n_labels = 3 used to fail later, naming a flag --learned-start that does not exist),
    and the keys an error lists are the flags' (`from`, not start_from)."""
    from chargen.config import load_toml_config

    f = tmp_path / "run.toml"
    for key in ("n_labels = 3", "learned_start = true", "frm = 'none'"):
        f.write_text(key + "\n")
        with pytest.raises(UsageError, match="unknown key") as info:
            load_toml_config(str(f))
        known = str(info.value).split("(known: ")[1]
        assert "from," in known and "start_from" not in known and "n_labels" not in known, known
    f.write_text("frm = 'none'\n")
    with pytest.raises(UsageError, match=r"'frm' \(from\?\)"):
        load_toml_config(str(f))


def test_the_bundled_models_are_named_base_and_names(tmp_path):
    """`--from base` is the broad bundled model (names of many languages and kinds), `--from names`
    the US first names; both load by name wherever no file of that name is in the way."""
    from chargen.checkpoint import BUNDLED, bundled_checkpoint, checkpoint_path
    from chargen.training.finetune import DEFAULT_FROM

    assert DEFAULT_FROM in BUNDLED
    for name, file in BUNDLED.items():
        assert checkpoint_path(name) == bundled_checkpoint(name) and checkpoint_path(name).name == file
    base = chargen.load("base")
    greek, hebrew = set("αβγδε"), set("אבגד")
    assert greek <= set(base.vocab.chars) and hebrew <= set(base.vocab.chars)  # broad: other scripts
    assert not greek & set(chargen.load("names").vocab.chars)
    assert base.line_oriented and base.checkpoint.training_lines is not None
    (tmp_path / "base").write_text("not a model")  # a file called base here is taken for what it is
    assert checkpoint_path(tmp_path / "base") == tmp_path / "base"


def test_a_list_up_to_the_bound_adapts_the_base_by_default_and_a_longer_one_trains_from_scratch(tmp_path, monkeypatch):
    """With no --from and no shape, a list of at most DEFAULT_FROM_MAX_LINES non-empty lines starts
    from the bundled base (its checkpoints say so), and one line more trains from scratch."""
    from chargen.training import setup

    bound = 120  # the real bound (10,000) lowered, so that both sides are small lists
    monkeypatch.setattr(setup, "DEFAULT_FROM_MAX_LINES", bound)
    names = make_names(bound + 1).splitlines()
    base_hidden = chargen.load("base").checkpoint.model_config.hidden
    for n, adapted in ((bound, True), (bound + 1, False)):
        corpus = tmp_path / f"list{n}.txt"
        corpus.write_text("\n".join(names[:n]) + "\n\n")  # an empty line is no line of the list
        chargen.train([str(corpus)], out=tmp_path / f"run{n}", max_steps=2, eval_every=2, precision="fp32",
                      sample_every=0)
        ckpt = read_checkpoint(tmp_path / f"run{n}", prefer=LAST)
        assert (ckpt.info.get("from") is not None) == adapted, (n, ckpt.info.get("from"))
        assert (ckpt.model_config.hidden == base_hidden) == adapted


def test_the_closest_label_is_screened_to_the_same_choice_and_each_line_is_scored_once(monkeypatch):
    """ClosestLabels scores the first SCREEN_LINES lines under every label of the bundled base and
    the rest under the SCREEN_LABELS likeliest: on these lines the same label as scoring every line
    under every label. Asked again for some of the same lines (a fold), it scores nothing again."""
    from chargen import evaluation
    from chargen.checkpoint import bundled_checkpoint

    base = read_checkpoint(bundled_checkpoint("base"))
    rows = [line.split("\t") for line in (Path(__file__).parents[1] / "corpora" / "many-names.tsv")
            .read_text(encoding="utf-8").splitlines()]
    lines = sorted({text for label, text in rows if label == "it_IT:surname"})[:40]
    assert len(lines) > finetune.SCREEN_LINES and len(base.labels) > finetune.SCREEN_LABELS
    closest = finetune.ClosestLabels(base)
    chosen = closest.label_for(lines, {})
    newline = base.vocab.index["\n"]
    ids = [np.append(base.vocab.encode(line).astype(np.int64), newline) for line in lines]
    n = len(base.labels)
    _, every = evaluation.mixture_nlls(closest.scorer, ids, closest.starts, np.full(n, 1 / n), newline)
    assert chosen == int(np.argmin(every.sum(axis=0)))
    assert np.sort(every.sum(axis=0))[1] > every.sum(axis=0).min()  # not a tie: the choice means something
    assert chosen >= finetune.SCREEN_LABELS  # (an index into the screened labels would not be)

    scored = []

    def counted(scorer, ids, starts, *args):
        scored.append((len(ids), len(starts)))
        return mixture_nlls(scorer, ids, starts, *args)

    mixture_nlls = evaluation.mixture_nlls
    monkeypatch.setattr(evaluation, "mixture_nlls", counted)
    assert closest.label_for(lines, {}) == chosen and scored == []  # the same lines again: nothing to score
    assert closest.label_for(lines[::-1], {}) == chosen  # sampled in another order, other lines screen: only they
    assert sum(n for n, labels in scored if labels == len(base.labels)) <= len(lines) - finetune.SCREEN_LINES
