"""Training: it learns, it resumes exactly, it stops on signals with a checkpoint."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chargen.checkpoint import BEST, LAST, METRICS, read_checkpoint
from chargen.config import ModelConfig, TrainConfig
from chargen.training.device import cpu_has_bf16_matmul
from chargen.training.data import read_corpus
from chargen.errors import CorpusError, TrainingError, UsageError, WriteError
from chargen.training.loop import WRITE_EVERY_STEPS, TrainCallbacks, learning_rate, train

from .conftest import assert_clean_error, make_names
from .conftest import run as cli_run

SMALL = {"layers": 1, "hidden": 64, "embed": 16}


def _corpus(tmp_path, text, name="c.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return read_corpus([str(p)])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_falls_far_below_unigram_entropy(tmp_path, precision):
    # A repetitive corpus: each character is nearly determined by the previous few.
    text = "".join(f"{w} " for w in ["alpha", "beta", "gamma", "delta", "epsilon"] * 400)
    corpus = _corpus(tmp_path, text)
    config = TrainConfig(batch_size=16, seq_len=32, max_steps=120, eval_every=60, warmup=10, lr=1e-2)
    notices = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    result = train(corpus, config, SMALL, out_dir=tmp_path / "run", precision=precision, callbacks=Notes())
    info = read_checkpoint(tmp_path / "run").info
    if precision == "bf16" and not cpu_has_bf16_matmul():
        # An AVX2-only CPU: oneDNN has no bf16 LSTM there, and the run says so and trains in fp32.
        assert info["precision"] == "fp32" and any("bf16 does not work here" in n for n in notices), notices
    else:
        assert info["precision"] == precision  # a CPU with bf16 units: no silent fallback to fp32
    entropy = info["unigram_entropy"]
    assert entropy > 2.0
    assert result.best_val_loss < 0.25 * entropy, (result.best_val_loss, entropy)
    metrics = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [m["step"] for m in metrics] == [60, 120]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] + 0.05
    assert abs(metrics[-1]["val_bpc"] - metrics[-1]["val_loss"] / math.log(2)) < 1e-3


@pytest.mark.parametrize("regularisers", [{}, {"embed_dropout": 0.1, "input_dropout": 0.2, "weight_drop": 0.3}])
def test_resume_is_exact(tmp_path, regularisers):
    corpus = _corpus(tmp_path, make_names(300))
    model = {"layers": 2, "hidden": 32, "embed": 8, "dropout": 0.1, **regularisers}  # dropout: the RNG must resume too
    full = TrainConfig(batch_size=8, seq_len=16, max_steps=40, eval_every=15, warmup=5, lr=5e-3)
    train(corpus, full, model, out_dir=tmp_path / "once", precision="fp32")

    class StopAt20(TrainCallbacks):
        def should_stop(self, step):
            return step >= 20

    first = train(corpus, full, model, out_dir=tmp_path / "twice", precision="fp32", callbacks=StopAt20())
    assert first.interrupted == "request" and first.steps == 20
    train(corpus, full, None, out_dir=tmp_path / "twice", precision="fp32", resume=tmp_path / "twice")
    a = read_checkpoint(tmp_path / "once", prefer=LAST)
    b = read_checkpoint(tmp_path / "twice", prefer=LAST)
    assert a.info["step"] == b.info["step"] == 40
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)
    # the metrics file continues rather than restarts
    steps = [json.loads(line)["step"] for line in (tmp_path / "twice" / METRICS).read_text().splitlines()]
    assert steps == [15, 30, 40]


def test_a_line_models_training_loss_is_its_evaluation_loss_on_the_same_lines(tmp_path):
    """Line mode trains a list as it is scored: each line from the learned start state, the
    padding masked out. The loss the trainer computes over its batches, per character, is what
    `chargen eval` (numpy, the checkpoint's start state) gives on the same lines."""
    import torch.nn.functional as F

    import chargen
    from chargen.model import from_weights
    from chargen.training.data import LineLoader, prepare_training_data

    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=4, seq_len=16, max_steps=12, eval_every=12, warmup=2, lr=1e-2)
    train(corpus, config, {"layers": 2, "hidden": 16, "embed": 8}, out_dir=tmp_path / "run", precision="fp32")
    ckpt = read_checkpoint(tmp_path / "run", prefer=LAST)
    assert ckpt.model_config.learned_start
    np.testing.assert_array_equal(np.stack(ckpt.start_state), ckpt.weights["start"])  # what sampling starts from
    data = prepare_training_data(corpus, config)
    loader = LineLoader(data.line_batches)
    assert len(loader) == data.n_windows > 3 and data.line_batches.lines_per_batch > 4  # ~64 characters a batch
    model = from_weights(ckpt.model_config, ckpt.weights).eval()
    total, count, lines = 0.0, 0, []
    for k in range(len(loader)):
        x, y, _ = loader.window(k)
        assert (x[:, 0] == data.vocab.index["\n"]).all()  # every line from the start of a line
        with torch.no_grad():
            logits, _ = model(x)
        real = int((y != -100).sum())
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item() * real
        count += real
        lines += [data.vocab.decode(row[(row >= 0)].numpy()).split("\n")[0] for row in y]
    assert count == data.line_batches.chars == sum(len(line) + 1 for line in lines)
    scored = chargen.load(ckpt.path).eval("\n".join(lines) + "\n")
    assert scored["loss"] == pytest.approx(total / count, abs=2e-5)


def test_a_line_model_weighs_every_character_alike_whatever_its_lines_length(tmp_path):
    """Lines of similar length share a batch; a batch's own mean loss would weigh a character of a
    batch of short lines more than one of long lines, and train the model towards short lines.
    Half the lines here are short and start with a, half long and start with x, so batches are
    mostly all short or all long: the model must start half its samples with a (a batch's own mean
    gave 0.67 here: 3 characters a short line against 10 a long one; 0.47 now)."""
    import random

    import chargen

    rng = random.Random(0)
    short = {"a" + "".join(rng.choices("bcdefg", k=2)) for _ in range(200)}  # 36 distinct: "abd"
    long = {"x" + "".join(rng.choices("bcdefg", k=8)) for _ in range(200)}
    lines = sorted(short) * 5 + sorted(long)[: len(short) * 5]  # as many long lines as short ones
    rng.shuffle(lines)
    corpus = _corpus(tmp_path, "\n".join(lines) + "\n")
    config = TrainConfig(batch_size=4, seq_len=24, max_steps=600, eval_every=600, warmup=5, lr=1e-2)
    train(corpus, config, {"layers": 1, "hidden": 16, "embed": 8}, out_dir=tmp_path / "run", precision="fp32")
    samples = list(chargen.load(tmp_path / "run").samples(2000, seed=1, temperature=1.0))
    share = sum(s.text.startswith("a") for s in samples) / len(samples)
    assert 0.4 < share < 0.6, share


