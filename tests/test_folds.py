"""A short list's adapting length chosen by k-fold cross-validation (chargen.training.folds), and
runs that hold nothing out (val_fraction 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import chargen
from chargen.checkpoint import BEST, LAST, read_checkpoint
from chargen.config import TrainConfig
from chargen.errors import TrainingInterrupted, UsageError
from chargen.training.callbacks import TrainCallbacks
from chargen.training.data import prepare_training_data, shuffled_order
from chargen.training.folds import CV_MAX_LINES, FOLDS, choose_steps, combine, cross_validate, cross_validates, deal
from chargen.training.ingest import EncodedCorpus

from .conftest import assert_clean_error, make_names, run, toy_words

def short_list(n: int, seed: int = 3) -> str:
    names = list(dict.fromkeys(make_names(4 * n, seed=seed).splitlines()))[:n]
    return "\n".join(names) + "\n"


def read_labelled_text(text: str) -> EncodedCorpus:
    import io

    from chargen.training.labels import read_labelled

    return read_labelled(["-"], "tab", stdin=io.BytesIO(text.encode()))


def _fold_lines(corpus: EncodedCorpus, held: list[int], seed: int):
    """What a fold trains on and validates on: (training lines, held-out lines, their labels or None)."""
    config = TrainConfig(batch_size=2, seed=seed)
    data = prepare_training_data(corpus, config, holdout=held)
    pool, vocab = data.line_batches.pool, data.vocab
    kept = [vocab.decode(pool.flat[a : a + n].tolist()) for a, n in zip(pool.starts, pool.lengths)]
    held_lines = [vocab.decode(ids.tolist()).strip("\n") for ids in data.val_lines]
    names = None if data.labels is None else [data.labels.names[k] for k in data.val_labels]
    # What the fold knows of its list (--novel's lines, and the lines that choose a new label's
    # start) is the lines it trains on, not the ones it is scored on.
    known = [entry.rpartition("\t")[2] for entry in data.training_lines]
    assert sorted(known) == sorted(set(kept)), (known, kept)
    return kept, held_lines, names


@pytest.mark.parametrize("labelled", [False, True])
def test_every_line_is_held_out_exactly_once_and_never_trained_on_in_its_fold(labelled):
    """The folds deal the list's seeded order; each fold's run (prepare_training_data with the
    fold's `holdout`) trains on every other line and validates on the fold's own, with their labels."""
    lines = short_list(13).splitlines()
    if labelled:  # two labels; the last line without its newline, as a file may end
        text = "".join(f"{'ab'[i % 2]}\t{line}\n" for i, line in enumerate(lines))[:-1]
        corpus = read_labelled_text(text)
        label_of = {line: "ab"[i % 2] for i, line in enumerate(lines)}
    else:
        corpus = EncodedCorpus.from_text("\n".join(lines))  # no final newline: every line counts still
    folds = deal(shuffled_order(13, 5), 5)
    assert len(folds) == 5 and sorted(i for held in folds for i in held) == list(range(13))
    for held in folds:
        kept, held_lines, names = _fold_lines(corpus, held, seed=5)
        assert held_lines == [lines[i] for i in held]
        assert not set(kept) & set(held_lines) and sorted(kept + held_lines) == sorted(lines)
        assert names == (None if not labelled else [label_of[line] for line in held_lines])
    assert [len(h) for h in deal(list(range(3)), 3)] == [1, 1, 1]  # fewer lines than FOLDS: one line a fold


def test_the_folds_curves_are_weighted_by_their_held_out_characters():
    """Fold A (1 character held out) is best at step 1, fold B (3 characters) at step 2: over every
    character the loss is least at step 2, where an unweighted mean of the curves would pick 1."""
    curve = combine([[3.0, 0.0, 2.0, 9.0], [3.0, 2.0, 1.0]], [1, 3])
    assert curve == pytest.approx([3.0, 1.5, 1.25])  # up to the step both folds reached
    assert choose_steps(curve) == 2
    assert choose_steps([1.0, 2.0, 3.0]) == 1  # the start is no choice: the run adapts, however little
    assert choose_steps([2.0, math.nan, 1.5]) == 2


def test_cross_validate_trains_each_fold_on_the_others_and_scores_its_own_lines():
    """The folds' runs, with a stand-in trainer: what each is given, and the choice from what they
    report. A trainer whose loss is least after as many steps as its fold's lines shows that the
    curves are combined by held-out characters and step."""
    lines = short_list(12).splitlines()
    corpus = EncodedCorpus.from_text("\n".join(lines) + "\n")
    calls = []

    shared = object()  # a labelled base's ClosestLabels: every fold gets the same one

    def fake_train(whole, config, model_options, *, out_dir, holdout, precision, base, closest, callbacks, write):
        assert whole is corpus and closest is shared and not write
        held = [lines[i] for i in holdout]
        calls.append(([line for line in lines if line not in held], held, config))
        curve = [abs(s - len(held)) + 1.0 for s in range(12)]
        return SimpleNamespace(interrupted=None, metrics=[{"step": s, "val_loss": v} for s, v in enumerate(curve)])

    config = TrainConfig(lr=6e-3, warmup=20, eval_every=25, patience=3)
    cv = cross_validate(corpus, config, {}, base=None, closest=shared, precision="fp32", train=fake_train)
    assert len(calls) == FOLDS == cv.folds
    for kept, held, fold_config in calls:
        assert sorted(kept + held) == sorted(lines) and not set(kept) & set(held)
        assert fold_config.eval_every == 1 and fold_config.min_lr_ratio == 1.0 and fold_config.lr == 6e-3
    assert sorted(len(h) for _, h, _ in calls) == [2, 2, 2, 3, 3]  # 12 lines in 5 folds
    chars = [sum(len(x) + 1 for x in h) for _, h, _ in calls]
    weight3 = sum(c for c, (_, h, _) in zip(chars, calls) if len(h) == 3) / sum(chars)
    assert cv.steps == (3 if weight3 > 0.5 else 2)
    assert cv.curve[0] == pytest.approx(4.0 * weight3 + 3.0 * (1 - weight3))
    assert cv.val_loss == cv.curve[cv.steps] and cv.start_loss == cv.curve[0]
    record = cv.record()
    assert record["chosen"]["max_steps"] == cv.steps and record["chosen"]["val_fraction"] == 0.0


def test_folds_that_took_no_step_are_one_clear_error():
    corpus = EncodedCorpus.from_text(short_list(10))

    def no_step(fold, config, model_options, **kwargs):  # a --time spent before the first step
        return SimpleNamespace(interrupted=None, metrics=[{"step": 0, "val_loss": 2.0}])

    with pytest.raises(UsageError, match="took a step"):
        cross_validate(corpus, TrainConfig(), {}, base=None, precision="fp32", train=no_step)


def test_cross_validation_is_for_a_list_of_up_to_100_lines_with_nothing_chosen_by_the_user():
    one, ten, hundred, more = (EncodedCorpus.from_text(short_list(n)) for n in (1, 10, CV_MAX_LINES, CV_MAX_LINES + 1))
    assert cross_validates(ten, {}, None, False) and cross_validates(hundred, {}, None, False)
    assert not cross_validates(more, {}, None, False)  # 10% held out, as before
    assert not cross_validates(one, {}, None, False)
    for given in ({"val_fraction": 0.2}, {"max_steps": 30}, {"epochs": 3.0}, {"patience": 5}, {"eval_every": 5}):
        assert not cross_validates(ten, given, None, False), given
    assert cross_validates(ten, {"time": 60.0}, None, False)  # a cap, not a choice of length
    assert not cross_validates(ten, {}, "val.txt", False)
    assert not cross_validates(ten, {}, None, True)  # torchrun
    assert cross_validates(ten, {"batch_size": 4}, None, False)
    assert not cross_validates(ten, {"line_mode": False}, None, False)
    labelled = read_labelled_text("".join(f"{'ab'[i % 2]}\t{line}\n" for i, line in enumerate(short_list(10).split())))
    assert cross_validates(labelled, {}, None, False)  # a labelled list's folds are dealt from all its lines


def test_a_short_list_adapts_for_the_cross_validated_steps_on_every_line(trained_names, tmp_path, monkeypatch):
    """Twelve names of a new kind (the model's pseudo-names, each ending in -tor): five folds choose
    the steps, then the run trains all twelve for exactly that many, holding none out; the folds
    find that adapting helps on names they held out, and write nothing."""
    from chargen.training import rundir

    written = []
    save = rundir.save_checkpoint
    monkeypatch.setattr(rundir, "save_checkpoint", lambda path, **kw: (written.append(Path(path)), save(path, **kw)))
    small = tmp_path / "twelve.txt"
    small.write_text("".join(name + "tor\n" for name in short_list(12, seed=11).splitlines()), encoding="utf-8")
    out = chargen.train([str(small)], out=tmp_path / "run", start_from=str(trained_names), precision="fp32",
                        sample_every=0, time=60.0)  # a cap on each fold and on the run, which gets all of it
    best, last = read_checkpoint(out, prefer=BEST), read_checkpoint(out, prefer=LAST)
    cv = best.info["auto"]["cross_validation"]
    curve = cv["curve"]
    assert cv["folds"] == FOLDS and cv["steps"] == 1 + int(np.argmin(curve[1:])) and cv["val_loss"] == curve[cv["steps"]]
    assert cv["val_loss"] < cv["start_loss"] - 0.05, cv  # adapting to names of its own kind helps on held-out ones
    assert best.info["auto"].get("probe_seconds") is None and cv["seconds"] > 0
    assert best.info["step"] == last.info["step"] == cv["steps"]
    assert best.info["val_chars"] == 0 and best.info["train_chars"] == len(small.read_text())
    assert best.info["training_lines"] == 12 and best.train_config["val_fraction"] == 0.0
    for name in best.weights:
        np.testing.assert_array_equal(best.weights[name], last.weights[name])
    config = json.loads((out / "config.json").read_text())
    assert config["auto"]["cross_validation"] == cv and config["train"]["min_lr_ratio"] == 1.0
    assert written and {p.parent for p in written} == {out}  # the folds wrote no checkpoint
    shown = run(["info", str(out)]).stdout.decode()  # the start's loss is the cross-validated one: no "n/a"
    assert "cross-validated" in shown and "started from" in shown and "n/a" not in shown


def test_new_labels_on_a_short_list_are_cross_validated_with_a_held_out_loss_each(trained_labels, tmp_path):
    """Two new labels of 12 lines each, added to a labelled model: the folds deal the 24 lines
    whatever their labels, the run trains all of them for the steps chosen, and each label's
    cross-validated loss is kept as its held-out loss; weighted by the labels' characters, they make
    the overall one."""
    files = {"abz": toy_words("abz", 12, 21), "xyc": toy_words("xyc", 12, 22)}
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text)
    out = chargen.train([str(tmp_path / f"{name}.txt") for name in files], labels="file", out=tmp_path / "run",
                        start_from=str(trained_labels), precision="fp32", sample_every=0, time=60.0)
    best = read_checkpoint(out, prefer=BEST)
    cv = best.info["auto"]["cross_validation"]
    assert cv["folds"] == FOLDS and best.info["step"] == cv["steps"] and best.train_config["val_fraction"] == 0.0
    assert cv["val_loss"] < cv["start_loss"], cv
    per_label = cv["label_val_loss"]
    assert set(per_label) == {"abz", "xyc"}
    assert best.info["labels"]["names"] == ["abc", "xyz", "abz", "xyc"] and best.info["labels"]["val_loss"] == per_label
    chars = {name: len(text) for name, text in files.items()}  # each line's characters and its newline
    overall = sum(chars[k] * per_label[k] for k in chars) / sum(chars.values())
    assert overall == pytest.approx(cv["val_loss"], abs=2e-5)
    rows = [line.split("\t") for line in run(["info", str(out), "--labels"]).stdout.decode().splitlines()]
    listed = {name: loss for name, _, loss in rows}
    assert float(listed["abz"]) == round(per_label["abz"], 4) and listed["abc"] == "-"
    assert [name for name, _, _ in rows] == ["abz", "xyc", "abc", "xyz"]  # its own labels first


def test_a_stop_while_the_folds_run_writes_nothing(trained_names, tmp_path):
    class StopNow(TrainCallbacks):
        def should_stop(self, step: int) -> bool:
            return True

    small = tmp_path / "ten.txt"
    small.write_text(short_list(10), encoding="utf-8")
    with pytest.raises(TrainingInterrupted) as stopped:
        chargen.train([str(small)], out=tmp_path / "run", start_from=str(trained_names), precision="fp32",
                      callbacks=StopNow())
    assert stopped.value.run_dir is None and "nothing was written" in str(stopped.value)
    assert not (tmp_path / "run").exists()


def test_holding_nothing_out_trains_on_everything_and_keeps_the_last_step(prose_file, tmp_path):
    common = dict(layers=1, hidden=16, embed=8, batch_size=4, seq_len=16, eval_every=5, precision="fp32",
                  sample_every=0, val_fraction=0.0)
    whole = chargen.train([str(prose_file)], out=tmp_path / "whole", max_steps=20, **common)
    best, last = read_checkpoint(whole, prefer=BEST), read_checkpoint(whole, prefer=LAST)
    assert best.info["val_chars"] == 0 and best.info["train_chars"] == len(prose_file.read_text())
    assert best.info["step"] == 20 and not math.isfinite(best.info["best_val_loss"])
    for name in best.weights:
        np.testing.assert_array_equal(best.weights[name], last.weights[name])
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20] and all(r["val_loss"] is None for r in records)
    assert all(math.isfinite(r["train_loss"]) for r in records)
    shown = run(["info", str(whole)]).stdout.decode()
    assert "none held out" in shown and "n/a" not in shown.split("best val loss")[1].split("\n")[0]
    part = chargen.train([str(prose_file)], out=tmp_path / "part", max_steps=10, **common)
    chargen.train([str(prose_file)], resume=part, max_steps=20)  # resumed, exactly
    resumed = read_checkpoint(part, prefer=BEST)
    for name in best.weights:
        np.testing.assert_array_equal(best.weights[name], resumed.weights[name])


def test_patience_with_nothing_held_out_is_one_clear_error(prose_file, tmp_path):
    proc = run(["train", str(prose_file), "--from", "none", "--val-fraction", "0", "--patience", "3",
                "--max-steps", "5", "--layers", "1", "--hidden", "16", "-o", str(tmp_path / "r")])
    assert_clean_error(proc, "patience", "val-fraction")


def test_a_cross_validated_run_stopped_after_the_folds_resumes_exactly(trained_names, tmp_path):
    """The run after the folds is a run like any other: stopped, it resumes with the steps chosen
    (read back from its checkpoint, the folds not run again) and ends where an unstopped one does."""
    class StopInTheRun(TrainCallbacks):  # the folds report no start; the run does
        started = False

        def on_start(self, report) -> None:
            self.started = True

        def should_stop(self, step: int) -> bool:
            return self.started and step >= 3

    small = tmp_path / "ten.txt"
    small.write_text("".join(name + "tor\n" for name in short_list(10, seed=5).splitlines()), encoding="utf-8")
    common = dict(start_from=str(trained_names), precision="fp32", sample_every=0)
    whole = chargen.train([str(small)], out=tmp_path / "whole", **common)
    with pytest.raises(TrainingInterrupted) as stopped:
        chargen.train([str(small)], out=tmp_path / "part", callbacks=StopInTheRun(), **common)
    assert stopped.value.run_dir == tmp_path / "part"
    assert read_checkpoint(tmp_path / "part", prefer=LAST).info["step"] == 3
    chargen.train([str(small)], resume=tmp_path / "part")
    a, b = read_checkpoint(whole, prefer=BEST), read_checkpoint(tmp_path / "part", prefer=BEST)
    assert a.info["step"] == b.info["step"] == a.info["auto"]["cross_validation"]["steps"] > 3
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
