"""Automatic model and batch sizes for the options a user leaves unset (torch-free).

In a fixed budget the model that wins is the largest one that still sees enough characters per
parameter, and that the corpus can feed without memorising it. So the rule is written in
characters, not in corpus bytes: the characters the run will see (steps x batch x window, epochs
x corpus, or for a time budget the measured speed of each candidate shape on this device and
precision x the time), over the parameters of the shape. A shape is chosen when it sees at least
SEEN_PER_PARAMETER characters per parameter and has at most DATA_PARAMETERS_PER_CHAR parameters
per training character (for a list trained line by line LIST_PARAMETERS_PER_CHAR, up to
LIST_MAX_PARAMETERS); a run that will go over its corpus many times gets dropout and weight drop.

The constants come from 5-minute runs on tinyshakespeare and names.txt on three CPUs, and the lists'
cap from lists of 2,000 to 32,000 lines from scratch: the measurements are in docs/benchmarks.md,
"Automatic sizes" and "A list's model from scratch".

How the speed is measured is not this module's business: `auto_sizes` takes a `measure` callable
(chargen.training.probe times real training steps; the tests pass fake devices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..config import SHAPE_KEYS, ModelConfig, TrainConfig, declared, format_duration
from ..errors import ModelTooLarge
from .data import lines_per_batch

SMALL_CORPUS = 300_000  # characters: lists of names, titles (on a GPU: the window and learning rate)
LARGE_CORPUS = 5_000_000  # characters: on a GPU, larger batches from here
SEEN_PER_PARAMETER = 10.0  # characters seen per parameter, at least, for a shape to be trained enough
DATA_PARAMETERS_PER_CHAR = 1.2  # parameters per training character, at most, for a shape the corpus can feed
# A list trained line by line, with the regularisers below, feeds more, up to a 2x128's size: from
# scratch at the default budget (two seeds), 2x128 beat 2x64 by 0.036-0.042 at 7,900 lines (2.6-4.6
# a character) on two lists of three, level on the third (where 2x96 did 0.017 better); at 16,000
# Italian places 2x128 beat the 2x96 the plain cap gave by 0.039 and 2x192 was level with it; at
# 2,000 lines 2x64 (2.9-5.3 a character) beat the larger shapes. Uncapped, names.txt took 2x256
# (5 a character allowed it) and was level with its 2x128 (1.9011 against 1.9000): four times the
# parameters to sample for nothing, hence the ceiling ("A list's model from scratch" in
# docs/benchmarks.md).
LIST_PARAMETERS_PER_CHAR = 5.0
LIST_MAX_PARAMETERS = 250_000  # the lists' cap stops here; above, the plain cap (1.2 a character) holds
# The regularisers a run gets by the number of times it will see its corpus: (field, ((epochs, value), ...)),
# the value of the last step reached, else 0. Dropout (on the layers' outputs) 0.1 from 20 epochs and 0.2
# from 150: with weight decay 0.1, names.txt at 74-110 epochs 1.8967 / 1.9063 with 0.1 against 1.9008 /
# 1.9123 with 0.2 (two seeds); a list seen hundreds of times keeps the 0.2 it was measured with. Weight
# drop (DropConnect on the recurrent weights) 0.25 from 15 epochs and 0.5 from 150: on names.txt 0.25 was
# better at 50 and 111 epochs (by 0.010-0.025), 0.5 at 155-265 (by 0.003-0.005); on tinyshakespeare 0.5
# helped at 18 epochs and 0.25 hurt at 7-10 (issue 29's runs, docs/benchmarks.md).
REGULARISED = (("dropout", ((20.0, 0.1), (150.0, 0.2))), ("weight_drop", ((15.0, 0.25), (150.0, 0.5))))

PROBE_SHARE = 0.03  # of a time budget, at most, spent timing candidate shapes
MIN_PROBE_SECONDS = 0.5  # a time budget whose share is below this is not measured: the smallest shape

# The candidate shapes, smallest first: (layers, hidden, embed).
LADDER = ((2, 64, 32), (2, 96, 32), (2, 128, 32), (2, 192, 64), (2, 256, 64), (2, 384, 64), (2, 512, 64),
          (2, 768, 64), (3, 1024, 64))

# measure(model options, batch_size, seq_len, seconds) -> (chars per second, seconds it took); raises
# ModelTooLarge for a shape the device's memory cannot train
Measure = Callable[[dict[str, Any], int, int, float], tuple[float, float]]


def regulariser(steps: tuple[tuple[float, float], ...], epochs_seen: float) -> float:
    """The value of the last of `steps` ((epochs, value), ascending) that `epochs_seen` reaches; 0 before the first."""
    return next((value for epochs, value in reversed(steps) if epochs_seen >= epochs), 0.0)


@dataclass
class AutoSizes:
    """What was chosen, split by where it goes, why, and what was measured to choose it."""

    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    why: str = ""
    measured: list[dict[str, Any]] = field(default_factory=list)  # {"shape", "parameters", "chars_per_sec", "seconds"}
    probe_seconds: float = 0.0  # wall time spent measuring (part of the time budget)
    time_budget: Optional[float] = None  # the time budget the sizes were chosen for (seconds)

    def describe(self) -> str:
        return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in {**self.model, **self.train}.items())

    def record(self) -> dict[str, Any]:
        """What config.json keeps of the choice (a resumed run reads its sizes, never re-measures)."""
        return {"chosen": {**self.model, **self.train}, "why": self.why, "measured": self.measured,
                "probe_seconds": round(self.probe_seconds, 3)}


def batch_defaults(n_chars: int, accelerator: bool) -> dict[str, Any]:
    """Batch, window and learning rate by corpus kind and device. On a CPU a budget of minutes is
    short of updates, not of characters, so windows are short (equal-time measurements of the
    window and batch: docs/benchmarks.md, "Automatic sizes"). A GPU runs wider steps in about the
    time of narrow ones."""
    if accelerator:
        if n_chars >= LARGE_CORPUS:
            return {"batch_size": 128, "seq_len": 128}  # a GPU needs wide batches to be busy
        return {"batch_size": 32, "seq_len": 64} if n_chars < SMALL_CORPUS else \
            {"batch_size": 32, "seq_len": 128, "lr": 5e-3}
    # On a CPU 5e-3 for lists too: names.txt in 5 minutes, 1.949 against 2.000 and 1.979 at 3e-3 on an
    # AVX2-only CPU (4,000 steps), 0.001 better on two seeds with bf16 units (16,000 steps).
    return {"batch_size": 32, "seq_len": 64, "lr": 5e-3}


def candidates(given_model: dict[str, Any]) -> list[dict[str, Any]]:
    """The shapes to choose from, smallest first, with the given model options kept: a given
    --hidden leaves one shape (2 layers unless given), a given --layers or --embed the ladder's widths."""
    if "hidden" in given_model:
        hidden = given_model["hidden"]
        return [{"layers": 2, "embed": 32 if hidden <= 128 else 64, **given_model}]
    shapes = [{"layers": layers, "hidden": hidden, "embed": embed, **given_model} for layers, hidden, embed in LADDER]
    return [s for i, s in enumerate(shapes) if s not in shapes[:i]]