def test_a_cached_corpus_read_from_its_file_trains_like_the_text(tmp_path, monkeypatch):
    """Large corpora are read from the ingest cache file (FileStreams), a few characters per
    stream at a time; the run must be the same, step for step, as from the text in memory."""
    import chargen.training.data
    from chargen.training.ingest import EncodedCorpus, ingest

    monkeypatch.setattr(chargen.training.data, "STREAM_CHUNK", 23)  # refill the buffers every step or so
    text = "".join(f"line {i} of some prose, with {i % 7} commas,\n" for i in range(300))
    p = tmp_path / "prose.txt"
    p.write_text(text)
    cached = ingest([str(p)], cache_dir=tmp_path / "cache")
    assert isinstance(cached.ids, np.memmap) and not cached.line_stats.line_oriented()
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=30, eval_every=10, warmup=3, lr=5e-3)
    a = train(EncodedCorpus.from_text(text, "prose"), config, SMALL, out_dir=tmp_path / "mem", precision="fp32")
    b = train(cached, config, SMALL, out_dir=tmp_path / "file", precision="fp32")
    assert [m["val_loss"] for m in a.metrics] == [m["val_loss"] for m in b.metrics]
    wa, wb = read_checkpoint(tmp_path / "mem", prefer=LAST), read_checkpoint(tmp_path / "file", prefer=LAST)
    for name in wa.weights:
        np.testing.assert_array_equal(wa.weights[name], wb.weights[name], err_msg=name)
    # ... and resuming from the file-backed run continues it as the in-memory one would.
    longer = TrainConfig(**{**config.to_dict(), "max_steps": 45})
    a2 = train(EncodedCorpus.from_text(text, "prose"), longer, None, out_dir=tmp_path / "mem", precision="fp32",
               resume=tmp_path / "mem")
    b2 = train(cached, longer, None, out_dir=tmp_path / "file", precision="fp32", resume=tmp_path / "file")
    assert a2.steps == b2.steps == 45 and a2.last_val_loss == b2.last_val_loss


def test_resume_refuses_a_different_layout_or_corpus(tmp_path):
    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=5, eval_every=5, warmup=1)
    train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    with pytest.raises(UsageError, match="batch_size 4 differs"):
        train(corpus, TrainConfig(**{**config.to_dict(), "batch_size": 4, "max_steps": 10}), None,
              out_dir=tmp_path / "run", resume=tmp_path / "run")
    other = _corpus(tmp_path, make_names(200, seed=5), "other.txt")
    with pytest.raises(UsageError, match="corpus differs"):
        train(other, TrainConfig(**{**config.to_dict(), "max_steps": 10}), None, out_dir=tmp_path / "run",
              resume=tmp_path / "run")
    with pytest.raises(UsageError, match="no training state"):
        train(corpus, config, None, out_dir=tmp_path / "run", resume=tmp_path / "run" / BEST)
    with pytest.raises(UsageError, match="already holds a run"):
        train(corpus, config, SMALL, out_dir=tmp_path / "run")


def test_a_new_run_where_one_is_refused_before_the_machine_is_measured(tmp_path):
    """`chargen train` into a directory that holds a run says so at once, not after a second of
    measuring the machine's speed for the automatic sizes (nor after cross-validating a short list)."""
    import chargen

    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(300))
    chargen.train([str(corpus)], out=tmp_path / "run", start_from="none", layers=1, hidden=16, embed=8,
                  batch_size=8, seq_len=16, max_steps=2, eval_every=2, precision="fp32")
    notices = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    for start_from in ("none", None):  # sizes measured; the bundled base adapted (a short list: cross-validated)
        with pytest.raises(UsageError, match="already holds a run"):
            chargen.train([str(corpus)], out=tmp_path / "run", start_from=start_from, max_steps=2, callbacks=Notes())
    assert not any("measured" in n or "cross-valid" in n or "adapting" in n for n in notices), notices


def test_resuming_a_run_that_had_ended_says_how_to_go_on_and_changes_nothing(tmp_path):
    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=6, eval_every=3, warmup=1)
    train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    before = read_checkpoint(tmp_path / "run", prefer=LAST).weights
    notices = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    again = train(corpus, config, None, out_dir=tmp_path / "run", resume=tmp_path / "run", callbacks=Notes())
    assert again.steps == 6
    ended = [n for n in notices if "had ended at step 6" in n]
    assert ended and "6 steps done" in ended[0] and "larger budget" in ended[0], notices
    after = read_checkpoint(tmp_path / "run", prefer=LAST).weights
    assert all(np.array_equal(before[k], after[k]) for k in before)
    notices.clear()
    longer = train(corpus, TrainConfig(**{**config.to_dict(), "max_steps": 9}), None, out_dir=tmp_path / "run",
                   resume=tmp_path / "run", callbacks=Notes())
    assert longer.steps == 9 and not any("had ended" in n for n in notices)


def test_a_stop_request_saves_a_resumable_checkpoint(tmp_path):
    import os
    import signal

    corpus = _corpus(tmp_path, make_names(300))

    class StopAtStep(TrainCallbacks):
        def on_step(self, report):
            if report.step >= 3:
                os.kill(os.getpid(), signal.SIGINT)

    config = TrainConfig(batch_size=8, seq_len=16, max_steps=1000, eval_every=500, warmup=1)
    result = train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32", callbacks=StopAtStep())
    assert result.interrupted == "SIGINT" and 3 <= result.steps < 1000
    last = read_checkpoint(tmp_path / "run", prefer=LAST, with_resume=True)
    assert last.resume["step"] == result.steps
    assert (tmp_path / "run" / BEST).exists()
    again = train(corpus, TrainConfig(**{**config.to_dict(), "max_steps": result.steps + 2}), None,
                  out_dir=tmp_path / "run", resume=tmp_path / "run", precision="fp32")
    assert again.steps == result.steps + 2


