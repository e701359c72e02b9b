"""Typed configuration: what the model is, how to train it, how to sample from it.

CLI flags map one to one onto these fields (`--batch-size` fills `batch_size`). Every config
validates itself, and `from_dict` refuses unknown keys, so a typo never passes silently. The facts
of each recurrent cell live here too (`CELLS`), torch-free: the checkpoint reader, the numpy twin
and the training loop all ask `ModelConfig` rather than knowing them themselves.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

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
DEFAULT_PATIENCE = 5  # evaluations without a better val loss that end a run with no --max-steps or --epochs
DEFAULT_LINE_LENGTH = 200  # characters a line sample may run to
DEFAULT_PROSE_LENGTH = 1000  # characters of a prose sample
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

T = TypeVar("T")


_KINDS = {"int": ((int,), "a whole number"), "float": ((int, float), "a number"), "str": ((str,), "text"),
          "bool": ((bool,), "true or false")}


def check_type(name: str, value: Any, annotation: str) -> None:
    """A ConfigError unless `value` fits the field's annotation ("int", "Optional[float]", ...)."""
    optional = annotation.startswith("Optional[")
    kind = annotation[len("Optional[") : -1] if optional else annotation
    if value is None and optional:
        return
    if kind == "list[str]":  # a TOML array or JSON list of text
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a list of text (got {repr(value)[:40]})")
        return
    types, what = _KINDS[kind]
    if not isinstance(value, types) or (isinstance(value, bool) and kind != "bool"):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ConfigError(f"--{name.replace('_', '-')} must be {what} (got {shown})")


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
            shown = ", ".join(repr(k)[:40] for k in unknown)  # repr: a key may hold any character, a newline too
            raise ConfigError(f"unknown {cls._what} key(s): {shown} (known: {', '.join(sorted(fields))})")  # type: ignore[attr-defined]
        for name, value in data.items():
            check_type(name, value, str(fields[name].type))
        obj = cls(**data)
        obj.validate()  # type: ignore[attr-defined]
        return obj


