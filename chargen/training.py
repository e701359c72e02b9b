"""The training loop: truncated BPTT over contiguous streams, AdamW, warmup + cosine decay.

It never prints: everything a user should see goes through a `TrainCallbacks` object.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import BEST, CONFIG, LAST, LOSS_SVG, METRICS, Checkpoint, atomic_write, encode_lines, read_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, format_duration
from .data import (
    Corpus,
    FileStreams,
    check_trainable,
    line_ids,
    read_ids,
    shuffle_lines,
    split_train_val,
    unigram_entropy,
    unique_lines,
    stream_view,
    windows_per_epoch,
)
from .ingest import EncodedCorpus, text_digest
from .distributed import Dist
from .errors import ChargenError, CorpusError, TrainingError, UsageError
from .model import CharRNN, State, detach_state, matmul_weights, state_from_tensors, state_tensors
from .tokenizer import Vocab

LN2 = math.log(2)
DEFAULT_TIME = 300.0  # seconds, when no stopping rule is given
# Distinct training lines are kept in the checkpoint for `sample --novel` up to this many bytes.
MAX_LINES_BYTES = 8 * 1024 * 1024
# Settings a resumed run must share with the run it continues (the rest may change).
RESUME_FIXED = ("batch_size", "seq_len", "val_fraction", "seed")
# Divergence: skip non-finite steps; after this many in a row, roll back (at most MAX_ROLLBACKS times).
BAD_STEPS_BEFORE_ROLLBACK = 5
MAX_ROLLBACKS = 3
# A list of lines is shuffled in memory (see data.shuffle_lines) up to this many characters.
MAX_SHUFFLED_CHARS = 16_000_000
# The start-of-line state and the unigram entropy are taken from this much of the training text.
START_STATE_CHARS = 1 << 20
UNIGRAM_CHARS = 1 << 20
# On a GPU the training streams are copied to GPU memory whole when they are at most this large.
DEVICE_DATA_BYTES = 2 << 30


class TrainCallbacks:
    """Hooks the loop reports through; the default does nothing. The CLI draws a progress bar."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, progress: dict[str, Any]) -> None: ...
    def on_eval(self, metrics: dict[str, Any]) -> None: ...
    def on_notice(self, message: str) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...

    def should_stop(self, step: int) -> bool:
        """Asked after every step: True stops the run as Ctrl-C would (saved, resumable)."""
        return False


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    chars_seen: int
    best_val_loss: float
    last_val_loss: float
    elapsed: float
    interrupted: Optional[str] = None  # "SIGINT" / "SIGTERM" / "request" when stopped early
    metrics: list[dict[str, Any]] = field(default_factory=list)


# --- device and precision ---------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but torch sees no Apple GPU")
    return torch.device(name)


def cpu_has_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX: the CPU has bf16 matrix units, where bf16 autocast about doubles speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device, notice, model_config: Optional[ModelConfig] = None) -> str:
    """The precision to train in: as asked, or what `auto` finds best here; a one-line notice
    and fp32 where the asked one cannot work (and where a quick trial step fails)."""
    hidden = model_config.hidden if model_config is not None else 256
    if name == "auto":
        if device.type == "cuda":
            # Ampere and later have bf16 tensor cores; bf16 needs no loss scaling.
            name = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
        elif device.type == "cpu":
            # Measured on an AMX CPU (docs/benchmarks.md): bf16 is 1.3x fp32 at hidden 128 and
            # about 2x from 256 up; smaller models are bound by element-wise work, not matmuls.
            name = "bf16" if cpu_has_bf16_matmul() and hidden >= 128 else "fp32"
        else:
            name = "fp32"
        if name == "fp32":
            return name
        auto = True
    else:
        auto = False
        if name == "fp16" and device.type != "cuda":
            notice(f"fp16 is only used on CUDA (with a gradient scaler); training in fp32 on {device.type}; "
                   f"try --precision bf16")
            return "fp32"
        if name == "bf16" and device.type == "mps":
            notice("bf16 autocast is not supported on MPS here; training in fp32")
            return "fp32"
        if name == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
            notice("this GPU has no bf16 tensor cores (compute capability < 8.0); training in fp32; "
                   "try --precision fp16")
            return "fp32"
    if name != "fp32":
        problem = _precision_problem(device, name, model_config.cell if model_config is not None else "lstm")
        if problem is not None:
            if not auto:
                notice(f"{name} does not work here ({problem}); training in fp32")
            return "fp32"
    return name