def test_nonfinite_loss_is_skipped_rolled_back_then_gives_up(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=30, eval_every=10, warmup=1)
    real = torch.nn.functional.cross_entropy

    def nan_on(calls_to_poison):
        calls = {"n": 0}

        def loss_fn(*args, **kwargs):
            calls["n"] += 1
            loss = real(*args, **kwargs)
            return loss * float("nan") if calls["n"] in calls_to_poison else loss

        return loss_fn

    class Notes(TrainCallbacks):
        def __init__(self):
            self.notes = []

        def on_notice(self, message):
            self.notes.append(message)

    # Two bad windows: skipped, training goes on, no rollback.
    monkeypatch.setattr("chargen.training.loop.F.cross_entropy", nan_on({3, 4}))
    notes = Notes()
    result = train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32", callbacks=notes)
    assert result.steps == 30 and not notes.notes
    assert all(np.isfinite(w).all() for w in read_checkpoint(tmp_path / "run").weights.values())

    # A burst of bad windows after the first evaluation: one rollback with a halved learning rate.
    # (training calls the loss once per step; evaluation calls it once per window, 2 windows here)
    monkeypatch.setattr("chargen.training.loop.F.cross_entropy", nan_on(set(range(16, 23))))
    notes = Notes()
    result = train(corpus, config, SMALL, out_dir=tmp_path / "run2", precision="fp32", callbacks=notes)
    assert result.steps == 30
    assert any("rolled back to the weights of step 10" in n and "x0.5" in n for n in notes.notes), notes.notes
    assert read_checkpoint(tmp_path / "run2", prefer=LAST, with_resume=True).resume["lr_scale"] == 0.5
    assert all(np.isfinite(w).all() for w in read_checkpoint(tmp_path / "run2").weights.values())

    # Always non-finite: it gives up with a clear message.
    monkeypatch.setattr("chargen.training.loop.F.cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match="diverged.*rollbacks"):
        train(corpus, config, SMALL, out_dir=tmp_path / "run3", precision="fp32")


def test_a_finite_divergence_is_rolled_back_then_gives_up(tmp_path, monkeypatch):
    """--lr 1000 gave val losses of 4e19 nats a character, finite, so no guard saw them: the run
    went on, saved them as its best and said nothing. An evaluation far above a uniform guess over
    the vocabulary (where a new model starts) is rolled back as non-finite steps are, and is neither
    the best nor written. An adapted model's bar is its own loss before training, where higher: on
    text unlike what it knows a trained model starts far above a uniform guess (a toy's 3.6 nats
    over 7 characters, ln 7 = 1.95, in test_folds)."""
    from chargen.training.loop import Trainer

    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=30, eval_every=10, warmup=1)
    real = Trainer.validation_loss
    calls = {"n": 0}

    def blown_at_second(self, start):
        calls["n"] += 1
        return 1e19 if calls["n"] == 2 else real(self, start)

    class Notes(TrainCallbacks):
        def __init__(self):
            self.notes = []

        def on_notice(self, message):
            self.notes.append(message)

    monkeypatch.setattr(Trainer, "validation_loss", blown_at_second)
    notes = Notes()
    result = train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32", callbacks=notes)
    assert result.steps == 30 and len(notes.notes) == 1, notes.notes
    assert notes.notes[0].startswith("the loss (1e+19 nats a character at step 20) rose more than 1 above a uniform "
                                     "guess over the vocabulary (") and "rolled back to the weights of step 10" in notes.notes[0]
    assert read_checkpoint(tmp_path / "run", prefer=LAST, with_resume=True).resume["lr_scale"] == 0.5
    assert read_checkpoint(tmp_path / "run").info["best_val_loss"] < 5  # the blown evaluation is not the best
    # a real one: a learning rate of 1,000 diverges at every try, and the run says so
    monkeypatch.setattr(Trainer, "validation_loss", real)
    with pytest.raises(TrainingError, match=r"training diverged: the loss \(.* nats a character at step \d+\) rose "
                                            r"more than 1 above a uniform guess .*after 3 rollbacks"):
        train(corpus, TrainConfig(**{**config.to_dict(), "lr": 1000.0, "max_steps": 200}), SMALL,
              out_dir=tmp_path / "hot", precision="fp32")


def test_running_out_of_memory_is_one_error_and_keeps_the_checkpoints_written(tmp_path, monkeypatch):
    """torch's allocator failing mid-run (a large batch's activations, a shared GPU) is a
    TrainingError naming what to shrink, not a traceback; the best checkpoint written before stays.
    Any other RuntimeError is not dressed up as one."""
    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=30, eval_every=10, warmup=1)
    real = torch.nn.functional.cross_entropy

    def failing_at(call: int, message: str):
        calls = {"n": 0}

        def loss_fn(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                raise RuntimeError(message)
            return real(*args, **kwargs)

        return loss_fn

    oom = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 64 bytes"
    monkeypatch.setattr("chargen.training.loop.F.cross_entropy", failing_at(20, oom))
    with pytest.raises(TrainingError, match=r"^out of memory on cpu while training: make the model smaller"):
        train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    assert read_checkpoint(tmp_path / "run").info["step"] == 10
    monkeypatch.setattr("chargen.training.loop.F.cross_entropy", failing_at(20, "some other failure"))
    with pytest.raises(RuntimeError, match="^some other failure$"):
        train(corpus, config, SMALL, out_dir=tmp_path / "run2", precision="fp32")


def test_a_run_resumed_where_its_model_does_not_fit_says_to_resume_it_elsewhere(tmp_path, monkeypatch):
    """Resuming, the shape is the run's own: the advice is where to resume it, not to make the model
    smaller; the run's checkpoints stay as they were."""
    from chargen.errors import ModelTooLarge

    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=6, eval_every=3, warmup=1)
    train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    before = (tmp_path / "run" / LAST).read_bytes()
    monkeypatch.setattr("chargen.training.device.free_memory", lambda device: 1000)
    with pytest.raises(ModelTooLarge, match=r"free: resume it where more memory is free$"):
        train(corpus, TrainConfig(batch_size=8, seq_len=16, max_steps=9, eval_every=3, warmup=1), None,
              out_dir=tmp_path / "run", precision="fp32", resume=tmp_path / "run")
    with pytest.raises(ModelTooLarge, match=r"free: make the model smaller \(--hidden, --layers\)$"):
        train(corpus, config, SMALL, out_dir=tmp_path / "new", precision="fp32")
    assert (tmp_path / "run" / LAST).read_bytes() == before