def _positive(name: str, value: float | int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # `not (value > 0)` also catches NaN, which compares False with everything.
    if value is None or not (value > 0) or not math.isfinite(value):
        raise UsageError(f"--{name.replace('_', '-')} must be a number greater than 0 (got {value})")


@dataclass
class ModelConfig(_Config):
    _what = "model config"

    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0

    def validate(self) -> None:
        if not isinstance(self.cell, str) or self.cell not in CELLS:
            raise UsageError(f"--cell must be one of {', '.join(CELLS)} (got {self.cell!r})")
        for name in ("vocab_size", "layers", "hidden", "embed"):
            _positive(name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:  # False for NaN too
            raise UsageError(f"--dropout must be in [0, 1) (got {self.dropout})")

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



@dataclass
class TrainConfig(_Config):
    _what = "training config"

    batch_size: int = 64
    seq_len: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    time: Optional[float] = None  # seconds of wall clock
    eval_every: int = 200
    patience: Optional[int] = None  # stop after this many evaluations without a new best (None: auto, 0: never)
    sample_every: int = 1  # show a sample every N evaluations (0: never)
    eval_chars: int = 200_000  # cap on validation characters per evaluation, so evals stay cheap
    val_fraction: float = 0.1
    seed: int = 1337
    device: str = "auto"

    @property
    def time_budget(self) -> Optional[float]:
        """Seconds the run may train: --time, or DEFAULT_TIME when no stop at all is given."""
        if self.time is None and self.max_steps is None and self.epochs is None:
            return DEFAULT_TIME
        return self.time

    def validate(self) -> None:
        for name in ("batch_size", "seq_len", "eval_every", "eval_chars"):
            _positive(name, getattr(self, name))
        for name in ("lr",):
            _positive(name, getattr(self, name))
        for name in ("max_steps", "epochs", "time"):
            _positive(name, getattr(self, name), allow_none=True)
        if not (self.patience is None or self.patience >= 0):
            raise UsageError(f"--patience must be 0 (never stop early) or more (got {self.patience})")
        if not (0 <= self.weight_decay < math.inf):
            raise UsageError(f"--weight-decay must be 0 or more (got {self.weight_decay})")
        if not self.sample_every >= 0:
            raise UsageError(f"--sample-every must be 0 (off) or more (got {self.sample_every})")
        if not self.warmup >= 0:
            raise UsageError(f"--warmup must be 0 or more (got {self.warmup})")
        if not (0 <= self.grad_clip < math.inf):
            raise UsageError(f"--grad-clip must be 0 (off) or more (got {self.grad_clip})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UsageError(f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})")



@dataclass
class SampleConfig(_Config):
    _what = "sample config"

    num: int = 1
    length: Optional[int] = None  # None: DEFAULT_LINE_LENGTH per line, DEFAULT_PROSE_LENGTH for prose
    temperature: float = 0.8
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    lines: Optional[bool] = None  # None: as the checkpoint says
    unique: bool = False
    novel: bool = False
    max_tries: int = 50  # redraw budget per wanted sample, for --unique / --novel / empty samples
    # Constraints on line samples (chargen.constraints); lengths count the prompt's characters too.
    min_len: Optional[int] = None
    max_len: Optional[int] = None
    ends_with: Optional[str] = None
    contains: list[str] = dataclasses.field(default_factory=list)
    regex: Optional[str] = None
    guided: bool = False  # renormalise over allowed characters instead of exact (rejecting) sampling

    def validate(self) -> None:
        if self.num < 1:
            raise UsageError(f"-n/--num must be at least 1 (got {self.num})")
        if self.length is not None and self.length < 1:
            raise UsageError(f"--length must be at least 1 (got {self.length})")
        if not (0 <= self.temperature < math.inf):
            raise UsageError(f"--temperature must be 0 (greedy) or more (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2**63-1 (got {self.seed})")
        self.constraints()

    def max_length(self, lines: bool) -> int:
        return self.length or (DEFAULT_LINE_LENGTH if lines else DEFAULT_PROSE_LENGTH)

    def constraints(self):
        from .sampling.constraints import Constraints

        c = Constraints(min_len=self.min_len, max_len=self.max_len, ends_with=self.ends_with,
                        contains=tuple(self.contains), regex=self.regex)
        c.validate()
        return c



@dataclass
class ServeConfig(_Config):
    """How `chargen serve` listens and what it allows a request (each field a flag)."""

    _what = "serve config"

    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None  # bearer token the API requires; None: none
    max_n: int = 1000  # samples per request, all prompts together
    max_length: int = 2000  # characters a sample may run to (--length)
    max_prompts: int = 100  # prompts per request
    max_body: int = 1 << 20  # bytes of a request body (eval's text included)
    max_streams: int = 4  # concurrent /v1/stream responses (each holds a thread while it draws)
    window: float = 0.002  # seconds an idle model's batcher waits to gather requests that arrive together
    max_rows: int = 2048  # rows advancing together in one model's batch: bounds memory and a step's time
    max_draws: int = 200_000  # draws one sample request may cost (rare constraints redraw): bounds its time

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535 (got {self.port})")
        for name in ("max_n", "max_length", "max_prompts", "max_body", "max_streams", "max_rows", "max_draws"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not 0 <= self.window <= 1:
            raise UsageError(f"--window must be between 0 and 1 second (got {self.window})")
        if self.token is not None and not self.token.strip():
            raise UsageError("--token is empty; give a secret, or leave it out")

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


MODEL_KEYS = ("cell", "layers", "hidden", "embed", "dropout")
# Keys a TOML config may hold besides TrainConfig and ModelConfig fields (they are CLI options).
RUN_KEYS = ("corpus", "out", "val_file", "precision", "resume", "overwrite", "quiet", "start_from")


def train_options(flags: dict[str, Any], config_file: Optional[str] = None) -> dict[str, Any]:
    """The options of one `chargen train`: the TOML file's, then the flags given on top.

    `flags` holds every flag by its field name; None (and False for a switch) means "not given",
    so the file's value stands. Keys are ModelConfig, TrainConfig and RUN_KEYS names.
    """
    from_file = load_toml_config(config_file) if config_file else {}
    given = {k: v for k, v in flags.items() if v is not None and v is not False}
    return {**from_file, **given}


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
        raise UsageError(f"--config {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"--config {path} cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML ({exc})") from None
    known = set(MODEL_KEYS) | set(RUN_KEYS) | {f.name for f in dataclasses.fields(TrainConfig)}
    data: dict[str, Any] = {}
    for key, value in raw.items():
        name = "start_from" if key == "from" else key.replace("-", "_")  # `from`, as the flag --from
        if name not in known:
            raise ConfigError(f"--config {path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        data[name] = value
    if isinstance(data.get("time"), str):
        data["time"] = parse_duration(data["time"])
    if isinstance(data.get("corpus"), str):
        data["corpus"] = [data["corpus"]]
    if "corpus" in data and not (isinstance(data["corpus"], list) and all(isinstance(c, str) for c in data["corpus"])):
        raise ConfigError(f"--config {path}: corpus must be a file name or a list of them")
    for name, annotation in _RUN_KEY_TYPES.items():
        if name in data:
            check_type("from" if name == "start_from" else name, data[name], annotation)
    return data


_RUN_KEY_TYPES = {"out": "str", "val_file": "str", "precision": "str", "resume": "str", "overwrite": "bool",
                  "quiet": "bool", "start_from": "str"}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '5m', '2h', '1.5h', '300' (seconds) -> seconds."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--time must be a positive duration such as 90s, 5m or 2h (got {text!r})")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _UNIT[unit]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


__all__ = ["CELLS", "ModelConfig", "TrainConfig", "SampleConfig", "train_options", "parse_duration", "format_duration"]
