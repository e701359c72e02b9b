"""Faults: training killed at random moments always leaves a loadable, resumable run."""

import os
import random
import signal
import subprocess
import time

import pytest

from chargen.checkpoint import LAST, read_checkpoint

from .conftest import TINY, chargen_exe, make_names, run

# CI runs a few trials; the documented slow run uses 20: CHARGEN_KILL_TRIALS=20 pytest tests/test_faults.py
TRIALS = int(os.environ.get("CHARGEN_KILL_TRIALS", "4"))


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(600), encoding="utf-8")
    rng = random.Random(os.environ.get("CHARGEN_KILL_SEED", "0"))
    for trial in range(TRIALS):
        out = tmp_path / f"run{trial}"
        # Evaluate (and so save) every 3 steps, so kills often land in the middle of a write.
        proc = subprocess.Popen([chargen_exe(), "train", str(corpus), "--out", str(out), "--max-steps", "100000",
                                 "--eval-every", "3", *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if not out.exists():
            continue  # killed before training began: nothing to lose
        files = {p.name for p in out.iterdir()}
        if LAST not in files:  # killed while writing the very first checkpoint
            assert all(f.endswith(".tmp") or f == ".lock" for f in files), f"trial {trial}: {files}"
            continue
        ckpt = read_checkpoint(out, prefer=LAST, with_resume=True)
        step = ckpt.resume["step"]
        p = run(["train", "--resume", str(out), "--max-steps", str(step + 2), "--quiet"])
        assert p.returncode == 0, (trial, p.stderr)
        assert read_checkpoint(out, prefer=LAST, with_resume=True).resume["step"] == step + 2
        assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MB tmpfs, so that a real ENOSPC can happen (needs root; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_stops_with_a_clear_error_and_keeps_the_last_checkpoint(small_filesystem, tmp_path):
    corpus = tmp_path / "names.txt"
    corpus.write_text(make_names(600), encoding="utf-8")
    out = small_filesystem / "run"
    proc = subprocess.Popen([chargen_exe(), "train", str(corpus), "--out", str(out), "--max-steps", "100000",
                             "--eval-every", "20", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / LAST).exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (out / LAST).exists()
    step_before = read_checkpoint(out, prefer=LAST, with_resume=True).resume["step"]
    # Fill the disk: the next save cannot fit.
    with open(small_filesystem / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    stdout, stderr = proc.communicate(timeout=120)
    err = stderr.decode()
    assert proc.returncode == 1, err
    assert err.startswith("Error: ") and "No space left on device" in err and "intact" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    last = read_checkpoint(out, prefer=LAST, with_resume=True)  # still whole and loadable
    assert last.resume["step"] >= step_before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    (small_filesystem / "filler").unlink()
    p = run(["train", "--resume", str(out), "--max-steps", str(last.resume["step"] + 2), "--quiet"])
    assert p.returncode == 0, p.stderr
