"""Typed configuration: what the model is, how to train it, how to sample from it.

CLI flags map one to one onto these fields (`--batch-size` fills `batch_size`). Every config
validates itself, and `from_dict` refuses unknown keys, so a typo never passes silently. The facts
of each recurrent cell live here too (`CELLS`), torch-free: the checkpoint reader, the numpy twin
and the training loop all ask `ModelConfig` rather than knowing them themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, TypeVar

from .errors import ConfigError, UsageError


@dataclass(frozen=True)
class CellFacts:
    gates: int  # gate blocks stacked in each weight matrix: (gates * hidden, input)
    state_tensors: int  # tensors in the recurrent state, each (layers, B, hidden): h, or h and c


# The one table of cell facts. Adding a cell means a row here, its equations in model.py (torch)
# and npmodel.py (numpy), and nothing else.
CELLS = {
    "lstm": CellFacts(gates=4, state_tensors=2),  # gates i, f, g, o; state (h, c)
    "gru": CellFacts(gates=3, state_tensors=1),  # gates r, z, n; state h
    "rnn": CellFacts(gates=1, state_tensors=1),  # tanh; state h
}
DEFAULT_TIME = 300.0  # seconds of training when no --max-steps, --epochs or --time is given
# Line-oriented corpora of at most this many lines start from the bundled base model by default
# (chargen.training.finetune), which beats training from scratch on lists up to this size
# (benchmarks/finetune.py; docs/benchmarks.md, "Adapting the broad base model", and for the bound,
# "Lists of 8,000 to 16,000 lines adapt too": 7,900-line lists +0.05 to +0.07 nats in half the
# time, at the default five minutes or fifteen; 12,000 and 16,000 +0.02 to +0.03).
DEFAULT_FROM_MAX_LINES = 10000
DEFAULT_PATIENCE = 5  # evaluations without a better val loss that end a run with no --max-steps or --epochs
DEFAULT_LINE_LENGTH = 200  # characters a line sample may run to
DEFAULT_PROSE_LENGTH = 1000  # characters of a prose sample
DEVICES = ("auto", "cpu", "cuda", "mps")
BACKENDS = ("auto", "numpy", "torch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECAY_TAIL = 0.2  # "wsd": the share of the run, at its end, over which the rate falls to its floor
# The learning rate's shapes after warmup: the share of the way from the floor to the peak at
# progress p (0 at the start, 1 when the budget is spent).
SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "linear": lambda p: 1.0 - p,
    "wsd": lambda p: min(1.0, (1.0 - p) / DECAY_TAIL),  # warmup, stable at the peak, then a linear decay
}
# Schedules that hold the peak until this share of the run: when validation stalls before it, early
# stopping starts their decay there (the run ends DECAY_TAIL later, in its own proportion) instead
# of ending the run at the peak rate.
STABLE_UNTIL: dict[str, float] = {"wsd": 1.0 - DECAY_TAIL}

T = TypeVar("T")


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)?\s*",
                            re.IGNORECASE)
_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}  # by the unit's first letter (5m, 5min, 5 minutes)


def parse_duration(text: str) -> float:
    """'90s', '5m', '2h', '1.5h', '300' (seconds), '1h30m' and format_duration's '1h05m00s' -> seconds."""
    parts, at = [], 0
    while at < len(text) and (m := _DURATION_PART.match(text, at)):  # one number and unit at a time: no backtracking
        parts.append((float(m.group(1)), m.group(2)[0].lower() if m.group(2) else None))
        at = m.end()
    seconds = sum(n * _UNIT[unit] for n, unit in parts)
    if at < len(text) or not parts or seconds <= 0 or (len(parts) > 1 and None in [u for _, u in parts]):
        raise UsageError(f"`time` must be a positive duration such as 90s, 5m, 2h or 1h30m (got {text!r})")
    return seconds


def counted(n: int, noun: str) -> str:
    """`n` and the noun, plural unless n is 1: "1 step", "12 steps", "1,024 new characters"."""
    return f"{n:,} {noun}" + ("s" if n != 1 else "")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# --- declaring an option ----------------------------------------------------------------------

REQUESTS = ("sample", "top", "stream")  # the kinds of sampling request a front end makes
# An option's role says how the sampler treats it: a `setting` decides how a row's next character
# is picked from its logits (rows of batched requests are grouped by their settings), a
# `constraint` limits which samples count (compiled to an automaton), a `filter` drops finished
# samples (repeats, training lines), `output` shapes what is drawn (count, length, seed, mode).
ROLES = ("setting", "constraint", "filter", "output")