def shape_name(options: dict[str, Any]) -> str:
    return f"{options['layers']}x{options['hidden']}"


def auto_sizes(n_chars: int, vocab_size: int, *, time_budget: Optional[float], max_steps: Optional[int] = None,
               epochs: Optional[float] = None, accelerator: bool, given: dict[str, Any],
               measure: Optional[Measure] = None, val_fraction: float = 0.1, by_line: bool = False,
               n_labels: int = 0) -> AutoSizes:
    """Sizes for a corpus of `n_chars` characters and `vocab_size` symbols, trained for
    `time_budget` seconds (TrainConfig.time_budget, the default time included) and/or `max_steps`
    steps or `epochs`, on a GPU (`accelerator`) or a CPU. `given` holds the options the user set (model and
    training); they are kept, and the chosen ones leave them out. `measure` times a shape on the
    device (needed only for a time budget; without it the smallest shape is taken). `by_line`: the
    corpus is a list trained line by line, which feeds more parameters a character (and whose model
    learns a start state, one for each of `n_labels` labels)."""
    train = {k: v for k, v in batch_defaults(n_chars, accelerator).items() if k not in given}
    batch, seq_len = given.get("batch_size", train.get("batch_size")), given.get("seq_len", train.get("seq_len"))
    train_chars = max(1, int(n_chars * (1 - given.get("val_fraction", val_fraction))))
    model_given = {k: v for k, v in given.items() if k in SHAPE_KEYS}  # the shape's keys

    def parameters(options: dict[str, Any]) -> int:
        return ModelConfig(vocab_size=vocab_size, learned_start=by_line, n_labels=n_labels, **options).parameters

    ladder = candidates(model_given)
    cap = DATA_PARAMETERS_PER_CHAR * train_chars
    if by_line:
        cap = max(cap, min(LIST_PARAMETERS_PER_CHAR * train_chars, LIST_MAX_PARAMETERS))
    feedable = [o for o in ladder if parameters(o) <= cap] or ladder[:1]
    seen_cap = min(max_steps * batch * seq_len if max_steps else math.inf, epochs * train_chars if epochs else math.inf)

    measured: list[dict[str, Any]] = []
    spent = 0.0
    pick, seen = feedable[0], seen_cap
    if time_budget is not None:
        probe_budget = PROBE_SHARE * time_budget
        needed = len(feedable) > 1 or any(key not in given for key, _ in REGULARISED)  # a shape, or the regularisers
        if needed and probe_budget >= MIN_PROBE_SECONDS and measure is not None:
            for options in feedable:
                if measured:  # a warm-up and a timed step of the next shape must fit in what is left
                    last = measured[-1]
                    step = batch * seq_len / last["chars_per_sec"] * parameters(options) / last["parameters"]
                    if spent + 2 * step > probe_budget:
                        break
                try:
                    rate, seconds = measure(options, batch, seq_len, probe_budget - spent)
                except ModelTooLarge:
                    if not measured:  # (the smallest shape left: the error says what to do)
                        raise
                    break  # larger than the machine's memory holds: the choice is among the shapes measured
                spent += seconds
                n_seen = min(seen_cap, rate * (time_budget - probe_budget))
                measured.append({"shape": shape_name(options), "parameters": parameters(options),
                                 "chars_per_sec": round(rate, 1), "seconds": round(seconds, 3)})
                if options is not feedable[0] and n_seen < SEEN_PER_PARAMETER * parameters(options):
                    break
                pick, seen = options, n_seen
        else:
            seen = math.nan  # not measured: the smallest shape, no estimate
    else:
        for options in feedable:
            if options is feedable[0] or seen_cap >= SEEN_PER_PARAMETER * parameters(options):
                pick = options
    model = {k: v for k, v in pick.items() if k not in given}
    epochs_seen = seen / train_chars
    if math.isfinite(epochs_seen):
        for key, steps in REGULARISED:
            if key not in given:
                model[key] = regulariser(steps, epochs_seen)
    why = _why(pick, parameters(pick), seen, epochs_seen, cap if len(feedable) < len(ladder) else None, feedable,
               measured, time_budget, {key: model[key] for key, _ in REGULARISED if model.get(key)})
    return AutoSizes(model=model, train=train, why=why, measured=measured, probe_seconds=spent,
                     time_budget=time_budget)