@pytest.mark.parametrize("cgroup, files, free_gb", [
    (None, {}, 8),  # no cgroup file: the host's MemAvailable
    (None, {"proc/meminfo": "MemTotal:       16777216 kB\nMemAvailable:    8388608 kB\nSwapFree:        2097152 kB"},
     10),  # and its free swap
    ("0::/\n", {"sys/fs/cgroup/memory.max": "2147483648", "sys/fs/cgroup/memory.current": "536870912"}, 1.5),  # v2, limited
    ("0::/\n", {"sys/fs/cgroup/memory.max": "max", "sys/fs/cgroup/memory.current": "536870912"}, 8),  # v2, no limit
    ("0::/user.slice/run\n", {"sys/fs/cgroup/user.slice/run/memory.max": "34359738368",  # a limit above the host's free memory
                              "sys/fs/cgroup/user.slice/run/memory.current": "0"}, 8),
    ("4:memory:/process_api/x\n0::/\n", {"sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes": "9223372036854771712",
                                          "sys/fs/cgroup/memory/process_api/x/memory.usage_in_bytes": "5"}, 8),  # v1, no limit
    ("4:memory:/docker/abc\n", {"sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824",  # v1, seen from inside a container
                                "sys/fs/cgroup/memory/memory.usage_in_bytes": "268435456"}, 0.75),
])
def test_the_memory_a_run_may_use_is_the_hosts_or_its_containers_limit(tmp_path, cgroup, files, free_gb):
    from chargen.training.device import free_memory

    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16777216 kB\nMemAvailable:    8388608 kB\nSwapFree:              0 kB\n")
    if cgroup is not None:
        (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert free_memory(torch.device("cpu"), root=str(tmp_path)) == int(free_gb * 2**30)


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_allocated(tmp_path):
    """--hidden 200000 (a typo) needs terabytes for its weights and optimizer state: the installed
    command says so in one line, before allocating any of it, and writes nothing."""
    from .conftest import run

    (tmp_path / "names.txt").write_text("".join(n + "\n" for n in make_names(100)), encoding="utf-8")
    for budget in (["--max-steps", "1"], ["--time", "1m"]):  # (a minute measures the shape first)
        r = run(["train", str(tmp_path / "names.txt"), "--hidden", "200000", *budget, "-o", str(tmp_path / "run")])
        errors = [line for line in r.stderr.decode().splitlines() if line.startswith("Error:")]
        assert r.returncode == 1 and "Traceback" not in r.stderr.decode() and len(errors) == 1, r.stderr.decode()
        assert "parameters) needs at least" in errors[0] and errors[0].endswith("free: make the model smaller (--hidden, --layers)")
        assert not (tmp_path / "run").exists()


def test_a_run_evaluated_every_step_writes_its_state_every_few_steps_and_resumes_exactly(tmp_path, monkeypatch):
    """Evaluating every step (a short list adapting does) writes best.safetensors at every better
    evaluation but last.safetensors and the metrics only past each multiple of WRITE_EVERY_STEPS
    and at the end; a run that dies in between resumes from the last write exactly."""
    import os

    corpus = _corpus(tmp_path, make_names(300))
    every = WRITE_EVERY_STEPS
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=2 * every + 10, eval_every=1, warmup=5, lr=5e-3)
    real_replace, writes = os.replace, []
    monkeypatch.setattr("chargen.files.os.replace",
                        lambda src, dst: (writes.append(Path(dst).name), real_replace(src, dst))[1])
    train(corpus, config, SMALL, out_dir=tmp_path / "once", precision="fp32")
    assert writes.count(LAST) == 4  # at the start, past 25 and 50 steps, at the end (60)
    assert writes.count(BEST) >= 5  # every better evaluation

    class Crash(TrainCallbacks):
        def on_eval(self, report):
            if report.step == every + 12:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(corpus, config, SMALL, out_dir=tmp_path / "twice", precision="fp32", callbacks=Crash())
    assert read_checkpoint(tmp_path / "twice", prefer=LAST).info["step"] == every
    train(corpus, config, None, out_dir=tmp_path / "twice", precision="fp32", resume=tmp_path / "twice")
    a, b = (read_checkpoint(tmp_path / run, prefer=LAST) for run in ("once", "twice"))
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "twice" / METRICS).read_text().splitlines()]
    assert steps == list(range(1, 2 * every + 11))  # each evaluation once: the lost ones again, none twice


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import os

    corpus = _corpus(tmp_path, make_names(200))
    every = WRITE_EVERY_STEPS  # last.safetensors is written at evaluations this far apart at least
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=3 * every, eval_every=every, warmup=1)
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        if str(dst).endswith(LAST):
            calls["n"] += 1
            if calls["n"] >= 3:  # the 1st save is at step 0, the 2nd at the first evaluation
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("chargen.files.os.replace", replace)
    with pytest.raises(WriteError, match="No space left on device.*intact"):
        train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    last = read_checkpoint(tmp_path / "run", prefer=LAST, with_resume=True)
    assert last.resume["step"] == every  # the save before, whole
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_short_corpus_and_short_batch(tmp_path):
    with pytest.raises(CorpusError, match="too short"):
        train(_corpus(tmp_path, "abcdefghij" * 3), TrainConfig(seq_len=64, max_steps=1), None, out_dir=tmp_path / "r")
    notes = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notes.append(message)

    for line_mode, note in ((False, "streams"), (None, "lines a batch")):
        notes.clear()
        result = train(_corpus(tmp_path, make_names(30), "s.txt"),
                       TrainConfig(batch_size=64, seq_len=16, max_steps=2, line_mode=line_mode), SMALL,
                       out_dir=tmp_path / f"r2{line_mode}", callbacks=Notes(), precision="fp32")
        assert result.steps == 2 and any(note in n for n in notes), notes


def test_schedule_warms_up_then_decays_to_the_floor():
    c = TrainConfig(lr=1.0, warmup=10, min_lr_ratio=0.1, schedule="cosine")
    assert learning_rate(c, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(c, 10, 0.0) == pytest.approx(1.0)
    assert learning_rate(c, 50, 0.5) == pytest.approx(0.55)
    assert learning_rate(c, 99, 1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_every_schedule_falls_from_the_peak_to_the_floor_without_rising(schedule):
    c = TrainConfig(lr=2.0, warmup=0, min_lr_ratio=0.25, schedule=schedule)
    rates = [learning_rate(c, 1, p / 100) for p in range(101)]
    assert rates[0] == pytest.approx(2.0) and rates[-1] == pytest.approx(0.5)
    assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:]))
    halfway = {"cosine": 1.25, "linear": 1.25, "wsd": 2.0}[schedule]  # wsd holds the peak until 80%
    assert rates[50] == pytest.approx(halfway)
    assert (rates[80] == pytest.approx(2.0)) == (schedule == "wsd")


def _fake_device(flops_per_sec: float, overhead: float = 0.0):
    """A device that trains at `flops_per_sec` (6 FLOPs per matmul weight per character) after a
    fixed per-character `overhead` in seconds; each measurement takes a second of its time."""
    from chargen.config import ModelConfig

    calls = []

    def measure(options, batch_size, seq_len, seconds):
        calls.append((options["layers"], options["hidden"], batch_size, seq_len, seconds))
        weights = ModelConfig(vocab_size=65, **options).matmul_weights
        return 1.0 / (overhead + 6 * weights / flops_per_sec), min(1.0, seconds)

    measure.calls = calls
    return measure