@dataclass(frozen=True)
class Opt:
    """What every front end needs to offer one option: help, spelling, bounds, where it applies.

    The option's name, type and default are its dataclass field's. `flags` are the command-line
    spellings when they are not just --kebab-name; `field` its name in JSON and Python keywords
    when not the field name (`num` is `n`); `default_help` what help says of a default chosen at
    run time. `check` and `rule` bound the value: `check(value)` false is the error
    "`name` RULE (got value)"."""

    help: str
    flags: tuple[str, ...] = ()
    field: str = ""
    requests: tuple[str, ...] = ()
    role: str = "output"
    check: Optional[Callable[[Any], bool]] = None
    rule: str = ""
    default_help: str = ""
    panel: str = ""  # the --help section it is listed under
    cli: bool = True  # False: the command line declares its own flag (exclude reads a file there) or none
    accepts: str = ""  # what the API and JSON take, when more than the field's type (`contains`: one text too)

    def __post_init__(self) -> None:
        assert self.role in ROLES and set(self.requests) <= set(REQUESTS), self


def option(default: Any = None, help: str = "", *, factory: Optional[Callable[[], Any]] = None, **facts: Any) -> Any:
    """A dataclass field declared as an option (see Opt)."""
    meta = {"option": Opt(help=help, **facts)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One option as the front ends read it: its field's name, type and default, and its Opt."""

    name: str
    annotation: str
    default: Any
    opt: Opt

    @property
    def field(self) -> str:
        return self.opt.field or self.name

    @property
    def flags(self) -> tuple[str, ...]:
        return self.opt.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def accepts(self) -> str:
        """The type the API and JSON take."""
        return self.opt.accepts or self.annotation

    def takes(self, request: str) -> bool:
        return request in self.opt.requests

    def check_bounds(self, value: Any) -> None:
        """A UsageError unless the value is within the option's bounds (its type is checked apart)."""
        if value is not None and self.opt.check is not None and not self.opt.check(value):
            shown = repr(value) if isinstance(value, str) else value
            raise UsageError(f"`{self.name}` {self.opt.rule} (got {shown})")


@functools.cache
def declared(cls: type) -> Mapping[str, Declared]:
    """The options a config dataclass declares, by field name, in declaration order (read-only:
    computed once per class; the samplers ask for it at every batch)."""
    out = {}
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[f.name] = Declared(f.name, str(f.type), default, f.metadata["option"])
    return MappingProxyType(out)


@functools.cache
def role_names(cls: type, role: str) -> tuple[str, ...]:
    """The names of the options of one role, in declaration order (computed once per class and role)."""
    return tuple(name for name, d in declared(cls).items() if d.opt.role == role)


_KINDS = {"int": ((int,), "a whole number"), "float": ((int, float), "a number"), "str": ((str,), "text"),
          "bool": ((bool,), "true or false")}


def unknown_keys(unknown: list[str], known) -> str:
    """The unknown keys as an error shows them, each with the known one it likely means (a typo:
    'temprature' (temperature?)), then every known key."""
    known = sorted(known)

    def shown(key: str) -> str:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if isinstance(key, str) else []
        return repr(key)[:40] + (f" ({close[0]}?)" if close else "")  # repr: a key may hold any character

    return f"{', '.join(map(shown, sorted(unknown, key=str)))} (known: {', '.join(known)})"


def check_type(name: str, value: Any, annotation: str) -> None:
    """A ConfigError unless `value` fits the field's annotation ("int", "Optional[float]",
    "list[str]", "str | list[str]", ...); finite numbers only."""
    optional = annotation.startswith("Optional[")
    kind = annotation[len("Optional[") : -1] if optional else annotation
    if value is None and optional:
        return
    kinds = [k.strip() for k in kind.split("|")]
    if "dict[str, float]" in kinds and isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for k, v in value.items()):
            raise ConfigError(f"`{name}` must map text to numbers (got {_shown(value)})")
        return
    if "list[str]" in kinds and isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"`{name}` must be a list of text (got {_shown(value)})")
        return
    for k in kinds:
        types, _ = _KINDS.get(k, ((), ""))
        if isinstance(value, types) and not (isinstance(value, bool) and k != "bool"):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"`{name}` must be a finite number (got {_shown(value)})")
            return
    what = " or ".join(_KINDS[k][1] if k in _KINDS else _OTHER_KINDS[k] for k in kinds)
    raise ConfigError(f"`{name}` must be {what} (got {_shown(value)})")


_OTHER_KINDS = {"list[str]": "a list of text", "dict[str, float]": "a mapping of labels to weights"}


def label_spec(label: Any) -> Any:
    """`label` as the text that asks for it: a blend given as a mapping, {"it": 0.7, "es": 0.3} (the
    Python API's, the server's and an exported module's other way to write it), is it=0.7,es=0.3 (no
    label holds ',' or '=': training refuses them); text or None as it is."""
    label = plain(label)
    check_type("label", label, f"Optional[{declared(SampleConfig)['label'].accepts}]")
    if not isinstance(label, dict):
        return label
    if not label:
        raise ConfigError("`label` is an empty mapping; give a label and its weight, or leave it out")
    for name in label:
        if not name.strip() or "," in name or "=" in name:
            raise ConfigError(f"`label`: {name!r} names no label (labels hold no ',' or '=')")
    return ",".join(f"{name}={float(weight)!r}" for name, weight in label.items())