def _why(pick: dict[str, Any], params: int, seen: float, epochs_seen: float, cap: Optional[float], feedable: list,
         measured: list[dict[str, Any]], time_budget: Optional[float], regularised: dict[str, float]) -> str:
    """One line: what the chosen shape will see, what stopped the next one (`cap`: the most
    parameters the corpus feeds, when it ruled out candidates), and the regularisers chosen (not given)."""
    name = shape_name(pick)
    if not math.isfinite(seen):
        if time_budget is not None and not measured:
            return f"{name}: a budget of {format_duration(time_budget)} is too short to measure shapes"
        return f"{name}: the given shape"
    why = f"{name} ({params:,} parameters) sees about {seen / 1e6:.1f}M characters, {seen / params:.0f} per parameter, " \
          f"{epochs_seen:.1f} epochs"
    if pick is feedable[-1] and cap is not None:
        why += f"; the corpus feeds at most {cap / 1e6:.2g}M parameters"
    elif pick is not feedable[-1]:
        why += f"; the next shape would see under {SEEN_PER_PARAMETER:g} characters per parameter"
    if regularised:
        chosen = " and ".join(f"{key.replace('_', ' ')} {value}" for key, value in regularised.items())
        why += f"; {chosen} for {epochs_seen:.0f} epochs"
    return why


