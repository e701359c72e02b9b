"""How long to adapt a short list: k-fold cross-validation.

Ten names adapting the base model are best after about ten epochs and learnt by heart after
twenty (docs/benchmarks.md, "Adapting a list of 5 to 100 names"), so the step a run keeps matters;
but held-out names to choose it on are names not trained on, and a few of them choose badly. So a
list of up to CV_MAX_LINES lines is dealt, in the run's seeded shuffle, into k folds (every k-th
line; k = FOLDS, or one line a fold for fewer lines).
For each fold, a run adapts the model to the other lines and scores that fold after every step,
until FOLD_PATIENCE steps bring nothing better. Every line is held out once, so the held-out
losses summed over the folds at step s (each weighted by its characters) are the loss per
character of s steps of adapting, measured on every name of the list:

    fold 0   held out: lines 0, k, 2k, ...      trained on the rest -> curve_0(s), s = 0, 1, ...
    ...
    fold k-1 held out: lines k-1, 2k-1, ...                         -> curve_{k-1}(s)
    loss(s) = sum_f chars_f * curve_f(s) / sum_f chars_f      steps = argmin over s >= 1 of loss(s)

Then the run itself trains on every line for that many steps, holding none out (val_fraction 0:
best.safetensors is where it ends). The folds' runs and that one take the same learning rate at
each step (the warmup, then the peak: min_lr_ratio 1, no decay to time), so the folds measured
the curve the run follows, on 4/5 of its names. (Steps, not epochs: a step is a batch of lines
in both, all of them for a list under two batches (data.lines_per_batch), and the step a fold
chose scored within 0.01 of the best step of the run on every line for 14 of 20 lists of 5 to 50
names, measured against 500 names neither saw.)

Cross-validation replaces the held-out lines only where nothing else asks for them: no
--val-file, --val-fraction, --max-steps, --epochs, --patience or --eval-every given, one
process (not torchrun), a new run. A labelled list's folds are dealt from all its lines whatever
their labels, and each label's losses are summed over the folds as the whole's are: the run keeps
them as its labels' held-out losses. A --time given caps each fold, and the run after them: the
run gets the whole of it, so that it can train the steps chosen.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import TrainConfig, counted
from ..errors import TrainingInterrupted, UsageError
from .callbacks import TrainCallbacks
from .data import is_list, list_lines, shuffled_order
from .ingest import EncodedCorpus

FOLDS = 5
# The longest list whose length is cross-validated: up to 100 names it gains 0.03-0.06 nats per
# character on unseen names over a held-out tenth, in 20 s or less; at 200 it gains 0.016 in 2.6x
# the time of a run that holds lines out (docs/benchmarks.md).
CV_MAX_LINES = 100
FOLD_PATIENCE = 10  # steps past a fold's best before it stops
FOLD_MAX_STEPS = 200
# What a user gives that chooses the length or the held-out text, or watches it: no cross-validation then.
# (--time caps each fold and the run after them, and chooses nothing.)
CHOSEN_BY_USER = ("val_fraction", "max_steps", "epochs", "patience", "eval_every")
# The learning rate of the folds and of the run that follows them: warmup, then the peak to the end.
CONSTANT_RATE = {"schedule": "linear", "min_lr_ratio": 1.0}


@dataclass
class CrossValidation:
    """What the folds measured, and the steps chosen from it (kept in config.json and the checkpoints)."""

    folds: int
    steps: int  # the number of steps chosen: the least held-out loss after at least one
    val_loss: float  # the held-out loss per character after `steps`, over every line
    start_loss: float  # the same of the model the run starts from (step 0)
    curve: list[float]  # the held-out loss after 0, 1, 2, ... steps
    seconds: float  # wall time the folds took
    label_losses: Optional[dict[str, float]] = None  # a labelled list's: each label's held-out loss after `steps`

    def record(self) -> dict[str, Any]:
        chosen = {"max_steps": self.steps, "val_fraction": 0.0, **CONSTANT_RATE}
        # No "probe_seconds": the folds' time is not the run's (a --time caps each fold, and the run).
        return {"chosen": chosen, "why": self.why(),
                "cross_validation": {"folds": self.folds, "steps": self.steps, "val_loss": round(self.val_loss, 5),
                                     "start_loss": round(self.start_loss, 5), "seconds": round(self.seconds, 3),
                                     "curve": [round(v, 5) for v in self.curve],
                                     **({"label_val_loss": {k: round(v, 5) for k, v in self.label_losses.items()}}
                                        if self.label_losses is not None else {})}}

    def plan(self, n_lines: int) -> str:
        """What the run does with the choice, for a notice."""
        return (f"{self.why()}, in {self.seconds:.1f} s: training on all {n_lines:,} lines for {counted(self.steps, 'step')}, "
                f"holding none out")

    def why(self) -> str:
        return (f"{self.folds}-fold cross-validation: held-out loss {self.val_loss:.4f} after {counted(self.steps, 'step')} "
                f"({self.start_loss:.4f} before any), each line held out once")


def fold_count(n_lines: int) -> int:
    """How many folds a list of `n_lines` is dealt into: FOLDS, or one line a fold below that."""
    return min(FOLDS, n_lines)


def cross_validates(corpus: EncodedCorpus, given: dict[str, Any], val_file: Optional[str], distributed: bool) -> bool:
    """Whether a new run adapting a trained model to `corpus` chooses its length by cross-validation
    (see the module docstring): a list of 2 to CV_MAX_LINES lines, labelled or not, with nothing
    given that chooses the length or the held-out text."""
    if val_file is not None or distributed or not is_list(corpus, given.get("line_mode")):
        return False
    if given.get("line_mode") is False or any(k in given for k in CHOSEN_BY_USER):
        return False
    return 2 <= corpus.line_stats.nonempty <= CV_MAX_LINES


def deal(order: list[int], k: int) -> list[list[int]]:
    """The k folds' held-out lines: every k-th of `order` (the list's lines in their seeded order)
    from the fold's index, so that every line is held out exactly once."""
    return [order[f::k] for f in range(k)]