_PLAIN = frozenset({int, float, bool, str, list, type(None)})


def plain(value: Any) -> Any:
    """A number of another kind as Python's own (numpy's int64, float32 and bool_, a Fraction: what
    a program computes its options with), so a config holds, compares and writes JSON as one typed
    by hand; anything else as it is, for check_type to judge (a bool is no number here)."""
    if type(value) in _PLAIN:  # (most values: no ABC's isinstance, in every request a server takes)
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    if getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "shape", None) == ():
        return bool(value)  # numpy's bool_
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."


class _Config:
    """to_dict / from_dict for the config dataclasses; from_dict refuses unknown keys and validates."""

    _what = "config"  # how errors name it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """From untrusted keys and values (a TOML file, a checkpoint, keyword arguments): unknown
        keys and values of the wrong type are ConfigErrors, then the values are validated."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown {cls._what} key(s): {unknown_keys(unknown, fields)}")  # type: ignore[attr-defined]
        data = {name: plain(value) for name, value in data.items()}
        for name, value in data.items():
            check_type(name, value, str(fields[name].type))
        obj = cls(**data)
        obj.validate()  # type: ignore[attr-defined]
        return obj

    def validate(self) -> None:
        """Every declared option's bounds; a subclass adds the rules that tie options together."""
        for name, d in declared(type(self)).items():
            d.check_bounds(getattr(self, name))


def _positive(value: Any) -> bool:
    # `value > 0` is False for NaN too.
    return value > 0 and math.isfinite(value)


def _at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


POSITIVE = dict(check=_positive, rule="must be a number greater than 0")
_AT_LEAST_1 = dict(check=_at_least(1), rule="must be at least 1")


def _between(low: int, high: int) -> dict[str, Any]:
    return dict(check=lambda v: low <= v <= high, rule=f"must be between {low:,} and {high:,}")


# The longest a sample may run to: months of drawing, and far from the 2**63 that the row engine's
# tables hold (10**30 was an OverflowError).
MAX_LENGTH = 10**12
_LENGTH = _between(1, MAX_LENGTH)
# The most worker processes a command forks: 10**30 was an OverflowError, a million a fork bomb.
MAX_WORKERS = 1024
NOT_NEGATIVE = dict(check=lambda v: 0 <= v < math.inf, rule="must be 0 or more")
AUTO = "auto, from the corpus, the budget and the measured speed; printed at start"


# A seed, training's or sampling's: what the counter-based sampler hashes and torch's generators take.
SEED_RANGE: dict[str, Any] = dict(check=lambda v: 0 <= v < 2**63, rule="must be between 0 and 2**63-1")


def _one_of(choices) -> dict[str, Any]:
    return dict(check=lambda v: v in choices, rule=f"must be one of {', '.join(choices)}")