def test_auto_sizes_follow_the_measured_speed():
    from chargen.training.sizing import SEEN_PER_PARAMETER, auto_sizes

    def sizes(device, n_chars=1_000_000, time_budget=300.0, **kw):
        return auto_sizes(n_chars, 65, time_budget=time_budget, accelerator=False, given=kw.pop("given", {}),
                          measure=device, **kw)

    slow, fast, very_fast = _fake_device(30e9), _fake_device(120e9), _fake_device(10e12)
    a_slow, a_fast, a_gpu = sizes(slow), sizes(fast), sizes(very_fast)
    # A slower machine picks a smaller model for the same corpus and budget; each pick sees enough
    # characters per parameter, and the shape after it would not have (or the corpus caps it).
    assert a_slow.model["hidden"] < a_fast.model["hidden"] <= a_gpu.model["hidden"], (a_slow.why, a_fast.why)
    for auto in (a_slow, a_fast):
        last = auto.measured[-1]
        assert last["chars_per_sec"] * 300 * 0.97 < SEEN_PER_PARAMETER * last["parameters"], auto.measured
        chosen = next(m for m in auto.measured if m["shape"] == f"2x{auto.model['hidden']}")
        assert chosen["chars_per_sec"] * 300 * 0.97 >= SEEN_PER_PARAMETER * chosen["parameters"]
    # The corpus caps the model however fast the device: 1M characters feed at most ~1.2M parameters.
    assert "the corpus feeds at most" in a_gpu.why and a_gpu.model["hidden"] == 256
    assert sizes(very_fast, n_chars=50_000_000).model["hidden"] > 256
    # Measuring stays within 3% of the budget, and is reported.
    for auto, device in ((a_slow, slow), (a_fast, fast)):
        assert 0 < auto.probe_seconds <= 0.03 * 300 and len(auto.measured) == len(device.calls)
    # A list of names: short windows, a small model, and dropout and weight drop for the many epochs it will see.
    names = sizes(fast, n_chars=200_000)
    assert names.train["seq_len"] == 64 and names.model["hidden"] <= 128 and names.model["dropout"] > 0
    assert names.model["weight_drop"] > 0 and "weight drop" in names.why
    assert sizes(fast, n_chars=200_000, given={"weight_drop": 0.0}).model.get("weight_drop") is None  # given: kept
    assert sizes(fast, n_chars=50_000_000).model["weight_drop"] == 0.0  # a big corpus, seen a few times: none
    # A list trained line by line feeds more parameters a character than running text of its size:
    # 60,000 characters cap running text at 2x64 and let a list take 2x128 on a device fast enough.
    assert sizes(very_fast, n_chars=60_000).model["hidden"] == 64
    assert sizes(very_fast, n_chars=60_000, by_line=True).model["hidden"] == 128
    assert sizes(very_fast, n_chars=20_000, by_line=True).model["hidden"] == 64  # a short list: the smallest
    # Up to a 2x128's size: 200,000 characters of a list take no more (5 a character would allow 2x256).
    assert sizes(very_fast, n_chars=200_000, by_line=True).model["hidden"] == 128
    # A shorter budget on the same machine: a smaller model, or the same.
    assert sizes(slow, time_budget=60).model["hidden"] <= a_slow.model["hidden"]
    # Given flags are kept, and used for measuring: here the batch and the depth.
    device = _fake_device(30e9)
    auto = sizes(device, given={"batch_size": 16, "layers": 3})
    assert "batch_size" not in auto.train and "layers" not in auto.model
    assert {(c[0], c[2]) for c in device.calls} == {(3, 16)}
    # A given width is measured only for its dropout, and the reason names no corpus cap.
    given = sizes(_fake_device(10e12), n_chars=200_000, given={"hidden": 256})
    assert "hidden" not in given.model and given.model["dropout"] > 0 and "corpus feeds" not in given.why, given.why
    # A step budget needs no measuring: the characters seen are known.
    device = _fake_device(30e9)
    stepped = sizes(device, time_budget=None, max_steps=4000)  # 4000 x 32 x 64 = 8.2M characters
    assert device.calls == [] and stepped.model["hidden"] == 192 and stepped.measured == []
    # A budget too short to measure in 3% of it: the smallest shape, no measuring.
    device = _fake_device(30e9)
    assert sizes(device, time_budget=5).model["hidden"] == 64 and device.calls == []


def test_auto_sizes_stop_at_the_shapes_the_machines_memory_can_train():
    """A fast device with little memory: the ladder stops below the first shape that does not fit
    (the probe's ModelTooLarge), and chooses among the shapes measured; where even the smallest
    does not fit, that is the error."""
    from chargen.errors import ModelTooLarge
    from chargen.training.sizing import auto_sizes

    fast = _fake_device(10e12)

    def small_memory(limit):
        def measure(options, batch_size, seq_len, seconds):
            if ModelConfig(vocab_size=65, **options).parameters > limit:
                raise ModelTooLarge("too large")
            return fast(options, batch_size, seq_len, seconds)
        return measure

    free = auto_sizes(50_000_000, 65, time_budget=300.0, accelerator=False, given={}, measure=fast)
    held = auto_sizes(50_000_000, 65, time_budget=300.0, accelerator=False, given={}, measure=small_memory(1_000_000))
    assert free.model["hidden"] > 256 and held.model["hidden"] == 256, (free.why, held.why)  # 2x256: 0.8M parameters
    with pytest.raises(ModelTooLarge):
        auto_sizes(50_000_000, 65, time_budget=300.0, accelerator=False, given={}, measure=small_memory(1_000))


def test_a_shape_whose_timing_runs_out_of_memory_is_too_large_for_the_sizes(monkeypatch):
    """Torch's allocator failing while a shape is timed (a batch's activations on a small GPU) is
    ModelTooLarge, where the automatic sizes stop their ladder, not an error that ends the run."""
    from chargen.errors import ModelTooLarge
    from chargen.training.probe import measure_rate

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("chargen.training.probe.loss_and_gradients", no_memory)
    with pytest.raises(ModelTooLarge, match="^out of memory on cpu while training"):
        measure_rate({"layers": 1, "hidden": 8, "embed": 4}, 10, 2, 4, device=torch.device("cpu"), precision="fp32",
                     seconds=1.0)


@pytest.mark.parametrize("by_line, n_labels", [(False, 0), (True, 0), (True, 7)])
def test_the_sizes_note_counts_the_parameters_the_run_builds(by_line, n_labels):
    # A list's model learns a start state (one a label): the note counts it as the model does.
    from chargen.model import CharRNN
    from chargen.training.sizing import auto_sizes

    auto = auto_sizes(200_000, 30, time_budget=None, epochs=10, accelerator=False, given={}, by_line=by_line,
                      n_labels=n_labels)
    built = CharRNN(ModelConfig(vocab_size=30, learned_start=by_line, n_labels=n_labels, **auto.model))
    assert f"({built.num_parameters():,} parameters)" in auto.why, auto.why


@pytest.mark.parametrize("epochs, dropout, weight_drop", [(10, 0.0, 0.0), (16, 0.0, 0.25), (50, 0.1, 0.25),
                                                           (149, 0.1, 0.25), (150, 0.2, 0.5), (200, 0.2, 0.5)])
def test_the_regularisers_grow_with_the_epochs_a_run_will_see(epochs, dropout, weight_drop):
    from chargen.training.sizing import auto_sizes

    auto = auto_sizes(200_000, 30, time_budget=None, epochs=epochs, accelerator=False, given={})
    assert (auto.model["dropout"], auto.model["weight_drop"]) == (dropout, weight_drop), auto.why
    assert ("weight drop 0.5" in auto.why, "weight drop 0.25" in auto.why) == (weight_drop == 0.5, weight_drop == 0.25)


