"""What a training run reports, and the hooks it reports through (torch-free: the CLI, a server or a
notebook can follow a run without importing torch).

The loop never prints: it hands a typed report to a `TrainCallbacks` at the start, every few
steps, at every evaluation and at the end. Losses are in nats per character; NaN means "not
measured yet".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..config import ModelConfig

LN2 = math.log(2)


@dataclass(frozen=True)
class StartReport:
    corpus: str
    out_dir: str
    train_chars: int
    val_chars: int
    line_oriented: bool
    unigram_entropy: float  # nats/char of a model that ignores context
    model: ModelConfig
    parameters: int
    batch_size: int
    seq_len: int
    device: str
    precision: str
    max_steps: Optional[int]
    time_budget: Optional[float]  # seconds
    resumed_from_step: Optional[int]  # None for a new run
    flops_per_char: int  # training FLOPs per character (6 per matmul weight)
    patience: Optional[int] = None  # evaluations without a better val loss that end the run (None: never)
    lines_per_batch: Optional[int] = None  # line mode: lines a step (None: streams of batch_size x seq_len)
    files: int = 1  # corpus files read (the corpus is named after the first)

    def layout(self) -> str:
        """How a step's text is laid out, for the start line."""
        if self.lines_per_batch is not None:
            return f"line mode, {self.lines_per_batch} lines a batch"
        return f"batch {self.batch_size} x seq {self.seq_len}"


@dataclass(frozen=True)
class StepReport:
    step: int
    max_steps: Optional[int]
    epoch: int
    loss: float  # mean training loss since the last report
    lr: float
    chars_seen: int
    chars_per_sec: float
    elapsed: float
    time_budget: Optional[float]
    progress: float  # 0..1 of the budget (steps or time, whichever is further along)
    best_val_loss: float
    val_loss: float  # the last evaluation's (NaN before the first)


@dataclass(frozen=True)
class EvalReport:
    """One evaluation: the fields up to `elapsed` are a line of metrics.jsonl."""

    step: int
    epoch: int
    chars_seen: int
    train_loss: float  # mean training loss since the previous evaluation (NaN before the first step)
    val_loss: float
    val_bpc: float
    lr: float
    chars_per_sec: float
    elapsed: float
    best_val_loss: float
    improved: bool
    written: bool = True  # last.safetensors and the metrics were written at it (chargen.training.loop.WRITE_EVERY_STEPS)
    sample: Optional[str] = None  # a short preview sample, when one was drawn
    label_losses: Optional[dict[str, float]] = None  # a labelled list's held-out loss per label (not in metrics.jsonl)

    METRICS = ("step", "epoch", "chars_seen", "train_loss", "val_loss", "val_bpc", "lr", "chars_per_sec", "elapsed")

    def metrics(self) -> dict[str, Any]:
        """The metrics.jsonl record: strict JSON, so a loss that is not a number is null."""
        values = {k: getattr(self, k) for k in self.METRICS}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}

    def with_sample(self, sample: Optional[str]) -> "EvalReport":
        return dataclasses.replace(self, sample=sample)


@dataclass(frozen=True)
class EndReport:
    run_dir: str
    steps: int
    epochs: int
    chars_seen: int
    best_val_loss: float
    last_val_loss: float
    elapsed: float
    chars_per_sec: float
    interrupted: Optional[str]  # "SIGINT" / "SIGTERM" / "request", or None
    unigram_entropy: float
    precision: str
    device: str
    parameters: int
    flops_per_char: int
    stopped: str = ""  # why the run ended: its budget, early stopping, a signal


class TrainCallbacks:
    """Hooks the loop reports through; the default does nothing. The CLI draws a progress bar."""

    def on_start(self, report: StartReport) -> None: ...
    def on_step(self, report: StepReport) -> None: ...
    def on_eval(self, report: EvalReport) -> None: ...
    def on_notice(self, message: str) -> None: ...
    def on_end(self, report: EndReport) -> None: ...

    def should_stop(self, step: int) -> bool:
        """Asked after every step: True stops the run as Ctrl-C would (saved, resumable)."""
        return False