@dataclass
class ModelConfig(_Config):
    _what = "model config"

    vocab_size: int  # the corpus's, not an option
    cell: str = option("lstm", f"Recurrent cell: {', '.join(CELLS)}.", **_one_of(tuple(CELLS)))
    layers: int = option(2, "Stacked recurrent layers.", default_help=AUTO, **POSITIVE)
    hidden: int = option(256, "Hidden units per layer.", default_help=AUTO, **POSITIVE)
    embed: int = option(64, "Character embedding size.", default_help=AUTO, **POSITIVE)
    dropout: float = option(0.0, "Dropout between layers and before the head.", default_help=AUTO,
                            check=lambda v: 0.0 <= v < 1.0, rule="must be in [0, 1)")
    # Regularisers for small corpora (AWD-LSTM, Merity et al. 2017); training only, sampling ignores them.
    embed_dropout: float = option(0.0, "Drop whole characters: each training step zeroes a random share of the "
                                        "embedding's rows.", check=lambda v: 0.0 <= v < 1.0, rule="must be in [0, 1)")
    input_dropout: float = option(0.0, "Variational dropout on the first layer's input: one mask per sequence, "
                                        "the same at every step.", check=lambda v: 0.0 <= v < 1.0,
                                  rule="must be in [0, 1)")
    weight_drop: float = option(0.0, "DropConnect on the hidden-to-hidden weights: one mask per training step "
                                      "(the fused kernels are kept).", default_help=AUTO,
                                check=lambda v: 0.0 <= v < 1.0, rule="must be in [0, 1)")
    # Set by line-mode training (TrainConfig.line_mode), not an option: every line starts from a
    # learned state (the checkpoint's start_state), a weight "start" (state tensors, layers, hidden).
    learned_start: bool = False
    # Set by a labelled corpus (TrainConfig.labels), not an option: how many labels; each line then
    # starts from its label's learned state, a weight "start" (labels, state tensors, layers, hidden).
    n_labels: int = 0

    def validate(self) -> None:
        if not _positive(self.vocab_size):
            raise UsageError(f"`vocab_size` must be a number greater than 0 (got {self.vocab_size})")
        if self.n_labels and not self.learned_start:
            raise UsageError("a labelled model starts each line from its label's learned state (`learned_start`)")
        super().validate()

    def describe(self) -> str:
        """"2x128 lstm, embed 32, dropout 0.2, weight drop 0.5": the shape and the regularisers set."""
        regs = [f"{k.replace('_', ' ')} {getattr(self, k)}" for k in REGULARISERS if getattr(self, k)]
        return ", ".join([f"{self.layers}x{self.hidden} {self.cell}, embed {self.embed}", *regs])

    @property
    def gates(self) -> int:
        return CELLS[self.cell].gates

    @property
    def state_tensors(self) -> int:
        return CELLS[self.cell].state_tensors

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The weight names and shapes of this model, as in CharRNN.state_dict()."""
        g, h = self.gates * self.hidden, self.hidden
        shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (self.vocab_size, self.embed)}
        for layer in range(self.layers):
            inp = self.embed if layer == 0 else h
            shapes[f"rnn.weight_ih_l{layer}"] = (g, inp)
            shapes[f"rnn.weight_hh_l{layer}"] = (g, h)
            shapes[f"rnn.bias_ih_l{layer}"] = (g,)
            shapes[f"rnn.bias_hh_l{layer}"] = (g,)
        shapes["head.weight"] = (self.vocab_size, h)
        shapes["head.bias"] = (self.vocab_size,)
        if self.learned_start:
            shapes["start"] = ((self.n_labels,) if self.n_labels else ()) + (self.state_tensors, self.layers, h)
        return shapes

    @property
    def parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.weight_shapes().values())

    @property
    def matmul_weights(self) -> int:
        """Weights touched by matrix multiplies per character (the embedding is a lookup).

        Training costs about 6 FLOPs per such weight per character, sampling about 2.
        """
        n = sum(self.gates * self.hidden * ((self.embed if layer == 0 else self.hidden) + self.hidden)
                for layer in range(self.layers))
        return n + self.hidden * self.vocab_size





# The shape of a model, as options: every ModelConfig field but the vocabulary (the corpus's).
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
# The model options that act in training only: a run from a trained model may set them anew.
REGULARISERS = ("dropout", "embed_dropout", "input_dropout", "weight_drop")
# What the weights' shapes follow and a run from a trained model keeps (learned_start follows how
# the run trains: chargen.training.loop.build_model adds or drops the start state).
SHAPE_KEYS = tuple(k for k in MODEL_KEYS if k not in REGULARISERS + ("learned_start", "n_labels"))


@dataclass
class TrainConfig(_Config):
    _what = "training config"

    batch_size: int = option(64, "Parallel streams the text is laid out in.", default_help=AUTO, **POSITIVE)
    seq_len: int = option(128, "Characters per window (BPTT length).", default_help=AUTO, **POSITIVE)
    line_mode: Optional[bool] = option(None, "Train a list line by line, as it is scored and sampled: every line "
                                             "from a learned start state, lines of similar length padded into "
                                             "batches of about batch-size x seq-len characters. Given, it makes "
                                             "any corpus a list, one sample a line (titles, sentences).",
                                       flags=("--line-mode/--no-line-mode",),
                                       default_help="on for lists (lines of names, words), off for prose")
    lr: float = option(3e-3, "Peak learning rate (AdamW).", default_help="3e-3 (or chosen with the sizes, printed at start)",
                       **POSITIVE)
    # 0.1 rather than 0.01: in 5 minutes on a 2-core AVX2 CPU, names.txt 1.8991 / 1.9123 against 1.9052 /
    # 1.9183 (two seeds; at the first, 0.05 1.8973 and 0.3 1.9210), tinyshakespeare 1.4603 / 1.4852 against
    # 1.4903 / 1.5226; small lists within 0.01 (docs/benchmarks.md, "Weight decay 0.1").
    weight_decay: float = option(0.1, "AdamW weight decay on weight matrices.", **NOT_NEGATIVE)
    warmup: int = option(100, "Linear warmup steps before the decay.", **NOT_NEGATIVE)
    schedule: str = option("wsd", f"The learning rate after warmup: wsd holds the peak until the last {DECAY_TAIL:.0%} "
                                  "of the run, then falls linearly (a stall before that starts the fall: see "
                                  "--patience); cosine and linear fall from the start.",
                           **_one_of(tuple(SCHEDULES)))
    min_lr_ratio: float = option(0.0, "The learning rate at the end, as a share of the peak.",
                                 check=lambda v: 0.0 <= v <= 1.0, rule="must be in [0, 1]")
    grad_clip: float = option(1.0, "Clip the global gradient norm (0: off).", check=lambda v: 0 <= v < math.inf,
                              rule="must be 0 (off) or more")
    max_steps: Optional[int] = option(None, "Stop after this many steps.", **POSITIVE)
    epochs: Optional[float] = option(None, "Stop after this many passes over the text.", **POSITIVE)
    time: Optional[float] = option(None, "Stop after this wall-clock time: 90s, 5m, 2h, 1h30m.",  # seconds
                                   default_help=f"{format_duration(DEFAULT_TIME)} if no other stop is given", cli=False,
                                   **POSITIVE)  # the command line takes a duration (--time 5m): cli.py declares it
    eval_every: int = option(200, "Evaluate every N steps (saving best.safetensors when better, last.safetensors "
                                        "at most every 25 steps).", **POSITIVE)
    patience: Optional[int] = option(None, "Stop early after this many evaluations without a better val loss (0: "
                                           "never); with wsd, start the decay instead (in the decay, go on to its end).",
                                     default_help=f"{DEFAULT_PATIENCE} unless --max-steps or --epochs is given",
                                     check=lambda v: v >= 0, rule="must be 0 (never stop early) or more")
    sample_every: int = option(1, "Show a sample every N evaluations, on stderr (0: never).", check=lambda v: v >= 0,
                               rule="must be 0 (off) or more")
    eval_chars: int = option(200_000, "Cap on validation characters per evaluation, so evaluations stay cheap.",
                             **POSITIVE)
    val_fraction: float = option(0.1, "Fraction of the text, from its end, held out for validation (0: none, "
                                      "so no early stopping: the last step is the model). Unset when adapting a "
                                      "list of up to 100 lines: none, its length cross-validated instead.",
                                 check=lambda v: 0.0 <= v < 1.0, rule="must be at least 0 and below 1")
    labels: Optional[str] = option(None, "Label every line: 'file' (each file's name without its extension labels "
                                         "its lines) or 'tab' (LABEL<TAB>TEXT lines). A labelled list trains line "
                                         "by line; sample with --label.", check=lambda v: v in ("file", "tab"),
                                   rule="must be one of file, tab")
    seed: int = option(1337, "Random seed.", **SEED_RANGE)
    device: str = option("auto", f"Device: {', '.join(DEVICES)}.", **_one_of(DEVICES))

    @property
    def time_budget(self) -> Optional[float]:
        """Seconds the run may train: --time, or DEFAULT_TIME when no stop at all is given."""
        if self.time is None and self.max_steps is None and self.epochs is None:
            return DEFAULT_TIME
        return self.time


@dataclass
class RunConfig(_Config):
    """The options of `chargen train` that are neither the model's nor the loop's (chargen.train's
    keywords; the command line's flags; a TOML config's keys)."""

    _what = "run config"

    corpus: list[str] = option(help="UTF-8 text files (gzip, bzip2 or xz ones too), or - for stdin.", factory=list)
    out: Optional[str] = option(None, "Run directory.", flags=("--out", "-o"), default_help="checkpoints/<corpus name>")
    val_file: Optional[str] = option(None, "Validate on this file instead of text held out from the corpus (a list's held-out lines are drawn at random, prose's are its tail); not with --labels.")
    precision: str = option("auto", f"Precision: {', '.join(PRECISIONS)} (auto: bf16 where the hardware has bf16 matrix "
                                    "units).",
                            **_one_of(PRECISIONS))
    resume: Optional[str] = option(None, "Continue the run in this directory (or from this last.safetensors).")
    start_from: Optional[str] = option(
        None, "Start from this trained model and adapt it to the corpus: a checkpoint file, a run directory, or a "
        "bundled model: 'base' (names of many languages and kinds) or 'names' (US first names). Its shape is kept, "
        "its vocabulary grows by the corpus's new characters; none: from scratch.", flags=("--from",),
        default_help=f"base for a list of at most {DEFAULT_FROM_MAX_LINES:,} lines given no model shape, else none")
    overwrite: bool = option(False, "Replace a run already in --out.")
    quiet: bool = option(False, "No progress output; errors only.", flags=("--quiet", "-q"))


@dataclass
class LoadConfig(_Config):
    """How a trained model runs: chargen.load's keywords, and the flags of the commands that run one
    (sample, score, eval, serve)."""

    _what = "load config"

    backend: str = option("auto", "auto, numpy (fast start, CPU) or torch.", **_one_of(BACKENDS))
    device: Optional[str] = option(None, f"Device for the torch backend: {', '.join(DEVICES)} (auto: a GPU if "
                                         "there is one, else the CPU, with numpy where the backend is auto).",
                                   default_help="the CPU (numpy); with --backend torch, a GPU if there is one",
                                   **_one_of(DEVICES))

    def validate(self) -> None:
        super().validate()
        if self.backend == "numpy" and self.device not in (None, "cpu", "auto"):
            raise UsageError(f"the numpy backend runs on the CPU only; use `backend` torch for `device` {self.device}")

    def chosen_backend(self, gpu_present: Callable[[], bool]) -> str:
        """The backend that runs: auto is numpy on the CPU (no torch to import, and as fast for
        models of this size), torch on a GPU; `gpu_present` is asked only for device auto."""
        if self.backend != "auto":
            return self.backend
        if self.device == "auto":
            return "torch" if gpu_present() else "numpy"
        return "numpy" if self.device in (None, "cpu") else "torch"


# --- sampling options -------------------------------------------------------------------------

CONSTRAINTS_PANEL = "Constraints (line samples)"


# Below this many samples a drawing runs in this process: two workers cost about 50 ms more to
# start and finish (forks, the children's first touches of the model, the first chunks' round
# trips), and each steps the prefixes new to it (chargen.sampling.prefixes), so together they
# step more than one process would. With that cache they break even near 16,384 names of the
# bundled model on 2 cores (AVX-512 EPYC, two workers' time over one's: 1.09 at 16,384, 0.97 at
# 20,000, 0.91 at 32,768, 0.85 at 65,536; before it, near 3,000: docs/benchmarks.md, "Shared
# prefixes run once").
MIN_PARALLEL = 16384


@dataclass
class SampleConfig(_Config):
    """Every sampling option, declared once: the CLI's flags and help, the Python API's keywords,
    the server's JSON fields and its type check, the batching key and the refusal lists all read
    these declarations (`declared(SampleConfig)`)."""

    _what = "sample config"

    num: int = option(1, "Samples to print (per prompt).", flags=("-n", "--num"), field="n", requests=REQUESTS,
                      check=_at_least(1), rule="must be at least 1")
    length: Optional[int] = option(None, "Maximum characters generated per sample.", flags=("--length", "-l"),
                                   requests=REQUESTS, **_LENGTH,
                                   default_help=f"{DEFAULT_LINE_LENGTH} per line, {DEFAULT_PROSE_LENGTH} for prose")
    temperature: float = option(0.8, "Randomness: 0 is greedy, 1 the model's own distribution.",
                                flags=("--temperature", "-t"), requests=("sample", "stream"), role="setting",
                                check=lambda v: 0 <= v < math.inf, rule="must be 0 (greedy) or more")
    top_k: Optional[int] = option(None, "Draw only from the k likeliest characters.", requests=("sample", "stream"),
                                  role="setting", check=_at_least(1), rule="must be at least 1")
    top_p: Optional[float] = option(None, "Draw only from the likeliest characters whose mass reaches p (nucleus).",
                                    requests=("sample", "stream"), role="setting", check=lambda v: 0.0 < v <= 1.0,
                                    rule="must be in (0, 1]")
    seed: Optional[int] = option(None, "Random seed: same seed, same output.", requests=("sample", "stream"),
                                 **SEED_RANGE)
    label: Optional[str] = option(None, "A labelled model's label: a name (el_GR:first), a part of names (el_GR or "
                                        "el or greek, GR or greece: every label with it, in training proportions; de:city or \"german cities\": "
                                        "with both), or "
                                        "a blend it=0.7,es=0.3 (a mixture of their distributions).", requests=REQUESTS,
                                  accepts="str | dict[str, float]",
                                  default_help="the labels as trained, in training proportions (a model adapted with --labels: its own)")
    lines: Optional[bool] = option(None, "One line per sample, ending at the newline.", flags=("--lines/--no-lines",),
                                   requests=REQUESTS, default_help="as the model's corpus: on for names, off for prose")
    unique: bool = option(False, "Never print the same sample twice.", requests=("sample", "stream"), role="filter")
    novel: bool = option(False, "Never print a line of the training corpus (of a model adapted with train --from: "
                                "your list, not the base model's corpus; add that with --exclude).",
                         requests=REQUESTS, role="filter")
    exclude: Optional[list[str]] = option(None, "Never return one of these lines (like novel, for any list).",
                                          requests=("sample", "top"), role="filter", cli=False)
    workers: Optional[int] = option(None, "Processes drawing at once (plain and --rejection sampling): the same "
                                          "samples at any count.", **_between(1, MAX_WORKERS),
                                    default_help=f"one per CPU core from {MIN_PARALLEL:,} samples (Linux, a program "
                                                 "without threads of its own); else 1")
    max_tries: int = option(50, "Draws per wanted sample before giving up, for unique, novel and empty samples.",
                            cli=False, check=_at_least(1), rule="must be at least 1")
    # Constraints on line samples (chargen.sampling.constraints); lengths count the prompt's characters too.
    min_len: Optional[int] = option(None, "At least this many characters per sample, the prompt included, the "
                                          "newline not.", requests=("sample", "top"), role="constraint",
                                    check=lambda v: v >= 0, rule="must be 0 or more", panel=CONSTRAINTS_PANEL)
    max_len: Optional[int] = option(None, "At most this many characters per sample, the prompt included, the "
                                          "newline not.", requests=("sample", "top"), role="constraint",
                                    check=_at_least(1), rule="must be at least 1", panel=CONSTRAINTS_PANEL)
    ends_with: Optional[str] = option(None, "Every sample ends with this text.", requests=("sample", "top"),
                                      role="constraint", panel=CONSTRAINTS_PANEL)
    contains: list[str] = option(help="Every sample contains this text (repeat for several).", factory=list,
                                 requests=("sample", "top"), role="constraint", panel=CONSTRAINTS_PANEL,
                                 accepts="str | list[str]")
    regex: Optional[str] = option(
        None, "The whole sample (prompt included) must match this Python regular expression; supported: literals, "
        "escapes, ., [classes], \\w \\d \\s, groups, |, * + ? {m,n}, (?i), lookahead; not lookbehind, backreferences "
        "or \\b.",
        requests=("sample", "top"), role="constraint", panel=CONSTRAINTS_PANEL)
    guided: bool = option(False, "Draw only among characters that can still satisfy the constraints: never wastes a "
                                 "draw, but favours early choices with many ways to finish. Default: exact, the "
                                 "model's distribution conditioned on the constraints.", requests=("sample",),
                          panel=CONSTRAINTS_PANEL)
    rejection: bool = option(False, "Exact constraints by plain rejection: the samples are exactly the unconstrained "
                                    "samples (same seed) that satisfy them, faster when most samples do. Default: the "
                                    "adaptive exact sampler, which learns where the accepted samples are (same "
                                    "distribution, far fewer wasted draws when the constraints are rare).",
                             requests=("sample",), panel=CONSTRAINTS_PANEL)

    @classmethod
    def of(cls, **options: Any) -> "SampleConfig":
        """From the API's keywords: `n` is num, `contains` may be one text, `exclude` any iterable,
        `label` a mapping of labels to weights (label_spec)."""
        known = ["n" if f.name == "num" else f.name for f in dataclasses.fields(cls)]  # (as the API spells them)
        if "num" in options:
            raise ConfigError("unknown sample config key 'num': the number of samples is n (sample(5) or n=5)")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown sample config key(s): {unknown_keys(unknown, known)}")
        fields = {("num" if k == "n" else k): v for k, v in options.items()}
        if "label" in fields:
            fields["label"] = label_spec(fields["label"])
        if isinstance(fields.get("contains"), str):
            fields["contains"] = [fields["contains"]]
        exclude = fields.get("exclude")
        if exclude is not None and not isinstance(exclude, (list, str)):
            if not isinstance(exclude, Iterable):
                raise ConfigError(f"exclude must be a list of text (got {exclude!r})")
            fields["exclude"] = list(exclude)
        return cls.from_dict(fields)

    def validate(self) -> None:
        super().validate()
        if self.min_len is not None and self.max_len is not None and self.min_len > self.max_len:
            raise UsageError(f"`min_len` {self.min_len} is above `max_len` {self.max_len}: no sample can satisfy both")
        if self.guided and self.rejection:
            raise UsageError("`guided` and `rejection` are two ways of drawing under constraints; choose one")
        for name, text in [("ends_with", self.ends_with)] + [("contains", c) for c in self.contains]:
            if text is not None and "\n" in text:
                raise UsageError(f"`{name}` cannot hold a newline: a line sample has none")

    def max_length(self, lines: bool) -> int:
        return self.length or (DEFAULT_LINE_LENGTH if lines else DEFAULT_PROSE_LENGTH)

    def given(self, role: str) -> list[str]:
        """The options of this role that are set (not None, False, 0 or empty), by name."""
        return [name for name in role_names(SampleConfig, role) if getattr(self, name)]

    def settings(self) -> tuple:
        """What decides how a row's next character is picked from its logits: rows of batched
        requests with equal settings are picked together."""
        return tuple(getattr(self, name) for name in role_names(SampleConfig, "setting"))


# The prompt, a field of every sampling request besides the options above.
PROMPT = Declared("prompt", "str | list[str]", "", Opt(
    help="Text each sample starts with; several prompts draw n samples each.", requests=REQUESTS))


def request_fields(request: str) -> dict[str, Declared]:
    """The JSON fields (Python keywords) a sampling request takes, by field name."""
    fields = {"prompt": PROMPT}
    fields.update({d.field: d for d in declared(SampleConfig).values() if d.takes(request)})
    return fields


@dataclass
class ServeConfig(_Config):
    """How `chargen serve` listens and what it allows a request (each field a flag)."""

    _what = "serve config"

    host: str = option("127.0.0.1", "Address to listen on; anything but localhost exposes the API, so set --token.")
    port: int = option(8000, "Port to listen on (0: any free one, printed at start).",
                       check=lambda v: 0 <= v <= 65535, rule="must be between 0 and 65535")
    token: Optional[str] = option(None, "Require this bearer token on the API (Authorization: Bearer TOKEN).",
                                  default_help="$CHARGEN_SERVE_TOKEN, else none")
    max_n: int = option(1000, "Most samples one request may ask for, all its prompts together.", **_AT_LEAST_1)
    max_length: int = option(2000, "Most characters a sample may run to.", **_LENGTH)
    max_prompts: int = option(100, "Most prompts in one request.", **_AT_LEAST_1)
    max_body: int = option(1 << 20, "Most bytes in a request body.", **_AT_LEAST_1)
    max_streams: int = option(4, "Most /v1/stream responses open at once.", **_AT_LEAST_1)
    window: float = option(0.002, "Seconds an idle model waits to gather requests into one batch.",
                           check=lambda v: 0 <= v <= 1, rule="must be between 0 and 1 second")
    max_rows: int = option(2048, "Most rows advancing together in one model's batch: bounds memory and a step's time.",
                           **_AT_LEAST_1)
    workers: Optional[int] = option(None, "Processes advancing each model's batch, so that the network's steps do "
                                          "not share the server's process with HTTP; with them, one more runs the slow "
                                          "requests: samples under constraints, /v1/top, /v1/score and /v1/eval (0: "
                                          "threads of the server's process for all). "
                                          "Same samples either way.", **_between(0, MAX_WORKERS),
                                    default_help="1 on Linux with 2 or more cores (numpy backend), else 0")
    max_draws: int = option(200_000, "Most draws one sample request may cost (rare constraints draw many); past it, "
                                     "a 422.", **_AT_LEAST_1)
    ahead: int = option(4096, "Most samples drawn ahead for a request asked again and again with no seed (nor "
                              "unique, novel or exclude), which is then answered from them at once: independent "
                              "samples at its settings, each given once; under constraints, in the side process "
                              "(0: none).",
                        check=lambda v: v >= 0, rule="must be 0 or more")

    def validate(self) -> None:
        super().validate()
        if self.token is not None and not self.token.strip():
            raise UsageError("`token` is empty; give a secret, or leave it out")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False




def given_options(flags: dict[str, Any], *configs: type) -> dict[str, Any]:
    """The options given on a command line, by field name: None means not given, and so does False
    for a switch, but for a tri-state --x/--no-x of `configs` (declared default None), whose
    False was asked for."""
    tri_state = {name for c in configs for name, d in declared(c).items() if d.default is None}
    return {k: v for k, v in flags.items() if v is not None and (v is not False or k in tri_state)}


def merge_train_options(flags: dict[str, Any], config_file: Optional[str] = None) -> dict[str, Any]:
    """The options of one `chargen train`: the TOML file's, then the flags given on top.

    `flags` holds every flag by its field name; not given (given_options), the file's value
    stands. Keys are ModelConfig, TrainConfig and RunConfig names.
    """
    from_file = load_toml_config(config_file) if config_file else {}
    return {**from_file, **given_options(flags, ModelConfig, TrainConfig, RunConfig)}


def load_toml_config(path: str) -> dict[str, Any]:
    """Read `chargen train --config FILE`: flat keys named like the flags (batch_size or batch-size).

    Unknown keys are errors. `time` may be a number of seconds or a duration such as "5m".
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"`config` {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"`config` {path} cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"`config` {path} is not valid TOML ({exc})") from None
    run_keys = declared(RunConfig)
    # The options a flag sets (not learned_start or n_labels: the corpus sets those), by the flags' names
    known = set(declared(ModelConfig)) | set(run_keys) | set(declared(TrainConfig))
    data: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # each option as the file names it
    for key, value in raw.items():
        name = "start_from" if key == "from" else key.replace("-", "_")  # `from`, as the flag --from
        if name not in known:
            raise ConfigError(f"`config` {path}: unknown key "
                              f"{unknown_keys([key], (known - {'start_from'}) | {'from'})}")
        data[name], spelled[name] = value, key
    if isinstance(data.get("time"), str):
        data["time"] = parse_duration(data["time"])
    if isinstance(data.get("corpus"), str):
        data["corpus"] = [data["corpus"]]
    if "corpus" in data and not (isinstance(data["corpus"], list) and all(isinstance(c, str) for c in data["corpus"])):
        raise ConfigError(f"`config` {path}: corpus must be a file name or a list of them")
    fields = {**declared(ModelConfig), **declared(TrainConfig), **run_keys}
    for name, value in data.items():
        annotation = fields[name].annotation
        if name in run_keys:  # (a run's option in a file has a value: None is no TOML value anyway)
            annotation = annotation.removeprefix("Optional[").removesuffix("]") if annotation.startswith("Optional[") \
                else annotation
        try:
            check_type(name, value, annotation)
            fields[name].check_bounds(value)
        except UsageError as exc:  # named as the file names it, not by the flag
            raise ConfigError(f"`config` {path}: the key {spelled[name]!r} {exc.message.split('` ', 1)[1]}") from None
    return data


__all__ = ["CELLS", "ModelConfig", "TrainConfig", "RunConfig", "LoadConfig", "SampleConfig", "ServeConfig", "declared", "request_fields",
           "merge_train_options", "parse_duration", "format_duration"]