def test_auto_sizes_are_recorded_and_a_resumed_run_keeps_them(tmp_path, monkeypatch):
    import chargen
    from chargen.training import setup  # where the run setup calls the probe

    corpus = tmp_path / "prose.txt"
    # Prose of 300,000 characters (lines of 120): room in the corpus for shapes up to 2x128.
    corpus.write_text("\n".join(" ".join(["the cat sat on the mat", "a dog ran in the fog"] * 3)[:119]
                                 for _ in range(2500)) + "\n")
    slow, fast = _fake_device(3e9, overhead=1e-6), _fake_device(300e9)

    class StopAfter3(TrainCallbacks):  # a 100 s budget, cut short after 3 steps (saved, resumable)
        def should_stop(self, step):
            return step >= 3

    chosen = {}
    for name, device in (("slow", slow), ("fast", fast)):
        monkeypatch.setattr(setup, "measure_rate", lambda options, vocab, b, t, device=None, precision=None,
                            seconds=0.0, fake=device: fake(options, b, t, seconds))
        with pytest.raises(chargen.TrainingInterrupted):
            chargen.train([str(corpus)], out=tmp_path / name, time=100, eval_every=50, sample_every=0,
                          callbacks=StopAfter3())
        run = tmp_path / name
        config = json.loads((run / "config.json").read_text())
        assert config["auto"]["measured"] and config["auto"]["probe_seconds"] <= 3.0
        assert config["auto"]["chosen"]["hidden"] == config["model"]["hidden"]
        chosen[name] = config["model"]["hidden"]
        # The device's one-time start (on a GPU: CUDA, cuDNN, cuBLAS, 5 s on an H200) is paid by a
        # tiny untimed step first, so that it falls in no shape's timing; only the shapes are recorded.
        assert device.calls[0] == (1, 8, 2, 4, 0.0) and device.calls[1][:2] == (2, 64), device.calls
        assert [m["shape"] for m in config["auto"]["measured"]][0] == "2x64"
    assert chosen["slow"] < chosen["fast"], chosen

    # The same fast device on a list of 60,000 characters: line by line it feeds a 2x128, and the
    # same lines trained as running text (--no-line-mode) only the smallest shape.
    names = tmp_path / "names.txt"
    names.write_text(make_names(8000))
    for line_mode, hidden in ((None, 128), (False, 64)):
        out = tmp_path / f"names-{line_mode}"
        with pytest.raises(chargen.TrainingInterrupted):
            chargen.train([str(names)], out=out, start_from="none", time=100, eval_every=50, sample_every=0,
                          line_mode=line_mode, callbacks=StopAfter3())
        config = json.loads((out / "config.json").read_text())
        assert config["model"]["hidden"] == hidden, config["auto"]["why"]

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(setup, "measure_rate", refuse)
    chargen.train(resume=tmp_path / "slow", max_steps=6)
    config = json.loads((tmp_path / "slow" / "config.json").read_text())
    assert config["model"]["hidden"] == chosen["slow"] and config["auto"]["chosen"]["hidden"] == chosen["slow"]
    assert read_checkpoint(tmp_path / "slow", prefer=LAST).info["step"] == 6


def test_the_probe_times_real_steps_and_leaves_the_run_rng_alone():
    from chargen.training.probe import measure_rate

    torch.manual_seed(5)
    before = torch.get_rng_state()
    small = measure_rate({"layers": 1, "hidden": 16, "embed": 8}, 20, 4, 16, device=torch.device("cpu"),
                         precision="fp32", seconds=5.0)
    large = measure_rate({"layers": 2, "hidden": 256, "embed": 64}, 20, 4, 16, device=torch.device("cpu"),
                         precision="fp32", seconds=5.0)
    assert torch.equal(torch.get_rng_state(), before)
    assert small[0] > 1.5 * large[0] > 0, (small, large)  # 2x256 does ~300x the work of 1x16
    assert 0 < small[1] < 5.0 and 0 < large[1] < 5.0
    # No time for timed steps: the warm-up step alone gives the estimate, on the slow side.
    hurried = measure_rate({"layers": 2, "hidden": 256, "embed": 64}, 20, 4, 16, device=torch.device("cpu"),
                           precision="fp32", seconds=1e-3)
    assert hurried[1] < large[1] and 0 < hurried[0] < 3 * large[0], (hurried, large)


def test_a_run_with_no_step_count_stops_when_validation_stops_improving(tmp_path):
    corpus = _corpus(tmp_path, make_names(60))  # a tiny list: overfit within a few hundred steps
    config = TrainConfig(batch_size=8, seq_len=16, time=120, eval_every=20, warmup=5, lr=1e-2, sample_every=0,
                         schedule="cosine")  # a schedule that falls from the start (wsd: the next test)
    model = {"layers": 1, "hidden": 128, "embed": 16}
    result = train(corpus, config, model, out_dir=tmp_path / "run", precision="fp32")
    assert result.stopped.startswith("early stop: no better validation loss in 5 evaluations"), result.stopped
    assert result.elapsed < 60 and result.metrics[-1]["step"] < 5000
    best = min(result.metrics, key=lambda m: m["val_loss"])
    assert result.metrics[-1]["step"] - best["step"] == 5 * 20
    assert f"at step {best['step']:,}" in result.stopped
    # A step count alone runs to its end.
    again = train(corpus, TrainConfig(**{**config.__dict__, "time": None, "max_steps": 400}), model,
                  out_dir=tmp_path / "steps", precision="fp32")
    assert again.steps == 400 and again.stopped == "400 steps done"


def test_a_stall_at_the_peak_starts_the_decay_instead_of_ending_the_run(tmp_path):
    """wsd holds the peak rate, where validation plateaus: a stall there starts the decay (over the
    share of the run it would have had) instead of ending the run before it; resuming after the
    stall goes on exactly as the uninterrupted run."""
    corpus = _corpus(tmp_path, make_names(60))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=4000, patience=5, eval_every=10, warmup=5, lr=1e-2,
                         sample_every=0)
    assert (config.schedule, config.min_lr_ratio) == ("wsd", 0.0)  # the defaults
    model = {"layers": 1, "hidden": 128, "embed": 16}
    notices = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    result = train(corpus, config, model, out_dir=tmp_path / "run", precision="fp32", callbacks=Notes())
    stall = next(m["step"] for k, m in enumerate(result.metrics)
                 if k >= 5 and all(m2["val_loss"] >= min(x["val_loss"] for x in result.metrics[:k - 4])
                                   for m2 in result.metrics[k - 4:k + 1]))
    assert stall < 0.8 * 4000, "the run never stalled at its peak: the test needs a smaller list"
    assert result.steps == math.ceil(stall / 0.8) < 4000, (stall, result.steps)  # the decay's share: 20% of the run
    assert result.stopped.startswith("validation stalled at the peak learning rate and the decay begun then is done")
    assert any("the learning rate decays to its floor from here" in n for n in notices), notices
    rates = [m["lr"] for m in result.metrics]
    peak = [r for m, r in zip(result.metrics, rates) if m["step"] <= stall]
    after = [r for m, r in zip(result.metrics, rates) if m["step"] > stall]
    assert all(r == pytest.approx(1e-2) for r in peak) and len(after) >= 3
    assert all(b < a for a, b in zip([peak[-1], *after], after)) and after[-1] < 1e-3  # falling, to the floor
    # Killed (-9) right after the stall's evaluation, and resumed: the same run to the same weights.
    class CopyAtStall(TrainCallbacks):
        def on_eval(self, report):
            if report.step == stall:
                shutil.copytree(tmp_path / "twice", tmp_path / "killed", ignore=shutil.ignore_patterns(".lock"))

    train(corpus, config, model, out_dir=tmp_path / "twice", precision="fp32", callbacks=CopyAtStall())
    again = train(corpus, config, None, out_dir=tmp_path / "killed", precision="fp32", resume=tmp_path / "killed")
    assert again.steps == result.steps and again.stopped == result.stopped
    a, b = read_checkpoint(tmp_path / "run", prefer=LAST), read_checkpoint(tmp_path / "killed", prefer=LAST)
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


