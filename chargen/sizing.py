"""Automatic model and batch sizes for the options a user leaves unset (torch-free).

In a fixed time budget the model that wins is the largest one that still sees the corpus
several times: char-rnn's rule of thumb is parameters of the order of the characters seen.
Measured on a 2-core CPU in 5 minutes (docs/benchmarks.md): a 2x256 LSTM at about 35k chars/s
sees 10M characters, right for a 1 MB corpus; a 36 KB list of names overfits anything larger
than 2x128 within a minute, and wants dropout. A GPU sees ~30x more characters in the same
time, so there the sizes step up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .config import DEFAULT_TIME, format_duration

SMALL_CORPUS = 300_000  # characters: lists of names, titles
MEDIUM_CORPUS = 5_000_000  # characters: about a megabyte of prose
SHORT_BUDGET = 120.0  # seconds: below this a CPU run halves the width


@dataclass
class AutoSizes:
    """What was chosen, split by where it goes, and why (printed at start)."""

    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    why: str = ""

    def describe(self) -> str:
        return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in {**self.model, **self.train}.items())


def auto_sizes(n_chars: int, time_budget: Optional[float], accelerator: bool, given: set[str]) -> AutoSizes:
    """Sizes for a corpus of `n_chars` characters trained for `time_budget` seconds (None: the
    default budget) on a GPU (`accelerator`) or a CPU, leaving out the options in `given`."""
    budget = time_budget or DEFAULT_TIME
    if n_chars < SMALL_CORPUS:
        model = {"layers": 2, "hidden": 256 if accelerator else 128, "embed": 32, "dropout": 0.2}
        train = {"batch_size": 32, "seq_len": 64}
        why = "a small corpus: a small model with dropout, short windows"
    elif n_chars < MEDIUM_CORPUS:
        # Measured: in 5 minutes on 2 cores, tinyshakespeare reached 1.489 with these settings,
        # 1.580 with batch 64 and lr 3e-3 (half the updates), and 1.621 with dropout 0.15 (slower
        # to learn; the budget ends before overfitting matters).
        model = {"layers": 2, "hidden": 512 if accelerator else 256, "embed": 64, "dropout": 0.0}
        train = {"batch_size": 32, "seq_len": 128, "lr": 5e-3}
        why = "a corpus of about a megabyte"
    else:
        model = {"layers": 3 if accelerator else 2, "hidden": 1024 if accelerator else 512, "embed": 64, "dropout": 0.0}
        train = {"batch_size": 128 if accelerator else 64, "seq_len": 128}
        why = "a large corpus: a large model, seen less than once, needs no dropout"
    if not accelerator and budget < SHORT_BUDGET and model["hidden"] > 128:
        model["hidden"] //= 2
        why += f"; a short budget ({format_duration(budget)}), so half the width"
    return AutoSizes(model={k: v for k, v in model.items() if k not in given},
                     train={k: v for k, v in train.items() if k not in given}, why=why)


def finetune_defaults(n_chars: int, given: set[str]) -> AutoSizes:
    """Training options for adapting a trained model to a corpus of `n_chars` characters (the
    shape comes from the model), leaving out the options in `given`. Chosen by measurement
    (benchmarks/finetune.py, docs/benchmarks.md): a short warmup; frequent
    evaluation and early stopping, since a small list is learnt (and then overfit) in seconds.
    Swept on Italian place names and surnames of 200 and 1,000 lines (45 s each): peak learning
    rate 1e-3, 3e-3, 6e-3, 1e-2 (held-out loss fell with the rate up to 6e-3, then flat) and
    dropout 0.2 against 0.4 at 6e-3 (0.4 better by 0.006 on average); the best checkpoint came
    after 25-150 steps in every case, so evaluating every 25 steps matters more than the budget."""
    train = {"batch_size": 32, "seq_len": 64, "lr": 6e-3, "warmup": 20, "eval_every": 25, "patience": 8}
    model = {"dropout": 0.4}
    return AutoSizes(model={k: v for k, v in model.items() if k not in given},
                     train={k: v for k, v in train.items() if k not in given},
                     why="adapting a trained model: evaluate often, stop when it stops improving")