ADAPT_EVAL_EVERY = 25  # steps between evaluations when adapting, at most
ADAPT_PATIENCE_STEPS = 200  # steps without a better validation loss before adapting stops (or decays)
ADAPT_MIN_VAL_LINES = 5  # a short list holds out this many lines to choose its checkpoint on, up to
ADAPT_MAX_VAL_FRACTION = 0.3  # this share of it ("Adapting a list of 5 to 100 names")


def finetune_defaults(n_chars: int, n_lines: Optional[int], given: dict[str, Any]) -> AutoSizes:
    """Training options for adapting a trained model to a corpus of `n_chars` characters
    (`n_lines` lines for a list trained line by line; None for running text; the shape comes from
    the model), leaving out the options in `given`: a short warmup, frequent evaluation and early
    stopping, since a small list is learnt (and then overfit) in seconds. The dropout and
    evaluation interval come from a sweep (benchmarks/finetune.py; the numbers are in
    docs/benchmarks.md, "Adapting the bundled model to your own list"), the rate from measuring
    the bundled base again (3e-3 against 6e-3 and 1.2e-2 on lists of 10 to 5,000 lines: "The
    adapting rate, again"); weight drop from adapting
    the labelled base to eight lists on two CPUs ("Weight drop when adapting"). A list shorter
    than 25 steps an epoch is evaluated every epoch (a list of 10 names is best after about 10
    epochs and overfit after 20: "Adapting a list of 5 to 100 names"), with the same patience in
    steps, and a list of under 50 lines holds out 5 of them (30% at most) where 10% would be one
    or two, too few to choose a checkpoint on; a list of up to 100 lines chooses its length by
    cross-validation instead where nothing given stops it (chargen.training.folds), and drops these two."""
    train = {"batch_size": 32, "seq_len": 64, "lr": 3e-3, "warmup": 20}
    batch_size, seq_len = (given.get(k, train[k]) for k in ("batch_size", "seq_len"))
    if n_lines:
        chars_a_step = lines_per_batch(n_lines, n_chars / n_lines, batch_size, seq_len) * n_chars / n_lines
    else:
        chars_a_step = batch_size * seq_len
    eval_every = given.get("eval_every", max(1, min(ADAPT_EVAL_EVERY, math.ceil(n_chars / chars_a_step))))
    train.update(eval_every=eval_every, patience=math.ceil(ADAPT_PATIENCE_STEPS / eval_every),
                 sample_every=math.ceil(ADAPT_EVAL_EVERY / eval_every))  # a sample every 25 steps or so
    if n_lines and ADAPT_MIN_VAL_LINES / n_lines > declared(TrainConfig)["val_fraction"].default:
        train["val_fraction"] = round(min(ADAPT_MAX_VAL_FRACTION, ADAPT_MIN_VAL_LINES / n_lines), 3)
    model = {"dropout": 0.4, "weight_drop": 0.5}
    often = "every epoch" if "eval_every" not in given and eval_every < ADAPT_EVAL_EVERY else "often"
    return AutoSizes(model={k: v for k, v in model.items() if k not in given},
                     train={k: v for k, v in train.items() if k not in given},
                     why=f"adapting a trained model: evaluate {often}, stop when it stops improving")