def test_a_stall_in_the_decay_does_not_end_the_run(tmp_path, monkeypatch):
    """wsd's decay brings its gain in its last steps: a stall during the decay on schedule (here a
    validation curve that improves until 85% of the run, then stays flat) lets the run go to its end."""
    from chargen.training.loop import Trainer

    flat_from = 170
    monkeypatch.setattr(Trainer, "validation_loss", lambda self, start: 3.0 - 0.01 * min(self.run.step, flat_from))
    corpus = _corpus(tmp_path, make_names(60))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=200, patience=2, eval_every=10, warmup=5, sample_every=0)
    result = train(corpus, config, {"layers": 1, "hidden": 16, "embed": 8}, out_dir=tmp_path / "run", precision="fp32")
    steps = [m["step"] for m in result.metrics]
    assert steps[-1] == 200 and result.steps == 200 and result.stopped == "200 steps done", (steps, result.stopped)
    assert result.metrics[-1]["lr"] < result.metrics[steps.index(flat_from)]["lr"]  # the decay ran on
    # The same curve under cosine, whose stall policy is unchanged, stops two evaluations after its best.
    cosine = train(corpus, TrainConfig(**{**config.__dict__, "schedule": "cosine"}), {"layers": 1, "hidden": 16, "embed": 8},
                   out_dir=tmp_path / "cosine", precision="fp32")
    assert cosine.steps == flat_from + 2 * 10 and cosine.stopped.startswith("early stop"), cosine.stopped


def test_precision_falls_back_with_a_notice(monkeypatch):
    from chargen.training import device as dev
    from chargen.config import ModelConfig

    cpu = torch.device("cpu")
    notices = []
    assert dev.resolve_precision("fp16", cpu, notices.append) == "fp32"
    assert "fp16 is only used on CUDA" in notices[-1]
    # The real trial step works for every cell in bf16 on a CPU with bf16 units; on one without
    # (AVX2 only) oneDNN has no bf16 LSTM, and the trial says why ...
    if dev.cpu_has_bf16_matmul():
        for cell in ("lstm", "gru", "rnn"):
            assert dev.precision_problem(cpu, "bf16", cell) is None
    else:
        problem = dev.precision_problem(cpu, "bf16", "lstm")
        assert problem and "\n" not in problem
        notices.clear()
        assert dev.resolve_precision("bf16", cpu, notices.append, ModelConfig(vocab_size=10, hidden=64)) == "fp32"
        assert notices == [f"bf16 does not work here ({problem}); training in fp32"]
    # ... and when it fails, the run goes on in fp32, saying why in one line.
    monkeypatch.setattr(dev, "precision_problem", lambda *a: "no bf16 kernel for this cell")
    assert dev.resolve_precision("bf16", cpu, notices.append) == "fp32"
    assert notices[-1] == "bf16 does not work here (no bf16 kernel for this cell); training in fp32"
    # `auto` never insists: it quietly keeps fp32; tiny models stay in fp32 anyway.
    count = len(notices)
    assert dev.resolve_precision("auto", cpu, notices.append) == "fp32" and len(notices) == count
    monkeypatch.undo()
    small = ModelConfig(vocab_size=10, hidden=64)
    assert dev.resolve_precision("auto", cpu, notices.append, small) == "fp32"


def test_auto_precision_on_a_gpu_takes_bf16_only_where_it_was_measured_faster(monkeypatch):
    """On an H200, fp32 (TF32 in cuDNN) trained hidden 128-512 as fast as bf16 or faster, and
    bf16 was 1.3x faster from 1024 (docs/benchmarks.md, "The CUDA path"); before Ampere there are
    no bf16 tensor cores. The rule, without a GPU: the device's capability is what it reads."""
    from chargen.training import device as dev

    gpu = torch.device("cuda")
    for capability, hidden, expected in (((9, 0), 512, "fp32"), ((9, 0), 1024, "bf16"), ((8, 0), 2048, "bf16"),
                                         ((7, 5), 1024, "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert dev._auto_precision(gpu, hidden) == expected, (capability, hidden)


def test_training_leaves_the_callers_random_state_alone(tmp_path):
    """The run seeds its own randomness; the caller's global generator is as it was, and what the
    caller drew before does not change the run."""
    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=6, eval_every=3, warmup=1)
    model = {**SMALL, "layers": 2, "dropout": 0.2}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(corpus, config, model, out_dir=tmp_path / "a", precision="fp32")
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(1000)  # the caller draws: the next run must not notice
    train(corpus, config, model, out_dir=tmp_path / "b", precision="fp32")
    a, b = read_checkpoint(tmp_path / "a", prefer=LAST), read_checkpoint(tmp_path / "b", prefer=LAST)
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


def test_resuming_from_a_tampered_training_state_is_a_checkpoint_error(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from chargen.errors import CheckpointError

    corpus = _corpus(tmp_path, make_names(200))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=4, eval_every=2, warmup=1)
    train(corpus, config, SMALL, out_dir=tmp_path / "run", precision="fp32")
    last = tmp_path / "run" / LAST
    with safe_open(str(last), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["resume.optim.0.exp_avg"] = np.zeros((3, 3), np.float32)  # the wrong shape for its parameter
    save_file(tensors, str(last), metadata=meta)
    longer = TrainConfig(**{**config.to_dict(), "max_steps": 6})
    with pytest.raises(CheckpointError, match="training state does not fit"):
        train(corpus, longer, None, out_dir=tmp_path / "run", resume=tmp_path / "run", precision="fp32")
    meta["resume"] = meta["resume"].replace('"step": 4', '"step": "four"')
    save_file(tensors, str(last), metadata=meta)
    with pytest.raises(CheckpointError, match="malformed 'step'"):
        train(corpus, longer, None, out_dir=tmp_path / "run", resume=tmp_path / "run", precision="fp32")
    meta["resume"] = meta["resume"].replace('"step": "four"', '"step": 4').replace('"end": 1.0', '"end": 0.0')
    save_file(tensors, str(last), metadata=meta)
    with pytest.raises(CheckpointError, match="malformed 'end'"):  # the run's end as a share of its budget
        train(corpus, longer, None, out_dir=tmp_path / "run", resume=tmp_path / "run", precision="fp32")


def test_the_regularisers_act_in_training_only_and_each_one_drops():
    import torch

    from chargen.model import CharRNN

    torch.manual_seed(0)
    x = torch.randint(0, 20, (6, 9))
    base = ModelConfig(vocab_size=20, hidden=16, embed=8, layers=2)
    reference = CharRNN(base)
    for option in ("embed_dropout", "input_dropout", "weight_drop"):
        model = CharRNN(ModelConfig(**{**base.to_dict(), option: 0.5}))
        model.load_state_dict(reference.state_dict())  # the same weights: only the option differs
        model.train()
        a, _ = model(x)
        b, _ = model(x)
        assert not torch.equal(a, b), option  # a fresh mask each call
        model.eval()
        reference.eval()
        assert torch.equal(model(x)[0], reference(x)[0]), option  # off outside training: sampling is unchanged


def _torch_adamw(model, config: TrainConfig) -> torch.optim.AdamW:
    """torch's own AdamW over make_optimizer's parameter groups of `model`, as make_optimizer sets it."""
    from chargen.training.loop import make_optimizer

    groups = make_optimizer(model, config).param_groups
    return torch.optim.AdamW([{"params": list(g["params"]), "weight_decay": g["weight_decay"]} for g in groups],
                             lr=config.lr, betas=(0.9, 0.99), foreach=True)


def test_chargens_adamw_is_torchs_bit_for_bit_without_its_compiler():
    """make_optimizer's AdamW steps through torch's functional AdamW: the same weights and state as
    torch.optim.AdamW after every step (learning rates changing, a parameter without a gradient
    now and then, weight decay on one group), and either one resumes from the other's state."""
    import copy

    from chargen.model import CharRNN
    from chargen.training.loop import make_optimizer

    torch.manual_seed(0)
    ours_model = CharRNN(ModelConfig(vocab_size=11, layers=2, hidden=16, embed=6, learned_start=True))
    torch_model = copy.deepcopy(ours_model)
    config = TrainConfig(lr=5e-3, weight_decay=0.1)
    ours = make_optimizer(ours_model, config)
    theirs = _torch_adamw(torch_model, config)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]

    def step(model, optimizer, k):
        x = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(k))
        logits, _ = model(x)
        optimizer.zero_grad(set_to_none=True)
        logits.logsumexp(-1).mean().backward()
        if k % 5 == 3:
            model.embedding.weight.grad = None  # a parameter that got no gradient this step
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1 - k / 40)
        optimizer.step()

    def same(a_model, b_model, a_opt, b_opt):
        for p, q in zip(a_model.parameters(), b_model.parameters()):
            assert torch.equal(p, q)
        a, b = a_opt.state_dict(), b_opt.state_dict()
        assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
        for k in a["state"]:
            for name in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(a["state"][k][name], b["state"][k][name]), (k, name)

    for k in range(25):
        step(ours_model, ours, k)
        step(torch_model, theirs, k)
        same(ours_model, torch_model, ours, theirs)
    assert ours.state_dict()["state"][0]["step"].item() == 25
    # Either resumes from the other's state (checkpoints written before this optimizer still resume).
    resumed_ours, resumed_theirs = copy.deepcopy(torch_model), copy.deepcopy(ours_model)
    a = make_optimizer(resumed_ours, config)
    a.load_state_dict(copy.deepcopy(theirs.state_dict()))  # a copy, as a checkpoint's is: torch shares the tensors
    b = _torch_adamw(resumed_theirs, config)
    b.load_state_dict(copy.deepcopy(ours.state_dict()))
    for k in range(25, 30):
        for model, optimizer in ((ours_model, ours), (resumed_ours, a), (resumed_theirs, b)):
            step(model, optimizer, k)
    same(ours_model, resumed_ours, ours, a)
    same(ours_model, resumed_theirs, ours, b)


