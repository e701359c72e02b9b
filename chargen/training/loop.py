"""The training loop: truncated BPTT over contiguous streams (a list: line by line), AdamW, warmup
then the schedule (warmup-stable-decay by default; config.SCHEDULES).

`train()` is the algorithm; `Trainer` holds one run's model, optimizer, data and RunState and
does its steps, evaluations and checkpoints. Everything else lives where its concern does: data
layout and windows in data.py, device and precision in device.py, the losses in evaluation.py,
what is saved and restored in rundir.py, automatic sizes in sizing.py. Nothing here prints:
everything a user should see goes through a chargen.training.callbacks.TrainCallbacks.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import signal
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .._version import __version__
from ..checkpoint import BEST, LAST, Checkpoint, encode_lines, read_checkpoint
from ..config import (DEFAULT_PATIENCE, DEFAULT_TIME, SCHEDULES, STABLE_UNTIL, ModelConfig, SampleConfig, TrainConfig,
                      format_duration)
from ..errors import ChargenError, CheckpointError, TrainingError, UsageError
from ..evaluation import label_line_sums, line_sums, stream_sums
from ..model import (CharRNN, State, TorchStepper, detach_state, evaluating, line_start_state, load_weights,
                     state_from_tensors, state_tensors, weights_of)
from ..sampling.drawing import generate
from ..sampling.labels import resolve_labels
from ..sampling.randomness import derive_key
from .callbacks import LN2, EndReport, EvalReport, StartReport, StepReport, TrainCallbacks
from .data import PAD, Corpus, LineLoader, TrainData, WindowLoader, calibration_rows, prepare_training_data
from .device import autocast, check_fits, out_of_memory_reported, resolve_device, resolve_precision
from .distributed import Dist
from .finetune import ClosestLabels, Lineage, calibrated_bias, file_sha256, grow_weights, stand_ins, start_labels_text, start_weights
from .ingest import EncodedCorpus
from .optimizer import AdamW
from .rundir import RunDir, RunState, branches, check_resumable
from .scorer import TorchScorer

__all__ = ["train", "TrainResult", "TrainCallbacks", "learning_rate"]

# Distinct training lines are kept in the checkpoint for `sample --novel` up to this many bytes.
MAX_LINES_BYTES = 8 * 1024 * 1024
# Divergence: skip non-finite steps; after this many in a row, roll back (at most MAX_ROLLBACKS times).
BAD_STEPS_BEFORE_ROLLBACK = 5
MAX_ROLLBACKS = 3
# An evaluation's loss this far above where the run started (a new model: a uniform guess over the
# vocabulary, ln V nats a character; a model adapted: its own loss before the first step, higher
# where the text is unlike what it knows) is a divergence too, finite as it is (--lr 1000 gave 4e19).
DIVERGED_ABOVE_START = 1.0
# Progress is reported (one device sync) after this many seconds or steps, whichever comes first.
REPORT_SECONDS = 0.25
REPORT_STEPS = 50
# last.safetensors (the run's whole state, the optimizer's included: 7 MB for the base model) and
# the metrics files are written at the first evaluation past each multiple of this many steps
# (every evaluation at the default --eval-every), at a stall and at the end. A short list adapting
# is evaluated every step, and writing them at each made its run five times longer; best.safetensors
# is still written at every better evaluation. A run killed in between resumes from the previous
# write, exactly, and evaluates again what came after it.
WRITE_EVERY_STEPS = 25


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    chars_seen: int
    best_val_loss: float
    last_val_loss: float
    elapsed: float
    interrupted: Optional[str] = None  # "SIGINT" / "SIGTERM" / "request" when stopped early
    stopped: str = ""  # why it ended (EndReport.stopped)
    metrics: list[dict[str, Any]] = field(default_factory=list)


def train(
    corpus: Corpus | EncodedCorpus,
    config: TrainConfig,
    model_options: Optional[dict[str, Any]] = None,
    *,
    out_dir: str | os.PathLike,
    val_text: Optional[str] = None,
    holdout: Optional[Sequence[int]] = None,
    val_source: Optional[str] = None,
    precision: str = "auto",
    resume: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    callbacks: Optional[TrainCallbacks] = None,
    dist: Optional[Dist] = None,
    base: Optional[Checkpoint] = None,
    closest: Optional[ClosestLabels] = None,
    sizing: Optional[dict[str, Any]] = None,
    write: bool = True,
) -> TrainResult:
    """Train a CharRNN on `corpus` and write best/last checkpoints and metrics to `out_dir`.

    `resume` continues the run whose last checkpoint it names (a file or run directory):
    model, optimizer, hidden state, data position and RNG come back exactly.
    `dist` (from chargen.training.distributed.setup, under torchrun) trains this rank's share of the
    streams with DistributedDataParallel; only rank 0 reports and writes. `base` (a trained
    model's checkpoint) starts a new run from its weights, grown to the corpus's vocabulary
    (chargen.training.finetune); the run records it and evaluates it before the first step (`closest`:
    the ClosestLabels of a labelled base, shared by the runs of a cross-validation). `sizing` (a
    chargen.training.sizing.AutoSizes record) is kept in config.json and the checkpoints, and the time it
    took to measure counts against the time budget. `holdout`: a list's lines to validate on (their
    indices in the corpus), instead of its last `val_fraction` (chargen.training.folds). `write`
    False: the run writes nothing, `out_dir` included (a cross-validation's folds: what they give is
    the result's metrics).
    """
    main = dist is None or dist.is_main
    cb = (callbacks or TrainCallbacks()) if main else TrainCallbacks()  # the other ranks stay quiet
    config.validate()
    run_dir = RunDir(out_dir, writes=main and write)
    flag = StopFlag()  # Ctrl-C or SIGTERM from here on ends the run at its next step, saved
    with stop_on_signals(flag), run_dir.locked():  # one writer per run directory, else RunInUse, nothing changed
        ckpt = None
        if resume is not None:
            ckpt = read_checkpoint(resume, prefer=LAST, with_resume=True)
            check_resumable(ckpt, config.to_dict())
        if resume is None or branches(ckpt, out_dir):  # (a run resumed into another directory starts a branch there)
            run_dir.refuse_existing(overwrite)
        data = prepare_training_data(corpus, config, val_text=val_text, holdout=holdout,
                                     rank=dist.rank if dist else 0, world=dist.world if dist else 1,
                                     notice=cb.on_notice)
        if ckpt is not None:
            _check_same_corpus(ckpt, data)
        device = dist.device if dist is not None else resolve_device(config.device)
        # The run's randomness (initial weights, dropout masks) comes from torch's global generator,
        # the only one nn.Dropout draws from: seeded here, restored for the caller when the run ends.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []), \
                out_of_memory_reported(device):
            torch.manual_seed(config.seed)
            t = Trainer(data, config, model_options, ckpt, device=device, precision=precision, dist=dist,
                        run_dir=run_dir, callbacks=cb, corpus=corpus, val_source=val_source, base=base,
                        closest=closest, sizing=sizing)
            t.start()
            if t.resumed_from is not None and t.budget_spent(t.clock(flag)):
                cb.on_notice(t.ended_already(flag))
            while True:
                clock = t.clock(flag)  # agreed on by every rank
                if t.should_stop(clock):
                    if not t.budget_spent(clock):  # a signal (this rank's, or another's) or a callback's request
                        flag.signal = flag.signal or ("SIGTERM" if clock.signalled else "request")
                    break
                if t.run.window >= data.n_windows:
                    t.next_epoch()
                if not t.step(*t.batches.window(t.run.window), lr=t.learning_rate(clock), chars=t.loss_chars()):
                    continue  # a non-finite loss: the step was skipped (and rolled back if it persists)
                t.report_progress(clock.now)
                if t.run.step % config.eval_every == 0:
                    t.evaluate(spent=t.budget.progress(t.run.step, clock.elapsed))
                    if t.stopped is not None:
                        break
            return t.finish(flag)


def _best_so_far(metrics: list[dict[str, Any]], step: int) -> tuple[int, int]:
    """The step of the best validation loss in `metrics`, and the evaluations since it (a resumed
    run stops early exactly where the uninterrupted one would have)."""
    losses = [math.nan if m.get("val_loss") is None else m["val_loss"] for m in metrics]  # null: not a number
    if not losses or not any(math.isfinite(v) for v in losses):
        return step, 0
    best = min(range(len(losses)), key=lambda i: (not math.isfinite(losses[i]), losses[i]))
    return metrics[best]["step"], len(losses) - 1 - best


def _check_same_corpus(ckpt: Checkpoint, data: TrainData) -> None:
    if ckpt.resume.get("corpus_digest") != data.digest:
        decomposed = any(unicodedata.combining(c) for c in ckpt.vocab.chars) and not any(
            unicodedata.combining(c) for c in data.vocab.chars)
        raise UsageError(f"the corpus differs from the one the run in {ckpt.path.parent} was trained on; "
                         f"resume with the same corpus files" + (
                             " (this run read it with accents as characters of their own, before corpora were "
                             "read in NFC: start it again)" if decomposed else ""))
    if ckpt.vocab != data.vocab:
        raise UsageError(f"the corpus's characters differ from the vocabulary of the run in {ckpt.path.parent}")


# --- one run ----------------------------------------------------------------------------------


def _start_labels_notice(starts: dict[str, str], unread: Sequence[str] = ()) -> str:
    """Which of the base's labels a list's lines start from ({new label or "": base label}), and
    why: the closest to them, or (`unread`: lines of characters the base does not know) its largest."""
    closest = {name: label for name, label in starts.items() if name not in unread}
    largest = {name: label for name, label in starts.items() if name in unread}
    owner = "its" if closest else "the base's"
    why = ([f"the base's {start_labels_text(closest)}, the closest to them"] if closest else []) + (
        [f"{owner} largest {start_labels_text(largest)}, as each of their lines holds a character it does not know"]
        if largest else [])
    return f"lines start from {', and from '.join(why)}; training moves " + ("them" if len(starts) > 1 else "it")


class Trainer:
    """One run: the model (new, or restored with its optimizer and RunState), the windows it
    trains on, and what it reports and saves."""

    def __init__(self, data: TrainData, config: TrainConfig, model_options: Optional[dict[str, Any]],
                 ckpt: Optional[Checkpoint], *, device: torch.device, precision: str, dist: Optional[Dist],
                 run_dir: RunDir, callbacks: TrainCallbacks, corpus: Corpus | EncodedCorpus,
                 val_source: Optional[str], base: Optional[Checkpoint] = None,
                 closest: Optional[ClosestLabels] = None, sizing: Optional[dict[str, Any]] = None):
        self.data, self.config, self.device, self.dist, self.run_dir, self.cb = data, config, device, dist, run_dir, callbacks
        self.main = dist is None or dist.is_main
        self.model_config, self.model, self.lineage = build_model(data, model_options, ckpt, base, closest, device)
        self.model.to(device)
        self.precision = resolve_precision(precision, device, callbacks.on_notice, self.model_config)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        # Training steps go through `net`: under torchrun, DDP averages the gradients in backward.
        self.net: torch.nn.Module = self.model if dist is None else wrap_ddp(self.model, device)
        self.start_ids = torch.from_numpy(data.start_ids).to(device)
        self.scorer = TorchScorer(self.model, device, self.precision)
        # cuDNN draws the dropout between stacked layers from a random state of its own, which torch
        # cannot save; it re-seeds that state from the CUDA generator once the generator's state has
        # been set. Setting it (to itself) before every step makes each step's masks follow from the
        # saved RNG state alone, as a resumed run's do (the resume is exact; tests/test_cuda.py).
        self.reseeds_cudnn = device.type == "cuda" and self.model_config.layers > 1 and self.model_config.dropout > 0

        self.run = RunState(corpus_digest=data.digest, world_size=dist.world if dist else 1)
        self.state: Optional[State] = None  # carried from window to window
        self.metrics: list[dict[str, Any]] = []
        self.resumed_from = None
        if ckpt is not None:
            self._restore(ckpt)
        self.line_batches = data.line_batches.for_epoch(self.run.epoch) if data.line_batches is not None else None
        self.batches = WindowLoader(data.streams, config.seq_len, device) if self.line_batches is None else \
            LineLoader(self.line_batches, device)
        # With nothing held out (val_fraction 0) there is no validation: no early stopping, and the
        # model the run ends with is best.safetensors.
        self.validates = data.val_chars > 0
        self.budget = Budget.of(config, data.n_windows, callbacks.on_notice, self.validates)

        lines_blob = encode_lines(data.training_lines) if data.training_lines is not None else None
        self.lines_blob = lines_blob if lines_blob is not None and lines_blob.nbytes <= MAX_LINES_BYTES else None
        self.run_info = {
            "corpus": corpus.name, "sources": corpus.sources, "val_source": val_source,
            "line_oriented": data.line_oriented,
            "training_lines": len(data.training_lines) if self.lines_blob is not None else 0,
            "train_chars": data.train_chars, "val_chars": data.val_chars, "unigram_entropy": data.unigram_entropy,
            "precision": self.precision, "device": device.type,
        }
        if self.line_batches is not None:  # what a step is in line mode (batch_size x seq_len sets it)
            self.run_info["lines_per_batch"] = self.line_batches.lines_per_batch
        if self.lineage is not None:
            self.run_info["from"] = self.lineage
            if self.lineage.get("start_labels") and ckpt is None and self.main:
                callbacks.on_notice(_start_labels_notice(self.lineage["start_labels"], self.lineage.get("start_unread", ())))
        self.sizing = ckpt.info.get("auto") if ckpt is not None else sizing
        if self.sizing is not None:
            self.run_info["auto"] = self.sizing
            if ckpt is None:  # measuring the sizes was part of the budget
                self.run.elapsed = float(self.sizing.get("probe_seconds", 0.0))
        self.stopped: Optional[str] = None  # why the run ended before its budget, when it did
        # A labelled list's held-out loss per label: at the last validation, or, with none held out
        # after cross-validation (chargen.training.folds), the folds' after the steps chosen.
        self.label_losses: Optional[dict[str, float]] = \
            (self.sizing or {}).get("cross_validation", {}).get("label_val_loss") if not self.validates else None
        self.meter = LossMeter(device)
        self.guard: Optional[DivergenceGuard] = None
        self.best_step, self.evals_since_best = _best_so_far(self.metrics, self.run.step)
        self.steps_since_eval = 0
        # At the last write of last.safetensors and the metrics: the step, and the evaluations recorded.
        self.written_step, self.written_evals = self.run.step, len(self.metrics)
        self.last_report = 0.0
        # The run's clock: started by start(); what came before (a resumed run, the size probe) counts.
        self.t0 = time.perf_counter()
        self.elapsed_before, self.chars_at_start = self.run.elapsed, self.run.chars_seen

    # --- the RunState and the live objects ---

    def _restore(self, ckpt: Checkpoint) -> None:
        saved = RunState.from_checkpoint(ckpt)
        self.resumed_from = saved.step
        self.run = RunState(**{**saved.__dict__, "corpus_digest": self.data.digest, "world_size": self.run.world_size})
        try:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in saved.optimizer.items():
                idx, key = name.split(".", 1)
                state.setdefault(int(idx), {})[key] = torch.from_numpy(np.array(value))
            self.optimizer.load_state_dict({"state": state, "param_groups": saved.param_groups})
            for group in self.optimizer.param_groups:  # torch accepts moments of any shape; the step would not
                for p in group["params"]:
                    for key, moment in self.optimizer.state.get(p, {}).items():
                        if key != "step" and moment.shape != p.shape:
                            raise ValueError(f"{key} of shape {tuple(moment.shape)} for a parameter of {tuple(p.shape)}")
            if saved.hidden is not None:  # saved for all streams (layers, B, H); this rank takes its own
                if saved.hidden[0].shape[1] != self.data.batch_size:
                    raise ValueError(f"hidden state of {saved.hidden[0].shape[1]} streams, not {self.data.batch_size}")
                self.state = state_from_tensors([torch.from_numpy(t)[:, self.data.rows].contiguous().to(self.device)
                                                 for t in saved.hidden])
            torch.set_rng_state(torch.from_numpy(np.array(saved.rng_cpu)))
            if self.device.type == "cuda" and saved.rng_cuda is not None:
                torch.cuda.set_rng_state(torch.from_numpy(np.array(saved.rng_cuda)))
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise CheckpointError(f"{ckpt.path}: the saved training state does not fit its model ({reason})") from None
        # the run's evaluations so far, from its own directory: a branch (resumed into another) has its curve
        # and its early stopping's count go on from them as the run's would
        self.metrics = RunDir(ckpt.path.parent, writes=False).read_metrics(up_to_step=saved.step)

    def _capture(self, hidden: Optional[list[torch.Tensor]]) -> RunState:
        sd = self.optimizer.state_dict()
        self.run.optimizer = {f"{idx}.{key}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().numpy()
                              for idx, st in sd["state"].items() for key, v in st.items()}
        self.run.param_groups = sd["param_groups"]
        self.run.hidden = [t.detach().float().cpu().numpy() for t in hidden] if hidden is not None else None
        self.run.rng_cpu = torch.get_rng_state().numpy()
        self.run.rng_cuda = torch.cuda.get_rng_state().numpy() if self.device.type == "cuda" else None
        self.run.elapsed = self.elapsed()
        return self.run

    # --- the loop's parts ---

    def start(self) -> None:
        self.cb.on_start(StartReport(
            corpus=self.run_info["corpus"], out_dir=str(self.run_dir.path), train_chars=self.data.train_chars,
            val_chars=self.data.val_chars, line_oriented=self.data.line_oriented,
            unigram_entropy=self.data.unigram_entropy, model=self.model_config,
            parameters=self.model.num_parameters(), batch_size=self.data.batch_size, seq_len=self.config.seq_len,
            lines_per_batch=self.data.line_batches.lines_per_batch if self.data.line_batches else None,
            device=self.device.type, precision=self.precision, max_steps=self.budget.max_steps,
            time_budget=self.budget.time, resumed_from_step=self.resumed_from,
            flops_per_char=6 * self.model_config.matmul_weights, patience=self.budget.patience,
            files=len(self.run_info["sources"])))
        self.run_dir.prepare()
        self.model.train()
        self.t0 = time.perf_counter()
        self.guard = DivergenceGuard(self.model, self.optimizer, self.run.step)
        if self.resumed_from is None:
            # From the first moment, the run directory holds a resumable checkpoint: it is the
            # first file written into it, so a kill at any moment leaves nothing else without it.
            self.save(LAST, with_resume=True, val_loss=self.run.last_val_loss)
            if self.lineage is not None and self.validates:
                # What the model it starts from scores on this run's held-out text: step 0 of the
                # metrics and the loss curve, and the bar adapting has to clear (best.safetensors
                # starts as the base model, grown).
                start = self.start_state()
                val_loss = self.validation_loss(start)
                self.lineage["val_loss"] = round(val_loss, 5)  # in every checkpoint, from the first
                self.evaluate((start, val_loss))
        # The resolved configuration this run trains with, for the record (and `--config` reuse).
        self.run_dir.write_config({"corpus": self.run_info["sources"], "model": self.model_config.to_dict(),
                                   "train": self.config.to_dict(), "precision": self.precision,
                                   "device": self.device.type, "batch_size_used": self.data.batch_size,
                                   **({"auto": self.sizing} if self.sizing is not None else {})})

    def start_state(self) -> list[np.ndarray]:
        """The state a line starts from (saved with every checkpoint; lines are scored from it): the
        learned one of a line-mode model, else the model's typical state at a line's end now."""
        if self.model.start is not None:  # each (layers, H); a labelled model's (labels, layers, H)
            start = self.model.start if not self.model_config.n_labels else self.model.start.transpose(0, 1)
            return [t.detach().float().cpu().numpy() for t in start]
        return line_start_state(self.model, self.start_ids, self.data.vocab.index.get("\n"))

    def elapsed(self, now: Optional[float] = None) -> float:
        return self.elapsed_before + (time.perf_counter() if now is None else now) - self.t0

    def chars_per_sec(self) -> float:
        return (self.run.chars_seen - self.chars_at_start) / max(time.perf_counter() - self.t0, 1e-9)

    def clock(self, flag: "StopFlag") -> "Clock":
        """The time and the stop requests now: under torchrun, the latest clock and any rank's
        request, agreed in one small all-reduce, so every rank stops at the same step and follows
        the same (time-based) schedule."""
        now = time.perf_counter()
        elapsed = self.elapsed(now)
        signalled, requested = bool(flag), self.cb.should_stop(self.run.step)
        if self.dist is not None:
            elapsed, sig_any, req_any = self.dist.max(elapsed, float(signalled), float(requested))
            signalled, requested = sig_any > 0, req_any > 0
        return Clock(now, elapsed, signalled, requested)

    def should_stop(self, clock: "Clock") -> bool:
        """The step or time budget is spent, or a signal or request came."""
        return self.budget_spent(clock) or clock.signalled or clock.requested

    def budget_spent(self, clock: "Clock") -> bool:
        return self.progress(clock.elapsed) >= 1.0

    def progress(self, elapsed: float) -> float:
        """0 at the start, 1 at the run's end: when its budget is spent, or sooner when a stall began the
        schedule's decay early (RunState.end)."""
        return self.budget.progress(self.run.step, elapsed) / self.run.end

    def learning_rate(self, clock: "Clock") -> float:
        return learning_rate(self.config, self.run.step, self.progress(clock.elapsed)) * self.run.lr_scale

    def loss_chars(self) -> Optional[float]:
        """Line mode: what this process divides its batch's summed loss by: the characters of the
        epoch's average batch (all processes), over the number of processes; None: the mean.

        Not the batch's own characters: lines of similar length share a batch, so a batch's own
        mean would give a character of a batch of 4-letter names twice the weight of one of 9-letter
        names, and train the model towards short lines (a 2x96 on 36k US names drew names 0.47
        characters shorter than its corpus's at temperature 1; docs/benchmarks.md). Over an epoch
        every character then weighs the same, as in the loss validation measures; under DDP the
        mean of the processes' gradients is the gradient of that sum."""
        if self.line_batches is None:
            return None
        batches = self.line_batches
        return batches.chars / len(batches.seqs) / (self.dist.world if self.dist is not None else 1)

    def next_epoch(self) -> None:
        """An epoch is done: back to the start of every stream, or a list's lines in new batches."""
        self.run.epoch, self.run.window, self.state = self.run.epoch + 1, 0, None
        if self.line_batches is not None:
            self.line_batches = self.line_batches.for_epoch(self.run.epoch)
            self.batches = LineLoader(self.line_batches, self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, labels: Optional[torch.Tensor], lr: float,
             chars: Optional[float] = None) -> bool:
        """One optimizer step at learning rate `lr` on window (x, y), both (B, T), whose rows have
        `labels` (B,) (a labelled list; else None); False if its loss
        or gradient was not finite: then the weights stay as they were, and a persistent divergence
        is rolled back. `chars`: as loss_and_gradients takes it."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.reseeds_cudnn:
            torch.cuda.set_rng_state(torch.cuda.get_rng_state(self.device), self.device)
        loss, grad_norm, new_state = loss_and_gradients(self.net, self.model, self.optimizer, x, y, self.state,
                                                        self.device, self.precision, self.config.grad_clip,
                                                        self.scaler, chars, labels)
        self.run.window += 1
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.state = None
            if self.scaler is not None:
                self.scaler.update()
            notice = self.guard.bad_step(self.run)
            if notice:
                self.cb.on_notice(notice)
            return False
        self.guard.good_step()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state = detach_state(new_state) if self.data.line_batches is None else None  # lines start afresh
        self.meter.add(loss)
        self.run.step += 1
        self.steps_since_eval += 1
        self.run.chars_seen += self.data.chars_per_step
        return True

    def report_progress(self, now: float) -> None:
        if not (now - self.last_report > REPORT_SECONDS or self.meter.pending >= REPORT_STEPS):
            return
        mean_loss = self.meter.drain()
        self.last_report = now
        elapsed = self.elapsed()
        self.cb.on_step(StepReport(
            step=self.run.step, max_steps=self.budget.max_steps, epoch=self.run.epoch, loss=mean_loss,
            lr=self.optimizer.param_groups[0]["lr"], chars_seen=self.run.chars_seen,
            chars_per_sec=self.chars_per_sec(), elapsed=elapsed, time_budget=self.budget.time,
            progress=self.progress(elapsed), best_val_loss=self.run.best_val_loss,
            val_loss=self.run.last_val_loss))

    def validation_loss(self, start: list[np.ndarray]) -> float:
        """The line loss (lists) or stream loss (prose) of the held-out text, summed over ranks; NaN
        with none."""
        if not self.validates:
            return math.nan
        if self.data.labels is not None:
            totals, counts = label_line_sums(self.scorer, self.data.val_lines, self.data.val_labels, start,
                                             self.data.vocab.index["\n"], len(self.data.labels.names))
            if self.dist is not None:
                sums = self.dist.sum(*totals.tolist(), *counts.tolist())
                totals, counts = np.array(sums[: len(totals)]), np.array(sums[len(totals):])
            self.label_losses = {name: round(float(t / c), 5) for name, t, c
                                 in zip(self.data.labels.names, totals, counts) if c}
            return float(totals.sum() / counts.sum()) if counts.sum() else float("nan")
        if self.data.val_lines is not None:
            total, count = line_sums(self.scorer, self.data.val_lines, start, self.data.vocab.index["\n"])
        else:
            total, count = stream_sums(self.scorer, self.data.val_ids, self.config.seq_len)
        if self.dist is not None:
            total, count = self.dist.sum(total, count)
        return total / count if count else float("nan")

    def evaluate(self, measured: Optional[tuple[list[np.ndarray], float]] = None,
                 spent: Optional[float] = None) -> None:
        """Validate, record the metrics, act on a stall (with `spent`, the budget's share spent, as
        every rank agrees on it), save best (if better) and last, and report. `measured`: the
        start-of-line state and validation loss, when the caller has just computed them."""
        self.meter.drain()
        run = self.run
        elapsed = self.elapsed()
        if measured is None:
            start = self.start_state()
            measured = start, self.validation_loss(start)
        start, val_loss = measured
        train_loss = self.meter.window_mean(self.dist)
        run.last_val_loss = val_loss
        watched = val_loss if self.validates else train_loss  # (agreed on by every rank)
        start_loss, started = self.start_loss()
        diverged = start_loss is not None and math.isfinite(watched) and watched > start_loss + DIVERGED_ABOVE_START
        if diverged:  # (not the weights to keep, nor to save as the best: back to the last good ones)
            notice = self.guard.roll_back(run, f"the loss ({watched:.4g} nats a character at step {run.step:,}) rose "
                                               f"more than {DIVERGED_ABOVE_START:g} above {started} ({start_loss:.3f})")
            if self.main:
                self.cb.on_notice(notice)
        elif math.isfinite(watched):
            self.guard.remember(run.step)
        improved = val_loss < run.best_val_loss and not diverged
        if improved:
            run.best_val_loss = val_loss
            self.best_step, self.evals_since_best = run.step, 0
        else:
            self.evals_since_best += 1
        write = run.step // WRITE_EVERY_STEPS > self.written_step // WRITE_EVERY_STEPS and not diverged
        if spent is not None and self.budget.patience and self.evals_since_best >= self.budget.patience:
            self.after_stall(spent)  # before last.safetensors is written: a resumed run goes on as this one
            write = write or self.evals_since_best == self.budget.patience  # where the stall was met
        report = EvalReport(
            step=run.step, epoch=run.epoch, chars_seen=run.chars_seen, train_loss=round(train_loss, 5),
            val_loss=round(val_loss, 5), val_bpc=round(val_loss / LN2, 5), lr=self.optimizer.param_groups[0]["lr"],
            chars_per_sec=round(self.chars_per_sec(), 1), elapsed=round(elapsed, 2),
            best_val_loss=run.best_val_loss, improved=improved, written=write,
            label_losses=self.label_losses if self.validates else None)
        self.metrics.append(report.metrics())
        if improved:
            self.save(BEST, with_resume=False, val_loss=val_loss, start=start)
        if write:
            self.write_state(val_loss, start)
        self.meter.new_window()
        self.steps_since_eval = 0
        if not self.main:
            return
        if self.config.sample_every and run.step // self.config.eval_every % self.config.sample_every == 0:
            report = report.with_sample(self.preview(start))
        self.cb.on_eval(report)

    def start_loss(self) -> tuple[Optional[float], str]:
        """Where the run started, for the divergence bound (DIVERGED_ABOVE_START), and what it is:
        a uniform guess over the vocabulary, or the adapted model's held-out loss before the first
        step where higher (None: an adapted run that holds nothing out, whose start is not known)."""
        uniform = math.log(self.model_config.vocab_size)
        if self.lineage is None:
            return uniform, "a uniform guess over the vocabulary"
        before = self.lineage.get("val_loss") if self.validates else None
        if before is None:
            return None, ""
        return (before, "the adapted model's loss before training") if before > uniform else \
            (uniform, "a uniform guess over the vocabulary")

    def write_state(self, val_loss: float, start: Optional[list[np.ndarray]] = None) -> None:
        """The metrics first, then last.safetensors: a run killed in between resumes from the
        previous checkpoint and drops the newer records, so the history never has a gap."""
        self.run_dir.write_metrics(self.metrics, title=f"chargen: {self.run_info['corpus']}")
        self.save(LAST, with_resume=True, val_loss=val_loss, start=start)
        self.written_step, self.written_evals = self.run.step, len(self.metrics)

    def after_stall(self, spent: float) -> None:
        """`patience` evaluations without a better validation loss, with `spent` of the budget spent. A run
        still at its schedule's peak (wsd before its decay) starts the decay now, and ends when the
        decay has taken the share of the run it would have had (at 40% of the budget, the run ends at
        50%); a run in its decay (begun by an earlier stall or on schedule) goes on to its end, as the
        decay's last steps are where it gains most; any other run ends now."""
        run, stable = self.run, STABLE_UNTIL.get(self.config.schedule)
        if stable is not None and (run.end < 1.0 or spent >= stable):
            return
        best = self.best_so_far()
        if stable is None or spent <= 0.0:
            self.stopped = f"early stop: no better validation loss in {self.budget.patience} evaluations ({best})"
            return
        run.end = spent / stable
        self.cb.on_notice(f"no better validation loss in {self.budget.patience} evaluations ({best}): the learning "
                          f"rate decays to its floor from here, and the run ends at {run.end:.0%} of its budget")

    def best_so_far(self) -> str:
        return f"best {self.run.best_val_loss:.4f} at step {self.best_step:,}"

    def preview(self, start: list[np.ndarray]) -> str:
        """A short sample to show progress: five lines, or 200 characters of prose."""
        lines = self.data.line_oriented
        cfg = SampleConfig(num=5 if lines else 1, length=60 if lines else 200)
        try:
            labels = self.data.labels
            mix = resolve_labels(None, labels.names, labels.counts, labels.own) if labels is not None else None
            samples = generate(TorchStepper(self.model), self.data.vocab, "", cfg, lines=lines,
                               key=derive_key(self.run.step, 7), start_state=start, labels=mix)
            return "\n".join(s.text for s in samples)
        except ChargenError as exc:  # e.g. a model too young to end a line: show why, do not stop training
            return f"(no sample: {exc})"
        finally:
            self.model.train()

    def save(self, name: str, *, with_resume: bool, val_loss: float, start: Optional[list[np.ndarray]] = None) -> None:
        """Write a checkpoint (rank 0). Under torchrun every rank calls it: the hidden state is gathered."""
        hidden = None
        if with_resume and self.state is not None:
            hidden = state_tensors(self.state)
            if self.dist is not None:
                hidden = [self.dist.gather_streams(t) for t in hidden]
        if not self.run_dir.writes:  # the other ranks, and a run that writes nothing
            return
        info = {
            **self.run_info,
            "step": self.run.step, "epoch": self.run.epoch, "chars_seen": self.run.chars_seen,
            "val_loss": val_loss, "best_val_loss": self.run.best_val_loss,
            **({"labels": self._labels_info()} if self.data.labels is not None else {}),
            "chargen_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        resume_meta, resume_tensors = self._capture(hidden).to_checkpoint() if with_resume else (None, None)
        if start is None:
            start = self.start_state()
        self.run_dir.save(name, weights=weights_of(self.model), model_config=self.model_config,
                          vocab_json=self.data.vocab.to_json(), train_config=self.config.to_dict(), info=info,
                          lines_blob=self.lines_blob, resume=resume_meta, resume_tensors=resume_tensors,
                          start_state=start)

    def _labels_info(self) -> dict[str, Any]:
        """A labelled run's labels in its checkpoints: names, training lines (the base model's added,
        for a run from one) and held-out losses at the last validation."""
        labels = self.data.labels
        info = {"names": labels.names, "lines": labels.counts, "val_loss": self.label_losses or {}}
        if labels.inherited is not None:
            info["inherited"] = labels.inherited
        return info

    def why_stopped(self, flag: "StopFlag") -> str:
        if flag:
            return {"request": "stopped on request"}.get(flag.signal, f"stopped by {flag.signal}") + ", saved"
        if self.stopped is not None:
            return self.stopped
        if self.run.end < 1.0 and self.progress(self.elapsed()) >= 1.0:
            return (f"validation stalled at the peak learning rate and the decay begun then is done "
                    f"({self.best_so_far()})")
        if self.budget.max_steps is not None and self.run.step >= self.budget.max_steps:
            return f"{self.budget.max_steps:,} step{'s' if self.budget.max_steps != 1 else ''} done"
        return f"the time budget of {format_duration(self.budget.time)} was spent" if self.budget.time else "done"

    def ended_already(self, flag: "StopFlag") -> str:
        """What to say when a resumed run's budget was spent before it resumed: it trains no step."""
        run = self.run
        return (f"the run in {self.run_dir.path} had ended at step {run.step:,} ({self.why_stopped(flag)}): nothing "
                f"to train; to go on, resume it with a larger budget (--time, --max-steps and --epochs count "
                f"the whole run: {format_duration(self.elapsed_before)}, {run.step:,} steps, {run.epoch:,} epochs "
                f"so far)")

    def finish(self, flag: "StopFlag") -> TrainResult:
        self.meter.drain()
        self.batches.close()
        if flag:
            # Stopped by a signal: save where we are at once (no evaluation), so resuming is exact.
            self.write_state(self.run.last_val_loss)
            if not (self.run_dir.path / BEST).exists():
                self.save(BEST, with_resume=False, val_loss=self.run.last_val_loss)
        else:
            if self.steps_since_eval or not self.metrics:
                self.evaluate()
            if (self.written_step, self.written_evals) != (self.run.step, len(self.metrics)):
                self.write_state(self.run.last_val_loss)
            if not self.validates:  # nothing to choose a step by: the model is where the run ended
                self.save(BEST, with_resume=False, val_loss=math.nan)
        run, elapsed = self.run, self.elapsed()
        stopped = self.why_stopped(flag)
        self.cb.on_end(EndReport(stopped=stopped,
            run_dir=str(self.run_dir.path), steps=run.step, epochs=run.epoch, chars_seen=run.chars_seen,
            best_val_loss=run.best_val_loss, last_val_loss=run.last_val_loss, elapsed=elapsed,
            chars_per_sec=self.chars_per_sec(), interrupted=flag.signal,
            unigram_entropy=self.data.unigram_entropy, precision=self.precision, device=self.device.type,
            parameters=self.model.num_parameters(), flops_per_char=6 * self.model_config.matmul_weights))
        return TrainResult(run_dir=self.run_dir.path, steps=run.step, chars_seen=run.chars_seen,
                           best_val_loss=run.best_val_loss, last_val_loss=run.last_val_loss, elapsed=elapsed,
                           interrupted=flag.signal, stopped=stopped, metrics=self.metrics)


def build_model(data: TrainData, model_options: Optional[dict[str, Any]], ckpt: Optional[Checkpoint],
                base: Optional[Checkpoint], closest: Optional[ClosestLabels], device: torch.device
                ) -> tuple[ModelConfig, CharRNN, Optional[dict[str, Any]]]:
    """The run's model: restored from the checkpoint it resumes, grown from the model it starts
    from (and its lineage), or new; with its config. One too large to train on `device` is an error first."""
    if ckpt is not None:
        check_fits(ckpt.model_config, device, resuming=True)
        model = CharRNN(ckpt.model_config)
        load_weights(model, ckpt.weights)
        return ckpt.model_config, model, ckpt.info.get("from")
    config = ModelConfig(vocab_size=len(data.vocab), **{**(model_options or {}),
                                                        "learned_start": data.line_batches is not None,
                                                        "n_labels": len(data.labels.names) if data.labels else 0})
    config.validate()
    check_fits(config, device)
    model = CharRNN(config)
    if base is None:
        return config, model, None
    copies = stand_ins(base.vocab, data.vocab)
    weights = grow_weights(base.weights, base.vocab, data.vocab, copies)
    weights.pop("start", None)
    starts: dict[str, str] = {}
    unread: list[str] = []
    if config.learned_start:  # lines start where the base model starts them (chargen.training.finetune)
        weights["start"], starts, unread = start_weights(base, config, data.labels.names if data.labels else None,
                                                         _lines_by_label(data), copies, closest)
    load_weights(model, weights)
    fresh = np.array([c not in base.vocab for c in data.vocab.chars])
    if fresh.any():  # a run that keeps the base's labels moves the new characters only (finetune.calibrated_bias)
        copied = set(copies.values()) if not config.n_labels else set()
        calibrate_new_chars(model, fresh, np.array([c in copied for c in data.vocab.chars]), data)
    return config, model, Lineage(path=str(base.path), sha256=file_sha256(base.path), new_chars=int(fresh.sum()),
                                  stand_ins=copies or None, start_labels=starts or None,
                                  start_unread=unread or None).to_dict()


def _lines_by_label(data: TrainData) -> dict[str, list[str]]:
    """The run's distinct lines by label ("" for an unlabelled list), in a fixed order."""
    out: dict[str, list[str]] = {}
    for entry in data.training_lines or []:
        label, tab, line = entry.partition("\t") if data.labels is not None else ("", "", entry)
        out.setdefault(label, []).append(line)
    return out


def wrap_ddp(model: CharRNN, device: torch.device) -> torch.nn.Module:
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def loss_and_gradients(net: torch.nn.Module, model: CharRNN, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                       y: torch.Tensor, state: Optional[State], device: torch.device, precision: str,
                       grad_clip: float, scaler: Optional[torch.amp.GradScaler] = None, chars: Optional[float] = None,
                       labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, State]:
    """The compute of one training step on window (x, y), both (B, T), up to the optimizer step:
    the loss, the gradients (unscaled, clipped to `grad_clip`; 0: not clipped) and their norm
    before clipping, and the state after the window. `net` is `model`, or its DDP wrapper. The loss
    is the mean over the targets (-100: padding, not counted), or their sum over `chars`. `labels`
    (B,): a labelled list's rows' labels, whose start states they start from."""
    with autocast(device, precision):
        logits, new_state = net(x, state, labels)  # (B, T, V)
    flat = (logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss = F.cross_entropy(*flat) if chars is None else F.cross_entropy(*flat, reduction="sum") / chars
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    return loss, grad_norm, new_state


CALIBRATION_CHARS = 1 << 14  # the characters of the training text calibrate_new_chars reads the model on,
CALIBRATION_ENTRIES = 1 << 24  # fewer where their logits would pass this many (a vocabulary of thousands:
CALIBRATION_MIN_CHARS = 1 << 9  # 16,384 x 8,525 CJK characters took 5 GB and 35 s), but at least these


def calibrate_new_chars(model: CharRNN, fresh: np.ndarray, yielding: np.ndarray, data: TrainData) -> None:
    """Start each new character (`fresh`, a bool mask over ids) at its frequency in the training
    text, with those of `yielding` (the stand-ins of a run without labels) that the text never
    uses (chargen.training.finetune.calibrated_bias)."""
    chars = max(CALIBRATION_MIN_CHARS, min(CALIBRATION_CHARS, CALIBRATION_ENTRIES // len(fresh)))  # (V = len(fresh))
    seq, labels = calibration_rows(data, chars)
    device = model.head.weight.device
    with torch.no_grad():
        x = torch.from_numpy(seq[:, :-1]).clamp(min=0).to(device)  # (B, L + 1)
        rows = torch.from_numpy(labels).to(device) if labels is not None else None
        with evaluating(model):
            logits, _ = model(x, None, rows)  # (B, L + 1, V)
        targets = seq[:, 1:]
        scored = targets != PAD
        counts = np.bincount(targets[scored], minlength=len(fresh))
        bias = calibrated_bias(logits.double().cpu().numpy()[scored], model.head.bias.detach().cpu().numpy(),
                               fresh | (yielding & (counts == 0)), counts)
        model.head.bias.copy_(torch.from_numpy(bias))


def make_optimizer(model: CharRNN, config: TrainConfig) -> AdamW:
    """AdamW with weight decay on the weight matrices only (not biases, the embedding or the start
    state): torch's arithmetic, stepped without importing its compiler (chargen.training.optimizer)."""
    decayed = lambda n, p: p.dim() >= 2 and not n.startswith("embedding") and n != "start"  # noqa: E731
    decay = [p for n, p in model.named_parameters() if decayed(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decayed(n, p)]
    return AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.99), foreach=True)


# --- the budget and the schedule --------------------------------------------------------------


@dataclass
class Budget:
    """When to stop: after max_steps, or after `time` seconds (whichever comes first), or after
    `patience` evaluations without a better validation loss."""

    max_steps: Optional[int]
    time: Optional[float]
    patience: Optional[int] = None

    @classmethod
    def of(cls, config: TrainConfig, n_windows: int, notice, validates: bool = True) -> "Budget":
        # A run with no count of steps or epochs stops when validation stops improving, unless
        # --patience says otherwise (0: never) or nothing is held out; with none of the three it
        # also gets a default time.
        open_ended = config.max_steps is None and config.epochs is None
        patience = config.patience if config.patience is not None else (
            DEFAULT_PATIENCE if open_ended and validates else None)
        if open_ended and config.time is None:
            early = (f", less if validation stops improving for {patience} evaluations (--patience 0: never)"
                     if patience else "")
            notice(f"no --max-steps, --epochs or --time given: training for up to {format_duration(DEFAULT_TIME)}"
                   f"{early}; Ctrl-C stops early and saves")
        limits = [s for s in (config.max_steps,
                              math.ceil(config.epochs * n_windows) if config.epochs is not None else None) if s]
        return cls(max_steps=min(limits) if limits else None, time=config.time_budget, patience=patience or None)

    def progress(self, step: int, elapsed: float) -> float:
        """0 at the start, 1 when the budget is spent (steps or time, whichever is further along)."""
        fractions = []
        if self.max_steps:
            fractions.append(step / self.max_steps)
        if self.time:
            fractions.append(elapsed / self.time)
        return max(fractions) if fractions else 0.0


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup` steps, then the schedule's decay to min_lr_ratio * lr at progress 1."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(max(progress, 0.0), 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * SCHEDULES[config.schedule](progress)


# --- the training loss, and divergence --------------------------------------------------------


class LossMeter:
    """The training loss, summed on the device (no sync per step) and drained to the host now and then."""

    def __init__(self, device: torch.device):
        self.acc = torch.zeros((), device=device)
        self.pending = 0  # steps summed in `acc` and not drained yet
        self.total, self.count = 0.0, 0  # drained since the last evaluation

    def add(self, loss: torch.Tensor) -> None:
        self.acc += loss.detach()
        self.pending += 1

    def drain(self) -> float:
        """Move the on-device sum into the totals (one sync); the mean of what was drained."""
        if not self.pending:
            return float("nan")
        total = float(self.acc.item())
        self.total += total
        self.count += self.pending
        mean = total / self.pending
        self.acc.zero_()
        self.pending = 0
        return mean

    def window_mean(self, dist: Optional[Dist]) -> float:
        """The mean since the last evaluation, over all ranks' streams, as one process would have it."""
        total, count = self.total, self.count
        if dist is not None:
            total, count = dist.sum(total, count)
        return total / count if count else float("nan")  # no step since: an evaluation before training

    def new_window(self) -> None:
        self.total, self.count = 0.0, 0


class DivergenceGuard:
    """Non-finite steps are skipped; after BAD_STEPS_BEFORE_ROLLBACK in a row, or at an evaluation
    far worse than where the run started (DIVERGED_ABOVE_START), the model and optimizer go back to the
    last good evaluation's and the learning rate is halved, at most MAX_ROLLBACKS times, then
    training stops with an error."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int):
        self.model, self.optimizer = model, optimizer
        self.bad_steps = 0
        self.rollbacks = 0
        self.remember(step)

    def remember(self, step: int) -> None:
        """Keep the current weights and optimizer state in memory as the last known-good ones."""
        self.good_step_no = step
        self.good_model = copy.deepcopy(self.model.state_dict())
        self.good_optimizer = copy.deepcopy(self.optimizer.state_dict())

    def good_step(self) -> None:
        self.bad_steps = 0

    def bad_step(self, run: RunState) -> Optional[str]:
        """Count a skipped step; roll back if they persist. Returns a notice when it rolled back."""
        self.bad_steps += 1
        if self.bad_steps < BAD_STEPS_BEFORE_ROLLBACK:
            return None
        return self.roll_back(run, f"non-finite loss for {BAD_STEPS_BEFORE_ROLLBACK} steps")

    def roll_back(self, run: RunState, why: str) -> str:
        """Back to the last good evaluation's weights and optimizer state, the learning rate halved;
        after MAX_ROLLBACKS, a TrainingError. Returns the notice that says so."""
        if self.rollbacks >= MAX_ROLLBACKS:
            raise TrainingError(
                f"training diverged: {why}, after {self.rollbacks} rollbacks to step {self.good_step_no} with a "
                f"lower learning rate; try a lower `lr` or `grad_clip`")
        self.model.load_state_dict(self.good_model)
        self.optimizer.load_state_dict(self.good_optimizer)
        self.rollbacks += 1
        run.lr_scale *= 0.5
        self.bad_steps = 0
        return f"{why}: rolled back to the weights of step {self.good_step_no}, learning rate x{run.lr_scale:g}"


# --- stop requests (Ctrl-C, SIGTERM) ----------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """One reading, before a step, of the run's clock and of the stop requests (Trainer.clock)."""

    now: float  # time.perf_counter()
    elapsed: float  # seconds of training, earlier sessions of a resumed run included
    signalled: bool  # SIGINT or SIGTERM, on any rank
    requested: bool  # the callbacks asked to stop, on any rank


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
    for s, before in previous.items():
        if before is not signal.SIG_IGN:  # a background job (`cmd &`) ignores Ctrl-C: keep it so
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