def combine(curves: list[list[float]], weights: list[int]) -> list[float]:
    """The folds' held-out losses per character after 0, 1, 2, ... steps, weighted by their
    held-out characters: the loss per character over every line, up to the step all folds reached."""
    n = min(len(c) for c in curves)
    total = sum(weights)
    return [sum(w * c[s] for c, w in zip(curves, weights)) / total for s in range(n)]


def choose_steps(curve: list[float]) -> int:
    """The step of the least held-out loss, one at least (the run adapts, however little)."""
    return min(range(1, len(curve)), key=lambda s: (not math.isfinite(curve[s]), curve[s]))


def by_label(label_curves: list[dict[int, dict[str, float]]], weights: list[dict[str, int]], step: int
             ) -> dict[str, float]:
    """Each label's held-out loss per character after `step` steps: its folds' losses (`label_curves`:
    per fold, step -> label -> loss) weighted by the characters of its lines each held out."""
    out = {}
    for name in dict.fromkeys(n for w in weights for n in w):  # in the order the folds met them
        pairs = [(w[name], curve[step][name]) for curve, w in zip(label_curves, weights) if name in curve.get(step, {})]
        if pairs:
            out[name] = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
    return out


def _chars_by_label(lines: list[tuple[str, str]]) -> dict[str, int]:
    """(label, line) pairs -> the characters each label's lines are scored on (their newlines too)."""
    chars: dict[str, int] = {}
    for name, line in lines:
        chars[name] = chars.get(name, 0) + len(line) + 1
    return chars


class _Quiet(TrainCallbacks):
    """A fold's runs report nothing, but keep a labelled run's losses per label at each step; a stop
    the run's callbacks ask for stops them too."""

    def __init__(self, callbacks: Optional[TrainCallbacks]):
        self.outer = callbacks
        self.label_losses: dict[int, dict[str, float]] = {}

    def on_eval(self, report) -> None:
        if report.label_losses is not None:
            self.label_losses[report.step] = report.label_losses

    def should_stop(self, step: int) -> bool:
        return self.outer is not None and self.outer.should_stop(step)


def cross_validate(corpus: EncodedCorpus, config: TrainConfig, model_options: dict[str, Any], *, base,
                   closest=None, precision: str, train: Callable[..., Any], callbacks: Optional[TrainCallbacks] = None
                   ) -> CrossValidation:
    """Run the folds (`train`: chargen.training.loop.train, each writing nothing, quiet;
    `closest`: a labelled base's ClosestLabels, which the folds share)."""
    t0 = time.perf_counter()
    lines = list_lines(corpus.text())
    folds = deal(shuffled_order(len(lines), config.seed), fold_count(len(lines)))
    fold_config = TrainConfig.from_dict({**config.to_dict(), **CONSTANT_RATE, "max_steps": FOLD_MAX_STEPS,
                                         "patience": FOLD_PATIENCE, "eval_every": 1, "sample_every": 0})
    labels = corpus.labels
    curves, weights, label_curves, label_weights = [], [], [], []
    for f, held in enumerate(folds):
        quiet = _Quiet(callbacks)
        result = train(corpus, fold_config, model_options, out_dir=Path(tempfile.gettempdir(), f"chargen-fold{f}"),
                       holdout=held, precision=precision, base=base, closest=closest, callbacks=quiet,
                       write=False)  # (never created: a fold writes nothing)
        if result.interrupted:
            raise TrainingInterrupted(result.interrupted, None)
        by_step = {m["step"]: math.nan if m["val_loss"] is None else m["val_loss"] for m in result.metrics}
        curves.append([by_step.get(s, math.nan) for s in range(max(by_step) + 1)])
        weights.append(sum(len(lines[i]) + 1 for i in held))
        if labels is not None:
            label_curves.append(quiet.label_losses)
            label_weights.append(_chars_by_label([(labels.names[labels.of_line[i]], lines[i]) for i in held]))
    curve = combine(curves, weights)
    if len(curve) < 2:
        raise UsageError("`time` ran out before a fold of the cross-validation took a step: give more time, or "
                         "`max_steps` to choose the length yourself")
    steps = choose_steps(curve)
    return CrossValidation(folds=len(folds), steps=steps, val_loss=curve[steps], start_loss=curve[0], curve=curve,
                           seconds=time.perf_counter() - t0,
                           label_losses=by_label(label_curves, label_weights, steps) if labels is not None else None)
