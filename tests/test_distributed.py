"""Data-parallel training under torchrun (gloo on the CPU): same weights as one process, resumable across sizes."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from chargen.checkpoint import LAST, METRICS, read_checkpoint

from .conftest import make_names, run

FLAGS = ["--batch-size", "8", "--seq-len", "16", "--layers", "2", "--hidden", "32", "--embed", "8", "--dropout", "0",
         "--eval-every", "3", "--precision", "fp32", "--lr", "1e-2", "--sample-every", "0"]


def torchrun(nproc: int, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "chargen", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"Traceback" not in proc.stderr
    return proc


def _assert_same_weights(a_dir, b_dir, atol=2e-5):
    a = read_checkpoint(a_dir, prefer=LAST, with_resume=True)
    b = read_checkpoint(b_dir, prefer=LAST, with_resume=True)
    assert a.info["step"] == b.info["step"]
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], atol=atol, rtol=1e-4, err_msg=name)
    # The hidden state of every stream is saved, whatever the number of processes (none in line
    # mode: every line starts from the learned start state, a weight).
    assert a.model_config.learned_start == b.model_config.learned_start
    for j in range(2):
        if a.model_config.learned_start:
            assert f"state.{j}" not in a.resume_tensors and f"state.{j}" not in b.resume_tensors
        else:
            np.testing.assert_allclose(a.resume_tensors[f"state.{j}"], b.resume_tensors[f"state.{j}"], atol=atol * 10)
    return a, b


@pytest.fixture(scope="module")
def names_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "names.txt").write_text(make_names(600, seed=3))
    return d


@pytest.mark.parametrize("mode", ["--line-mode", "--no-line-mode"])
def test_two_gloo_processes_match_one_process(names_corpus, mode):
    """Line mode: each process's summed loss over the whole batch's characters / 2, so the mean of
    the two gradients is one process's (batches differ in length). Streams: each its rows' mean."""
    d = names_corpus
    single = run(["train", "names.txt", *FLAGS, mode, "--max-steps", "6", "--out", "single" + mode, "--quiet"], cwd=d)
    assert single.returncode == 0, single.stderr.decode()
    proc = torchrun(2, ["names.txt", *FLAGS, mode, "--max-steps", "6", "--out", "ddp" + mode], d)
    assert proc.stdout.strip() == b""  # nothing but progress, on stderr, from rank 0 alone
    err = proc.stderr.decode()
    assert err.count("Sample from it") == 1, err
    a, b = _assert_same_weights(d / ("single" + mode), d / ("ddp" + mode))
    assert a.model_config.learned_start == (mode == "--line-mode")
    assert b.resume["world_size"] == 2 and a.resume["world_size"] == 1
    # One run directory, written once: metrics at steps 3 and 6 with the same validation loss
    # (each name is scored on its own, so splitting the names across ranks adds the same sums).
    files = sorted(p.name for p in (d / ("ddp" + mode)).iterdir())
    assert files == sorted(p.name for p in (d / ("single" + mode)).iterdir())
    ma = [json.loads(x) for x in (d / ("single" + mode) / METRICS).read_text().splitlines()]
    mb = [json.loads(x) for x in (d / ("ddp" + mode) / METRICS).read_text().splitlines()]
    assert [m["step"] for m in mb] == [3, 6]
    for x, y in zip(ma, mb):
        assert abs(x["val_loss"] - y["val_loss"]) < 1e-4 and abs(x["train_loss"] - y["train_loss"]) < 1e-4


def test_resume_across_world_sizes(names_corpus):
    d = names_corpus
    # A constant learning rate: the schedule would otherwise stretch to each run's --max-steps.
    (d / "flat.toml").write_text("min_lr_ratio = 1.0\nwarmup = 0\n")
    flags = [*FLAGS, "--config", "flat.toml"]
    full = run(["train", "names.txt", *flags, "--max-steps", "8", "--out", "full8", "--quiet"], cwd=d)
    assert full.returncode == 0, full.stderr.decode()
    # 2 processes for 4 steps, then 1 process to step 8 ...
    torchrun(2, ["names.txt", *flags, "--max-steps", "4", "--out", "two-then-one"], d)
    resumed = run(["train", "--resume", "two-then-one", "--max-steps", "8", "--quiet"], cwd=d)
    assert resumed.returncode == 0, resumed.stderr.decode()
    _assert_same_weights(d / "full8", d / "two-then-one")
    # ... and 1 process for 4 steps, then 2 processes to step 8.
    first = run(["train", "names.txt", *flags, "--max-steps", "4", "--out", "one-then-two", "--quiet"], cwd=d)
    assert first.returncode == 0, first.stderr.decode()
    torchrun(2, ["--resume", "one-then-two", "--max-steps", "8"], d)
    _assert_same_weights(d / "full8", d / "one-then-two")


def test_batch_must_split_evenly(names_corpus):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "chargen",
           "train", "names.txt", *FLAGS, "--batch-size", "7", "--max-steps", "2", "--out", "odd"]
    proc = subprocess.run(cmd, capture_output=True, cwd=names_corpus, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert b"Error: --batch-size 7 must be a multiple of the number of processes (2)" in proc.stderr
    # torchrun's launcher reports the failed workers with its own traceback; ours print none.
    assert not re.search(rb'File "[^"]*chargen/', proc.stderr), proc.stderr.decode()[-2000:]


def test_a_fine_tuned_run_under_torchrun_matches_one_process(names_corpus):
    """--from under torchrun: every rank grows and calibrates the same base model, the step-0
    evaluation is one collective, and the weights match a single process's."""
    d = names_corpus
    (d / "accents.txt").write_text(make_names(300, seed=8).replace("a", "á").replace("o", "ø"), encoding="utf-8")
    run(["train", "names.txt", *FLAGS, "--max-steps", "3", "--out", "base", "--quiet"], cwd=d)
    flags = ["--batch-size", "8", "--seq-len", "16", "--eval-every", "3", "--precision", "fp32", "--sample-every", "0",
             "--dropout", "0"]
    single = run(["train", "accents.txt", "--from", "base", *flags, "--max-steps", "6", "--out", "ft1", "--quiet"], cwd=d)
    assert single.returncode == 0, single.stderr.decode()
    torchrun(2, ["accents.txt", "--from", "base", *flags, "--max-steps", "6", "--out", "ft2"], d)
    a, b = _assert_same_weights(d / "ft1", d / "ft2")
    assert a.info["from"] == b.info["from"] and a.info["from"]["new_chars"] == 2
    mb = [json.loads(x) for x in (d / "ft2" / METRICS).read_text().splitlines()]
    assert [m["step"] for m in mb] == [0, 3, 6] and mb[0]["val_loss"] == pytest.approx(a.info["from"]["val_loss"], abs=1e-4)


def test_a_labelled_list_under_torchrun_matches_one_process(tmp_path):
    """--labels file: each process trains its share of every batch's rows, each row from its label's start."""
    from .conftest import toy_words

    (tmp_path / "abc.txt").write_text(toy_words("abc", 300, 1))
    (tmp_path / "xyz.txt").write_text(toy_words("xyz", 300, 2))
    args = ["abc.txt", "xyz.txt", "--labels", "file", "--from", "none", *FLAGS, "--max-steps", "6"]
    single = run(["train", *args, "--out", "single", "--quiet"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr.decode()
    torchrun(2, [*args, "--out", "ddp"], tmp_path)
    a, b = _assert_same_weights(tmp_path / "single", tmp_path / "ddp")
    assert a.labels == b.labels == ["abc", "xyz"]
    for name in ("abc", "xyz"):  # the held-out loss of each label, summed over the ranks' shares
        assert abs(a.info["labels"]["val_loss"][name] - b.info["labels"]["val_loss"][name]) < 1e-4
