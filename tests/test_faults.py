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
            assert all(f.endswith(".tmp") for f in files), f"trial {trial}: {files}"
            continue
        ckpt = read_checkpoint(out, prefer=LAST, with_resume=True)
        step = ckpt.resume["step"]
        p = run(["train", "--resume", str(out), "--max-steps", str(step + 2), "--quiet"])
        assert p.returncode == 0, (trial, p.stderr)
        assert read_checkpoint(out, prefer=LAST, with_resume=True).resume["step"] == step + 2
        assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