def _precision_problem(device: torch.device, precision: str, cell: str) -> Optional[str]:
    """One tiny forward and backward step of the recurrent cell under the autocast; why it failed, if it did."""
    try:
        probe = CharRNN(ModelConfig(vocab_size=4, cell=cell, layers=1, hidden=8, embed=4)).to(device)
        x = torch.zeros(2, 3, dtype=torch.long, device=device)
        with autocast(device, precision):
            logits, _ = probe(x)
        loss = logits.float().sum()
        loss.backward()
        if not torch.isfinite(loss):
            return "a trial step gave a non-finite loss"
        return None
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- automatic model size ---------------------------------------------------------------------


def auto_settings(n_chars: int, time_budget: Optional[float], device: torch.device,
                  given: set[str]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Model and batch settings for the options the user left unset, from corpus size and budget.

    In a fixed time budget the model that wins is the largest one that still sees the corpus
    several times: char-rnn's rule of thumb is parameters of the order of the characters seen.
    Measured on a 2-core CPU in 5 minutes (docs/benchmarks.md): a 2x256 LSTM at about 35k chars/s
    sees 10M characters, right for a 1 MB corpus; a 36 KB list of names overfits anything larger
    than 2x128 within a minute, and wants dropout. A GPU sees ~30x more characters in the same
    time, so there the sizes step up. Returns (model options, train options, why).
    """
    gpu = device.type in ("cuda", "mps")
    budget = time_budget or DEFAULT_TIME
    if n_chars < 300_000:
        model = {"layers": 2, "hidden": 256 if gpu else 128, "embed": 32, "dropout": 0.2}
        train = {"batch_size": 32, "seq_len": 64}
        why = "a small corpus: a small model with dropout, short windows"
    elif n_chars < 5_000_000:
        # Measured: in 5 minutes on 2 cores, tinyshakespeare reached 1.489 with these settings,
        # 1.580 with batch 64 and lr 3e-3 (half the updates), and 1.621 with dropout 0.15 (slower
        # to learn; the budget ends before overfitting matters).
        model = {"layers": 2, "hidden": 512 if gpu else 256, "embed": 64, "dropout": 0.0}
        train = {"batch_size": 32, "seq_len": 128, "lr": 5e-3}
        why = "a corpus of about a megabyte"
    else:
        model = {"layers": 3 if gpu else 2, "hidden": 1024 if gpu else 512, "embed": 64, "dropout": 0.0}
        train = {"batch_size": 128 if gpu else 64, "seq_len": 128}
        why = "a large corpus: a large model, seen less than once, needs no dropout"
    if not gpu and budget < 120 and model["hidden"] > 128:
        model["hidden"] //= 2
        why += f"; a short budget ({format_duration(budget)}), so half the width"
    model = {k: v for k, v in model.items() if k not in given}
    train = {k: v for k, v in train.items() if k not in given}
    return model, train, why


# --- stop requests (Ctrl-C, SIGTERM) ----------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves, and returns.

    A second Ctrl-C raises KeyboardInterrupt at once, for a user who really wants out.
    """

    def __init__(self) -> None:
        self.signal: Optional[str] = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if flag.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = name

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- the schedule -----------------------------------------------------------------------------


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to min_lr_ratio * lr at progress 1."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(max(progress, 0.0), 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: CharRNN, ids: torch.Tensor, seq_len: int, device: torch.device, precision: str,
             streams: int = 32, dist: Optional[Dist] = None) -> float:
    """Mean cross-entropy (nats/char) over `ids`, laid out in streams with the state carried.
    Under torchrun each rank passes its share of the text and the sums are added up."""
    total, count = _evaluate_sums(model, ids, seq_len, device, precision, streams)
    if dist is not None:
        total, count = dist.sum(total, count)
    return total / count if count else float("nan")


