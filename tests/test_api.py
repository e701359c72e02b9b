"""The Python API (what the CLI is built on), eval, and the tokenizer export round-trip."""

import json
import math
import re

import numpy as np
import pytest

import chargen
from chargen.errors import ChargenError, VocabularyError

from .conftest import make_names, run


def test_api_load_sample_stream_eval(trained_names, tmp_path):
    model = chargen.load(trained_names)
    names = model.sample(n=5, prompt="Ma", temperature=0.8, seed=1)
    assert len(names) == 5 and all(n.startswith("Ma") for n in names)
    assert model.sample(n=5, prompt="Ma", temperature=0.8, seed=1) == names
    assert list(model.stream(prompt="Ma", n=5, seed=1)) == names  # line mode streams lines
    corpus = (trained_names.parent / "names.txt").read_text()
    r = model.eval(corpus)
    assert r["chars"] == len(corpus) and r["bpc"] == pytest.approx(r["loss"] / math.log(2))
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    # a trained model scores its own corpus far better than it scores shuffled characters
    rng = np.random.default_rng(0)
    shuffled = "".join(rng.permutation(list(corpus)))
    assert model.eval(shuffled)["loss"] > r["loss"] + 0.5


def test_eval_matches_the_training_loss_definition(trained_names):
    """Model.eval (numpy, streams) and the torch path agree on the same text."""
    text = (trained_names.parent / "names.txt").read_text()[:3000]
    a = chargen.load(trained_names, backend="numpy").eval(text)
    b = chargen.load(trained_names, backend="torch").eval(text)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    one_stream = chargen.load(trained_names).eval(text, streams=1)
    assert one_stream["loss"] == pytest.approx(a["loss"], abs=0.05)  # layout changes context a little


def test_eval_unknown_characters(trained_names):
    model = chargen.load(trained_names)
    with pytest.raises(VocabularyError, match="'#'"):
        model.eval("Kato\n#Mira\n")
    r = model.eval("Kato\n#Mira\n##", skip_unknown=True)
    assert r["skipped"] == 3 and r["chars"] == len("Kato\nMira\n")


