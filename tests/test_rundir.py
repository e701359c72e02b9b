"""A run directory has one writer: the lock, what a refused run leaves, and readers during training."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

import chargen
from chargen.checkpoint import LAST, METRICS, read_checkpoint
from chargen.errors import RunInUse
from chargen.training.rundir import LOCK, RunDir

from .conftest import TINY, assert_clean_error, chargen_exe, make_names, run


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    first = RunDir(tmp_path / "run")
    first.lock()
    with pytest.raises(RunInUse, match=rf"in use by another chargen train \(pid {os.getpid()} on "):
        RunDir(tmp_path / "run").lock()
    first.unlock()
    again = RunDir(tmp_path / "run")
    again.lock()  # released: the next writer gets it
    again.unlock()


def test_a_run_that_fails_before_writing_leaves_no_directory_behind(tmp_path):
    d = RunDir(tmp_path / "a" / "b")
    with pytest.raises(ValueError):
        with d.locked():
            raise ValueError("the corpus was too short")
    assert list(tmp_path.iterdir()) == []


def _start_training(corpus, out, *extra):
    return subprocess.Popen([chargen_exe(), "train", str(corpus), "--out", str(out), "--max-steps", "100000",
                             "--eval-every", "5", *TINY, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(path, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_train_resume_and_overwrite_into_a_directory_in_use_are_refused(tmp_path):
    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(400), encoding="utf-8")
    out = tmp_path / "run"
    proc = _start_training(corpus, out)
    try:
        _wait_for(out / METRICS)
        before = {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}  # (a write may be under way)
        for args in (["train", str(corpus), "--out", str(out), "--max-steps", "10", *TINY],
                     ["train", str(corpus), "--out", str(out), "--overwrite", "--max-steps", "10", *TINY],
                     ["train", "--resume", str(out), "--max-steps", "800", "--quiet"]):
            p = run(args, cwd=tmp_path)
            assert p.returncode == 2, p.stderr
            assert_clean_error(p, f"{out} is in use by another chargen train (pid {proc.pid} on ")
        assert {p.name for p in out.iterdir() if not p.name.endswith(".tmp")} >= before
        proc.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
        proc.wait(timeout=30)
        step = read_checkpoint(out, prefer=LAST, with_resume=True).resume["step"]
        p = run(["train", "--resume", str(out), "--max-steps", str(step + 5), "--quiet"], cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        steps = [json.loads(line)["step"] for line in (out / METRICS).read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == step + 5  # one history, no repeats
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_readers_see_whole_checkpoints_while_training_writes(tmp_path):
    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(400), encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.Popen([chargen_exe(), "train", str(corpus), "--out", str(out), "--max-steps", "120",
                             "--eval-every", "2", *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(out / "best.safetensors")
        reads = 0
        while proc.poll() is None:
            model = chargen.load(out)  # best.safetensors, replaced every few steps
            assert len(model.sample(n=3, seed=reads)) == 3
            assert read_checkpoint(out, prefer=LAST, with_resume=True).resume is not None
            reads += 1
        assert proc.returncode == 0, proc.stderr.read().decode()
        assert reads >= 5, reads
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (out / LOCK).exists()  # the lock file stays; its lock does not


def test_a_restarted_run_removes_every_temp_file_a_killed_writer_left(tmp_path):
    """A kill mid-write leaves `.<name>.<random>.tmp`; the next writer of the directory removes
    those of every file a run writes (the kill test once found a stale loss.svg temp file)."""
    stale = [".best.safetensors.a1.tmp", ".last.safetensors.b2.tmp", ".metrics.jsonl.c3.tmp",
             ".config.json.d4.tmp", ".loss.svg.e5.tmp"]
    for name in stale + [".notes.txt.f6.tmp", "keep.txt"]:
        (tmp_path / name).write_text("x")
    RunDir(tmp_path).prepare()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.f6.tmp", "keep.txt"]


def test_a_corpus_among_the_files_the_run_writes_is_refused_before_anything_is_written(tmp_path):
    """`chargen train dir/metrics.jsonl --out dir` (or a held-out file there) would replace the
    text the run reads with its own records: refused, the file as it was."""
    out = tmp_path / "run"
    out.mkdir()
    text = make_names(300)
    for name in (METRICS, "config.json", "loss.svg"):
        (out / name).write_text(text)
    for args in ([str(out / METRICS)], [str(tmp_path / "names.txt"), "--val-file", str(out / "config.json")],
                 [str(out / "loss.svg")]):
        (tmp_path / "names.txt").write_text(text)
        assert_clean_error(run(["train", *args, "--out", str(out), "--max-steps", "2", *TINY]),
                           "is a file the run in")
    assert all((out / name).read_text() == text for name in (METRICS, "config.json", "loss.svg"))
    assert sorted(p.name for p in out.iterdir()) == sorted([METRICS, "config.json", "loss.svg"])


def test_files_no_chargen_run_wrote_are_not_written_over(tmp_path):
    """`--out .` in a project with a config.json of its own, or beside another tool's
    best.safetensors: the run wrote over them. Refused, with or without --overwrite; a directory
    whose files a chargen run wrote (one killed before its first checkpoint too) is trained into."""
    from safetensors.numpy import save_file

    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(300))
    args = ["train", str(corpus), "--from", "none", "--max-steps", "2", *TINY]
    out = tmp_path / "project"
    out.mkdir()
    foreign = {"config.json": b'{"name": "my app"}\n', "metrics.jsonl": b"accuracy,0.9\n", "loss.svg": b"<svg>mine</svg>"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
        extra = ["--overwrite"] if name == "config.json" else []  # (it replaces a run, not others' files)
        assert_clean_error(run([*args, "--out", str(out), *extra]), f"holds {name}, not written by chargen")
        assert (out / name).read_bytes() == data
        (out / name).unlink()
    save_file({"w": np.zeros(3, np.float32)}, str(out / "best.safetensors"))
    before = (out / "best.safetensors").read_bytes()
    assert_clean_error(run([*args, "--out", str(out)]), "holds best.safetensors, not written by chargen")
    assert (out / "best.safetensors").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["best.safetensors"]
    (out / "best.safetensors").unlink()
    assert run([*args, "--out", str(out)]).returncode == 0  # an empty directory
    (out / LAST).unlink()  # a run killed before its first checkpoint leaves its own files: trained into again
    (out / "best.safetensors").unlink()
    proc = run([*args, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr


def test_a_run_resumed_into_another_directory_is_a_branch(tmp_path):
    """`--resume a --out b` continues run a in b. Into a b that held a run it replaced that run
    without a word; and b's curve and early stopping began at the resumed step, without a's
    evaluations before it. Now b holding a run is refused (but with --overwrite), and b's history
    is a's: its weights and records are those of a resumed in place."""
    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(300))
    options = dict(start_from="none", layers=1, hidden=16, embed=8, batch_size=8, seq_len=16, eval_every=2,
                   precision="fp32")
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    chargen.train([str(corpus)], out=a, max_steps=4, **options)
    chargen.train([str(corpus)], out=other, max_steps=2, **options)
    with pytest.raises(chargen.UsageError, match="already holds a run"):
        chargen.train([], resume=a, out=other, max_steps=8)
    assert read_checkpoint(other, prefer=LAST).info["step"] == 2
    chargen.train([], resume=a, out=other, max_steps=8, overwrite=True)
    chargen.train([], resume=a, out=b, max_steps=8)
    chargen.train([], resume=a, max_steps=8)  # in place
    records = [[json.loads(line) for line in (d / METRICS).read_text().splitlines()] for d in (a, b, other)]
    drop = lambda rs: [{k: v for k, v in r.items() if k not in ("elapsed", "chars_per_sec")} for r in rs]  # noqa: E731
    assert drop(records[1]) == drop(records[0]) == drop(records[2]) and [r["step"] for r in records[0]] == [2, 4, 6, 8]
    weights = [read_checkpoint(d, prefer=LAST).weights for d in (a, b)]
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
