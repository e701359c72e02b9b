"""The CUDA path: the same claims as on the CPU, on a GPU. Skipped where torch sees none (CI).

Run them on a machine with an NVIDIA GPU: `pytest tests/test_cuda.py`. CHARGEN_TEST_DEVICE=cpu
runs the same tests on the CPU, to check the tests themselves on a machine without one.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import chargen
from chargen.checkpoint import LAST, read_checkpoint
from chargen.config import ModelConfig, TrainConfig
from chargen.model import CharRNN, TorchStepper, full_fp32, weights_of
from chargen.npmodel import NumpyCharRNN
from chargen.sampling import log_softmax
from chargen.training.data import read_corpus
from chargen.training.device import resolve_precision
from chargen.training.loop import TrainCallbacks, train

from .conftest import make_names, run

DEVICE = os.environ.get("CHARGEN_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


@pytest.fixture(autouse=True)
def _full_fp32():
    """fp32 means fp32 in these tests: cuDNN's recurrent kernels use TF32 by default (10-bit
    mantissas), which the twin and resume tests would measure instead of the code. The TF32
    default itself is held to the numpy twin by its own test, at its own tolerance."""
    with full_fp32():  # restores the settings after the test, whatever it set
        yield


def _names_corpus(tmp_path, n=300, seed=0):
    p = tmp_path / "names.txt"
    p.write_text(make_names(n, seed=seed), encoding="utf-8")
    return p


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_gpu_network_matches_the_numpy_twin(cell):
    """What a GPU trains, the numpy sampler runs: log-probabilities of the whole-sequence forward
    (cuDNN, as training runs it) and of the torch stepper one step at a time on the GPU (as
    `--backend torch` samples), against numpy on the CPU. With TF32 allowed (PyTorch's default
    for cuDNN; a caller's choice for products) the forward is off by a few 1e-3; the stepper turns
    TF32 off, so its output does not depend on those settings at all."""
    gen = torch.Generator().manual_seed(0)
    config = ModelConfig(vocab_size=23, cell=cell, layers=2, hidden=48, embed=12)
    model = CharRNN(config).eval()
    with torch.no_grad():  # random biases too, so every term of the equations is exercised
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    twin = NumpyCharRNN(config, weights_of(model))
    model = model.to(DEVICE)
    ids = np.random.default_rng(0).integers(0, 23, size=(5, 17))

    def forward(tf32: bool) -> np.ndarray:  # (B, T, V) log-probabilities of the whole-sequence forward
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(ids).to(DEVICE))
        return log_softmax(logits.float().cpu().numpy())

    def stepped(tf32: bool) -> np.ndarray:  # the same, one step at a time through the torch stepper
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        stepper = TorchStepper(model)
        state, out = stepper.init_state(5), []
        for t in range(ids.shape[1]):
            logits, state = stepper.step(ids[:, t], state)
            out.append(log_softmax(logits))
        assert torch.backends.cudnn.allow_tf32 == tf32  # the stepper restored the settings it found
        return np.stack(out, axis=1)

    state, out = twin.init_state(5), []
    for t in range(ids.shape[1]):
        logits, state = twin.step(ids[:, t], state)
        out.append(log_softmax(logits))
    reference = np.stack(out, axis=1)
    # Another summation order than numpy's: measured on an H200 up to 3e-5 (LSTM, GRU) and 6e-4
    # (the tanh RNN, whose random weights here amplify rounding); the CPU's own test holds 2e-4.
    # With TF32: 1.4e-3, 2.3e-3 and 2.0e-2.
    exact = {name: float(np.abs(got - reference).max()) for name, got in
             (("forward", forward(False)), ("forward tf32", forward(True)), ("stepper", stepped(False)))}
    print(f"{cell}: largest log-probability difference from numpy: " +
          ", ".join(f"{k} {v:.1e}" for k, v in exact.items()))
    assert exact["forward"] < 2e-3 and exact["stepper"] < 2e-3 and exact["forward tf32"] < 5e-2, exact
    np.testing.assert_array_equal(stepped(True), stepped(False))  # TF32 never reaches the sampler


def test_train_on_the_gpu_then_sample_on_the_cpu(tmp_path):
    """The installed command trains on the GPU in its automatic precision, learns, and writes a
    checkpoint that samples on the CPU (numpy) and on the GPU (torch) alike."""
    corpus = _names_corpus(tmp_path, 600)
    out = tmp_path / "run"
    p = run(["train", str(corpus), "--device", DEVICE, "--from", "none", "--layers", "1", "--hidden", "64",
             "--embed", "16", "--dropout", "0.1", "--weight-drop", "0.2", "--batch-size", "16", "--max-steps", "200",
             "--eval-every", "100", "--lr", "1e-2", "--warmup", "10", "--sample-every", "0", "--out", str(out)],
            timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 0 and "Traceback" not in err and p.stdout == b"", err
    assert "Warning" not in err, err  # e.g. cuDNN's about weights outside its one buffer (weight drop)
    info = read_checkpoint(out).info
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["device"] == DEVICE
    # The automatic precision: fp32 for this small model (bf16 from hidden 1024 on a GPU, from 128
    # on a CPU with bf16 units), and bf16 on a GPU from Ampere on for a large one.
    assert info["precision"] == "fp32", info["precision"]
    if DEVICE == "cuda":
        large = ModelConfig(vocab_size=30, hidden=1024)
        expected = "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp32"
        assert resolve_precision("auto", torch.device(DEVICE), print, large) == expected
    # Learning: the pseudo-names are a few syllables of 9 x 4 x 4 choices (about 2.2 nats a
    # character with the line ends); a model that learned nothing scores the unigram entropy.
    assert info["unigram_entropy"] > 2.6 and info["val_loss"] < 2.0, (info["val_loss"], info["unigram_entropy"])

    cpu = run(["sample", "-c", str(out), "-n", "40", "--seed", "3"])
    gpu = run(["sample", "-c", str(out), "-n", "40", "--seed", "3", "--backend", "torch", "--device", DEVICE])
    assert cpu.returncode == 0 and gpu.returncode == 0, (cpu.stderr, gpu.stderr)
    names = cpu.stdout.decode().splitlines()
    assert len(names) == 40 and all(n and n[0].isupper() for n in names), names
    # The same counter-based draws on either backend: the same names, bar a draw that lands within
    # float rounding of a boundary between two characters (none expected in 40 names).
    assert gpu.stdout == cpu.stdout
    scored = run(["eval", str(out), str(corpus), "--backend", "torch", "--device", DEVICE, "--json"])
    assert scored.returncode == 0, scored.stderr
    numpy_scored = run(["eval", str(out), str(corpus), "--json"])
    a, b = json.loads(scored.stdout)["loss"], json.loads(numpy_scored.stdout)["loss"]
    assert abs(a - b) < 1e-3, (a, b)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["lines", "streams"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_on_the_gpu_is_exact(tmp_path, precision, mode, dropout):
    """20 steps, then --resume to 40, against 40 in one go, weight drop on (torch's CUDA generator)
    and dropout between the layers (cuDNN's own random state): the RNG states and the data
    position come back exactly, so the weights match bit for bit."""
    corpus = read_corpus([str(_names_corpus(tmp_path))])
    model = {"layers": 2, "hidden": 32, "embed": 8, "dropout": dropout, "weight_drop": 0.2}
    full = TrainConfig(batch_size=8, seq_len=16, max_steps=40, eval_every=15, warmup=5, lr=5e-3, device=DEVICE,
                       line_mode=mode == "lines")
    train(corpus, full, model, out_dir=tmp_path / "once", precision=precision)

    class StopAt20(TrainCallbacks):
        def should_stop(self, step):
            return step >= 20

    first = train(corpus, full, model, out_dir=tmp_path / "twice", precision=precision, callbacks=StopAt20())
    assert first.interrupted == "request" and first.steps == 20
    train(corpus, full, None, out_dir=tmp_path / "twice", precision=precision, resume=tmp_path / "twice")
    a = read_checkpoint(tmp_path / "once", prefer=LAST)
    b = read_checkpoint(tmp_path / "twice", prefer=LAST)
    assert a.info["step"] == b.info["step"] == 40 and a.info["precision"] == precision
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


def test_fp16_trains_with_a_gradient_scaler(tmp_path):
    if DEVICE != "cuda":
        pytest.skip("fp16 is for CUDA only")
    corpus = read_corpus([str(_names_corpus(tmp_path, 600))])
    config = TrainConfig(batch_size=16, seq_len=32, max_steps=200, eval_every=100, warmup=10, lr=1e-2, device=DEVICE)
    result = train(corpus, config, {"layers": 1, "hidden": 64, "embed": 16}, out_dir=tmp_path / "run",
                   precision="fp16")
    info = read_checkpoint(tmp_path / "run").info
    assert info["precision"] == "fp16" and result.best_val_loss < 2.0, result.best_val_loss
    assert chargen.load(tmp_path / "run").sample(n=5, seed=1)


def test_torchrun_on_one_gpu_matches_one_process(tmp_path):
    """torchrun with NCCL (one process per GPU; one GPU here) trains what a plain run trains."""
    corpus = _names_corpus(tmp_path, 600)
    flags = ["--device", DEVICE, "--from", "none", "--batch-size", "8", "--seq-len", "16", "--layers", "2",
             "--hidden", "32", "--embed", "8", "--dropout", "0", "--eval-every", "3", "--precision", "fp32",
             "--lr", "1e-2", "--sample-every", "0", "--max-steps", "6"]
    single = run(["train", str(corpus), *flags, "--out", str(tmp_path / "single"), "--quiet"])
    assert single.returncode == 0, single.stderr.decode()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "chargen",
           "train", str(corpus), *flags, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    a = read_checkpoint(tmp_path / "single", prefer=LAST, with_resume=True)
    b = read_checkpoint(tmp_path / "ddp", prefer=LAST, with_resume=True)
    assert b.resume["world_size"] == 1 and a.info["step"] == b.info["step"] == 6
    for name in a.weights:
        np.testing.assert_allclose(a.weights[name], b.weights[name], atol=2e-5, rtol=1e-4, err_msg=name)


def test_automatic_sizes_are_measured_on_the_gpu(tmp_path):
    """A time budget and no shape: the candidate shapes are timed on the GPU, and the run keeps to its budget."""
    corpus = tmp_path / "prose.txt"
    corpus.write_text(make_names(3000, seed=1).replace("\n", " ") * 40, encoding="utf-8")  # 920k characters
    out = tmp_path / "auto"
    p = run(["train", str(corpus), "--device", DEVICE, "--time", "20s", "--sample-every", "0", "--out", str(out)],
            timeout=300)
    err = " ".join(p.stderr.decode().split())
    assert p.returncode == 0 and "Traceback" not in err and "Warning" not in err, err
    assert f"measured chars/s on {DEVICE}:" in err, err
    auto = json.loads((out / "config.json").read_text())["auto"]
    assert auto["measured"] and all(m["chars_per_sec"] > 0 for m in auto["measured"])
    assert auto["probe_seconds"] <= 0.03 * 20 + 0.5, auto  # the probe's bound, and a step it may overrun by
    if DEVICE == "cuda":
        # Timed apart from the device's one-time start (5 s on an H200, inside the first shape's
        # timing once: 2x64 measured at 11k characters a second, and chosen), a GPU trains small
        # shapes at hundreds of thousands a second (an H200: 2x96 in 20 s, 2x192 in 40 s).
        assert auto["chosen"]["hidden"] > 64, auto