def test_train_api_returns_the_run_directory(tmp_path, names_file):
    out = chargen.train(names_file, out=str(tmp_path / "run"), max_steps=5, layers=1, hidden=16, embed=8,
                        batch_size=4, seq_len=16, precision="fp32")  # one path, as a list of one
    assert (out / "best.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["corpus"] == [str(names_file)]
    # a path keyword of another kind is named (was a TypeError, or a str's letters read as paths)
    for keywords, message in ((dict(corpus_paths=None), "corpus_paths must be a list of text files' paths"),
                              (dict(corpus_paths=[names_file, 5]), "corpus_paths must be a list of text files' paths"),
                              (dict(out=True), "out must be a directory's path"),
                              (dict(resume=0.5), "resume must be a run directory or its last.safetensors"),
                              (dict(start_from=1), "start_from must be a checkpoint's path or a bundled model's name"),
                              (dict(val_file=[]), "val_file must be a text file's path")):
        with pytest.raises(ChargenError, match=re.escape(message)):
            chargen.train(**{"corpus_paths": [names_file], "max_steps": 1, **keywords})
    # an unknown keyword is named among every keyword train takes (model shape, loop, its own), a typo with its fix
    with pytest.raises(ChargenError, match=r"'max_step' \(max_steps\?\) \(known: .*\bhidden\b.*\bstart_from\b"):
        chargen.train([str(names_file)], out=str(tmp_path / "r2"), max_step=5)
    # numbers a program computed, and a duration written as the flag writes it
    np = pytest.importorskip("numpy")
    out = chargen.train(names_file, out=str(tmp_path / "r3"), max_steps=np.int64(3), layers=1, hidden=np.int64(16),
                        embed=8, batch_size=4, seq_len=16, lr=np.float32(0.01), time="2m", precision="fp32")
    config = json.loads((out / "config.json").read_text())
    assert (config["model"]["hidden"], config["train"]["time"], config["train"]["max_steps"]) == (16, 120.0, 3)
    with pytest.raises(ChargenError, match="time must be a positive duration such as 90s, 5m"):
        chargen.train(names_file, out=str(tmp_path / "r4"), time="soon")


def test_a_validation_file_the_run_trains_on_is_noted(tmp_path, names_file):
    """--val-file naming a corpus file (or a copy of the corpus) validates on training text: early
    stopping and the best checkpoint then follow the training loss, so a note says so; a held-out
    file gets none."""
    from chargen.training.callbacks import TrainCallbacks

    notices: list[str] = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    held_out = tmp_path / "held.txt"
    held_out.write_text("Kato\nMira\nSelin\n")
    copy = tmp_path / "copy.txt"
    copy.write_bytes(names_file.read_bytes())
    for k, val in enumerate([names_file, copy, held_out]):
        notices.clear()
        chargen.train([str(names_file)], out=str(tmp_path / f"run{k}"), val_file=str(val), start_from="none",
                      max_steps=1, layers=1, hidden=8, embed=4, batch_size=4, seq_len=8, precision="fp32",
                      callbacks=Notes())
        noted = [n for n in notices if "is text the run trains on" in n]
        assert bool(noted) == (val != held_out), (val, notices)
        assert not [n for n in notices if "given twice" in n]
    notices.clear()  # a corpus file given twice (overlapping globs): trained on twice, its held-out lines leak
    chargen.train([str(names_file), str(held_out), str(tmp_path / "." / names_file.name)], out=str(tmp_path / "twice"),
                  start_from="none", max_steps=1, layers=1, hidden=8, embed=4, batch_size=4, seq_len=8,
                  precision="fp32", callbacks=Notes())
    assert [n for n in notices if "given twice" in n] == [
        f"{tmp_path / '.' / names_file.name} is given twice: its text is trained on twice, and held-out lines may have "
        f"copies in training; give each file once (or mean it, to weigh it double)"]


def test_a_table_of_columns_is_noted_with_how_to_keep_one(tmp_path):
    """The US baby-name files are `Mary,F,7065` lines: trained on whole, a list of them learns to
    write CSV. A .csv (.tsv) whose lines nearly all hold commas (TABs) gets a note with the cut; a
    list whose lines end in spaces (a spreadsheet's cells), one with the sed that strips them."""
    from chargen.training.callbacks import TrainCallbacks

    notices: list[str] = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    names = make_names(200).split()
    for name, text, noted in (("yob.csv", "".join(f"{n},F,{i}\n" for i, n in enumerate(names)), "cut -d, -f1"),
                              ("t.tsv", "".join(f"{n}\t{i}\n" for i, n in enumerate(names)), "cut -f1"),
                              ("places.csv", "\n".join(names) + "\n", None),  # no commas: a list
                              ("yob.txt", "".join(f"{n},F\n" for n in names), None),  # not named a table
                              ("cells.txt", "".join(f"{n}  \n" for n in names), "sed "),
                              ("some.txt", "".join(f"{n} \n" if i % 3 == 0 else f"{n}\n" for i, n in enumerate(names)),
                               None)):
        (tmp_path / name).write_text(text)
        notices.clear()
        chargen.train([str(tmp_path / name)], out=str(tmp_path / f"run-{name}"), start_from="none", max_steps=1,
                      layers=1, hidden=8, embed=4, batch_size=4, seq_len=8, precision="fp32", callbacks=Notes())
        said = [n for n in notices if "all its columns" in n or "start or end in spaces" in n]
        assert (said[0].split(": ")[-1].startswith(noted) if noted else not said), (name, notices)


def test_prompts_from_an_iterator_are_read_as_they_are_drawn():
    """An iterator of prompts (lines typed at a terminal) is read one prompt at a time: the first
    prompt's samples come before the second is asked for, and they are the samples a list gives."""
    model = chargen.load()
    asked: list[str] = []

    def typed():
        for p in ("Ma", "Jo", "Ka"):
            asked.append(p)
            yield p

    samples = model.samples(2, typed(), seed=3, ends_with="a")
    first = [next(samples).text for _ in range(2)]
    assert asked == ["Ma"] and all(t.startswith("Ma") for t in first)
    assert first + [s.text for s in samples] == model.sample(2, ["Ma", "Jo", "Ka"], seed=3, ends_with="a")
    with pytest.raises(VocabularyError, match="the prompt 'X1'"):  # a bad one when it comes
        list(model.samples(1, iter(["Ma", "X1"]), seed=3))
    # check_prompt raises what drawing would, without drawing: a terminal's typo said before it is drawn
    model.check_prompt("Ma", ends_with="a")
    for prompt, options in (("X1", {}), ("Mb", {"regex": "Ma.*"})):
        with pytest.raises(ChargenError) as drawn:
            model.sample(1, prompt, **options)
        with pytest.raises(type(drawn.value), match=re.escape(str(drawn.value))):
            model.check_prompt(prompt, **options)


def test_api_refuses_arguments_of_the_wrong_kind():
    """What would fail obscurely or quietly do the wrong thing is a ChargenError naming the argument."""
    with pytest.raises(ChargenError, match="path must be"):
        chargen.load(123)
    for device in ("nonsense", "cuda:0"):  # torch's RuntimeError (an AssertionError for cuda:0 on a CPU build)
        with pytest.raises(ChargenError, match="device must be one of auto, cpu, cuda, mps"):
            chargen.load(device=device)
    with pytest.raises(ChargenError, match="device must be text"):
        chargen.load(device=5)
    model = chargen.load()
    for one_text in ("Anna", b"Anna"):  # iterated, each character would be scored as a line
        with pytest.raises(ChargenError, match="lines must be a list of lines"):
            list(model.score(one_text))
    assert [s.text for s in model.score(iter(["Anna", "Maria"]))] == ["Anna", "Maria"]
    with pytest.raises(ChargenError, match=r"prompt must be text or a list of text \(got b'Ma'\)"):  # not [77, 97]
        model.sample(2, prompt=b"Ma")
    with pytest.raises(ChargenError, match=r"text must be text, one str \(got a list\).*model.score\(lines\)"):
        model.eval(["Anna", "Maria"])


def test_numbers_a_program_computed_are_taken_as_its_own():
    """numpy's int64, float32 and bool_ (and a Fraction) are options as Python's numbers are: they
    were 'n must be a whole number (got np.int64(5))', and past the check torch's TypeError."""
    np = pytest.importorskip("numpy")
    from fractions import Fraction

    model = chargen.load()
    assert model.sample(np.int64(5), temperature=np.float32(0.5), seed=np.uint8(7), unique=np.bool_(True)) == \
        model.sample(5, temperature=0.5, seed=7, unique=True)
    assert model.sample(3, top_p=Fraction(9, 10), seed=1) == model.sample(3, top_p=0.9, seed=1)
    assert [s.text for s in model.top(np.int32(2))] == [s.text for s in model.top(2)]
    with pytest.raises(ChargenError, match="n must be a whole number"):
        model.sample(np.float64(2.5))


def test_cli_eval_and_export_round_trip(trained_names, tmp_path):
    corpus = trained_names.parent / "names.txt"
    p = run(["eval", str(trained_names), str(corpus), "--json"])
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["loss"] == pytest.approx(chargen.load(trained_names).eval(corpus.read_text())["loss"], abs=1e-6)
    bad = tmp_path / "bad.txt"
    bad.write_text("Kato\n#\n")
    p = run(["eval", str(trained_names), str(bad)])
    assert p.returncode != 0 and p.stderr.decode().startswith("Error:") and b"'#'" in p.stderr
    p = run(["eval", str(trained_names), str(bad), "--skip-unknown"])
    assert p.returncode == 0 and b"1 unknown characters skipped" in p.stdout

    tok_path = tmp_path / "tokenizer.json"
    p = run(["export", str(trained_names), "--tokenizer", str(tok_path)])
    assert p.returncode == 0, p.stderr
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    model = chargen.load(trained_names)
    text = corpus.read_text()[:500]
    assert tok.encode(text).ids == model.vocab.encode(text).tolist()
    assert tok.decode(tok.encode(text).ids) == text


def test_line_mode_eval_scores_each_line_on_its_own(trained_names):
    model = chargen.load(trained_names)
    a, b = "Kato\n", "Mirabel\n"
    ra, rb, both = model.eval(a), model.eval(b), model.eval(a + b)
    expected = (ra["loss"] * ra["chars"] + rb["loss"] * rb["chars"]) / (ra["chars"] + rb["chars"])
    assert both["loss"] == pytest.approx(expected, abs=1e-5)
    assert model.eval(b + a)["loss"] == pytest.approx(both["loss"], abs=1e-5)  # order does not matter
    # streamed, the previous line would be context: a model trained line by line never learnt any
    with pytest.raises(chargen.UsageError, match="it scores lines only; drop lines=False"):
        model.eval(a + b, lines=False)


def test_training_validation_equals_chargen_eval_on_the_held_out_lines(trained_names):
    """The val loss training reports for a names model is what `chargen eval` says of the held-out names."""
    from chargen.checkpoint import LAST, read_checkpoint
    from chargen.training.data import shuffle_lines, split_train_val

    last = read_checkpoint(trained_names, prefer=LAST)
    text = (trained_names.parent / "names.txt").read_text()
    _, val = split_train_val(shuffle_lines(text, last.train_config["seed"]), last.train_config["val_fraction"])
    reported = last.info["val_loss"]
    assert chargen.load(trained_names / LAST).eval(val)["loss"] == pytest.approx(reported, abs=2e-4)


def test_decomposed_text_is_the_same_text_to_a_model():
    """é typed as e and a combining accent (NFD: a Mac's file names, some keyboards and scrapes) is
    é (NFC) to the base model, whose corpus is NFC: the same samples for a prompt, an ending and
    `exclude`, the same scores and loss, the label asked either way; a score keeps its line as given."""
    import unicodedata

    def nfd(text):
        return unicodedata.normalize("NFD", text)

    model = chargen.load("base")
    assert nfd("José") != "José"
    for options in [dict(prompt="José"), dict(ends_with="né", label="fr"), dict(exclude=["Renée", "René"], label="fr",
                                                                               prompt="Ren", max_len=5)]:
        asked = {k: nfd(v) if isinstance(v, str) and k != "label" else [nfd(x) for x in v] if k == "exclude" else v
                 for k, v in options.items()}
        drawn = model.sample(8, seed=3, **options)
        assert model.sample(8, seed=3, **asked) == drawn
        assert all(unicodedata.is_normalized("NFC", s) for s in drawn)
    assert not {"Renée", "René"} & set(model.sample(300, seed=1, prompt=nfd("Ren"), max_len=5, label="fr",
                                                    exclude=[nfd("Renée"), nfd("René")]))
    names = ["Renée", "Zoë Brontë", "Hélène"]
    given, composed = list(model.score(map(nfd, names))), list(model.score(names))
    assert [s.text for s in given] == [nfd(n) for n in names]  # as given
    np.testing.assert_allclose([s.logprob for s in given], [s.logprob for s in composed])
    assert model.eval(nfd("\n".join(names)))["loss"] == pytest.approx(model.eval("\n".join(names))["loss"])
    with pytest.raises(VocabularyError, match=r"U\+0301, a combining mark"):
        chargen.load().sample(1, prompt="\u0301")  # the US names model has no accents: the mark is named


def test_a_model_sent_to_another_process_is_loaded_there_again(tmp_path, trained_names):
    """multiprocessing pickles what a worker is given (its spawn start is macOS's default): a Model
    held locks, so it could not be sent. It is loaded there again from its file, the same file: one
    changed since is an error, not other weights under the same name."""
    import concurrent.futures
    import multiprocessing
    import os
    import pickle
    import shutil

    path = tmp_path / "m.safetensors"
    shutil.copy(chargen.load(trained_names).checkpoint.path, path)
    model = chargen.load(path)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as workers:
        assert workers.submit(model.sample, 5, seed=3).result() == model.sample(5, seed=3)
    again = pickle.loads(pickle.dumps(model))
    assert again.sample(4, seed=1) == model.sample(4, seed=1) and again.checkpoint.path == path.resolve()
    os.utime(path, ns=(10**18, 10**18))  # written again since
    with pytest.raises(ChargenError, match=r"changed \(or went\) since the model sent to this process was loaded"):
        pickle.loads(pickle.dumps(model))