def _evaluate_sums(model: CharRNN, ids: torch.Tensor, seq_len: int, device: torch.device, precision: str,
                   streams: int) -> tuple[float, int]:
    n = ids.numel()
    if n < 2:
        return 0.0, 0
    streams = max(1, min(streams, (n - 1) // max(seq_len, 1)))
    length = n // streams
    data = ids[: streams * length].view(streams, length).to(device)
    was_training = model.training
    model.eval()
    state = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for start in range(0, length - 1, seq_len):
            x = data[:, start : start + seq_len]
            y = data[:, start + 1 : start + seq_len + 1]
            x = x[:, : y.shape[1]].long()
            with autocast(device, precision):
                logits, state = model(x, state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1).long(), reduction="sum")
            total += loss.double()
            count += y.numel()
    finally:
        model.train(was_training)
    return float(total.item()), count


@torch.no_grad()
def evaluate_lines(model: CharRNN, lines: list[np.ndarray], start_state: list[np.ndarray], newline_id: int,
                   device: torch.device, precision: str, batch: int = 512, dist: Optional[Dist] = None) -> float:
    """Mean cross-entropy (nats/char) of each line scored on its own: from the start-of-line
    state, read "\\n", then predict every character of the line and the newline that ends it."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        order = sorted(range(len(lines)), key=lambda i: len(lines[i]))  # similar lengths batch together
        for b0 in range(0, len(order), batch):
            group = [lines[i] for i in order[b0 : b0 + batch]]
            width = max(len(g) for g in group)
            targets = torch.full((len(group), width), -100, dtype=torch.long)  # -100: ignored padding
            inputs = torch.full((len(group), width), newline_id, dtype=torch.long)
            for r, g in enumerate(group):
                targets[r, : len(g)] = torch.from_numpy(g)
                inputs[r, 1 : len(g)] = torch.from_numpy(g[:-1])
            state = [torch.from_numpy(a).to(device)[:, None].expand(-1, len(group), -1).contiguous()
                     for a in start_state]
            with autocast(device, precision):
                logits, _ = model(inputs.to(device), state_from_tensors(model.config.cell, state))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1),
                                   ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if dist is not None:
        total, count = dist.sum(total, count)
    return total / count if count else float("nan")


# --- checkpoint plumbing ----------------------------------------------------------------------


def model_weights(model: CharRNN) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def load_weights(model: CharRNN, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().numpy()
    return tensors, sd["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, np.ndarray], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = torch.from_numpy(np.array(value))
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@torch.no_grad()
def line_start_state(model: CharRNN, streams: torch.Tensor, newline_id: Optional[int], context: int = 128,
                     count: int = 128) -> list[np.ndarray]:
    """The model's typical state at the end of a line, just before it reads "\n".

    Sampling and evaluation start from here instead of from zeros: during training the state
    is never zero at a line start (it is carried over), so a zero state is out of distribution
    and spoils the first characters. It is the mean of the states after `count` real contexts of
    `context` characters, each ending right before a newline (anywhere, for text without one).
    Returned as arrays of shape (layers, hidden): [h] or [h, c] for an LSTM.
    """
    flat = streams.reshape(-1)
    n = flat.numel()
    context = min(context, n - 1)
    if newline_id is not None:
        ends = torch.nonzero(flat[context:] == newline_id).flatten() + context
    else:
        ends = torch.empty(0, dtype=torch.long, device=flat.device)
    if ends.numel() == 0:
        ends = torch.arange(context, n, device=flat.device)
    pick = ends[torch.linspace(0, ends.numel() - 1, min(count, ends.numel()), device=flat.device).long()]
    windows = torch.stack([flat[e - context : e] for e in pick.tolist()]).long()  # (count, context)
    was_training = model.training
    model.eval()
    try:
        _, state = model(windows)
    finally:
        model.train(was_training)
    return [t.float().mean(dim=1).cpu().numpy() for t in state_tensors(state)]


def preview_sample(model: CharRNN, vocab: Vocab, start_state: list[np.ndarray], line_oriented: bool,
                   step: int) -> str:
    """A short sample to show progress: five lines, or 200 characters of prose."""
    from .config import SampleConfig
    from .sampling import TorchStepper, derive_key, generate

    was_training = model.training
    try:
        stepper = TorchStepper(model)
        cfg = SampleConfig(num=5 if line_oriented else 1, length=60 if line_oriented else 200, temperature=0.8)
        samples = generate(stepper, vocab, "", cfg, lines=line_oriented, key=derive_key(step, 7),
                           start_state=start_state)
        return "\n".join(s.text for s in samples)
    except ChargenError as exc:  # e.g. a model too young to end a line: show why, do not stop training
        return f"(no sample: {exc})"
    finally:
        model.train(was_training)


# --- batches -----------------------------------------------------------------------------------


class WindowLoader:
    """Window k of every stream as (inputs, targets) long tensors (B, T) on the device.

    `streams` is an array (B, L), or FileStreams over a cache file: then each window is read
    from the file when needed, so a corpus larger than memory costs a few megabytes of buffer.
    On a GPU the streams go to GPU memory once when they fit, or else each window goes through
    pinned memory without blocking.
    """

    def __init__(self, streams: np.ndarray | FileStreams, seq_len: int, device: torch.device):
        self.streams, self.seq_len, self.device = streams, seq_len, device
        self.on_device = None
        rows, length = streams.shape
        itemsize = streams.dtype.itemsize
        if device.type != "cpu" and rows * length * itemsize <= DEVICE_DATA_BYTES:
            dtype = torch.uint8 if streams.dtype == np.uint8 else torch.int32
            self.on_device = torch.empty((rows, length), dtype=dtype, device=device)
            host_dtype = np.uint8 if dtype == torch.uint8 else np.int32
            for i in range(rows):  # a row at a time: never the whole corpus in host memory at once
                row = streams.row(i) if isinstance(streams, FileStreams) else np.asarray(streams[i])
                self.on_device[i].copy_(torch.from_numpy(row.astype(host_dtype, copy=False)))

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = k * self.seq_len
        if self.on_device is not None:
            block = self.on_device[:, start : start + self.seq_len + 1].long()
        else:
            if isinstance(self.streams, FileStreams):
                raw = self.streams.block(start, self.seq_len + 1)
            else:
                raw = np.asarray(self.streams[:, start : start + self.seq_len + 1])
            block = torch.from_numpy(raw.astype(np.int64))
            if self.device.type == "cuda":
                block = block.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                block = block.to(self.device)
        return block[:, :-1], block[:, 1:]  # (B, T) each


# --- the loop ---------------------------------------------------------------------------------


def train(
    corpus: Corpus | EncodedCorpus,
    config: TrainConfig,
    model_options: Optional[dict[str, Any]] = None,
    *,
    out_dir: str | os.PathLike,
    val_text: Optional[str] = None,
    val_source: Optional[str] = None,
    precision: str = "auto",
    resume: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    callbacks: Optional[TrainCallbacks] = None,
    dist: Optional[Dist] = None,
) -> TrainResult:
    """Train a CharRNN on `corpus` and write best/last checkpoints and metrics to `out_dir`.

    `resume` continues the run whose last checkpoint it names (a file or run directory):
    model, optimizer, hidden state, data position and RNG come back exactly.
    `dist` (from chargen.distributed.setup, under torchrun) trains this rank's share of the
    streams with DistributedDataParallel; only rank 0 reports and writes.
    """
    cb = callbacks or TrainCallbacks()
    main = dist is None or dist.is_main
    world = dist.world if dist is not None else 1
    if not main:
        cb = TrainCallbacks()  # the other ranks stay quiet
    config.validate()
    out = Path(out_dir)
    ckpt: Optional[Checkpoint] = None
    if resume is not None:
        ckpt = read_checkpoint(resume, prefer=LAST, with_resume=True)
        if ckpt.resume is None:
            raise UsageError(f"{ckpt.path} holds no training state (only last.safetensors does); cannot resume from it")
        for key in RESUME_FIXED:
            if key in ckpt.train_config and getattr(config, key) != ckpt.train_config[key]:
                raise UsageError(
                    f"--{key.replace('_', '-')} {getattr(config, key)} differs from the run being resumed "
                    f"({ckpt.train_config[key]}); a resumed run keeps its data layout, so drop the flag"
                )
    else:
        # Rank 0 alone decides (the others would see the step-0 checkpoint it is about to write).
        if main and (out / LAST).exists() and not overwrite:
            raise UsageError(f"{out} already holds a run; continue it with --resume {out}, "
                             f"or pass --overwrite or another --out")

    # ---- data ----
    if isinstance(corpus, Corpus):
        corpus = EncodedCorpus.from_text(corpus.text, corpus.name, corpus.sources)
    source = ", ".join(corpus.sources)
    digest = corpus.digest if val_text is None else text_digest(corpus.digest + val_text)
    if ckpt is not None and ckpt.resume.get("corpus_digest") != digest:
        raise UsageError(f"the corpus differs from the one the run in {ckpt.path.parent} was trained on; "
                         f"resume with the same corpus files")
    vocab = corpus.vocab
    if ckpt is not None and ckpt.vocab != vocab:
        raise UsageError(f"the corpus's characters differ from the vocabulary of the run in {ckpt.path.parent}")
    line_oriented = corpus.lines.line_oriented()
    if line_oriented and corpus.n_chars > MAX_SHUFFLED_CHARS:
        line_oriented = False
        cb.on_notice(f"a list of {corpus.lines.lines:,} lines is too large to shuffle in memory; "
                     f"training on it as running text, in file order")
    # A large corpus is a cache file: the parts needed are read from it, not touched through its
    # memory map, which would pin megabytes of read-ahead per touch (see FileStreams).
    from_file = corpus.cache_file if isinstance(corpus.ids, np.memmap) and not line_oriented else None

    def head(part: np.ndarray, offset: Optional[int], n: int) -> np.ndarray:
        """part[:n] in memory; `part` starts at `offset` in the corpus (None: it is not the corpus's)."""
        n = min(n, len(part))
        if from_file is not None and offset is not None:
            return read_ids(from_file, part.dtype, offset, offset + n)
        return np.asarray(part[:n])

    val_part, val_offset = None, None
    if line_oriented:
        # Lists are small: shuffle them as text (see shuffle_lines), then encode again.
        full_text = corpus.text()
        text = shuffle_lines(full_text, config.seed)
        if val_text is None:
            text, val_part = split_train_val(text, config.val_fraction)
        train_ids = vocab.encode(text)
    elif val_text is None:
        # Running text is split in place: the ids may be a memory-mapped file larger than memory.
        ids = corpus.ids
        cut = len(ids) - max(1, int(len(ids) * config.val_fraction))
        newline = vocab.index.get("\n")
        if newline is not None:  # start validation at a line start where one is near
            near = np.flatnonzero(head(ids[cut : len(ids) - 1], cut, 1000) == newline)
            if near.size:
                cut += int(near[0]) + 1
        train_ids, val_ids, val_offset = ids[:cut], ids[cut:], cut
    else:
        train_ids = corpus.ids
    if val_text is not None:
        val_ids = vocab.encode(val_text, skip_unknown=True)
    elif val_part is not None:
        val_ids = vocab.encode(val_part)
    batch_size = check_trainable(len(train_ids), config.seq_len, config.batch_size, source)
    if len(val_ids) < 2:
        raise CorpusError(f"{source} is too short for validation: its validation part has {len(val_ids)} "
                          f"character(s); use a longer corpus, a larger --val-fraction or --val-file")
    if world > 1:
        if config.batch_size % world:
            raise UsageError(f"--batch-size {config.batch_size} must be a multiple of the number of processes ({world}): "
                             f"each trains an equal share of the streams")
        batch_size -= batch_size % world
        if batch_size == 0:
            raise CorpusError(f"{source} is too short to give each of {world} processes one stream")
    if batch_size < config.batch_size:
        cb.on_notice(f"the corpus is short: using {batch_size} streams instead of --batch-size {config.batch_size}")
    streams_np = stream_view(train_ids, batch_size)  # (B, L): the global layout, whatever the world size
    # This rank's streams: a contiguous block of B / world rows.
    local = slice(dist.rank * batch_size // world, (dist.rank + 1) * batch_size // world) if dist else slice(None)
    n_windows = windows_per_epoch(streams_np, config.seq_len)
    if from_file is not None:  # the same layout, read from the file (train_ids is a prefix of it)
        local_streams = FileStreams(from_file, train_ids.dtype, batch_size, streams_np.shape[1], rows=local)
    else:
        local_streams = streams_np[local]
    chars_per_step = batch_size * config.seq_len

    # ---- model ----
    device = dist.device if dist is not None else resolve_device(config.device)
    torch.manual_seed(config.seed)
    if ckpt is not None:
        model_config = ckpt.model_config
    else:
        model_config = ModelConfig(vocab_size=len(vocab), **(model_options or {}))
        model_config.validate()
    model = CharRNN(model_config)
    if ckpt is not None:
        load_weights(model, ckpt.weights)
    model.to(device)
    precision = resolve_precision(precision, device, cb.on_notice, model_config)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding")]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embedding")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.99),
        foreach=True,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    # Training steps go through `net`: under torchrun, DDP averages the gradients in backward.
    net: torch.nn.Module = model
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    batches = WindowLoader(local_streams, config.seq_len, device)
    # Contexts for the start-of-line state come from the first part of the training text.
    start_ids = torch.from_numpy(head(train_ids, 0, START_STATE_CHARS).astype(np.int64)).to(device)
    val_tensor = torch.from_numpy(head(val_ids, val_offset, config.eval_chars).astype(np.int64))
    if dist is not None:  # each rank scores its share of the validation text
        val_tensor = val_tensor[dist.shard(val_tensor.numel())]
    # A line-oriented model is scored line by line from its start-of-line state, as it samples;
    # carrying state from the previous (unrelated) line would flatter it.
    val_lines = line_ids(vocab, vocab.decode(val_ids[: config.eval_chars])) if line_oriented else None
    if val_lines is not None and dist is not None:
        val_lines = val_lines[dist.shard(len(val_lines))]

    # ---- where we are ----
    step, epoch, k, chars_seen, elapsed_before = 0, 0, 0, 0, 0.0
    best_val, last_val = float("inf"), float("nan")
    lr_scale = 1.0  # halved by each divergence rollback
    metrics: list[dict[str, Any]] = []
    state: Optional[State] = None
    if ckpt is not None:
        r = ckpt.resume
        assert r is not None
        step, epoch, k = int(r["step"]), int(r["epoch"]), int(r["window"])
        chars_seen, elapsed_before = int(r["chars_seen"]), float(r["elapsed"])
        best_val = float(r.get("best_val_loss", float("inf")))
        last_val = float(r.get("last_val_loss", float("nan")))
        lr_scale = float(r.get("lr_scale", 1.0))
        _restore_optimizer(optimizer, ckpt.resume_tensors, r["param_groups"])
        if "state.0" in ckpt.resume_tensors:
            # Saved for all streams (layers, B, H); this rank takes its own.
            tensors = [torch.from_numpy(np.array(ckpt.resume_tensors[f"state.{j}"]))[:, local].contiguous().to(device)
                       for j in range(2 if model_config.cell == "lstm" else 1)]
            state = state_from_tensors(model_config.cell, tensors)
        torch.set_rng_state(torch.from_numpy(np.array(ckpt.resume_tensors["rng.cpu"])))
        if device.type == "cuda" and "rng.cuda" in ckpt.resume_tensors:
            torch.cuda.set_rng_state(torch.from_numpy(np.array(ckpt.resume_tensors["rng.cuda"])))
        metrics_path = out / METRICS
        if metrics_path.exists():
            metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            metrics = [m for m in metrics if m.get("step", 0) <= step]

    # ---- when to stop ----
    time_budget = config.time
    if config.max_steps is None and config.epochs is None and config.time is None:
        time_budget = DEFAULT_TIME
        cb.on_notice(f"no --max-steps, --epochs or --time given: training for {format_duration(DEFAULT_TIME)} "
                     f"(Ctrl-C stops early and saves)")
    step_limits = [s for s in (config.max_steps,
                               math.ceil(config.epochs * n_windows) if config.epochs is not None else None) if s]
    max_steps = min(step_limits) if step_limits else None

    lines_blob, n_lines = None, 0
    if line_oriented:
        distinct = unique_lines(full_text)
        blob = encode_lines(distinct)
        if blob.nbytes <= MAX_LINES_BYTES:
            lines_blob, n_lines = blob, len(distinct)
    run_info = {
        "corpus": corpus.name,
        "sources": corpus.sources,
        "val_source": val_source,
        "line_oriented": line_oriented,
        "training_lines": n_lines,
        "train_chars": int(len(train_ids)),
        "val_chars": int(len(val_ids)),
        "unigram_entropy": unigram_entropy(head(train_ids, 0, UNIGRAM_CHARS), len(vocab)),
        "precision": precision,
        "device": device.type,
    }
    train_config_dict = config.to_dict()
    vocab_json = vocab.to_json()
    flops_per_char = 6 * matmul_weights(model_config)

    cb.on_start({
        **run_info,
        "out_dir": str(out),
        "parameters": model.num_parameters(),
        "model_config": model_config.to_dict(),
        "train_config": train_config_dict,
        "batch_size": batch_size,
        "windows_per_epoch": n_windows,
        "max_steps": max_steps,
        "time_budget": time_budget,
        "resumed_from_step": step if ckpt is not None else None,
        "flops_per_char": flops_per_char,
    })

    def save(path: Path, with_resume: bool, val_loss: float, start: Optional[list[np.ndarray]] = None) -> None:
        """Write a checkpoint (rank 0). Under torchrun every rank calls it: the state is gathered."""
        full_state = None
        if with_resume and state is not None:
            full_state = state_tensors(state)
            if dist is not None:
                full_state = [dist.gather_streams(t) for t in full_state]
        if not main:
            return
        info = {
            **run_info,
            "step": step,
            "epoch": epoch,
            "chars_seen": chars_seen,
            "val_loss": val_loss,
            "best_val_loss": best_val,
            "chargen_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        resume_meta, resume_tensors = None, None
        if with_resume:
            resume_tensors, groups = _optimizer_tensors(optimizer)
            if full_state is not None:
                for j, t in enumerate(full_state):
                    resume_tensors[f"state.{j}"] = t.detach().float().cpu().numpy()
            resume_tensors["rng.cpu"] = torch.get_rng_state().numpy()
            if device.type == "cuda":
                resume_tensors["rng.cuda"] = torch.cuda.get_rng_state().numpy()
            resume_meta = {
                "step": step, "epoch": epoch, "window": k, "chars_seen": chars_seen,
                "elapsed": elapsed_before + (time.perf_counter() - t0),
                "best_val_loss": best_val, "last_val_loss": last_val, "lr_scale": lr_scale,
                "param_groups": groups, "corpus_digest": digest, "world_size": world,
            }
        if start is None:
            start = line_start_state(model, start_ids, vocab.index.get("\n"))
        save_checkpoint(path, weights=model_weights(model), model_config=model_config, vocab_json=vocab_json,
                        train_config=train_config_dict, info=info, lines_blob=lines_blob,
                        resume=resume_meta, resume_tensors=resume_tensors, start_state=start)

    def write_metrics() -> None:
        from .plot import loss_series, svg_chart

        atomic_write(out / METRICS, "".join(json.dumps(m) + "\n" for m in metrics).encode())
        atomic_write(out / LOSS_SVG, svg_chart(loss_series(metrics), title=f"chargen: {corpus.name}").encode())

    evals_since_best = 0

    def snapshot() -> dict[str, Any]:
        """The last known-good weights and optimizer state, kept in memory for a rollback."""
        return {"step": step, "model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}

    def run_eval() -> None:
        nonlocal best_val, last_val, evals_since_best, good
        elapsed = elapsed_before + time.perf_counter() - t0
        start = line_start_state(model, start_ids, vocab.index.get("\n"))
        if val_lines is not None:
            val_loss = evaluate_lines(model, val_lines, start, vocab.index["\n"], device, precision, dist=dist)
        else:
            val_loss = evaluate(model, val_tensor, config.seq_len, device, precision, dist=dist)
        loss_sum, loss_count = window_loss_sum, window_loss_count
        if dist is not None:  # the mean over all ranks' streams, as one process would have it
            loss_sum, loss_count = dist.sum(loss_sum, loss_count)
        train_loss = loss_sum / max(loss_count, 1)
        last_val = val_loss
        if math.isfinite(val_loss):
            good.update(snapshot())
        improved = val_loss < best_val
        if improved:
            best_val = val_loss
            evals_since_best = 0
        else:
            evals_since_best += 1
        record = {
            "step": step, "epoch": epoch, "chars_seen": chars_seen,
            "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5), "val_bpc": round(val_loss / LN2, 5),
            "lr": optimizer.param_groups[0]["lr"],
            "chars_per_sec": round((chars_seen - chars_at_start) / max(time.perf_counter() - t0, 1e-9), 1),
            "elapsed": round(elapsed, 2),
        }
        metrics.append(record)
        if improved:
            save(out / BEST, with_resume=False, val_loss=val_loss, start=start)
        save(out / LAST, with_resume=True, val_loss=val_loss, start=start)
        if not main:
            return
        write_metrics()
        sample = None
        if config.sample_every and len(metrics) % config.sample_every == 0:
            sample = preview_sample(model, vocab, start, line_oriented, step)
        cb.on_eval({**record, "best_val_loss": best_val, "improved": improved, "sample": sample})

    def progress_fraction(elapsed: float) -> float:
        fractions = []
        if max_steps:
            fractions.append(step / max_steps)
        if time_budget:
            fractions.append(elapsed / time_budget)
        return max(fractions) if fractions else 0.0

    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the run directory {out} ({exc.strerror or exc})") from None
        # Temp files of a process killed mid-write are useless: remove them.
        for stale in out.glob(".*.safetensors.*.tmp"):
            stale.unlink(missing_ok=True)
        for stale in out.glob(f".{METRICS}.*.tmp"):
            stale.unlink(missing_ok=True)

    flag = StopFlag()
    model.train()
    t0 = time.perf_counter()
    chars_at_start = chars_seen
    window_loss_sum, window_loss_count = 0.0, 0
    loss_acc = torch.zeros((), device=device)
    acc_steps = 0
    last_report = 0.0
    bad_steps = 0
    rollbacks = 0
    steps_since_eval = 0

    def drain_loss() -> float:
        """Move the on-device loss sum into the window's totals (one sync); the mean drained."""
        nonlocal window_loss_sum, window_loss_count, acc_steps
        if not acc_steps:
            return float("nan")
        total = float(loss_acc.item())
        window_loss_sum += total
        window_loss_count += acc_steps
        mean = total / acc_steps
        loss_acc.zero_()
        acc_steps = 0
        return mean

    good = snapshot()
    if ckpt is None:
        # From the first moment, the run directory holds a resumable checkpoint: it is the
        # first file written into it, so a kill at any moment leaves nothing else without it.
        save(out / LAST, with_resume=True, val_loss=last_val)
    # The resolved configuration this run trains with, for the record (and `--config` reuse).
    resolved = {"corpus": corpus.sources, "model": model_config.to_dict(), "train": config.to_dict(),
                "precision": precision, "device": device.type, "batch_size_used": batch_size}
    if main:
        atomic_write(out / CONFIG, (json.dumps(resolved, indent=2) + "\n").encode())
    with stop_on_signals(flag):
        while True:
            now = time.perf_counter()
            elapsed = elapsed_before + now - t0
            if max_steps is not None and step >= max_steps:
                break
            signalled, requested = bool(flag), cb.should_stop(step)
            if dist is not None:
                # Every rank must stop at the same step, and follow the same (time-based) schedule:
                # agree on the latest clock and on any stop request, in one small all-reduce.
                elapsed, sig_any, req_any = dist.max(elapsed, float(signalled), float(requested))
                signalled, requested = sig_any > 0, req_any > 0
            if time_budget is not None and elapsed >= time_budget:
                break
            if signalled:
                flag.signal = flag.signal or "SIGTERM"  # seen by another rank
                break
            if requested:
                flag.signal = "request"
                break
            if k >= n_windows:  # an epoch is done: back to the start of every stream
                epoch, k, state = epoch + 1, 0, None
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, progress_fraction(elapsed)) * lr_scale
            x, y = batches.window(k)
            with autocast(device, precision):
                logits, new_state = net(x, state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip if config.grad_clip > 0 else float("inf"))
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                # Skip a step with a non-finite loss or gradient: the weights stay as they were.
                bad_steps += 1
                optimizer.zero_grad(set_to_none=True)
                state = None
                if scaler is not None:
                    scaler.update()
                k += 1
                if bad_steps >= BAD_STEPS_BEFORE_ROLLBACK:
                    # Persistent: go back to the last good weights and optimizer, halve the learning rate.
                    if rollbacks >= MAX_ROLLBACKS:
                        raise TrainingError(
                            f"training diverged: the loss stayed non-finite after {rollbacks} rollbacks to step "
                            f"{good['step']} with a lower learning rate; try a lower --lr or --grad-clip"
                        )
                    model.load_state_dict(good["model"])
                    optimizer.load_state_dict(good["optimizer"])
                    rollbacks += 1
                    lr_scale *= 0.5
                    bad_steps = 0
                    cb.on_notice(f"non-finite loss for {BAD_STEPS_BEFORE_ROLLBACK} steps: rolled back to the weights of "
                                 f"step {good['step']}, learning rate x{lr_scale:g}")
                continue
            bad_steps = 0
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            state = detach_state(new_state)
            loss_acc += loss.detach()
            acc_steps += 1
            step += 1
            k += 1
            steps_since_eval += 1
            chars_seen += chars_per_step
            if now - last_report > 0.25 or acc_steps >= 50:
                mean_loss = drain_loss()
                last_report = now
                elapsed_now = elapsed_before + time.perf_counter() - t0
                cb.on_step({
                    "step": step, "max_steps": max_steps, "epoch": epoch, "loss": mean_loss,
                    "lr": optimizer.param_groups[0]["lr"], "chars_seen": chars_seen,
                    "chars_per_sec": (chars_seen - chars_at_start) / max(time.perf_counter() - t0, 1e-9),
                    "elapsed": elapsed_now, "time_budget": time_budget, "progress": progress_fraction(elapsed_now),
                    "best_val_loss": best_val, "val_loss": last_val,
                })
            if step % config.eval_every == 0:
                drain_loss()
                run_eval()
                window_loss_sum, window_loss_count = 0.0, 0
                steps_since_eval = 0
                if config.patience is not None and evals_since_best >= config.patience:
                    cb.on_notice(f"early stop: no better validation loss in {config.patience} evaluations")
                    break

    drain_loss()
    if isinstance(local_streams, FileStreams):
        local_streams.close()
    if flag:
        # Stopped by a signal: save where we are at once (no evaluation), so resuming is exact.
        save(out / LAST, with_resume=True, val_loss=last_val)
        if not (out / BEST).exists():
            save(out / BEST, with_resume=False, val_loss=last_val)
    elif steps_since_eval or not metrics:
        run_eval()
    elapsed = elapsed_before + time.perf_counter() - t0
    result = TrainResult(run_dir=out, steps=step, chars_seen=chars_seen, best_val_loss=best_val,
                         last_val_loss=last_val, elapsed=elapsed, interrupted=flag.signal, metrics=metrics)
    cb.on_end({
        "run_dir": str(out), "steps": step, "epochs": epoch, "chars_seen": chars_seen,
        "best_val_loss": best_val, "last_val_loss": last_val, "elapsed": elapsed,
        "chars_per_sec": (chars_seen - chars_at_start) / max(time.perf_counter() - t0, 1e-9),
        "interrupted": flag.signal, "unigram_entropy": run_info["unigram_entropy"], "precision": precision,
        "device": device.type, "parameters": model.num_parameters(),
        "flops_per_char": flops_per_char,
    })
    return result