def test_training_never_imports_torchs_compiler(tmp_path):
    """torch._dynamo took about 1 s of a ten-name `chargen train` (a fifth of it): a run, the automatic
    sizes' probe, weight drop and a resume included, never imports it."""
    import subprocess
    import sys

    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(300), encoding="utf-8")
    code = ("import sys, chargen\n"
            f"chargen.train([{str(corpus)!r}], out={str(tmp_path / 'run')!r}, time=6, start_from='none', sample_every=0,\n"
            "              weight_drop=0.2, dropout=0.1)\n"
            f"chargen.train(resume={str(tmp_path / 'run')!r}, max_steps=10**6, time=8)\n"
            "print('torch._dynamo' in sys.modules, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"], done.stdout


def test_chargens_adamw_under_a_gradient_scaler_is_torchs():
    """fp16 training steps through torch's GradScaler (on CUDA; its CPU twin here): scaled, unscaled,
    a step with an infinite gradient skipped, the same weights as torch's AdamW."""
    import copy

    from chargen.model import CharRNN
    from chargen.training.loop import make_optimizer

    torch.manual_seed(0)
    ours_model = CharRNN(ModelConfig(vocab_size=7, layers=1, hidden=8, embed=4))
    torch_model = copy.deepcopy(ours_model)
    ours = make_optimizer(ours_model, TrainConfig(lr=1e-2))
    theirs = _torch_adamw(torch_model, TrainConfig(lr=1e-2))
    for model, optimizer in ((ours_model, ours), (torch_model, theirs)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for k in range(6):
            x = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(k))
            logits, _ = model(x)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(logits.logsumexp(-1).mean() * (float("inf") if k == 2 else 1.0)).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        assert scaler.get_scale() < 2.0**10  # the infinite step was seen and skipped
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        assert torch.equal(p, q)


def test_a_resumed_run_keeps_its_data_layout(tmp_path):
    """The settings that lay the data out are the run's: a resumed run refuses a change of them,
    line mode among them (a prose run resumed with --line-mode went on line by line, its model
    without a start state of its own)."""
    corpus = _corpus(tmp_path, "".join(f"{n} the {n} of {n}\n" for n in make_names(300).split()))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=4, eval_every=2, warmup=1)
    run = tmp_path / "run"
    train(corpus, config, {"layers": 1, "hidden": 16, "embed": 8}, out_dir=run, precision="fp32")
    for change, shown in ((dict(line_mode=True), "line_mode True differs from the run being resumed (not given)"),
                          (dict(batch_size=4), "batch_size 4 differs from the run being resumed (8)"),
                          (dict(seed=7), "seed 7 differs from the run being resumed (1337)")):
        with pytest.raises(UsageError, match=re.escape(shown) + "; a resumed run keeps its data layout"):
            train(corpus, TrainConfig(**{**config.to_dict(), "max_steps": 6, **change}), None, out_dir=run,
                  resume=run, precision="fp32")
    # from the command line, before the corpus is read: `--labels tab` read the unlabelled corpus and
    # said its line 1 had no TAB
    for flags, shown in ((["--labels", "tab"], "--labels tab differs from the run being resumed (not given)"),
                         (["--batch-size", "4"], "--batch-size 4 differs")):
        assert_clean_error(cli_run(["train", "--resume", str(run), "--max-steps", "6", *flags]), shown)
    assert train(corpus, TrainConfig(**{**config.to_dict(), "max_steps": 6}), None, out_dir=run, resume=run,
                 precision="fp32").steps == 6


def test_a_validation_file_with_characters_the_model_lacks_says_what_it_leaves_out(tmp_path):
    """--val-file's characters outside the vocabulary were dropped without a word, and a list's line
    lost its unknown letters ("Ωμέγα" gone, "Caffè" validated as "Caff"): a list's such lines are now
    left out whole, prose's characters, each said; nothing left is an error naming the file's part."""
    import chargen

    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(300))
    notices = []

    class Notes(TrainCallbacks):
        def on_notice(self, message):
            notices.append(message)

    def trained(val: str, **options):
        (tmp_path / "val.txt").write_text(val)
        out = chargen.train([str(corpus)], out=tmp_path / f"run{len(notices)}", start_from="none", layers=1, hidden=16,
                            embed=8, batch_size=8, seq_len=16, max_steps=1, precision="fp32",
                            val_file=str(tmp_path / "val.txt"), callbacks=Notes(), **options)
        return read_checkpoint(out).info["val_chars"]

    known = "\n".join(make_names(20, seed=3).split()) + "\n"
    assert trained(known) == len(known)
    assert trained(known + "Ωμέγα\nCaffè\n") == len(known)  # two lines left out whole
    said = [n for n in notices if "2 lines with characters the model does not know (" in n]
    assert len(said) == 1 and "'Ω'" in said[0] and "'è'" in said[0] and "left out of validation" in said[0], notices
    with pytest.raises(chargen.CorpusError, match="no line of the validation file holds only characters the model knows"):
        trained("Ωμέγα\n")
