"""The two losses, defined once: training's validation, `chargen eval` and Model.eval agree."""

import json

import numpy as np
import pytest
import torch

import chargen
from chargen.checkpoint import LAST, read_checkpoint
from chargen.config import ModelConfig, TrainConfig
from chargen.training.data import line_ids, read_corpus, split_train_val
from chargen import evaluation
from chargen.evaluation import NumpyScorer, line_batches, line_sums, mixture_nlls, stream_sums
from chargen.training.scorer import TorchScorer
from chargen.model import CharRNN, weights_of
from chargen.npmodel import NumpyCharRNN
from chargen.training.loop import train

from .conftest import run


def _prose(n_lines: int = 400) -> str:
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while it rains on the mat".split()
    return "".join(" ".join(rng.choice(words, size=rng.integers(5, 12))) + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def prose_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("prose-eval")
    (d / "prose.txt").write_text(_prose())
    config = TrainConfig(batch_size=8, seq_len=32, max_steps=40, eval_every=20, warmup=5, lr=1e-2, sample_every=0)
    train(read_corpus([str(d / "prose.txt")]), config, {"layers": 2, "hidden": 32, "embed": 8},
          out_dir=d / "run", precision="fp32")
    return d


def test_training_validation_equals_chargen_eval_on_the_held_out_prose(prose_run):
    """The val loss a prose run reports is what the installed `chargen eval` says of its held-out text."""
    last = read_checkpoint(prose_run / "run", prefer=LAST)
    assert not last.line_oriented
    _, held_out = split_train_val((prose_run / "prose.txt").read_text(), last.train_config["val_fraction"])
    (prose_run / "held-out.txt").write_text(held_out)
    reported = last.info["val_loss"]
    for backend in ("numpy", "torch"):
        p = run(["eval", str(prose_run / "run" / LAST), str(prose_run / "held-out.txt"), "--json", "--backend", backend])
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["loss"] == pytest.approx(reported, abs=1e-4), backend
    # and the definition matters: scored as one stream, or from another layout, the number moves
    model = chargen.load(prose_run / "run" / LAST)
    assert model.eval(held_out, streams=1)["loss"] != pytest.approx(reported, abs=1e-3)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_numpy_and_torch_scorers_give_the_same_sums(cell):
    torch.manual_seed(1)
    config = ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=24, embed=6)
    model = CharRNN(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    twin = NumpyCharRNN(config, weights_of(model))
    torch_scorer, numpy_scorer = TorchScorer(model, torch.device("cpu")), NumpyScorer(twin)
    ids = np.random.default_rng(2).integers(0, 11, size=1000)
    a, b = stream_sums(torch_scorer, ids, 16), stream_sums(numpy_scorer, ids, 16)
    assert a[1] == b[1] == 32 * (1000 // 32 - 1)  # 32 streams, the first character of each is context
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    lines = [np.append(np.random.default_rng(i).integers(1, 11, size=1 + i % 9), 0) for i in range(40)]
    start = [np.random.default_rng(3).normal(size=(2, 24)).astype(np.float32) for _ in range(config.state_tensors)]
    a, b = line_sums(torch_scorer, lines, start, 0, batch=7), line_sums(numpy_scorer, lines, start, 0)
    assert a[1] == b[1] == sum(len(x) for x in lines)
    assert a[0] == pytest.approx(b[0], rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lines_scored_a_prefix_once_score_as_each_line_alone(cell, monkeypatch):
    """chargen score steps each distinct (label, prefix) once (evaluation.prefix_nlls); each line's
    NLL must be what stepping the lines side by side, padded, gives: under each of three start
    states (and from the zero state), whatever rows a chunk holds, and with a long line cut into
    a run of its own."""
    config = ModelConfig(vocab_size=7, cell=cell, layers=2, hidden=16, embed=4)
    rng = np.random.default_rng(4)
    twin = NumpyCharRNN(config, {name: rng.normal(0, 0.6, shape).astype(np.float32)
                                 for name, shape in config.weight_shapes().items()})
    scorer = NumpyScorer(twin)
    stems = [rng.integers(1, 7, size=k) for k in (0, 1, 2, 3)]  # shared beginnings, and repeated lines
    lines = [np.append(np.concatenate([stems[i % 4], rng.integers(1, 7, size=i % 5)]), 0) for i in range(60)]
    lines += lines[:7] + [np.append(rng.integers(1, 7, size=300), 0)]
    starts = [[rng.normal(size=(2, 16)).astype(np.float32) for _ in range(config.state_tensors)] for _ in range(3)]
    starts.append(None)
    alone = np.zeros((len(lines), len(starts)))
    for k, start in enumerate(starts):
        for which, inputs, targets in line_batches(lines, 0, 5):
            alone[which, k], _ = scorer.score_rows(inputs, targets, scorer.initial(start, len(inputs)))
    for rows, cells in ((1, 1 << 21), (9, 1 << 21), (4096, 1 << 21), (4096, 200)):
        monkeypatch.setattr(evaluation, "PREFIX_CELLS", cells)  # 200: the 300-character line alone
        _, each = mixture_nlls(scorer, lines, starts, np.full(4, 0.25), 0, rows=rows)
        np.testing.assert_allclose(each, alone, rtol=1e-5)
    # (a repeated line scores as itself: to float32 rounding, as BLAS may sum a product of other rows otherwise)
    np.testing.assert_allclose(alone[60:67], alone[:7], rtol=1e-6)
    assert not np.allclose(alone[:, 0], alone[:, 1])


def test_line_loss_is_the_sum_of_each_lines_own_log_probability(trained_names):
    """Scoring a line = the log-probability the sampler gives it, newline included."""
    model = chargen.load(trained_names)
    samples = list(model.samples(n=20, seed=5, temperature=1.0))
    text = "".join(s.text + "\n" for s in samples)
    r = model.eval(text)
    assert r["chars"] == sum(s.n_chars for s in samples)
    assert r["loss"] * r["chars"] == pytest.approx(-sum(s.logprob for s in samples), rel=1e-4)
    rows = line_ids(model.vocab, text)
    assert [len(x) for x in rows] == [s.n_chars for s in samples]


def test_eval_tells_how_far_it_has_got(prose_run, trained_names):
    """Model.eval's `progress` (chargen eval's bar on a terminal) is told a rising share of the
    work, up to 1, by each way of scoring: prose in streams, lines, a labelled model's mixture of
    its 267 labels; and the loss is the same without it."""
    base, names = chargen.load("base"), chargen.load(trained_names)
    cases = [(chargen.load(prose_run / "run"), _prose(100), False),  # 12 windows
             (names, "\n".join(names.sample(1200, seed=1)) + "\n", True),  # 3 batches of lines
             (base, "\n".join(base.sample(40, seed=2)) + "\n", True)]  # runs of 14 lines x 267 labels
    for model, text, lines in cases:
        seen = []
        result = model.eval(text, lines=lines, progress=seen.append)
        assert len(seen) >= 3 and 0 < seen[0] < 1 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0), seen
        assert result == model.eval(text, lines=lines)


def test_eval_names_the_file_line_and_column_of_an_unknown_character(tmp_path):
    """`chargen eval` on a list with one character the model lacks said "at position 11" of the
    whole text: it names the file, the line and the column, and the flag that skips such characters."""
    bad = tmp_path / "list.txt"
    bad.write_text("anna\nbob\ncarΩl\n")
    p = run(["eval", "names", str(bad)])
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode() == (f"Error: {bad}: character 'Ω' at line 3, column 4 is not in the model's vocabulary "
                                 "(--skip-unknown drops such characters and counts them)\n")
    assert run(["eval", "names", str(bad), "--skip-unknown"]).returncode == 0
    with pytest.raises(chargen.VocabularyError, match="at position 2 is"):
        chargen.load("names").vocab.encode("abΩ")


def test_info_on_a_prose_model_says_nothing_of_lines_kept(prose_run, trained_names):
    """--novel is for line samples: a prose model's `chargen info` showed "training lines kept 0"."""
    prose = run(["info", str(prose_run / "run")], env={"COLUMNS": "200"}).stdout.decode()
    names = run(["info", str(trained_names)], env={"COLUMNS": "200"}).stdout.decode()
    assert "(prose)" in prose and "lines kept" not in prose
    assert "(line-oriented)" in names and "training lines kept" in names
